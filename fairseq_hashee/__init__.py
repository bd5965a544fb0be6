"""fairseq-hashee: hash-based early exiting (HashEE, Sun et al. 2022) for fairseq.

Load with ``--user-dir fairseq_hashee``; importing the package registers the
``hashee_bart`` and ``hashee_cpt`` models, the ``hashee_summarization``
task and the exit methods' criteria (criterions/), and lets fairseq load its own checkpoints under torch's restricted
unpickler, naming in one line a file it cannot load or cannot find (checkpoints.py).

It also installs a ``sys.excepthook`` that prints our input errors
(``HashEEError``) as one ``error:`` line instead of a traceback (errors.py).
That has to happen at import: ``fairseq-train``/``fairseq-generate`` are
fairseq's console scripts, and importing the user dir is the only code of ours
they run before a bad option or table is found. The hook passes every other
exception to the previous hook unchanged, and only ever affects uncaught
exceptions.
"""

from .checkpoints import allow_fairseq_checkpoint_globals, name_unloadable_checkpoints, refuse_missing_checkpoints
from .errors import install_one_line_errors

allow_fairseq_checkpoint_globals()
name_unloadable_checkpoints()
refuse_missing_checkpoints()
install_one_line_errors()

from . import criterions, models, tasks  # noqa: E402,F401  (registers with fairseq)

__version__ = "0.1.0"
