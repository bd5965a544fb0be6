"""The options both calibrating commands share: the loss, its metric, the p-value and the split.

``hashee-calibrate`` spells them ``--loss``, ``--metric``, ``--p-value``,
``--subset``; ``hashee-compare`` prefixes them with ``--calibrate-`` beside its
``--calibrate``, except the split, ``--calibration-subset`` in both.
"""

from .losses import LOSSES, METRICS
from .ltt import P_VALUES


def add_options(parser, prefix: str, default_loss: str, subset_options=("--calibration-subset",)) -> None:
    parser.add_argument(
        f"--{prefix}loss",
        choices=LOSSES,
        default=default_loss,
        help="textual: 1 - ROUGE against full depth's summary; risk: ROUGE lost against the reference, clipped at "
        "0; drop: the same signed (full depth's minus the candidate's), delta 0.01 = one point on average",
    )
    parser.add_argument(f"--{prefix}metric", choices=METRICS, default="rougeL", help="the ROUGE F1 of the loss")
    parser.add_argument(
        f"--{prefix}p-value",
        choices=P_VALUES,
        default="wsr",
        help="wsr: Waudby-Smith-Ramdas betting (adapts to the variance); hb: Hoeffding-Bentkus",
    )
    parser.add_argument(
        *subset_options,
        metavar="NAME",
        help="the calibration split, not the one you report on (default: calib when the data has it, else valid)",
    )
