"""A converted (tiny) CPT fine-tuned and decoded with fairseq-train / fairseq-generate.

The whole user path on Chinese text: Hugging Face checkpoint -> hashee-convert
-> WordPiece with the checkpoint's vocab.txt -> fairseq-preprocess with the
converted dictionary -> fairseq-train --restore-file with frequency tables ->
fairseq-generate.
"""

import json
import random
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
from helpers import USER_DIR, run_cli  # noqa: E402
from hf_reference import DEC, DIM, SHARED, cpt_reference, save_cpt  # noqa: E402

pytestmark = pytest.mark.slow

# Our own phrases; documents are random sentences of them, the summary is the first sentence.
PHRASES = [
    "今天",
    "天气",
    "很好",
    "我们",
    "一起",
    "去",
    "公园",
    "散步",
    "学生",
    "老师",
    "学习",
    "中文",
    "新闻",
    "报道",
    "经济",
    "发展",
    "城市",
    "人口",
    "增长",
    "科技",
    "公司",
    "发布",
    "手机",
    "市场",
    "价格",
    "上涨",
    "北京",
    "上海",
    "会议",
    "召开",
    "政府",
    "提出",
    "计划",
    "环境",
    "保护",
    "重要",
]


def _chinese_pairs(n, seed):
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        sentences = ["".join(rng.choices(PHRASES, k=rng.randint(3, 6))) + "。" for _ in range(rng.randint(2, 4))]
        pairs.append(("".join(sentences), sentences[0]))
    return pairs


def _convert(root, decoder_layers):
    chars = sorted(set("".join(PHRASES) + "。"))
    symbols = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars
    bert, decoder = cpt_reference(seed=0, symbols=symbols, decoder_layers=decoder_layers)
    hf_dir = save_cpt(bert, decoder, root / "hf", symbols=symbols)
    proc = run_cli("fairseq_hashee.cli.convert", hf_dir, "-o", root / "converted")
    return root, hf_dir, proc.stdout


@pytest.fixture(scope="module")
def converted_cpt(tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("cpt"), DEC)


@pytest.fixture(scope="module")
def chinese_data(converted_cpt):
    """Random documents of our phrases, WordPiece-encoded with the checkpoint's vocab.txt and
    binarized with its converted dictionary (every converted CPT here has the same symbols)."""
    root, hf_dir, _ = converted_cpt
    text = root / "text"
    text.mkdir()
    splits = {"train": _chinese_pairs(64, 0), "valid": _chinese_pairs(8, 1), "test": _chinese_pairs(8, 2)}
    for split, pairs in splits.items():
        for side, column in (("src", 0), ("tgt", 1)):
            raw = "".join(pair[column] + "\n" for pair in pairs).encode("utf-8")
            pieces = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fairseq_hashee.cli.wordpiece",
                    "--vocab",
                    hf_dir / "vocab.txt",
                    "--prepend",
                    "<s>",
                ],
                input=raw,
                capture_output=True,
                check=True,
            ).stdout.decode("utf-8")
            assert "[UNK]" not in pieces
            (text / f"{split}.{side}").write_text(pieces, encoding="utf-8")
    data_bin = root / "bin"
    dict_txt = root / "converted" / "dict.txt"
    run_cli(
        "fairseq_cli.preprocess",
        "-s",
        "src",
        "-t",
        "tgt",
        "--trainpref",
        text / "train",
        "--validpref",
        text / "valid",
        "--testpref",
        text / "test",
        "--srcdict",
        dict_txt,
        "--tgtdict",
        dict_txt,
        "--destdir",
        data_bin,
        "--workers",
        1,
    )
    return data_bin


def test_converter_reports_what_it_dropped(converted_cpt):
    _, _, stdout = converted_cpt
    assert "CPT checkpoint ->" in stdout
    assert "understanding decoder (not used for generation)" in stdout
    assert "--arch hashee_cpt_base --encoder-layers 2 --decoder-layers 1" in stdout


def test_converted_cpt_fine_tunes_and_generates(converted_cpt, chinese_data):
    root, _, stdout = converted_cpt
    data_bin = chinese_data
    options = re.search(r"--arch (.*?) --restore-file", stdout).group(1).split()
    save_dir = root / "ft"
    proc = run_cli(
        "fairseq_cli.train",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "hashee_summarization",
        "-s",
        "src",
        "-t",
        "tgt",
        "--arch",
        *options,
        "--restore-file",
        root / "converted" / "model.pt",
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        "--reset-lr-scheduler",
        "--encoder-hash-type",
        "frequency",
        "--decoder-exits",
        "--decoder-hash-type",
        "frequency",
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        0.1,
        "--optimizer",
        "adam",
        "--lr",
        1e-3,
        "--max-tokens",
        2048,
        "--max-update",
        8,
        "--dropout",
        0.0,
        "--cpu",
        "--num-workers",
        0,
        "--no-epoch-checkpoints",
        "--save-dir",
        save_dir,
        "--log-format",
        "simple",
    )
    output = proc.stdout + proc.stderr
    assert "checkpoint has no encoder.exit_table" in output
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)
    assert state["cfg"]["model"].arch == "hashee_cpt_base"
    assert state["model"]["encoder.embed_positions.weight"].shape[1] == DIM
    assert len(state["model"]["encoder.exit_table"]) == len(open(root / "converted" / "dict.txt").readlines()) + 4
    for stack, layers in (("encoder", SHARED), ("decoder", DEC)):
        table = state["model"][f"{stack}.exit_table"]
        assert int(table.max()) == layers
    assert int(state["model"]["encoder.exit_table"].min()) == 1  # SHARED = 2: the frequent half exits at 1

    gen = run_cli(
        "fairseq_cli.generate",
        data_bin,
        "--user-dir",
        USER_DIR,
        "--task",
        "hashee_summarization",
        "-s",
        "src",
        "-t",
        "tgt",
        "--path",
        save_dir / "checkpoint_last.pt",
        "--gen-subset",
        "test",
        "--beam",
        4,
        "--max-len-b",
        30,
        "--batch-size",
        8,
        "--cpu",
    )
    hypotheses = [line.split("\t")[2] for line in gen.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 8 and all(h.strip() for h in hypotheses)
    assert "HashEE generation speed-up" in gen.stderr


def test_consistentee_and_leco_fine_tune_from_a_converted_cpt(chinese_data, tmp_path):
    """The comparison's path for the two learned-exit methods from a released-style checkpoint:
    a converted CPT with a 2-layer decoder (with one, neither method has a layer to exit at)."""
    _, _, stdout = _convert(tmp_path, decoder_layers=2)
    model_args = re.search(r"--arch hashee_cpt_base (.*?) --restore-file", stdout).group(1)
    work = tmp_path / "compare"
    proc = run_cli(
        "fairseq_hashee.cli.compare",
        chinese_data,
        "--work-dir",
        work,
        "--arch",
        "hashee_cpt_base",
        "--model-args",
        model_args,
        "--restore-file",
        tmp_path / "converted" / "model.pt",
        "--methods",
        "consistentee,leco",
        "--sweep",
        "consistentee=0.5",
        "--max-update",
        4,
        "--frozen-updates",
        2,
        "--jobs",
        2,
        "--train-args",
        "--optimizer adam --lr 1e-3 --max-tokens 2048 --dropout 0 --num-workers 0",
        "--generate-args",
        "--beam 2 --max-len-b 20 --batch-size 8",
        "--lang",
        "zh",
        "--cpu",
    )
    assert "every method starts from" in proc.stdout and "2+2 layers" in proc.stdout
    summary = json.loads((work / "compare.json").read_text())
    labels = [row["label"] for row in summary["rows"]]
    assert labels == ["full depth", "ConsistentEE, alpha 0.5", "LECO heads + agreement, patience 0"]
    assert summary["test_documents"] == 8
    for stage in ("full", "multi-exit", "leco-search"):
        log = (work / "train" / stage / "train.log").read_text()
        assert f"'finetune_from_model': '{work / 'start.pt'}'" in log, stage
    policy = (work / "train" / "consistentee-0.5" / "train.log").read_text()
    assert "'consistentee_alpha': 0.5" in policy and "arch='hashee_cpt_base'" in policy
    joint = (work / "train" / "consistentee-joint-0.5" / "train.log").read_text()  # stage 3, from the policies
    assert "consistentee_joint" in joint and "'consistentee_alpha': 0.5" in joint
    assert f"'finetune_from_model': '{work / 'train' / 'consistentee-0.5' / 'checkpoint_best.pt'}'" in joint
    leco = torch.load(work / "train" / "leco" / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    assert "decoder.exit_heads.choice" in leco["model"]
    for row in summary["rows"]:
        assert row["distinct"] >= 1 and 0 <= row["rouge1"] <= 100
