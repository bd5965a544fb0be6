"""bfloat16 training without a TPU.

fairseq 0.12's argument parser turns ``--bf16`` into ``--tpu`` (bf16 was a TPU
feature when it was written), after which the trainer asks torch_xla for a
device and fails on CUDA and CPU alike. Both run bf16 natively now, so when no
XLA runtime is installed the task switches the implied TPU flag back off; the
trainer then keeps its usual device and fairseq's own mixed-precision optimizer
(fp32 master weights, bf16 model) does the rest.
"""

import importlib.util
import logging

logger = logging.getLogger(__name__)


def allow_bf16_without_tpu(task_cfg) -> None:
    """Undo the TPU implied by --bf16 in the full config that ``task_cfg`` belongs to."""
    root = task_cfg._get_root() if hasattr(task_cfg, "_get_root") else None
    common = getattr(root, "common", None) if root is not None else None
    if common is None or not getattr(common, "bf16", False) or not getattr(common, "tpu", False):
        return
    if importlib.util.find_spec("torch_xla") is not None:
        return  # a real TPU setup: leave fairseq's behaviour alone
    common.tpu = False
    logger.info("--bf16 without torch_xla: training in bfloat16 on the usual device, not a TPU")
