"""Confidence exits (CALM) through fairseq-train / fairseq-generate, as a user runs them."""

import json
import re

import pytest
from test_cli import LAYERS, _one_error_line, generate, train

from fairseq_hashee.modules import flops

pytestmark = pytest.mark.slow

MULTI_EXIT = ["--criterion", "multi_exit_label_smoothed_cross_entropy", "--label-smoothing", 0.1]


def _hypotheses(proc):
    return [line.split("\t")[2] for line in proc.stdout.splitlines() if line.startswith("H-")]


def _decoder_speedup(proc):
    report = flops.parse_report(proc.stderr)
    assert report, proc.stderr[-2000:]
    return report["dec_speedup"], report["dec_mean_exit"]


RESET = ["--reset-optimizer", "--reset-dataloader", "--reset-meters"]


@pytest.fixture(scope="module")
def calm(data_bin, tmp_path_factory):
    """A tiny model trained multi-exit with a softmax-response rule, then its classifier variant."""
    root = tmp_path_factory.mktemp("calm")
    rule = ["--decoder-exit-rule", "confidence", "--exit-confidence", "classifier"]
    proc = train(data_bin, root / "backbone", *rule, "--max-update", 30, criterion=MULTI_EXIT)
    classifier = train(
        data_bin, root / "classifier", *rule, "--restore-file", root / "backbone" / "checkpoint_last.pt",
        *RESET, "--max-update", 10,
        criterion=["--criterion", "calm_exit_classifier"],
    )  # fmt: skip
    return root, proc, classifier


def test_multi_exit_training_logs_every_layer(calm):
    _, proc, _ = calm
    logged = [json.loads(line[line.index("{") :]) for line in (proc.stdout + proc.stderr).splitlines()
              if "train_inner" in line and "{" in line]  # fmt: skip
    assert logged
    for record in logged:
        layers = [float(record[f"loss_layer{i}"]) for i in range(1, LAYERS + 1)]
        # the loss is the layer-weighted mean of the layers' losses (w_i = i)
        expected = sum(i * loss for i, loss in enumerate(layers, start=1)) / sum(range(1, LAYERS + 1))
        assert abs(float(record["loss"]) - expected) < 0.01


def test_classifier_trains_with_the_backbone_frozen(calm):
    import torch

    import fairseq_hashee  # noqa: F401  (lets torch.load read fairseq checkpoints)

    root, _, proc = calm
    before = torch.load(root / "backbone" / "checkpoint_last.pt", map_location="cpu")["model"]
    after = torch.load(root / "classifier" / "checkpoint_last.pt", map_location="cpu")["model"]
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == ["decoder.exit_rule.meta_classifier.bias", "decoder.exit_rule.meta_classifier.weight"]
    assert '"consistent"' in proc.stdout + proc.stderr


def test_threshold_is_set_when_generating(calm, data_bin):
    root, _, _ = calm
    checkpoint = root / "classifier" / "checkpoint_last.pt"
    never = generate(data_bin, checkpoint, "--exit-threshold", 1.0)
    plain = generate(data_bin, checkpoint, "--model-overrides", "{'decoder_exit_rule': 'none'}")
    assert _hypotheses(never) == _hypotheses(plain) and _hypotheses(plain)
    assert _decoder_speedup(never) == (1.0, float(LAYERS))
    eager = generate(data_bin, checkpoint, "--exit-threshold", 0.0)
    speedup, mean_exit = _decoder_speedup(eager)
    assert mean_exit == 1.0 and speedup > 1.0  # every position exits at the first layer
    # CALM's decaying threshold, N from --max-len-b (its formula and replay: test_exit_rules.py)
    decaying = generate(data_bin, checkpoint, "--exit-threshold", 0.5, "--exit-threshold-decay", 4)
    assert _hypotheses(decaying) and 1.0 <= _decoder_speedup(decaying)[1] <= float(LAYERS)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--exit-threshold", 1.5], "--exit-threshold: 1.5 is outside [0.0, 1.0], the range of the classifier"),
        (["--exit-min-layer", 9], "--exit-min-layer: 9 is outside the decoder's layers 1..2"),
        (["--model-overrides", "{'exit_confidence': 'saturation'}", "--exit-threshold", -2],
         "--exit-threshold: -2.0 is outside [-1.0, 1.0], the range of the saturation confidence"),
        (["--exit-threshold-decay", 0], "--exit-threshold-decay: expected a temperature > 0, got 0.0"),
        (["--exit-threshold-decay-length", 10], "--exit-threshold-decay-length: it is N of --exit-threshold-decay"),
        (["--exit-threshold-decay", 4, "--max-len-a", 1], "--exit-threshold-decay: the maximum length N varies"),
    ],
)  # fmt: skip
def test_bad_generation_options(calm, data_bin, options, message):
    root, _, _ = calm
    proc = generate(data_bin, root / "classifier" / "checkpoint_last.pt", *options, check=False)
    assert message in _one_error_line(proc)
    assert not _hypotheses(proc)


def test_static_truncation_from_a_deeper_checkpoint(calm, data_bin, tmp_path):
    root, _, _ = calm
    deep = root / "backbone" / "checkpoint_last.pt"
    reset = [*RESET, "--reset-lr-scheduler"]
    shallow = ["--encoder-layers", 1, "--decoder-layers", 1, "--restore-file", deep, *reset]
    proc = train(data_bin, tmp_path / "cut", *shallow, "--keep-decoder-layers", "spread", "--max-update", 2)
    log = proc.stdout + proc.stderr
    assert "encoder: keeping layers 1 of the checkpoint's 2" in log
    assert "decoder: keeping layers 2 of the checkpoint's 2" in log
    speedup = re.search(r"speed-up \(FLOPs\): encoder (\S+)x, decoder (\S+)x",
                        generate(data_bin, tmp_path / "cut" / "checkpoint_last.pt").stderr)  # fmt: skip
    assert float(speedup.group(1)) == 2.0 and 1.0 < float(speedup.group(2)) < 2.0

    # a model without a rule takes no threshold
    line = _one_error_line(
        generate(data_bin, tmp_path / "cut" / "checkpoint_last.pt", "--exit-threshold", 0.5, check=False)
    )
    assert "--exit-threshold: the model has no dynamic exit rule" in line

    line = _one_error_line(train(data_bin, tmp_path / "bad", *shallow, "--keep-encoder-layers", "3", check=False))
    assert "--keep-encoder-layers: layer(s) [3] outside the checkpoint's layers 1..2" in line
    assert not (tmp_path / "bad" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize(
    "rule, criterion",
    [
        (["--decoder-exit-rule", "confidence", "--exit-confidence", "classifier"],
         ["--criterion", "calm_exit_classifier"]),
        (["--decoder-exit-rule", "dat-halting"], ["--criterion", "dat_exit_classifier"]),
        (["--decoder-exit-rule", "consistentee", "--consistentee-policy-dim", 4],
         ["--criterion", "consistentee_policy", "--consistentee-samples", 2]),
    ],
    ids=["calm", "dat", "consistentee"],
)  # fmt: skip
def test_bf16_with_weight_decay_leaves_a_frozen_backbone_bit_identical(calm, data_bin, tmp_path, rule, criterion):
    """fairseq's mixed-precision optimizer gives a parameter that requires grad and got none a zero
    grad, which weight decay moves: only the rule's parameters may require grad. The decay (1% of
    each weight per update) is larger than a bf16 step (0.4%), so a decayed weight cannot round back."""
    import torch

    import fairseq_hashee  # noqa: F401  (lets torch.load read fairseq checkpoints)

    root, _, _ = calm
    backbone = root / "backbone" / "checkpoint_last.pt"
    decay = ["--bf16", "--weight-decay", 1.0, "--lr-scheduler", "fixed", "--warmup-updates", 0, "--lr", 0.01]
    train(data_bin, tmp_path, *rule, "--restore-file", backbone, *RESET, "--max-update", 2, *decay,
          criterion=criterion)  # fmt: skip
    before = torch.load(backbone, map_location="cpu")["model"]
    after = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]

    def in_bf16(tensor):  # what the bf16 model held (the checkpoint stores it as fp32)
        return tensor.to(torch.bfloat16).float() if tensor.is_floating_point() else tensor

    changed = sorted(k for k in after if k not in before or not torch.equal(after[k], in_bf16(before[k])))
    assert changed and all(k.startswith("decoder.exit_rule.") for k in changed), changed


DAT_FROZEN = ["--criterion", "dat_exit_classifier", "--dat-oracle-penalty", 0.05, "--dat-oracle-smoothing", 1]
# the paper's training: the decoder with the classifiers, on the correctness oracle
DAT_JOINT = ["--criterion", "dat_joint", "--label-smoothing", 0.1, "--dat-oracle", "correctness"]


@pytest.mark.parametrize(
    "rule, criterion",
    [("dat-halting", DAT_FROZEN), ("dat-multinomial", DAT_FROZEN), ("dat-halting", DAT_JOINT)],
    ids=["halting", "multinomial", "halting-joint"],
)
def test_dat_trains_on_oracle_exits_and_generates(calm, data_bin, tmp_path, rule, criterion):
    root, _, _ = calm
    backbone = root / "backbone" / "checkpoint_last.pt"  # multi-exit trained
    proc = train(
        data_bin, tmp_path, "--decoder-exit-rule", rule, "--restore-file", backbone,
        *RESET, "--max-update", 10, criterion=criterion,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "not using the checkpoint's exit rule parameters: decoder.exit_rule.meta_classifier" in log
    assert '"oracle_exit"' in log
    if criterion is DAT_JOINT:  # every layer's loss and the exit loss, the backbone trained too
        assert '"exit_loss"' in log and '"loss_layer1"' in log
        import torch

        import fairseq_hashee  # noqa: F401  (lets torch.load read fairseq checkpoints)

        before = torch.load(backbone, map_location="cpu")["model"]
        after = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
        key = "decoder.layers.0.fc1.weight"
        assert not torch.equal(before[key], after[key])
    threshold = ["--exit-threshold", 0.5] if rule == "dat-halting" else []
    generated = generate(data_bin, tmp_path / "checkpoint_last.pt", *threshold)
    assert _hypotheses(generated)
    speedup, mean_exit = _decoder_speedup(generated)
    assert 1.0 <= mean_exit <= LAYERS

    line = _one_error_line(
        generate(data_bin, backbone, "--model-overrides", f"{{'decoder_exit_rule': '{rule}'}}", check=False)
    )
    assert "which the " + rule + " exit rule needs; train it first (--criterion dat_exit_classifier)" in line
    if rule == "dat-multinomial":
        line = _one_error_line(
            generate(data_bin, tmp_path / "checkpoint_last.pt", "--exit-threshold", 0.5, check=False)
        )
        assert "--exit-threshold: the dat-multinomial rule takes no threshold" in line


@pytest.mark.parametrize("rule, threshold", [("confidence", None), ("dat-halting", 0.5)])
def test_trained_models_keep_the_cache_invariant(calm, data_bin, tmp_path, rule, threshold):
    """The invariant of design section 7 on trained weights, with HashEE encoder exits."""
    import torch
    from fairseq import checkpoint_utils
    from test_exit_rules import incremental_against_replay

    from fairseq_hashee.exits.rules import rule_scores

    root, _, _ = calm
    checkpoint = root / "classifier" / "checkpoint_last.pt"
    if rule == "dat-halting":
        train(
            data_bin, tmp_path, "--decoder-exit-rule", rule, "--restore-file", root / "backbone" / "checkpoint_last.pt",
            *RESET, "--max-update", 5,
            criterion=["--criterion", "dat_exit_classifier"],
        )  # fmt: skip
        checkpoint = tmp_path / "checkpoint_last.pt"
    [model], _ = checkpoint_utils.load_model_ensemble([str(checkpoint)])
    model.eval()
    assert not model.encoder.no_early_exits  # trained with the task's HashEE encoder table
    gen = torch.Generator().manual_seed(0)
    if threshold is None:  # the meta classifier at the median of its scores
        dictionary = model.decoder.dictionary
        src = torch.randint(dictionary.nspecial, len(dictionary), (4, 10), generator=gen)
        prev = torch.randint(dictionary.nspecial, len(dictionary), (4, 8), generator=gen)
        threshold = float(rule_scores(model, src, torch.full((4,), 10), prev).median())
    model.decoder.exit_rule.set_threshold(threshold)
    difference, decided = incremental_against_replay(model, gen)
    assert bool((decided < LAYERS).any())
    assert difference < 1e-5


def test_interactive_generation_with_a_rule(calm, data_bin, text_corpus):
    import os
    import subprocess
    import sys

    from helpers import USER_DIR

    root, _, _ = calm
    documents = (text_corpus / "test.src").read_text(encoding="utf-8").splitlines()[:3]
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.interactive", str(data_bin), "--path",
         str(root / "classifier" / "checkpoint_last.pt"), "--user-dir", USER_DIR, "--task", "hashee_summarization",
         "-s", "src", "-t", "tgt", "--beam", "2", "--max-len-b", "10", "--cpu", "--exit-threshold", "0.0"],
        input="\n".join(documents) + "\n", capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("H-")]) == 3
    assert _decoder_speedup(proc)[1] == 1.0  # threshold 0: every position exits at layer 1


def test_python_api_takes_the_threshold(calm, data_bin, text_corpus, tmp_path):
    """HashEESummarizer passes task options such as exit_threshold to the model it loads."""
    from fairseq_hashee.cli import spm
    from fairseq_hashee.hub_interface import HashEESummarizer

    root, _, _ = calm
    # Subwords the API can encode with (a word-level dictionary sees whole words among them).
    spm.main(["train", "--input", str(text_corpus / "train.src"), "--model-prefix", str(tmp_path / "spm"),
              "--vocab-size", "300"])  # fmt: skip
    documents = (text_corpus / "test.src").read_text(encoding="utf-8").splitlines()[:4]
    reports = {}
    for threshold in (0.0, 1.0):
        summarizer = HashEESummarizer.from_pretrained(
            str(root / "classifier"), "checkpoint_last.pt", str(data_bin), subwords_dir=str(tmp_path),
            exit_threshold=threshold,
        )  # fmt: skip
        reports[threshold] = summarizer.summarize(documents, beam=2, max_len_b=8).speedup
    assert reports[0.0]["dec_mean_exit"] == 1.0 and reports[0.0]["dec_speedup"] > 1.0
    # never firing, the classifier's decisions are all it adds: a little below 1
    assert reports[1.0]["dec_mean_exit"] == LAYERS and 0.99 < reports[1.0]["dec_speedup"] < 1.0


@pytest.fixture(scope="module")
def leco(calm, data_bin, tmp_path_factory):
    """LECO's two stages from the multi-exit backbone: the head search, then training with the chosen heads."""
    root, _, _ = calm
    out = tmp_path_factory.mktemp("leco")
    search = train(
        data_bin, out / "search", "--exit-heads", "search", "--restore-file", root / "backbone" / "checkpoint_last.pt",
        *RESET, "--max-update", 4, criterion=["--criterion", "leco_head_search", "--label-smoothing", 0.1],
    )  # fmt: skip
    chosen = train(
        data_bin, out / "searched", "--exit-heads", "searched", "--decoder-exit-rule", "agreement",
        "--restore-file", out / "search" / "checkpoint_last.pt", *RESET, "--max-update", 4, criterion=MULTI_EXIT,
    )  # fmt: skip
    return out, search, chosen


def test_leco_searches_then_trains_the_chosen_heads(leco):
    import torch

    import fairseq_hashee  # noqa: F401  (lets torch.load read fairseq checkpoints)
    from fairseq_hashee.exits.heads import HEAD_ARCHS

    out, search, chosen = leco
    logged = [json.loads(line[line.index("{") :]) for line in (search.stdout + search.stderr).splitlines()
              if "train_inner" in line and "{" in line]  # fmt: skip
    assert logged and all("arch_loss" in record and "alpha1_mlp" in record for record in logged)
    searched = torch.load(out / "search" / "checkpoint_last.pt", map_location="cpu")["model"]
    alpha = searched["decoder.exit_heads.alpha"]
    assert not torch.equal(alpha, torch.zeros_like(alpha)), "the search trains alpha"
    arch = HEAD_ARCHS[int(alpha[0].argmax())]
    assert f"exit heads: the search's (argmax alpha) choice, layer 1 {arch}" in chosen.stdout + chosen.stderr
    state = torch.load(out / "searched" / "checkpoint_last.pt", map_location="cpu")["model"]
    assert state["decoder.exit_heads.choice"].tolist() == [HEAD_ARCHS.index(arch)]
    heads = {k.split(".")[4] for k in state if k.startswith("decoder.exit_heads.candidates.")}
    assert heads == (set() if arch == "shared" else {arch}) and "decoder.exit_heads.alpha" not in state


def test_leco_generates_with_the_chosen_heads(leco, data_bin):
    out, _, _ = leco
    checkpoint = out / "searched" / "checkpoint_last.pt"
    never = generate(data_bin, checkpoint, "--exit-threshold", 1.0)  # no extra flags: the heads come with it
    assert "exit heads: the checkpoint's choice" in never.stdout + never.stderr
    assert _hypotheses(never)
    speedup, mean_exit = _decoder_speedup(never)
    assert mean_exit == float(LAYERS) and speedup < 1.0  # every layer's head read, none exited
    eager = generate(data_bin, checkpoint, "--exit-threshold", 0.0, "--exit-patience", 0)
    assert _decoder_speedup(eager)[1] == 1.0  # no comparison, no confidence needed: all exit at layer 1
    line = _one_error_line(generate(data_bin, checkpoint, "--exit-patience", 1, check=False))
    assert "--exit-patience: expected an integer in 0..0" in line


def test_leco_chosen_heads_need_a_search(calm, data_bin, tmp_path):
    """(The criterion/heads mismatches are checked without a process in test_leco.py.)"""
    root, _, _ = calm
    backbone = root / "backbone" / "checkpoint_last.pt"
    proc = train(data_bin, tmp_path, "--exit-heads", "searched", "--restore-file", backbone, *RESET,
                 "--max-update", 1, criterion=MULTI_EXIT, check=False)  # fmt: skip
    assert "--exit-heads searched: the checkpoint has neither chosen exit heads" in _one_error_line(proc)
    assert not (tmp_path / "checkpoint_last.pt").exists()


def test_consistentee_trains_its_policies_then_generates(calm, data_bin, tmp_path):
    """Stage 2 from the multi-exit (stage 1) checkpoint, which has no policies; then generation.
    (Its refusals are in test_consistentee.py: in-process, without a command's start-up.)"""
    import torch

    import fairseq_hashee  # noqa: F401  (lets torch.load read fairseq checkpoints)

    root, _, _ = calm
    backbone = root / "backbone" / "checkpoint_last.pt"
    rule = ["--decoder-exit-rule", "consistentee", "--consistentee-policy-dim", 8]
    policy = ["--criterion", "consistentee_policy", "--consistentee-samples", 2, "--consistentee-alpha", 0.05]
    proc = train(data_bin, tmp_path, *rule, "--restore-file", backbone, *RESET, "--max-update", 6, criterion=policy)
    log = proc.stdout + proc.stderr
    assert "not using the checkpoint's exit rule parameters: decoder.exit_rule.meta_classifier" in log
    logged = [json.loads(line[line.index("{") :]) for line in log.splitlines() if "train_inner" in line and "{" in line]
    assert logged and all(1.0 <= float(record["exit_layer"]) <= LAYERS for record in logged)
    assert all(float(record["reward"]) < 0 and "memorized_layer" in record for record in logged)
    valid = [json.loads(m) for m in re.findall(r"(\{\"epoch\".*\"valid_loss\".*\})", log)]
    assert valid and abs(float(valid[-1]["valid_loss"]) + float(valid[-1]["valid_reward"])) < 0.01  # loss = -reward

    before = torch.load(backbone, map_location="cpu")["model"]
    after = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["model"]
    changed = [k for k in after if k not in before or not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith("decoder.exit_rule.policies.") for k in changed)  # the backbone is frozen

    generated = generate(data_bin, tmp_path / "checkpoint_last.pt")
    assert _hypotheses(generated)
    assert 1.0 <= _decoder_speedup(generated)[1] <= LAYERS

    # stage 3 (the released code's train_both): every parameter trains at the policies' exits, greedy
    # decisions whose copies differ by dropout
    joint = ["--criterion", "consistentee_joint", "--consistentee-samples", 2, "--consistentee-reward", "ce",
             "--consistentee-exploration", "greedy"]  # fmt: skip
    policies = tmp_path / "checkpoint_last.pt"
    proc = train(data_bin, tmp_path / "joint", *rule, "--restore-file", policies, *RESET, "--max-update", 2,
                 "--dropout", 0.3, criterion=joint)  # fmt: skip
    assert '"exit_layer"' in proc.stdout + proc.stderr
    stage2 = torch.load(policies, map_location="cpu")["model"]
    stage3 = torch.load(tmp_path / "joint" / "checkpoint_last.pt", map_location="cpu")["model"]
    changed = {k for k in stage3 if not torch.equal(stage3[k], stage2[k])}
    assert "encoder.layers.0.fc1.weight" in changed and "decoder.exit_rule.policies.0.2.bias" in changed
    assert _hypotheses(generate(data_bin, tmp_path / "joint" / "checkpoint_last.pt"))

    # the cache invariant of design section 7 on the trained policies, beside HashEE encoder exits
    from fairseq import checkpoint_utils
    from test_exit_rules import incremental_against_replay

    from fairseq_hashee.exits.rules import rule_scores

    [model], _ = checkpoint_utils.load_model_ensemble([str(tmp_path / "checkpoint_last.pt")])
    model.eval()
    gen = torch.Generator().manual_seed(0)
    dictionary = model.decoder.dictionary
    src = torch.randint(dictionary.nspecial, len(dictionary), (4, 10), generator=gen)
    prev = torch.randint(dictionary.nspecial, len(dictionary), (4, 8), generator=gen)
    model.decoder.exit_rule.set_threshold(float(rule_scores(model, src, torch.full((4,), 10), prev).median()))
    difference, decided = incremental_against_replay(model, gen)
    assert bool((decided < LAYERS).any()) and difference < 1e-5
