"""Test helper: fairseq-train for one rank that also saves that rank's checkpoint.

fairseq saves on the data-parallel master only; to compare the ranks' tables
and parameters after training, every rank saves (to its own --save-dir).
"""

import fairseq.trainer
from fairseq_cli.train import cli_main

fairseq.trainer.Trainer.should_save_checkpoint_on_current_rank = property(lambda self: True)

if __name__ == "__main__":
    cli_main()
