"""The difficulty table (docs/design.md section 2): each statistic, the smoothing and the shift on
hand-computed cases; the checkpoint and option refusals; and a table built through the path the
task takes (a model reading a split teacher-forced) keeps the decoder's invariants: incremental
steps equal the teacher-forced forward, the skip path equals the masked reference."""

import math

import numpy as np
import pytest
import torch
from test_cli import _one_error_line, train

from fairseq_hashee.errors import HashEEError
from fairseq_hashee.tables import difficulty_source
from fairseq_hashee.tables.difficulty import DifficultyStats, difficulty_table, first_adequate_layers, type_scores
from fairseq_hashee.tables.recipe import TableOptions, TableRecipe
from fairseq_hashee.tables.table_file import read_table
from fairseq_hashee.tables.token_stats import TokenStats

from helpers import build_hashee, random_batch, run_cli, set_exit_impl, tiny_dictionary

LAYERS = 4
PAIRS = 300  # of the split a model reads in the tests below


def test_first_correct_layer_by_hand():
    # 3 layers, 4 symbols, 3 positions; argmax per layer: [2, 0, 0], [2, 1, 0], [0, 1, 0].
    argmax = [[2, 0, 0], [2, 1, 0], [0, 1, 0]]
    logits = [torch.nn.functional.one_hot(torch.tensor(row), 4).float() for row in argmax]
    targets = torch.tensor([2, 1, 3])
    # position 0: right at layer 1 (wrong again at 3: the first counts); 1: at 2; 2: never, so L.
    assert first_adequate_layers(logits, targets, "correct").tolist() == [1, 2, 3]


def test_margin_layer_by_hand():
    # Two symbols, target 0: a layer's logits log(p), log(1 - p) make its NLL -log p exactly.
    nll = torch.tensor([[1.0, 2.0, 0.3], [0.7, 1.2, 0.9], [0.6, 0.6, 0.5]])  # layer x position
    logits = [torch.stack([-row, torch.log1p(-torch.exp(-row))], dim=-1) for row in nll]
    targets = torch.zeros(3, dtype=torch.long)
    # within 0.5 nats of the top's: 1.0 <= 1.1 at layer 1; 2.0, 1.2 > 1.1 so layer 3; 0.3 <= 1.0 at 1.
    assert first_adequate_layers(logits, targets, "margin", margin=0.5).tolist() == [1, 3, 1]


def test_counts_and_smoothed_scores_by_hand():
    stats = DifficultyStats.empty(4)
    stats.add(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 3]))
    assert stats.counts.tolist() == [0, 2, 1, 0] and stats.sums.tolist() == [0, 3, 3, 0]
    # global mean 6 / 3 = 2; (sum + 1 * 2) / (count + 1)
    assert np.allclose(type_scores(stats, prior=1.0), [2.0, 5 / 3, 2.5, 2.0])


# Symbols 0..3 are special (</s>, id 2, starts every target 10 times); 4, 5, 6 hashable.
COUNTS = np.array([0, 0, 10, 0, 10, 20, 10])
SCORES = np.array([0.0, 0.0, 0.0, 0.0, 1.2, 2.6, 3.9])
SPECIAL = np.array([True] * 4 + [False] * 3)


@pytest.mark.parametrize(
    "target, layers, achieved",
    [
        # shift 0: 1, 3, 4 -> (40 + 10 + 60 + 40) / 50 = 3.0, met exactly
        (3.0, [1, 3, 4], 3.0),
        # 2.45 lies between (1, 2, 3): 2.4 and (1, 2, 4): 2.6, nearer 2.4; 2.55 nearer 2.6
        (2.45, [1, 2, 3], 2.4),
        (2.55, [1, 2, 4], 2.6),
        # below the lowest table (every hashable type at 1, </s> at 4): that table
        (1.0, [1, 1, 1], 1.6),
        (4.0, [4, 4, 4], 4.0),
    ],
)
def test_shift_meets_the_target_mean_by_hand(target, layers, achieved):
    table, mean = difficulty_table(SCORES, COUNTS, SPECIAL, [1, 2, 3, 4], LAYERS, target)
    assert table.tolist() == [LAYERS] * 4 + layers
    assert math.isclose(mean, achieved)
    assert math.isclose(mean, (COUNTS * table).sum() / COUNTS.sum())


def test_buckets_limit_the_layers():
    # Buckets 2 and 4 only: nearest of them to 1.2 + c, 2.6 + c, 3.9 + c.
    table, mean = difficulty_table(SCORES, COUNTS, SPECIAL, [2, 4], LAYERS, 3.0)
    assert set(table[4:].tolist()) <= {2, 4}
    assert table[4:].tolist() == [2, 2, 4] and math.isclose(mean, (40 + 20 + 40 + 40) / 50)


@pytest.mark.parametrize("target", [0.5, 4.5])
def test_mean_exit_outside_the_layers_is_refused(target):
    with pytest.raises(HashEEError, match=f"--difficulty-mean-exit: {target:g} is outside the decoder's layers 1..4"):
        TableOptions("difficulty", difficulty_mean_exit=target).check("decoder", LAYERS)


def test_option_refusals():
    with pytest.raises(HashEEError, match="difficulty tables are decoder tables"):
        TableOptions("difficulty", difficulty_mean_exit=2, option_prefix="--encoder-").check("encoder", LAYERS)
    with pytest.raises(HashEEError, match="--difficulty-mean-exit: a difficulty table needs its target mean"):
        TableOptions("difficulty").check("decoder", LAYERS)


def _checkpoint(path, criterion="multi_exit_label_smoothed_cross_entropy", layers=LAYERS, vocab=48):
    model = {f"decoder.layers.{i}.fc1.weight": torch.zeros(2, 2) for i in range(layers)}
    model["decoder.embed_tokens.weight"] = torch.zeros(vocab, 2)
    torch.save({"model": model, "cfg": {"criterion": {"_name": criterion}}}, path)
    return str(path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("none", "a difficulty table needs a trained multi-exit checkpoint (--difficulty-from CHECKPOINT"),
        ("criterion", "was trained with --criterion label_smoothed_cross_entropy, whose checkpoints have no trained"),
        ("depth", "has 6 decoder layers, the table is for 4"),
        ("dictionary", "has 40 decoder embeddings, the target dictionary 48 symbols (a checkpoint of another"),
    ],
)
def test_checkpoint_refusals(tmp_path, kind, message):
    path = {
        "none": None,
        "criterion": _checkpoint(tmp_path / "a.pt", criterion="label_smoothed_cross_entropy"),
        "depth": _checkpoint(tmp_path / "b.pt", layers=6),
        "dictionary": _checkpoint(tmp_path / "c.pt", vocab=40),
    }[kind]
    with pytest.raises(HashEEError) as raised:
        difficulty_source.check_checkpoint(path, LAYERS, 48)
    assert message in str(raised.value)
    if kind != "none":
        assert "--difficulty-from" in str(raised.value)
    difficulty_source.check_checkpoint(_checkpoint(tmp_path / "ok.pt"), LAYERS, 48)


def _measured_table(mean_exit, statistic="correct", margin=0.05):
    """A difficulty table built as the task builds one: a model (random weights, 4 layers) reads
    a split teacher-forced, then the recipe turns its statistics into the table."""
    dictionary = tiny_dictionary()
    reader = build_hashee(dictionary, seed=3, layers=LAYERS)
    gen = torch.Generator().manual_seed(0)
    src = [
        torch.randint(4, len(dictionary), (int(n),), generator=gen)
        for n in torch.randint(3, 12, (PAIRS,), generator=gen)
    ]
    tgt = [
        torch.randint(4, len(dictionary), (int(n),), generator=gen)
        for n in torch.randint(2, 9, (PAIRS,), generator=gen)
    ]
    src = [torch.cat([s, s.new_tensor([dictionary.eos()])]) for s in src]
    tgt = [torch.cat([t, t.new_tensor([dictionary.eos()])]) for t in tgt]
    measured = difficulty_source.measure(reader, src, tgt, dictionary, dictionary, statistic, margin)
    assert measured.counts.sum() == sum(len(t) for t in tgt)
    assert measured.counts[dictionary.eos()] == len(tgt)  # every target's first input
    options = TableOptions(
        "difficulty", difficulty_mean_exit=mean_exit, difficulty_statistic=statistic, difficulty_margin=margin
    )
    recipe = TableRecipe(
        "decoder",
        options,
        LAYERS,
        dictionary.symbols,
        dictionary.nspecial,
        TokenStats(measured.counts, difficulty=measured),
        "train",
    )
    return dictionary, recipe.build()


def test_built_table_round_trips_through_its_file(tmp_path):
    dictionary, built = _measured_table(2.5, "margin")
    path = tmp_path / "dec.table"
    built.write(str(path))
    loaded = read_table(str(path), dictionary.symbols, "decoder", LAYERS)
    assert np.array_equal(loaded.table, built.table)
    assert loaded.hash_type == "difficulty" and loaded.options["mean_exit"] == "2.5"
    assert any("first layer whose reference next-token NLL" in line for line in loaded.comments)
    assert abs(float(loaded.options["achieved"]) - 2.5) < 0.3


@pytest.mark.parametrize("seed", [0, 1])
def test_difficulty_table_keeps_the_decoder_invariants(seed):
    dictionary, built = _measured_table(2.2)
    assert len(set(built.table[dictionary.nspecial :].tolist())) >= 2  # the table is no constant
    model = build_hashee(dictionary, seed=seed, layers=LAYERS)
    model.decoder.set_exit_table(torch.from_numpy(built.table))
    gen = torch.Generator().manual_seed(seed)
    src, src_lengths, prev = random_batch(dictionary, gen, bsz=3, src_len=8, tgt_len=7)
    outputs = {}
    with torch.no_grad():
        for impl in ("skip", "masked"):
            set_exit_impl(model, impl)
            outputs[impl] = model(src, src_lengths, prev)[0]
        assert torch.allclose(outputs["skip"], outputs["masked"], atol=1e-5)
        # Incremental steps over full-length rows equal the teacher-forced forward.
        set_exit_impl(model, "skip")
        tokens = torch.randint(dictionary.nspecial, len(dictionary), (3, 7), generator=gen)
        tokens[:, 0] = dictionary.eos()
        encoder_out = model.encoder(src, src_lengths)
        full = model.decoder(tokens, encoder_out=encoder_out)[0]
        state = {}
        for step in range(tokens.size(1)):
            logits = model.decoder(tokens[:, : step + 1], encoder_out=encoder_out, incremental_state=state)[0]
            assert torch.allclose(logits[:, -1], full[:, step], atol=1e-5), step
    exits = model.decoder.exit_table[tokens]
    assert len(set(exits[:, 1:].flatten().tolist())) >= 2  # the steps exit at different layers


@pytest.mark.slow
def test_difficulty_table_through_the_commands(data_bin, tmp_path):
    """fairseq-train builds a difficulty table from a multi-exit run's checkpoint; hashee-table writes
    the same table; a full-depth checkpoint and a bad target are one error line before training."""
    multi_exit = tmp_path / "multi-exit"
    criterion = ["--criterion", "multi_exit_label_smoothed_cross_entropy"]
    train(data_bin, multi_exit, "--max-update", 2, criterion=criterion)
    checkpoint = multi_exit / "checkpoint_best.pt"
    options = ["--decoder-exits", "--decoder-hash-type", "difficulty", "--difficulty-from", checkpoint]
    proc = train(data_bin, tmp_path / "hashee", "--max-update", 1, *options, "--difficulty-mean-exit", 1.5)
    assert "decoder exit table (difficulty):" in proc.stderr + proc.stdout
    trained = torch.load(tmp_path / "hashee" / "checkpoint_last.pt", map_location="cpu", weights_only=False)

    table_path = tmp_path / "dec.table"
    run_cli(
        "fairseq_hashee.cli.table", data_bin, "--stack", "decoder", "--num-layers", 2, "--hash-type", "difficulty",
        "--difficulty-from", checkpoint, "--difficulty-mean-exit", 1.5, "-o", table_path, "--cpu",
    )  # fmt: skip
    text = table_path.read_text()
    assert "hash_type: difficulty" in text and "# difficulty of a target position" in text
    symbols = [line.split("\t")[0] for line in text.split("\n\n", 1)[1].splitlines()]
    assert np.array_equal(
        read_table(str(table_path), symbols, "decoder", 2).table, trained["model"]["decoder.exit_table"].numpy()
    )

    full = tmp_path / "full"
    train(data_bin, full, "--max-update", 1)
    refusals = [
        ([full / "checkpoint_best.pt", 1.5], "whose checkpoints have no trained exit heads"),
        ([checkpoint, 3], "--difficulty-mean-exit: 3 is outside the decoder's layers 1..2"),
        ([None, 1.5], "needs a trained multi-exit checkpoint"),
    ]
    for (source, mean_exit), message in refusals:
        extra = (["--difficulty-from", source] if source else []) + ["--difficulty-mean-exit", mean_exit]
        save = tmp_path / "refused"
        proc = train(
            data_bin,
            save,
            "--max-update",
            1,
            "--decoder-exits",
            "--decoder-hash-type",
            "difficulty",
            *extra,
            check=False,
        )
        assert message in _one_error_line(proc)
        assert not list(save.glob("*.pt"))
