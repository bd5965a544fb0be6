"""Linear layers applied to few rows: the kernel matters.

Two products of a HashEE model have few rows against a large weight: a
layer's products over the positions it still updates (a narrow prefix of the
ordered states, often a few dozen rows, a shape stock BART never produces in
its encoder), and the
decoder's output projection at a generation step (one row per hypothesis
against the vocabulary-sized weight: bart_base, beam 4, batch 1 is 4 x 768
against 50,265 x 768). On CPU, MKL's sgemm behind ``F.linear`` loses much of its
throughput there (bart_base feed-forward, 2 threads: 58 GFLOP/s at 8 rows,
190 at 512), while oneDNN's fp32 inner product on the same plain weight keeps
most of it (90-117 GFLOP/s at 8 rows, 190-210 at 98). So inference products
of at most ``MAX_ROWS`` rows go to oneDNN; everything else, training
included (the op has no autograd formula), stays on ``F.linear``.

oneDNN compiles and caches one primitive per shape; capping the rows keeps
the shapes of a model within its default cache of 1,024 primitives, and above
the cap MKL is within about 15% of oneDNN anyway.
"""

from typing import Callable, Optional

import torch
from torch import Tensor, nn

MAX_ROWS = 256


def _find_onednn_linear() -> Optional[Callable]:
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _find_onednn_linear()


def few_rows_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``, through oneDNN when ``x`` has few rows and no gradient is wanted."""
    rows = x.numel() // max(x.size(-1), 1)
    if (
        _ONEDNN_LINEAR is not None
        and 0 < rows <= MAX_ROWS
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not layer.training
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.enabled
    ):
        return _ONEDNN_LINEAR(x, layer.weight, layer.bias, "none", [], "")
    return layer(x)
