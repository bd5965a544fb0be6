"""The four dataset pipelines (examples/DATASET/{prepare,train,generate,score}.sh) end to end.

Each runs on the bundled raw samples in the release's own layout (tests/data/raw,
written for these tests), with subword vocabularies built here from the sample
text and a tiny HashEE BART / CPT trained from scratch. The trained models also
serve the Python API (fairseq_hashee.hub_interface), which must give the same
summaries and speed-up as the generate stage.
"""

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from fairseq_hashee.cli.prepare import prepare
from fairseq_hashee.hub_interface import HashEESummarizer
from fairseq_hashee.tokenization.wordpiece import basic_words

from helpers import REPO
from tiny_subwords import bert_vocab, byte_bpe

pytestmark = pytest.mark.slow

RAW = REPO / "tests" / "data" / "raw"
ENGLISH, CHINESE = ("cnndm", "reddit"), ("csl", "ttnews")
TINY = (
    "--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 32 --encoder-ffn-embed-dim 64 "
    "--encoder-attention-heads 2 --decoder-attention-heads 2"
)
# From scratch on CPU, a few seconds of training, one thread per process (tiny models gain
# nothing from more, and the tests must not fight over the cores).
SMALL = {
    "CPU": "1",
    "RESTORE": "",
    "OMP_NUM_THREADS": "1",
    "MAX_POSITIONS": "128",
    "WORKERS": "2",
    "UPDATE_FREQ": "1",
    "MAX_UPDATE": "100",
    "TOTAL_NUM_UPDATES": "100",
    "WARMUP_UPDATES": "10",
    "LR": "5e-3",
    "EXTRA_ARGS": "--num-workers 0 --seed 1 --dropout 0 --attention-dropout 0 --save-interval 1000 "
    "--validate-interval 1000 --log-format simple",
}
MODELS = {
    "bart": {"ARCH": "hashee_bart_base", "ARCH_ARGS": TINY + " --decoder-embed-dim 32 --decoder-ffn-embed-dim 64"},
    # The first token of a CPT summary is <s> ([CLS]), which decoding drops: ask for a few more.
    "cpt": {"ARCH": "hashee_cpt_base", "ARCH_ARGS": TINY, "BATCH_SIZE": "8", "MIN_LEN": "3"},
}
# CNN/DM's 55..140 tokens are for real articles, the samples' summaries have about 20; its samples'
# documents (about 65 tokens) are longer than 48 positions, so they are cut.
DATASET_ENV = {"cnndm": {"MIN_LEN": "5", "MAX_LEN_B": "40", "MAX_POSITIONS": "48"}}


def stage(dataset, name, *args, env):
    return subprocess.run(
        ["bash", str(REPO / "examples" / dataset / f"{name}.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def run_ok(dataset, name, *args, env):
    proc = stage(dataset, name, *args, env=env)
    assert proc.returncode == 0, f"{dataset}/{name}.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def pretrained_files(dataset, root):
    """What a released checkpoint brings (dict.txt and subword files), made from the sample text."""
    text = root / "vocab-text"
    prepare(dataset, str(RAW / dataset), str(text))
    corpus = [
        line
        for path in sorted(text.glob("*.source")) + sorted(text.glob("*.target"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    if dataset in ENGLISH:
        return byte_bpe(corpus, 400, root / "pretrained")
    return bert_vocab(corpus, root / "pretrained")


def environment(dataset, pretrained):
    model = MODELS["bart" if dataset in ENGLISH else "cpt"]
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "PRETRAINED": str(pretrained),
        **SMALL,
        **model,
        **DATASET_ENV.get(dataset, {}),
    }


class Run:
    def __init__(self, work, pretrained, env, logs):
        self.work, self.pretrained, self.env, self.logs = work, pretrained, env, logs


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Runs a dataset's four stages once per module; returns the Run."""
    runs = {}

    def get(dataset):
        if dataset not in runs:
            root = tmp_path_factory.mktemp(dataset)
            pretrained = pretrained_files(dataset, root)
            env = environment(dataset, pretrained)
            work = root / "work"
            logs = {"prepare": run_ok(dataset, "prepare", RAW / dataset, work, env=env)}
            for name in ("train", "generate", "score"):
                logs[name] = run_ok(dataset, name, work, env=env)
            runs[dataset] = Run(work, pretrained, env, logs)
        return runs[dataset]

    return get


@pytest.mark.parametrize("dataset", ENGLISH + CHINESE)
def test_pipeline_runs_end_to_end(pipeline, dataset):
    run = pipeline(dataset)
    hyps = (run.work / "generate" / "test.hyp").read_text(encoding="utf-8").splitlines()
    refs = (run.work / "text" / "test.target").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(refs) and all(h.strip() for h in hyps), hyps
    assert (run.work / "generate" / "test.ref").read_text(encoding="utf-8").splitlines() == refs
    if dataset in CHINESE:
        assert all(re.search(r"[\u4e00-\u9fff]", h) and "<s>" not in h and " " not in h for h in hyps), hyps
    scores = run.logs["score"]
    assert re.search(r"ROUGE-1: \d+\.\d\d ROUGE-2: \d+\.\d\d ROUGE-L: \d+\.\d\d", scores)
    printed_rouge1 = float(re.search(r"ROUGE-1: (\S+)", scores).group(1))
    assert printed_rouge1 > 0, scores
    assert abs(printed_rouge1 - _unigram_f1(hyps, refs, dataset in CHINESE)) < 0.006, scores
    assert ("ROUGE-LSUM" in scores) == (dataset in ENGLISH)
    speedup = re.search(r"speed-up \(FLOPs\): encoder (\S+)x", run.logs["generate"])
    assert speedup and float(speedup.group(1)) > 1.0
    assert f"summarized {len(refs)} of {len(refs)} test documents" in run.logs["generate"]
    print(f"{dataset}: {scores.splitlines()[1]}")


def _unigram_f1(hyps, refs, chinese):
    """Mean unigram F1 x100 computed apart from the scoring script: rouge-score itself for
    English, a count of shared BERT-split characters for Chinese."""
    if not chinese:
        scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
        return 100.0 * sum(scorer.score(r, h)["rouge1"].fmeasure for h, r in zip(hyps, refs)) / len(refs)
    total = 0.0
    for hyp, ref in zip(hyps, refs):
        h, r = Counter(basic_words(hyp)), Counter(basic_words(ref))
        shared = sum((h & r).values())
        if shared:
            precision, recall = shared / sum(h.values()), shared / sum(r.values())
            total += 2 * precision * recall / (precision + recall)
    return 100.0 * total / len(refs)


def test_long_documents_are_cut_and_reported(pipeline):
    log = pipeline("cnndm").logs["prepare"]
    test_source = re.search(r"text/test.source: (\d+) lines, (\d+) cut to 47 tokens", log)
    assert test_source and int(test_source.group(2)) >= 1, log
    assert "skipped 1: no highlights 1" in log


@pytest.mark.parametrize("dataset", ["cnndm", "csl"])
def test_python_api_gives_the_summaries_and_speedup_of_generate(pipeline, dataset):
    run = pipeline(dataset)
    model = HashEESummarizer.from_pretrained(
        str(run.work / "checkpoints"), data_name_or_path=str(run.work / "data-bin"), subwords_dir=str(run.pretrained)
    )
    env = run.env
    settings = dict(
        beam=4,
        lenpen=2.0 if dataset == "cnndm" else 1.0,
        max_len_b=int(env.get("MAX_LEN_B", 50)),
        min_len=int(env["MIN_LEN"]),
        no_repeat_ngram_size=3 if dataset == "cnndm" else 0,
    )
    documents = (run.work / "text" / "test.source").read_text(encoding="utf-8").splitlines()
    result = model.summarize(documents, **settings)
    assert result.summaries == (run.work / "generate" / "test.hyp").read_text(encoding="utf-8").splitlines()
    logged = re.search(r"speed-up \(FLOPs\).*", run.logs["generate"]).group(0)
    assert result.report() == logged
    assert result.speedup["enc_speedup"] > 1.0
    cut = re.search(r"text/test.source: \d+ lines, (\d+) cut", run.logs["prepare"])
    assert result.truncated == (int(cut.group(1)) if cut else 0)


def test_prepare_leaves_no_half_written_output(pipeline, tmp_path):
    run = pipeline("reddit")
    env = run.env
    missing = stage("reddit", "prepare", tmp_path / "nowhere", tmp_path / "work", env=env)
    assert missing.returncode != 0
    assert [line for line in missing.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nowhere'}: no such directory"
    ]
    assert not (tmp_path / "work").exists() or os.listdir(tmp_path / "work") == []

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dict.txt").write_text((run.pretrained / "dict.txt").read_text())
    (broken / "vocab.bpe").write_text((run.pretrained / "vocab.bpe").read_text())
    (broken / "encoder.json").write_text('{"truncated": ')
    failed = stage("reddit", "prepare", RAW / "reddit", tmp_path / "work", env={**env, "PRETRAINED": str(broken)})
    assert failed.returncode != 0 and "not a GPT-2 encoder.json / vocab.bpe pair" in failed.stderr
    assert sorted(os.listdir(tmp_path / "work")) == ["text"]  # stage 1 finished; stage 2 left nothing

    kept = run_ok("reddit", "prepare", RAW / "reddit", run.work, env=env)
    assert kept.count("kept ") == 3
