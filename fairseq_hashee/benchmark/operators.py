"""Operators dispatched: the CPU's stand-in for a GPU's kernel launches.

At the sizes summarization runs at, a GPU spends a few microseconds per
kernel whatever its size, so a layer that computes a fraction of its positions
through ten extra small operators costs more than the whole layer. Counting
the aten operators a forward dispatches tells that cost on any machine
(docs/benchmark.md, "Operators"). Views and metadata-only operators launch no
kernel and are not counted.
"""

import collections
from typing import Callable, Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operators that only read or rewrite a tensor's metadata.
_METADATA = {"detach", "alias", "lift_fresh", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset"}


def launches_kernel(func) -> bool:
    return not func.is_view and func.overloadpacket.__name__ not in _METADATA


class OperatorCounter(TorchDispatchMode):
    """Counts the kernel-launching aten operators dispatched inside the ``with`` block, by name."""

    def __init__(self):
        super().__init__()
        self.by_name: Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if launches_kernel(func):
            self.by_name[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.by_name.values())


def operators_per_call(model, fn: Callable[[], object], kind: str) -> float:
    """Operators of one encoder forward (``kind`` "encoder"), or of one decoder step of the
    generation ``fn`` runs: everything outside the encoder (fairseq's beam search included,
    the same for every model) over the decoder's calls."""
    with torch.no_grad(), OperatorCounter() as counter, _counting(model.encoder, counter) as encoder:
        with _counting(model.decoder, counter) as decoder:
            fn()
    if kind == "encoder":
        return float(encoder.operators)
    return (counter.total - encoder.operators) / max(decoder.calls, 1)


class _counting:
    """Counts ``module``'s forward calls and the operators ``counter`` sees inside them.

    fairseq's generator calls ``decoder.forward`` itself, past nn.Module's hooks, so the
    instance's ``forward`` is wrapped for the duration instead."""

    def __init__(self, module, counter: OperatorCounter):
        self.module, self.counter = module, counter
        self.calls = self.operators = 0

    def __enter__(self):
        original = self.module.forward

        def forward(*args, **kwargs):
            start = self.counter.total
            try:
                return original(*args, **kwargs)
            finally:
                self.calls += 1
                self.operators += self.counter.total - start

        self.module.forward = forward
        return self

    def __exit__(self, *exc):
        del self.module.forward


def count_operators(fn: Callable[[], object]) -> OperatorCounter:
    """The operators ``fn()`` dispatches (run once, under no_grad as inference is)."""
    with torch.no_grad(), OperatorCounter() as counter:
        fn()
    return counter
