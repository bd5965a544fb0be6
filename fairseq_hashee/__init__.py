"""fairseq-hashee: hash-based early exiting (HashEE, Sun et al. 2022) for fairseq.

Load with ``--user-dir fairseq_hashee``; importing the package registers the
``hashee_bart`` model and the ``hashee_summarization`` task, and lets fairseq
load its own checkpoints under torch's restricted unpickler, and reports
bad input as one line (errors.py).
"""

from .checkpoints import allow_fairseq_checkpoint_globals
from .errors import install_one_line_errors

allow_fairseq_checkpoint_globals()
install_one_line_errors()

from . import models, tasks  # noqa: E402,F401  (registers with fairseq)

__version__ = "0.1.0"
