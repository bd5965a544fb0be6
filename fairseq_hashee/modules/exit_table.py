"""The token -> exit-layer table a HashEE stack carries, its checks, and the
per-occurrence draw of ``random-incons`` tables (docs/design.md section 2)."""

from typing import Optional

import torch
from torch import Tensor

from ..errors import HashEEError
from ..tables.hash_functions import special_symbol_mask


class ExitTableMixin:
    """Gives an encoder or decoder an ``exit_table`` buffer (saved with the model).

    The table starts with every token at the last layer, which makes the stack
    compute exactly what the stock fairseq stack computes; the task installs
    hashed tables when it builds the model, and a checkpoint brings its own.
    """

    stack_name = "stack"

    def _init_exit_table(self, dictionary):
        self.register_buffer("exit_table", torch.full((len(dictionary),), self.num_layers, dtype=torch.long))
        # Who set the table (an option name), None while it is the all-L default.
        self.exit_table_source = None
        # How the task built the table (tables/recipe.py, TableRecipe), kept for a
        # hash of the model's own weights (cluster): a checkpoint restored
        # without a table gets one from its own embeddings.
        self.exit_table_recipe = None
        # Kept in step with the buffer: whether the table holds draw sets
        # (random-incons), and whether every symbol runs every layer (then the
        # stack is fairseq's, with no per-layer planning at all).
        self.draws_per_occurrence = False
        self.no_early_exits = True

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
        special = torch.from_numpy(special_symbol_mask(self.dictionary.symbols, self.dictionary.nspecial))
        wrong = special & (table.cpu() != self.num_layers)
        if bool(wrong.any()):
            bad = int(wrong.nonzero()[0])
            raise HashEEError(
                f"{source}: {self.stack_name} exit table sends special symbol {bad} ({self.dictionary[bad]!r}) "
                f"to layer {int(table[bad])}; special symbols always run all {self.num_layers} layers"
            )
        # Layers 1..L, or a draw set: a nonempty mask of those layers, negated.
        invalid = (table == 0) | (table > self.num_layers) | (table <= -(1 << self.num_layers))
        if bool(invalid.any()):
            bad = int(invalid.nonzero()[0])
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
        self._table_changed()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._table_changed()

    def _table_changed(self) -> None:
        self.draws_per_occurrence = bool((self.exit_table < 0).any())
        self.no_early_exits = bool((self.exit_table == self.num_layers).all())

    def token_exits(self, tokens: Tensor) -> Tensor:
        """Exit layer of every position of ``tokens`` (B, T), as (B, T), 0 at padding.

        Called once per forward (once per new position when decoding
        incrementally), so a drawn exit holds for every layer of that forward.
        """
        exits = self.exit_table[tokens]
        if self.draws_per_occurrence:
            exits = draw_exits(exits, self.num_layers)
        return exits.masked_fill(tokens.eq(self.padding_idx), 0)


def draw_exits(entries: Tensor, num_layers: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Replace every draw-set entry (< 0) by a layer drawn uniformly from its set.

    Uses torch's random state (seeded by fairseq per run), so the draws of a
    run are reproducible while every occurrence draws afresh.
    """
    layers = torch.arange(num_layers, device=entries.device)
    in_set = ((-entries).clamp(min=0).unsqueeze(-1) >> layers) & 1
    scores = torch.rand(in_set.shape, device=entries.device, generator=generator)
    # The argmax of i.i.d. uniform scores over the set's layers is uniform over them.
    drawn = scores.masked_fill(in_set == 0, -1.0).argmax(dim=-1) + 1
    return torch.where(entries < 0, drawn, entries)
