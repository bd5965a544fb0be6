"""Layer plans and the exit order against hand-computed values (docs/design.md section 3)."""

import torch
from fairseq.modules import MultiheadAttention

from fairseq_hashee.modules.active_attention import attend, attend_grouped, project_kv
from fairseq_hashee.modules.layer_plan import ExitOrder, LayerCounts, Plan, Prefix, RowOrder, StackPlanner, StepRows

# Three rows of four positions, batch-major; 0 marks padding (row 2 is left-padded).
EXITS = torch.tensor([[3, 1, 2, 3], [1, 1, 1, 3], [0, 0, 2, 1]])
# Each row deepest exit first, ties in time order: the time index of each ordered slot.
ORDER = [[0, 3, 2, 1], [3, 0, 1, 2], [2, 3, 0, 1]]


def test_each_row_is_ordered_deepest_exit_first():
    order = ExitOrder(EXITS, num_layers=4, causal=False)
    assert order.times.tolist() == ORDER
    assert order.exits.tolist() == [[3, 3, 2, 1], [3, 1, 1, 1], [2, 1, 0, 0]]
    x = torch.arange(12.0).view(4, 3, 1)  # time-major: x[t, b] = 3t + b
    ordered = order.sort(x)
    assert ordered[:, 1, 0].tolist() == [10.0, 1.0, 4.0, 7.0]  # row 1: times 3, 0, 1, 2
    assert torch.equal(order.unsort(ordered), x)


def _read(exits, num_layers, **kwargs) -> StackPlanner:
    planner = StackPlanner(exits, num_layers=num_layers, **kwargs)
    planner.read()
    return planner


def test_one_read_gives_named_counts_and_the_order():
    planner = StackPlanner(EXITS, num_layers=4)
    assert planner.order is None  # nothing is known before the read
    counts = planner.read()
    assert counts == LayerCounts(most=(4, 3, 2, 0), fewest=(2, 1, 0, 0), total=(10, 5, 3, 0), positions=12)
    assert counts.live == 10 and counts.padded and counts.partly_active()
    assert planner.order.times.tolist() == ORDER


def test_every_layer_is_a_prefix_of_the_ordered_rows():
    planner = _read(EXITS, 4)
    assert planner.layer_plan(4) is Plan.SKIP
    layer1, layer2, layer3 = (planner.layer_plan(layer) for layer in (1, 2, 3))
    # Per row, layer 1 has 4, 4, 2 active positions; layer 2: 3, 1, 1; layer 3: 2, 1, 0.
    assert (layer1.size, layer2.size, layer3.size) == (4, 3, 2)
    assert layer1.keys == layer2.keys == layer3.keys == 4  # the longest row's live positions
    # Rows with fewer active positions than the prefix keep the others through the mask (size, B, 1).
    assert layer2.write_mask[..., 0].t().tolist() == [[True, True, True], [True, False, False], [True, False, False]]
    assert layer3.write_mask[..., 0].t().tolist() == [[True, True], [True, False], [False, False]]
    # Padding (row 2's last two ordered slots) is never a key.
    assert layer2.visible.shape == (3, 1, 1, 4)  # the same keys for every query of a row
    assert layer2.visible[2, 0, 0].tolist() == [True, True, False, False]


def test_full_rows_need_no_mask():
    planner = _read(torch.tensor([[2, 1, 2], [1, 2, 2]]), 2)
    assert planner.layer_plan(2) == Prefix(2, 3)  # two active positions in every row, no padding


def test_causal_masks_follow_time_not_slots():
    order = ExitOrder(EXITS[:2], num_layers=4, causal=True)
    mask = order.visible(keys=4, padded=False)[:, 0]
    # Row 1 ordered times 3, 0, 1, 2: the query at time 0 (slot 1) sees only itself.
    assert mask[1, 1].tolist() == [False, True, False, False]
    assert mask[1, 0].tolist() == [True, True, True, True]


def test_without_a_partly_active_layer_nothing_is_ordered():
    planner = _read(torch.tensor([[2, 2, 0], [2, 2, 2]]), 3)
    assert planner.order is None
    assert [planner.layer_plan(layer) for layer in (1, 2, 3)] == [Plan.EVERY, Plan.EVERY, Plan.SKIP]


def test_a_step_orders_its_rows():
    exits = torch.tensor([[2], [0], [3], [1]])
    planner = StackPlanner(exits, num_layers=3, step=True)
    assert planner.read().padded
    order = planner.order
    assert isinstance(order, RowOrder)
    assert order.rows.tolist() == [2, 0, 3, 1] and order.places.tolist() == [1, 3, 0, 2]
    assert [planner.layer_plan(layer) for layer in (1, 2, 3)] == [StepRows(3), StepRows(2), StepRows(1)]
    where = planner.active_positions(2)
    assert where.row.tolist() == [2, 0] and where.state_row.tolist() == [0, 1]


def test_a_step_without_exits_plans_every_row_unread(monkeypatch):
    planner = StackPlanner(torch.full((4, 1), 3), num_layers=3, every_layer_full=True, step=True)
    reads = _CountReads(monkeypatch)
    assert planner.read() is None and planner.order is None
    assert [planner.layer_plan(layer) for layer in (1, 2, 3)] == [StepRows(4)] * 3
    assert reads.count == 0


def test_a_step_with_no_active_row_plans_none():
    planner = _read(torch.tensor([[1], [1], [0]]), 2, step=True)
    assert planner.order is None  # no layer partly active: the rows keep their order
    assert [planner.layer_plan(layer) for layer in (1, 2)] == [StepRows(2), StepRows(0)]


def test_a_replan_moves_the_states_to_the_new_order():
    exits = torch.tensor([[3], [3], [3]])
    planner = _read(exits, 3, step=True)
    x = torch.arange(3.0).view(1, 3, 1)
    assert planner.order is None
    moved = planner.replan(torch.tensor([[3], [1], [3]]), planner.sort(x))
    assert planner.order.rows.tolist() == [0, 2, 1]
    assert moved[0, :, 0].tolist() == [0.0, 2.0, 1.0] and torch.equal(planner.unsort(moved), x)
    assert planner.layer_plan(2) == StepRows(2)


def test_masked_reference_mask_is_time_major():
    mask = StackPlanner(EXITS, num_layers=4, skips=False).active_mask(2)
    assert mask.shape == (4, 3, 1)
    assert torch.equal(mask[..., 0], (EXITS >= 2).t())


class _CountReads:
    """Counts Tensor.tolist/item calls: the planner's only way to the host."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("tolist", "item"):
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_one_host_read_plans_every_layer(monkeypatch):
    exits = torch.randint(0, 7, (5, 11), generator=torch.Generator().manual_seed(0))
    planner = StackPlanner(exits, num_layers=6)
    reads = _CountReads(monkeypatch)
    planner.read()
    plans = [planner.layer_plan(layer) for layer in range(1, 7)]
    assert reads.count == 1
    assert sum(isinstance(plan, Prefix) and plan.write_mask is not None for plan in plans) >= 3


def test_a_stack_without_early_exits_never_reads(monkeypatch):
    planner = StackPlanner(torch.full((2, 5), 3), num_layers=3, every_layer_full=True)
    reads = _CountReads(monkeypatch)
    assert planner.read() is None
    assert all(planner.layer_plan(layer) is Plan.EVERY for layer in (1, 2, 3))
    assert reads.count == 0


def test_attention_of_a_prefix_equals_fairseq_attention_at_those_positions():
    torch.manual_seed(0)
    attn = MultiheadAttention(8, 2, self_attention=True).eval()
    x = torch.randn(4, 3, 8)  # (T, B, C)
    expected, _ = attn(x, x, x, key_padding_mask=EXITS == 0)
    planner = _read(EXITS, 4)
    plan = planner.layer_plan(2)
    ordered = planner.sort(x)
    keys, values = project_kv(attn, ordered[: plan.keys])
    with torch.no_grad():
        out = attend(attn, ordered[: plan.size], keys, values, plan.visible)
    active = plan.write_mask[..., 0]
    assert torch.allclose(out[active], planner.sort(expected)[: plan.size][active], atol=1e-6)


def test_grouped_attention_reads_each_querys_group():
    """Hypotheses query their sentence's row together: as if each had its own copy of it."""
    torch.manual_seed(0)
    attn = MultiheadAttention(8, 2, encoder_decoder_attention=True).eval()
    source = torch.randn(5, 2, 8)  # two sentences
    keys, values = project_kv(attn, source)
    queries = torch.randn(1, 3, 8)
    group, slot = torch.tensor([1, 0, 1]), torch.tensor([0, 1, 2])  # hypotheses 3, 1 and 5 of beam 3
    with torch.no_grad():
        out = attend_grouped(attn, queries, keys, values, None, (group, slot), per_group=3)
        expected, _ = attn(queries, source[:, group], source[:, group])
    assert torch.allclose(out, expected, atol=1e-6)


def test_grouped_attention_of_every_row_and_position():
    """Teacher-forced rescoring of a beam: 2 sentences x 3 hypotheses x 4 positions, each reading
    its sentence's row, with the sentences' source padding."""
    torch.manual_seed(0)
    attn = MultiheadAttention(8, 2, encoder_decoder_attention=True).eval()
    source = torch.randn(5, 2, 8)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    keys, values = project_kv(attn, source)
    queries = torch.randn(4, 6, 8)
    hypotheses = torch.arange(2).repeat_interleave(3)
    with torch.no_grad():
        out = attend_grouped(attn, queries, keys, values, ~padding[:, None, None, :], None, per_group=3)
        expected, _ = attn(queries, source[:, hypotheses], source[:, hypotheses], key_padding_mask=padding[hypotheses])
    assert torch.allclose(out, expected, atol=1e-6)
