"""The WordPiece tokenizer gives transformers' BertTokenizer's pieces and ids.

A small BERT-style vocab.txt is written in the test, with the specials at the
ids BERT-Chinese gives them, and a few hundred seeded random lines mixing
Chinese, English, numbers, punctuation, accents, odd whitespace and control
characters are split by both.
"""

import io
import random
import subprocess
import sys

import pytest

from fairseq_hashee.cli.wordpiece import main
from fairseq_hashee.errors import HashEEError
from fairseq_hashee.tokenization import WordPieceTokenizer

rng = random.Random(20240607)

# Known text: these characters are always in the vocabulary.
KNOWN_ZH = "我爱北京天安门今天气很好们去公园吧模型在上提升了分中文摘要的是一个年"
ZH_PUNCT = "，。！？“”、（）《》：；…—"
CJK_POOL = sorted({chr(c) for c in rng.sample(range(0x4E00, 0x9FFF), 400)} - set(KNOWN_ZH))
CJK_IN_VOCAB = CJK_POOL[:300]  # the other 100 are out of the vocabulary
WORDS = [
    "the",
    "hello",
    "world",
    "cafe",
    "naive",
    "resume",
    "un",
    "##aff",
    "##able",
    "run",
    "##ning",
    "##s",
    "##ed",
    "##ing",
    "summar",
    "##ization",
    "2020",
    "##20",
    "100",
    "cpt",
    "bart",
    "rouge",
    "the",  # a duplicated line: BertTokenizer maps "the" to the later id
    "café",
    "é",  # accented entries can never match: accents are stripped first
    "##中",
    "##文",
    "😀",
    "\u3400",
    "\U00020000",
    "\u8c48",
    "ａ",
    "１",
    "αβγ",
]


def write_vocab(path):
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    lines += [chr(c) for c in range(33, 127) if not chr(c).isupper()]  # punctuation, digits, a-z
    lines += ["##" + c for c in "0123456789abcdefghijklm"]  # half the letters continue a word
    lines += list(KNOWN_ZH) + CJK_IN_VOCAB + list(ZH_PUNCT) + WORDS
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


@pytest.fixture(scope="module")
def tok(vocab):
    return WordPieceTokenizer.from_vocab_file(vocab)


def oracles(vocab):
    """transformers' BertTokenizer and, where it exists, the classic Python one CPT used."""
    transformers = pytest.importorskip("transformers")
    found = [transformers.BertTokenizer(str(vocab))]
    try:  # transformers >= 5: BertTokenizer is Rust-backed, the Python one is kept as legacy
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        found.append(BertTokenizerLegacy(str(vocab)))
    except ImportError:  # transformers 4: BertTokenizer is already the classic Python one
        pass
    return found


SEGMENTS = [
    lambda: "".join(rng.choice(CJK_POOL + list(KNOWN_ZH)) for _ in range(rng.randint(1, 12))),
    lambda: rng.choice(
        [
            "Café",
            "naïve",
            "Résumé",
            "ÜBER",
            "Hello",
            "WORLD",
            "unaffable",
            "Running",
            "summarization",
            "CPT",
            "BART",
            "ROUGE-L",
            "don't",
            "e-mail",
            "São",
            "Zoë",
        ]
    ),
    lambda: rng.choice(["2020", "3.14", "1,000", "100%", "$5", "2020年", "１２３", str(rng.randint(0, 10**6))]),
    lambda: rng.choice(list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list(ZH_PUNCT) + ["...", "——"]),
    lambda: rng.choice([" ", "  ", "\t", "\u3000", "\u00a0", "\r", " \t "]),
    lambda: rng.choice(["\x01", "\x7f", "\u200b", "\ufeff", "\x00", "\ufffd", "\x1b"]),
    lambda: rng.choice(["😀", "🎉", "👍🏻", "\u2764\ufe0f"]),
    lambda: rng.choice(["[SEP]", "[MASK]", "[mask]", "[unused5]", "[CLS]x"]),
    lambda: rng.choice(["ab" * 60, "a" * 100, "a" * 101, "un" + "aff" * 33]),  # the limit is 100 chars
    lambda: rng.choice(
        ["e\u0301", "\u0301", "\uf900", "\u3400", "\U00020000", "한국어", "ひらがな", "αβγ", "ＡＢＣ", "ａ", "Ａ"]
    ),
]
WEIGHTS = [8, 5, 3, 5, 4, 1, 1, 1, 1, 2]


def random_line():
    parts = rng.choices(SEGMENTS, WEIGHTS, k=rng.randint(1, 14))
    return "".join(part() + rng.choice(["", "", " "]) for part in parts)


LINES = [random_line() for _ in range(400)] + ["", " ", "\t\r\n", "Café naïve", "ａ１Ａ"]


def test_pieces_and_ids_match_bert_tokenizer(tok, vocab):
    for oracle in oracles(vocab):
        for line in LINES:
            expected = oracle.tokenize(line)
            assert tok.tokenize(line) == expected, (type(oracle).__name__, line)
            assert tok.encode(line) == oracle.convert_tokens_to_ids(expected), (type(oracle).__name__, line)


def test_corpus_covers_the_edges(tok, vocab):
    pieces = [piece for line in LINES for piece in tok.tokenize(line)]
    for piece in ["[UNK]", "cafe", "naive", "un", "##aff", "##able", "，", "😀", "[SEP]", "\u8c48"]:
        assert piece in pieces, piece
    assert ["a"] + ["##a"] * 99 in [tok.tokenize(line)[-100:] for line in LINES if "a" * 100 in line]
    # A duplicated line: text maps to the later id, and both ids decode.
    the = [i for i, line in enumerate(vocab.read_text(encoding="utf-8").split("\n")) if line == "the"]
    assert len(the) == 2 and tok.encode("the") == [the[1]] and tok.decode([the[0]]) == "the"


# Where transformers 5's Rust-backed BertTokenizer (tokenizers 0.23) departs
# from the classic Python algorithm, we give the classic answer, which is what
# CPT was trained on. The Rust answer is noted for each.
CLASSIC_ONLY = [
    # Python's str.lower gives a word-final capital sigma the final form (Rust: "##σ").
    ("ΑΣ", ["α", "##ς"]),
    # U+2B820..U+2B91F are BERT CJK ideographs (Rust's range starts at U+2B920: one [UNK] word).
    ("\U0002b820\U0002b821", ["\U0002b820", "\U0002b821"]),
    # A code point unassigned in Python's Unicode database is dropped (Rust keeps it: [UNK]).
    ("a\u0378a", ["a", "##a"]),
    # Punctuation added in Unicode 11 splits words (Rust's category tables predate it: [UNK]).
    ("a\u2e4fa", ["a", "\u2e4f", "a"]),
    # A vocab line with a trailing space is that token, space included (Rust trims it: "x").
    ("x", ["[UNK]"]),
]


@pytest.mark.parametrize("text,expected", CLASSIC_ONLY)
def test_classic_bert_where_the_rust_backend_differs(tmp_path, text, expected):
    lines = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "##a",
        "α",
        "##σ",
        "##ς",
        "\U0002b820",
        "\U0002b821",
        "\u2e4f",
        "x ",
    ]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert WordPieceTokenizer.from_vocab_file(path).tokenize(text) == expected
    for oracle in oracles(path)[1:]:  # the classic one, where this transformers has it
        assert oracle.tokenize(text) == expected


def test_decode_round_trips_chinese(tok):
    text = "我爱北京天安门。今天天气很好，我们去公园吧！“中文摘要”（模型）"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.tokenize(text)) == text
    assert tok.decode(" ".join(tok.tokenize(text))) == text
    assert tok.decode(tok.encode_source(text) + [tok.pad_id] * 3) == text


def test_decode_spaces_only_between_non_chinese_words(tok):
    text = "CPT模型在ROUGE上提升了2.5分，Unaffable 😀！"
    assert tok.decode(tok.encode(text)) == "cpt模型在rouge上提升了2 . 5分，unaffable 😀！"
    assert tok.decode(["un", "##aff", "##able", "中", "##文", "[MASK]", "[UNK]", "[SEP]"]) == "unaffable中文[UNK]"
    assert tok.decode([tok.cls_id, tok.unk_id, tok.sep_id, tok.pad_id]) == "[UNK]"
    for bad in (99999, -1, 2.0):
        with pytest.raises(HashEEError, match=r"id .* is not in vocab file \S*vocab\.txt"):
            tok.decode([bad])


def test_special_ids_and_cpt_layout(tok):
    # Line numbers are ids: the specials sit where BERT-Chinese puts them.
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.decoder_start_id == tok.sep_id
    body = tok.encode("我爱北京")
    assert len(body) == 4
    assert tok.encode_source("我爱北京") == [101, *body, 102]
    assert tok.encode_target("我爱北京") == [101, *body, 102]
    assert tok.encode_source("我爱北京", max_len=4) == [101, *body[:2], 102]
    assert tok.encode_target("", max_len=2) == [101, 102]
    with pytest.raises(HashEEError, match="max_len"):
        tok.encode_source("我", max_len=1)


@pytest.mark.parametrize(
    "content,message",
    [
        (None, r"cannot read vocab file \S*vocab\.txt"),
        (b"", r"vocab file \S*vocab\.txt is empty"),
        (b"[PAD]\n[UNK]\n\xff\xfe\n[CLS]\n[SEP]\n", r"vocab file \S*vocab\.txt, line 3: not valid UTF-8"),
        (b"[PAD]\n[UNK]\n[SEP]\n", r"vocab file \S*vocab\.txt has no \[CLS\] line"),
        ("[MASK]\n中\n".encode(), r"vocab file \S*vocab\.txt has no \[PAD\], \[UNK\], \[CLS\], \[SEP\] line"),
    ],
)
def test_bad_vocab_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(HashEEError, match=message) as info:
        WordPieceTokenizer.from_vocab_file(path)
    assert "\n" not in str(info.value)


def test_vocab_lines_are_ids_even_blank_or_crlf(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\r\n\r\n[UNK]\r\n[CLS]\n[SEP]\n\xe4\xb8\xad\n")
    tok = WordPieceTokenizer.from_vocab_file(path)
    assert (tok.vocab_size, tok.unk_id, tok.encode("中"), tok.decode([5, 1, 5])) == (6, 2, [5], "中中")


CLI_INPUT = "我爱北京天安门。\n".encode() + b"bad \xff\xfe line\n" + "Hello, Café 2020年！\r\n".encode()


def test_cli_writes_pieces_and_counts_undecodable_lines(vocab, tmp_path):
    out, err = io.BytesIO(), io.StringIO()
    assert main(["--vocab", str(vocab)], io.BytesIO(CLI_INPUT), out, err) == 0
    lines = out.getvalue().decode("utf-8").split("\n")
    assert lines == ["我 爱 北 京 天 安 门 。", "", "hello , cafe 2020 年 ！", ""]
    assert "line 2: not valid UTF-8" in err.getvalue()
    assert "skipped 1 line(s)" in err.getvalue()

    back, err = io.BytesIO(), io.StringIO()
    assert main(["--vocab", str(vocab), "--decode"], io.BytesIO(out.getvalue()), back, err) == 0
    assert back.getvalue().decode("utf-8") == "我爱北京天安门。\n\nhello , cafe 2020年！\n"
    assert err.getvalue() == ""

    err = io.StringIO()
    assert main(["--vocab", str(tmp_path / "missing.txt")], io.BytesIO(b""), io.BytesIO(), err) == 1
    assert err.getvalue().startswith("error: cannot read vocab file") and err.getvalue().count("\n") == 1


@pytest.mark.slow
def test_cli_module_entry(vocab):
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_hashee.cli.wordpiece", "--vocab", str(vocab)],
        input=CLI_INPUT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode("utf-8").split("\n")[1:3] == ["", "hello , cafe 2020 年 ！"]
    assert b"line 2: not valid UTF-8" in proc.stderr
