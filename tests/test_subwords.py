"""Subword encoding of prepared text: GPT-2 BPE (parallel, against fairseq's own encoder), WordPiece
file mode, truncation to the model's positions, and finding a checkpoint's subword files."""

import argparse
import io

import pytest
from fairseq.data.encoders.gpt2_bpe import GPT2BPE

from fairseq_hashee.cli import gpt2_bpe as gpt2_bpe_cli
from fairseq_hashee.cli import wordpiece as wordpiece_cli
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.tokenization import gpt2_bpe, wordpiece
from fairseq_hashee.tokenization.subwords import load_subwords

from tiny_subwords import bert_vocab, byte_bpe

ENGLISH = [
    "The Riverton council approved a new library on Monday.",
    "",
    "Heavy rain flooded streets; crews rescued 21 people (and a dog) -- fast!",
    "  leading and trailing spaces  ",
    "Ünïcödé, emoji \U0001f600 and 中文 are bytes too.",
]
CHINESE = ["广州提出交通改造计划，未来6年投入21亿元。", "", "基于深度学习的文本分类方法研究"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return byte_bpe(ENGLISH * 3, 60, tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def fairseq_gpt2(bpe):
    return GPT2BPE(
        argparse.Namespace(gpt2_encoder_json=str(bpe / "encoder.json"), gpt2_vocab_bpe=str(bpe / "vocab.bpe"))
    )


def write(path, texts):
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return str(path)


def test_parallel_gpt2_encoding_equals_fairseqs_encoder(bpe, fairseq_gpt2, tmp_path, capsys):
    inputs = [write(tmp_path / "a.txt", ENGLISH), write(tmp_path / "b.txt", ENGLISH[::-1] * 40)]
    outputs = [str(tmp_path / "a.bpe"), str(tmp_path / "b.bpe")]
    gpt2_bpe_cli.main(
        [
            "--encoder-json",
            str(bpe / "encoder.json"),
            "--vocab-bpe",
            str(bpe / "vocab.bpe"),
            "--inputs",
            *inputs,
            "--outputs",
            *outputs,
            "--workers",
            "2",
        ]
    )
    for text_file, out_file in zip(inputs, outputs):
        texts = open(text_file, encoding="utf-8").read().split("\n")[:-1]
        assert open(out_file).read().split("\n")[:-1] == [fairseq_gpt2.encode(t) for t in texts]
    assert capsys.readouterr().err.splitlines() == [f"{inputs[0]}: 5 lines", f"{inputs[1]}: 200 lines"]


def test_gpt2_decoding_equals_fairseqs_and_keeps_other_symbols(bpe, fairseq_gpt2):
    ours = gpt2_bpe.Gpt2Bpe(str(bpe / "encoder.json"), str(bpe / "vocab.bpe"))
    for text in ENGLISH:
        ids = fairseq_gpt2.encode(text)
        assert ours.pieces(text) == ids.split()
        assert ours.text(ids.split()) == fairseq_gpt2.decode(ids) == text
    assert ours.text(ours.pieces("a b") + ["<unk>"]) == "a b<unk>"


def test_lines_longer_than_the_limit_are_cut_and_counted(bpe, fairseq_gpt2, tmp_path, capsys):
    source = write(tmp_path / "train.source", ENGLISH)
    gpt2_bpe_cli.main(
        [
            "--encoder-json",
            str(bpe / "encoder.json"),
            "--vocab-bpe",
            str(bpe / "vocab.bpe"),
            "--inputs",
            source,
            "--outputs",
            str(tmp_path / "out"),
            "--max-len",
            "8",
        ]
    )
    out = [line.split() for line in (tmp_path / "out").read_text().split("\n")[:-1]]
    full = [fairseq_gpt2.encode(text).split() for text in ENGLISH]
    assert out == [ids[:8] for ids in full]
    cut = sum(len(ids) > 8 for ids in full)
    assert cut >= 2 and capsys.readouterr().err.strip() == f"{source}: 5 lines, {cut} cut to 8 tokens (first: line 1)"


def test_encoding_refuses_undecodable_input_and_missing_files(bpe, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nnot \xff fine\n")
    args = ["--encoder-json", str(bpe / "encoder.json"), "--vocab-bpe", str(bpe / "vocab.bpe")]
    with pytest.raises(
        SystemExit, match=r"^error: .*bad.txt:2: not valid UTF-8 \(clean the text with hashee-prepare first\)$"
    ):
        gpt2_bpe_cli.main(args + ["--inputs", str(bad), "--outputs", str(tmp_path / "out"), "--workers", "2"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(
        SystemExit, match=r"^error: .*nowhere.json: no such file \(GPT-2 BPE needs encoder.json and vocab.bpe\)$"
    ):
        gpt2_bpe_cli.main(
            [
                "--encoder-json",
                str(tmp_path / "nowhere.json"),
                "--vocab-bpe",
                str(bpe / "vocab.bpe"),
                "--inputs",
                str(bad),
                "--outputs",
                str(tmp_path / "out"),
            ]
        )


def test_wordpiece_file_mode_equals_stdin_mode(tmp_path):
    vocab = bert_vocab(CHINESE, tmp_path / "bert") / "vocab.txt"
    text = write(tmp_path / "text.txt", CHINESE)
    piped = io.BytesIO()
    assert (
        wordpiece_cli.main(
            ["--vocab", str(vocab), "--prepend", "<s>"], io.BytesIO(open(text, "rb").read()), piped, io.StringIO()
        )
        == 0
    )
    err = io.StringIO()
    assert (
        wordpiece_cli.main(
            [
                "--vocab",
                str(vocab),
                "--prepend",
                "<s>",
                "--inputs",
                text,
                "--outputs",
                str(tmp_path / "out"),
                "--workers",
                "2",
            ],
            stderr=err,
        )
        == 0
    )
    assert (tmp_path / "out").read_bytes() == piped.getvalue()
    assert (tmp_path / "out").read_text(encoding="utf-8").split("\n")[1] == "<s>"

    err = io.StringIO()
    assert (
        wordpiece_cli.main(
            [
                "--vocab",
                str(vocab),
                "--prepend",
                "<s>",
                "--inputs",
                text,
                "--outputs",
                str(tmp_path / "cut"),
                "--max-len",
                "5",
            ],
            stderr=err,
        )
        == 0
    )
    assert (tmp_path / "cut").read_text(encoding="utf-8").split("\n")[0] == "<s> 广 州 提 出"
    assert err.getvalue() == f"{text}: 3 lines, 2 cut to 5 tokens (first: line 1)\n"


def test_subword_files_are_found_by_their_release_names(bpe, tmp_path):
    assert isinstance(load_subwords(str(bpe)), gpt2_bpe.Gpt2Bpe)
    bert = bert_vocab(CHINESE, tmp_path / "bert")
    assert load_subwords(str(bert)).pieces("基于") == ["<s>", "基", "于"]  # framed as hashee-convert's dict wants
    with pytest.raises(
        HashEEError,
        match=r"empty: no subword files; expected encoder.json \+ vocab.bpe \(gpt2\), "
        r"vocab.txt \(wordpiece\), spm.model \(sentencepiece\)",
    ):
        load_subwords(str(tmp_path / "empty"))
    (bert / "encoder.json").write_text((bpe / "encoder.json").read_text())
    (bert / "vocab.bpe").write_text((bpe / "vocab.bpe").read_text())
    with pytest.raises(HashEEError, match="holds the files of gpt2 and wordpiece; say which with subwords="):
        load_subwords(str(bert))
    assert isinstance(load_subwords(str(bert), "wordpiece"), wordpiece.WordPieceSubwords)
    with pytest.raises(HashEEError, match=r"bpe\w*: no spm.model for subwords='sentencepiece'"):
        load_subwords(str(bpe), "sentencepiece")


def test_sentencepiece_pieces_are_what_the_sample_pipeline_writes(tmp_path, monkeypatch, capsys):
    from fairseq_hashee.cli import spm

    corpus = write(tmp_path / "corpus.txt", [t for t in ENGLISH if t.strip()] * 20)
    spm.main(["train", "--input", corpus, "--model-prefix", str(tmp_path / "spm"), "--vocab-size", "60"])
    monkeypatch.setattr("sys.stdin", io.StringIO(ENGLISH[0] + "\n"))
    spm.main(["encode", "--model", str(tmp_path / "spm.model")])
    pieces = load_subwords(str(tmp_path))  # found by its name, spm.model
    assert pieces.pieces(ENGLISH[0]) == capsys.readouterr().out.split()
    assert pieces.text(pieces.pieces(ENGLISH[0])) == ENGLISH[0]
