"""The benchmark runs end to end on a tiny model and reports what it promises (not timed)."""

import json

import pytest

from fairseq_hashee.benchmark import report, settings
from fairseq_hashee.cli import benchmark
from fairseq_hashee.errors import HashEEError

TINY = (
    "encoder_layers=3,decoder_layers=3,encoder_embed_dim=32,decoder_embed_dim=32,encoder_ffn_embed_dim=64,"
    "decoder_ffn_embed_dim=64,encoder_attention_heads=4,decoder_attention_heads=4"
)


def test_benchmark_writes_rows_targets_and_sweep(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(
        [
            "--model-args",
            TINY,
            "--vocab-size",
            "300",
            "--src-len",
            "24",
            "--batch-size",
            "1,2",
            "--gen-src-len",
            "16",
            "--gen-batch-size",
            "1,2",
            "--tgt-len",
            "5",
            "--repeats",
            "1",
            "--gen-repeats",
            "1",
            "--sweep",
            "1,2,3;3",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["complete"] is True  # saved after every setting too, with False until the targets are in
    configs = [r["config"] for r in result["rows"]]
    # two encoder settings; generation at two batch sizes, forced and free
    assert configs.count(settings.STOCK) == 6 and configs.count(settings.ALL_EXITS) == 6
    generated = [(r["batch"], r["decoding"]) for r in result["rows"] if r["config"] == settings.STOCK][2:]
    assert generated == [(1, "forced"), (1, "free"), (2, "forced"), (2, "free")]
    # the other methods are compared at the first batch size, forced; free decoding runs what depends on it
    for row in result["rows"]:
        if row["kind"] == "generate" and row["config"] in settings.OTHER_METHODS:
            assert (row["batch"], row["decoding"]) == (1, "forced")
        if row["decoding"] == "free":
            assert row["config"] in settings.FREE_DECODING_CONFIGS
    assert {r["config"] for r in result["rows"] if r["kind"] == "generate"} == set(settings.CONFIGS)
    for row in result["rows"]:
        assert row["wall_s"] > 0 and row["tokens_per_s"] > 0 and row["operators"] > 0
        # efficiency is against the same kernels with no exits; the end-to-end figure is apart
        assert abs(row["efficiency"] - row["exit_wall_speedup"] / row["flops_speedup"]) < 1e-9
        assert row["wall_speedup"] > 0
        if row["config"] == settings.NO_EXITS:
            assert row["exit_wall_speedup"] == 1.0
        if row["config"] in (settings.STOCK, settings.NO_EXITS):
            assert row["flops_speedup"] == 1.0
        elif row["config"] in settings.RULE_CONFIGS:
            # a rule's decisions are counted: on random weights one that seldom fires costs more than it saves
            assert row["flops_speedup"] != 1.0
        else:
            assert row["flops_speedup"] > 1.0
    # the overhead target reads the rows' own (paired) speed-up
    overheads = [c["value"] for c in result["targets"] if c["target"].startswith("no-exit overhead")]
    no_exit_rows = [r for r in result["rows"] if r["config"] == settings.NO_EXITS]
    assert overheads == [1.0 / r["wall_speedup"] for r in no_exit_rows]
    names = " ".join(c["target"] for c in result["targets"])
    for target in (
        "no-exit overhead, encoder",
        "no-exit overhead, generate",
        "encoder efficiency",
        "generation efficiency",
        "end-to-end speed-up over stock",
        "peak memory",
        "operators vs stock, encoder",
        "operators vs stock, generate",
    ):
        assert target in names
    # the sweep's single-bucket setting (every token at the last layer) saves nothing
    assert [s["buckets"] for s in result["sweep"]] == ["1,2,3", "3"]
    assert result["sweep"][1]["flops_speedup"] == 1.0 < result["sweep"][0]["flops_speedup"]
    # each target is judged by its own value and bound, and printed as judged
    for check in result["targets"]:
        op, bound = check["want"].split()[:2]
        assert check["met"] == (check["value"] <= float(bound) if op == "<=" else check["value"] >= float(bound))
    printed = capsys.readouterr().out
    assert "HashEE, enc+dec exits" in printed
    for check in result["targets"]:
        verdict = "MET " if check["met"] else "MISS"
        assert f"{verdict}  {check['target']}: {check['value']:.3f} (want {check['want']})" in printed


def test_targets_are_met_or_missed_by_their_bounds():
    def row(kind, config, batch=1, wall=1.0, eff=1.0, memory=10.0):
        return {
            "kind": kind,
            "decoding": "forced" if kind == "generate" else None,
            "config": config,
            "src_len": 8,
            "batch": batch,
            "wall_speedup": wall,
            "efficiency": eff,
            "peak_memory_mib": memory,
        }

    rows = [
        row("encoder", settings.STOCK),
        row("encoder", settings.NO_EXITS, wall=0.95),
        row("encoder", settings.ENC_EXITS, eff=0.85),
        row("encoder", settings.ALL_EXITS, memory=11.5),
        row("generate", settings.STOCK),
        row("generate", settings.NO_EXITS, wall=1.01),
        row("generate", settings.ALL_EXITS, wall=2.2, eff=0.91, memory=10.5),
        row("generate", settings.STOCK, batch=8),
        row("generate", settings.ALL_EXITS, batch=8, wall=1.5, eff=0.85),
        row("generate", settings.DAT_HALTING, eff=0.79),
    ]
    verdicts = {c["target"]: (round(c["value"], 3), c["met"]) for c in report.check_targets(rows)}
    assert verdicts == {
        "no-exit overhead, encoder (src 8, batch 1)": (round(1 / 0.95, 3), False),
        "no-exit overhead, generate (src 8, batch 1, forced)": (round(1 / 1.01, 3), True),
        "peak memory, encoder (src 8, batch 1)": (1.5, False),
        "peak memory, generate (src 8, batch 1, forced)": (0.5, True),
        "peak memory, generate (src 8, batch 8, forced)": (0.0, True),
        "encoder efficiency (src 8, batch 1)": (0.85, False),
        "generation efficiency, enc+dec exits (src 8, batch 1, forced)": (0.91, True),
        "generation efficiency, enc+dec exits (src 8, batch 8, forced)": (0.85, False),
        f"generation efficiency, {settings.DAT_HALTING} (src 8, batch 1, forced)": (0.79, False),
        "end-to-end speed-up over stock, enc+dec exits (src 8, batch 1, forced)": (2.2, True),
        "end-to-end speed-up over stock, enc+dec exits (src 8, batch 8, forced)": (1.5, False),
    }


def test_same_outputs_for_stock_and_hashee_without_exits():
    """The wall-clock comparison is between models computing the same thing."""
    import argparse

    import torch

    args = argparse.Namespace(arch="hashee_bart_base", model_args=TINY, tgt_len=4, seed=1, checkpoint=None)
    dictionary = settings.synthetic_dictionary(200)
    models = settings.build_models(args, dictionary, 32)
    hashee, stock = models.hashee, models.stock
    src = torch.randint(4, 200, (2, 12))
    with torch.no_grad():
        ours = hashee.encoder(src, torch.tensor([12, 12]))["encoder_out"][0]
        theirs = stock.encoder(src, torch.tensor([12, 12]))["encoder_out"][0]
    assert torch.allclose(ours, theirs, atol=1e-5)
    # ... and the same weights in memory, not copies that may lie better or worse
    ours = dict(hashee.named_parameters(remove_duplicate=False))
    theirs = dict(stock.named_parameters(remove_duplicate=False))
    assert theirs and all(param is ours[name] for name, param in theirs.items())


def test_plot_draws_or_says_what_it_needs(tmp_path):
    points = [
        {"flops_speedup": 2.8, "exit_wall_speedup": 2.6, "label": "enc 512x1"},
        {"flops_speedup": 1.5, "exit_wall_speedup": 1.4, "label": "5,6"},
    ]
    path = tmp_path / "sweep.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(HashEEError, match=r"--plot needs matplotlib"):
            report.plot(points, str(path))
        assert not path.exists()
        return
    report.plot(points, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.png"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--configs", "stock,bogus"], "error: --configs: unknown bogus; expected some of stock, no-exits"),
        (["--decoding", "greedy"], "error: --decoding: expected forced, free or both, got 'greedy'"),
        (["--gen-batch-size", "1,x"], "error: --gen-batch-size: expected comma-separated integers, got '1,x'"),
        (
            # saturation decides from layer 2 and no rule at the top: nothing to set its threshold from
            ["--model-args", TINY.replace("decoder_layers=3", "decoder_layers=2"), "--vocab-size", "100"]
            + ["--configs", "calm-saturation", "--src-len", "8", "--batch-size", "1", "--gen-src-len", "8"],
            "error: --configs: calm-saturation: the saturation confidence rule decides at no layer below the top "
            "of this 2-layer decoder",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line(argv, message):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert str(exit_info.value).startswith(message) and "\n" not in str(exit_info.value)


def test_configs_choose_what_runs_and_no_exits_always_does():
    assert settings.chosen_configs("") == list(settings.CONFIGS)
    assert settings.chosen_configs("all-exits, stock") == [settings.STOCK, settings.NO_EXITS, settings.ALL_EXITS]
