"""The token -> exit-layer table a HashEE stack carries, and its checks."""

import torch
from torch import Tensor

from ..errors import HashEEError

EXIT_IMPLS = ("skip", "masked")


class ExitTableMixin:
    """Gives an encoder or decoder an ``exit_table`` buffer (saved with the model).

    The table starts with every token at the last layer, which makes the stack
    compute exactly what the stock fairseq stack computes; the task installs
    hashed tables when it builds the model, and a checkpoint brings its own.
    """

    stack_name = "stack"

    def _init_exit_table(self, dictionary, exit_impl: str):
        self.register_buffer(
            "exit_table", torch.full((len(dictionary),), self.num_layers, dtype=torch.long)
        )
        self.exit_impl = exit_impl
        # Who set the table (an option name), None while it is the all-L default.
        self.exit_table_source = None
        # Set by flops.measuring() while FLOPs are being counted.
        self.speedup_meter = None

    @property
    def exit_impl(self) -> str:
        return self._exit_impl

    @exit_impl.setter
    def exit_impl(self, value: str):
        if value not in EXIT_IMPLS:
            raise HashEEError(f"--exit-impl: expected one of {', '.join(EXIT_IMPLS)}, got {value!r}")
        self._exit_impl = value

    def check_exit_table(self, table: Tensor, source: str) -> None:
        """Raise a one-line error naming ``source`` if ``table`` cannot drive this stack."""
        size = len(self.dictionary)
        if table.dim() != 1 or table.numel() != size:
            raise HashEEError(
                f"{source}: {self.stack_name} exit table has {table.numel()} entries "
                f"but the {self.stack_name} dictionary has {size} symbols"
            )
        if table.dtype.is_floating_point or table.dtype == torch.bool:
            raise HashEEError(f"{source}: {self.stack_name} exit table must hold integers, got {table.dtype}")
        low, high = int(table.min()), int(table.max())
        if low < 1 or high > self.num_layers:
            bad = int(((table < 1) | (table > self.num_layers)).nonzero()[0])
            raise HashEEError(
                f"{source}: {self.stack_name} exit table sends symbol {bad} "
                f"({self.dictionary[bad]!r}) to layer {int(table[bad])}, "
                f"outside the stack's layers 1..{self.num_layers}"
            )

    def set_exit_table(self, table: Tensor, source: str = "exit table") -> None:
        table = torch.as_tensor(table)
        self.check_exit_table(table, source)
        self.exit_table.copy_(table.to(self.exit_table))
        self.exit_table_source = source

    def token_exits(self, tokens: Tensor) -> Tensor:
        """Exit layer of every position of ``tokens`` (B, T), time-major, 0 at padding."""
        exits = self.exit_table[tokens].masked_fill(tokens.eq(self.padding_idx), 0)
        return exits.t()
