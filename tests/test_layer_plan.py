"""Layer plans and query packing against hand-computed indices (docs/design.md section 3)."""

import pytest
import torch
from fairseq.modules import MultiheadAttention

from fairseq_hashee.modules.active_attention import attend_active, pack, project_kv, unpack
from fairseq_hashee.modules.layer_plan import ActivePositions, Plan, StackPlanner

# Three rows of four positions, batch-major; 0 marks padding (row 2 is left-padded).
EXITS = torch.tensor([[3, 1, 2, 3], [1, 1, 1, 3], [0, 0, 2, 1]])


def test_plans_of_every_layer_follow_the_exits():
    planner = StackPlanner(EXITS, num_layers=4)
    assert planner(1) is Plan.EVERY  # every live position runs layer 1
    assert planner(4) is Plan.SKIP

    layer2 = planner(2)
    assert isinstance(layer2, ActivePositions)
    # Row-major: (0,0) (0,2) (0,3) (1,3) (2,2); flat index into (T*B) is t * B + b.
    assert layer2.time.tolist() == [0, 2, 3, 3, 2]
    assert layer2.flat.tolist() == [0 * 3 + 0, 2 * 3 + 0, 3 * 3 + 0, 3 * 3 + 1, 2 * 3 + 2]
    assert layer2.rows.tolist() == [0, 1, 2] and layer2.all_rows
    assert layer2.rank.tolist() == [0, 0, 0, 1, 2]
    assert layer2.slot.tolist() == [0, 1, 2, 0, 0]
    assert layer2.n_slots == 3 and layer2.batch_size == 3

    layer3 = planner(3)
    # Only rows 0 and 1 keep a position; row 1's compact rank is 1, row 2 has none.
    assert layer3.time.tolist() == [0, 3, 3]
    assert layer3.rows.tolist() == [0, 1] and not layer3.all_rows
    assert layer3.rank.tolist() == [0, 0, 1]
    assert layer3.slot.tolist() == [0, 1, 0]
    assert layer3.n_slots == 2


def test_masked_reference_mask_is_time_major():
    mask = StackPlanner(EXITS, num_layers=4).active_mask(2)
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
    plans = [planner(layer) for layer in range(1, 7)]
    assert reads.count == 1
    assert sum(isinstance(plan, ActivePositions) for plan in plans) >= 3


def test_a_stack_without_early_exits_never_reads(monkeypatch):
    planner = StackPlanner(torch.full((2, 5), 3), num_layers=3, every_layer_full=True)
    reads = _CountReads(monkeypatch)
    assert all(planner(layer) is Plan.EVERY for layer in (1, 2, 3))
    assert reads.count == 0


@pytest.mark.parametrize("layer", [2, 3])
def test_pack_places_each_position_at_its_rank_and_slot(layer):
    plan = StackPlanner(EXITS, num_layers=4)(layer)
    values = torch.arange(plan.flat.numel(), dtype=torch.float32) + 1.0
    packed = pack(values, plan, fill=-1.0)
    assert packed.shape == (plan.rows.numel(), plan.n_slots)
    for i in range(plan.flat.numel()):
        assert packed[plan.rank[i], plan.slot[i]] == values[i]
    assert int((packed == -1.0).sum()) == packed.numel() - values.numel()  # unused slots hold the fill
    assert torch.equal(unpack(packed, plan), values)


def test_pack_of_full_rows_is_a_reshape():
    plan = StackPlanner(torch.tensor([[2, 2, 1], [2, 2, 1]]), num_layers=2)(2)
    values = torch.randn(4, 3)
    assert torch.equal(pack(values, plan, fill=0.0), values.view(2, 2, 3))
    assert torch.equal(unpack(values.view(2, 2, 3), plan), values)


def test_attention_of_active_queries_equals_fairseq_attention_at_those_positions():
    torch.manual_seed(0)
    attn = MultiheadAttention(8, 2, self_attention=True).eval()
    x = torch.randn(4, 3, 8)  # (T, B, C)
    padding = EXITS == 0
    expected, _ = attn(x, x, x, key_padding_mask=padding)
    plan = StackPlanner(EXITS, num_layers=4)(3)
    rows = plan.rows
    keys, values = project_kv(attn, x.index_select(1, rows))
    queries = x.reshape(-1, 8).index_select(0, plan.flat)
    with torch.no_grad():
        out = attend_active(attn, queries, keys, values, plan, padding.index_select(0, rows))
    assert torch.allclose(out, expected.reshape(-1, 8).index_select(0, plan.flat), atol=1e-6)
