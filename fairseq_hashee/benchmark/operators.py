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
    calls = []
    hook = model.decoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with torch.no_grad(), OperatorCounter() as counter:
            encoder = _counting_encoder(model.encoder, counter)
            with encoder:
                fn()
    finally:
        hook.remove()
    if kind == "encoder":
        return float(encoder.operators)
    return (counter.total - encoder.operators) / max(len(calls), 1)


class _counting_encoder:
    """Counts what ``counter`` sees while ``encoder`` runs, by hooks around its forward."""

    def __init__(self, encoder, counter: OperatorCounter):
        self.encoder, self.counter, self.operators = encoder, counter, 0
        self._start = 0

    def __enter__(self):
        def before(module, args):
            self._start = self.counter.total

        def after(module, args, output):
            self.operators += self.counter.total - self._start

        self._hooks = [self.encoder.register_forward_pre_hook(before), self.encoder.register_forward_hook(after)]
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()


def count_operators(fn: Callable[[], object]) -> OperatorCounter:
    """The operators ``fn()`` dispatches (run once, under no_grad as inference is)."""
    with torch.no_grad(), OperatorCounter() as counter:
        fn()
    return counter
