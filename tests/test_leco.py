"""LECO: the agreement rule standing in for COBEE, the exit-head search and its chosen heads in checkpoints.

The rule's four correctness tests (docs/design.md section 7) are in
test_exit_rules.py; these check what the rule decides on hand-computed
sequences of per-layer predictions, that the search prefers the head that
fits, and that the chosen architectures are what a checkpoint restores.
"""

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairseq_hashee.criterions.leco_head_search import held_out
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.exits.heads import HEAD_ARCHS, ExitHeads
from fairseq_hashee.exits.leco import AgreementRule
from fairseq_hashee.exits.rules import PositionMemory

from helpers import build_hashee, random_batch, tiny_dictionary

VOCAB = 5


def _logits(prediction: int, confidence: float) -> torch.Tensor:
    """Logits whose softmax puts ``confidence`` on ``prediction`` and spreads the rest evenly."""
    probs = torch.full((VOCAB,), (1.0 - confidence) / (VOCAB - 1))
    probs[prediction] = confidence
    return probs.log()


class _LogitsAreStates:
    """A decoder whose layer-i 'state' is already layer i's logits."""

    def __init__(self):
        self.exit_heads = types.SimpleNamespace(logits=lambda decoder, layer, h: h)


def _run(rule, sequences, num_layers):
    """Exit layers of positions whose per-layer (prediction, confidence) are ``sequences``
    (N lists of L - 1 pairs), deciding layer by layer as run_layers does."""
    n = len(sequences)
    exits = torch.full((1, n), num_layers)
    memory = PositionMemory(exits.shape, "cpu")
    decoder = _LogitsAreStates()
    for layer in range(1, num_layers):
        rows, times = torch.nonzero(exits >= layer, as_tuple=True)
        if rows.numel() == 0:
            break
        h = torch.stack([_logits(*sequences[t][layer - 1]) for t in times.tolist()])
        decided = rule.decide(decoder, layer, h, h, exits[rows, times], memory=memory.at(rows, times))
        exits = exits.index_put((rows, times), decided)
    return exits[0].tolist()


SEQUENCES = [
    [(1, 0.9), (1, 0.9), (1, 0.9), (1, 0.9), (1, 0.9)],  # agrees from layer 2 on
    [(1, 0.9), (2, 0.9), (2, 0.9), (2, 0.9), (2, 0.9)],  # changes at 2, agrees from 3
    [(1, 0.9), (2, 0.9), (1, 0.9), (2, 0.9), (1, 0.9)],  # never agrees twice in a row
    [(3, 0.3), (3, 0.4), (3, 0.5), (3, 0.95), (3, 0.95)],  # agrees all along, confident from layer 4
    [(4, 0.9), (4, 0.6), (0, 0.9), (0, 0.9), (0, 0.9)],  # agrees at 2 (not confident), then changes
]


@pytest.mark.parametrize(
    "patience, threshold, expected",
    [
        (1, 0.0, [2, 3, 6, 2, 2]),
        (2, 0.0, [3, 4, 6, 3, 5]),
        (3, 0.0, [4, 5, 6, 4, 6]),
        (1, 0.8, [2, 3, 6, 4, 4]),
        (2, 0.8, [3, 4, 6, 4, 5]),
        (0, 0.8, [1, 1, 1, 4, 1]),  # no comparison: the first confident layer
        (0, 0.0, [1, 1, 1, 1, 1]),
    ],
)
def test_agreement_rule_on_hand_computed_predictions(patience, threshold, expected):
    rule = AgreementRule(num_layers=6, patience=patience)
    rule.set_threshold(threshold)
    assert _run(rule, SEQUENCES, 6) == expected


def test_agreement_rule_min_layer_keeps_the_history():
    """Below --exit-min-layer the rule still compares, so a run that began lower counts."""
    rule = AgreementRule(num_layers=6, patience=2)
    rule.min_layer = 4
    assert _run(rule, SEQUENCES, 6) == [4, 4, 6, 4, 5]


@pytest.mark.parametrize("patience", [-1, 5, 1.5])
def test_bad_patience(patience):
    with pytest.raises(HashEEError, match=r"--exit-patience: expected an integer in 0\.\.4"):
        AgreementRule(num_layers=6).set_patience(patience)


def test_head_search_prefers_the_head_that_fits():
    """Targets a layer's own vocabulary projection can fit but the shared projection (frozen here)
    cannot reach after any d -> d transform: the search's weights go to ``linear``."""
    torch.manual_seed(0)
    dim, vocab, n = 8, 32, 512
    projection = nn.Linear(dim, vocab, bias=False).requires_grad_(False)
    decoder = types.SimpleNamespace(output_projection=projection, layer_norm=None, project_out_dim=None)
    heads = ExitHeads(2, dim, projection, "search")
    heads.alpha.requires_grad_(True)  # one optimizer for both here; the search criterion steps alpha itself
    with torch.no_grad():
        heads.candidates[0]["linear"].weight.normal_(0.0, 0.3)  # not a copy: it has to learn
    truth = torch.randn(vocab, dim)
    states = torch.randn(n, dim)
    targets = (states @ truth.t()).argmax(dim=-1)
    train, held = slice(0, n // 2), slice(n // 2, n)
    weights = [p for name, p in heads.named_parameters() if name != "alpha"]
    optimizer = torch.optim.Adam([{"params": weights, "lr": 3e-2}, {"params": [heads.alpha], "lr": 3e-2}])
    for _ in range(150):
        fixed_alpha, fixed_net = heads.search_logits(decoder, 1, states)
        loss = F.cross_entropy(fixed_alpha[train], targets[train]) + F.cross_entropy(fixed_net[held], targets[held])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mix = heads.mixture_weights(1).detach()
    assert HEAD_ARCHS[int(mix.argmax())] == "linear", dict(zip(HEAD_ARCHS, mix.tolist()))
    assert float(mix.max()) > 0.7, dict(zip(HEAD_ARCHS, mix.tolist()))


def _search_model(alpha_choice, seed=0):
    model = build_hashee(tiny_dictionary(), seed=seed, layers=4, exit_heads="search")
    with torch.no_grad():
        model.decoder.exit_heads.alpha.zero_()
        for layer, arch in enumerate(alpha_choice):
            model.decoder.exit_heads.alpha[layer, HEAD_ARCHS.index(arch)] = 2.0
        for param in model.decoder.exit_heads.candidates.parameters():  # every head its own
            param.add_(torch.randn(param.shape) * 0.1)
    return model


def _layer_logits(model, heads, arch_of_layer, src, src_lengths, prev):
    with torch.no_grad():
        _, extra = model(src, src_lengths, prev)
        states = extra["inner_states"]
        decoder = model.decoder
        out = []
        for layer in range(1, decoder.num_layers):
            h = states[layer].transpose(0, 1)
            if arch_of_layer is None:
                out.append(heads.logits(decoder, layer, h))
            else:  # the search model's candidate of that architecture
                features = heads.features(decoder, h)
                out.append(heads.candidate_logits(decoder, layer, features)[HEAD_ARCHS.index(arch_of_layer[layer - 1])])
        return out


def test_chosen_heads_survive_checkpoints(tmp_path):
    choice = ["mlp", "pooler", "linear"]
    search = _search_model(choice)
    batch = random_batch(search.decoder.dictionary, torch.Generator().manual_seed(1))
    # restored from the search: argmax alpha, the other candidates and alpha dropped
    searched = build_hashee(tiny_dictionary(), seed=5, layers=4, exit_heads="searched")
    searched.load_state_dict(search.state_dict())
    assert searched.decoder.exit_heads.chosen_archs() == choice
    keys = {k for k in searched.state_dict() if ".exit_heads." in k}
    assert keys == {
        "decoder.exit_heads.choice",
        "decoder.exit_heads.candidates.0.mlp.fc1.weight",
        "decoder.exit_heads.candidates.0.mlp.fc1.bias",
        "decoder.exit_heads.candidates.0.mlp.fc2.weight",
        "decoder.exit_heads.candidates.0.mlp.fc2.bias",
        "decoder.exit_heads.candidates.1.pooler.dense.weight",
        "decoder.exit_heads.candidates.1.pooler.dense.bias",
        "decoder.exit_heads.candidates.2.linear.weight",
    }
    expected = _layer_logits(search, search.decoder.exit_heads, choice, *batch)
    got = _layer_logits(searched, searched.decoder.exit_heads, None, *batch)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))

    # saved and loaded again: a fresh model builds every candidate, the checkpoint's choice prunes them
    path = tmp_path / "searched.pt"
    torch.save(searched.state_dict(), path)
    again = build_hashee(tiny_dictionary(), seed=6, layers=4, exit_heads="searched")
    again.load_state_dict(torch.load(path))
    assert again.decoder.exit_heads.chosen_archs() == choice
    got = _layer_logits(again, again.decoder.exit_heads, None, *batch)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    with torch.no_grad():
        assert torch.equal(again(*batch)[0], searched(*batch)[0])


def test_checkpoints_whose_heads_do_not_fit():
    search = _search_model(["mlp", "pooler", "linear"])
    searched = build_hashee(tiny_dictionary(), layers=4, exit_heads="searched")
    searched.load_state_dict(search.state_dict())
    state = searched.state_dict()

    # the choice says shared at layer 1, the parameters are an MLP's
    wrong = dict(state, **{"decoder.exit_heads.choice": torch.tensor([0, 3, 1])})
    with pytest.raises(HashEEError, match="does not fit"):
        build_hashee(tiny_dictionary(), layers=4, exit_heads="searched").load_state_dict(wrong)
    # a choice for another depth
    wrong = dict(state, **{"decoder.exit_heads.choice": torch.tensor([2, 3])})
    with pytest.raises(HashEEError, match=r"choice \[2, 3\] does not fit a decoder of 4 layers"):
        build_hashee(tiny_dictionary(), layers=4, exit_heads="searched").load_state_dict(wrong)
    # no search behind it
    plain = build_hashee(tiny_dictionary(), layers=4).state_dict()
    with pytest.raises(HashEEError, match="--exit-heads searched: the checkpoint has neither chosen exit heads"):
        build_hashee(tiny_dictionary(), layers=4, exit_heads="searched").load_state_dict(plain)
    # a model without searched heads ignores them
    shared = build_hashee(tiny_dictionary(), layers=4)
    shared.load_state_dict(state)
    with pytest.raises(HashEEError, match="--exit-heads: expected one of"):
        ExitHeads(4, 16, nn.Linear(16, 8), "searching")


def _criterion(name, dictionary, **options):
    from fairseq_hashee.criterions.leco_head_search import LecoHeadSearchCriterion
    from fairseq_hashee.criterions.multi_exit import MultiExitLabelSmoothedCrossEntropyCriterion

    task = types.SimpleNamespace(target_dictionary=dictionary, source_dictionary=dictionary)
    if name == "leco_head_search":
        return LecoHeadSearchCriterion(task, False, 0.1, **options)
    return MultiExitLabelSmoothedCrossEntropyCriterion(task, False, 0.1)


def _sample(dictionary, seed=0):
    src, src_lengths, prev = random_batch(dictionary, torch.Generator().manual_seed(seed), bsz=4)
    target = torch.roll(prev, -1, dims=1)
    target[prev.eq(dictionary.pad())] = dictionary.pad()
    net_input = {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev}
    # held out at the default share (ids whose last three digits are below 500): rows 0 and 2
    ids = torch.tensor([0, 700, 1250, 999])
    return {"id": ids, "net_input": net_input, "target": target, "ntokens": int(target.ne(dictionary.pad()).sum())}


def test_held_out_examples_are_chosen_by_id():
    """Not the last rows of a batch (fairseq sorts batches by length): a fixed share of the ids."""
    ids = torch.tensor([0, 499, 500, 999, 1000, 1250, 1600, 2300])
    assert held_out(ids, 0.5).tolist() == [True, True, False, False, True, True, False, True]
    assert held_out(ids, 0.25).tolist() == [True, False, False, False, True, False, False, False]
    assert torch.equal(held_out(ids.flip(0), 0.5), held_out(ids, 0.5).flip(0))  # whatever the rows' order


def _search_step(sample, seed=0):
    """One training step of the search (a fresh model and criterion): the network's gradients,
    alpha's gradient (the criterion's) and alpha after its step."""
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, seed=seed, layers=3, exit_heads="search").train()
    criterion = _criterion("leco_head_search", dictionary)
    loss, _, log = criterion(model, sample)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads, criterion._alpha.grad.clone(), model.decoder.exit_heads.alpha.detach().clone(), log


def test_search_step_trains_alpha_on_held_out_examples_only():
    """First-order bilevel: alpha learns from the held-out examples, the network from the others."""
    dictionary = tiny_dictionary()
    sample = _sample(dictionary)
    grads, alpha_grad, alpha, log = _search_step(sample)
    assert {f"alpha{i}_{arch}" for i in (1, 2) for arch in HEAD_ARCHS} <= set(log) and "arch_loss" in log
    assert float(alpha_grad.abs().min()) > 0

    def retargeted(rows):
        changed = dict(sample, target=sample["target"].clone())
        part = changed["target"][rows]
        part[part.ne(dictionary.pad())] = dictionary.nspecial + 1
        changed["target"][rows] = part
        return changed

    other_held = _search_step(retargeted([0, 2]))  # the held-out rows' targets: only alpha's gradient moves
    assert not torch.equal(other_held[1], alpha_grad)
    assert set(other_held[0]) == set(grads) and all(torch.equal(other_held[0][n], grads[n]) for n in grads)
    other_train = _search_step(retargeted([1, 3]))  # the training rows': alpha's gradient stays
    assert torch.equal(other_train[1], alpha_grad)


def test_alpha_has_an_optimizer_of_its_own():
    """fairseq's optimizer (and --clip-norm with it) never sees alpha: it takes no gradient from the
    returned loss. Its own Adam's first step from alpha = 0 is lr * g / (|g| + 1e-8) (DARTS's weight
    decay adds nothing at 0): every weight moves by about the learning rate against its gradient."""
    grads, alpha_grad, alpha, _ = _search_step(_sample(tiny_dictionary()))
    assert "decoder.exit_heads.alpha" not in grads
    assert torch.allclose(alpha, -3e-4 * alpha_grad / (alpha_grad.abs() + 1e-8), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "heads, criterion, message",
    [
        ("shared", "leco_head_search", "--criterion leco_head_search searches the exit heads' architectures: "
         "the model needs --exit-heads search (it has --exit-heads shared)"),
        ("search", "multi_exit", "a model with --exit-heads search trains with --criterion leco_head_search"),
    ],
)  # fmt: skip
def test_criterion_and_heads_must_match(heads, criterion, message):
    dictionary = tiny_dictionary()
    model = build_hashee(dictionary, layers=3, exit_heads=heads).train()
    with pytest.raises(HashEEError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _criterion(criterion, dictionary)(model, _sample(dictionary))
    with pytest.raises(HashEEError, match=r"--head-search-holdout: expected a share in \(0, 1\), got 1.0"):
        _criterion("leco_head_search", dictionary, head_search_holdout=1.0)
    with pytest.raises(HashEEError, match=r"--head-search-alpha-lr: must be > 0, got 0"):
        _criterion("leco_head_search", dictionary, head_search_alpha_lr=0)
