"""hashee-prepare: the readers on the bundled raw samples (tests/data/raw), cleaning, splits, bad input."""

import hashlib
import json
import os
import shutil

import pytest

from fairseq_hashee.cli.prepare import main, prepare
from fairseq_hashee.corpora.cnndm import parse_story
from fairseq_hashee.corpora.records import Record, Skip, Tally, clean, clean_text
from fairseq_hashee.errors import HashEEError

from helpers import REPO

RAW = REPO / "tests" / "data" / "raw"


@pytest.fixture
def raw_copy(tmp_path):
    """A writable copy of one bundled release."""

    def copy(dataset):
        target = tmp_path / "raw" / dataset
        shutil.copytree(RAW / dataset, target)
        return target

    return copy


def lines(folder, name):
    return (folder / name).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize(
    "dataset, counts, skipped",
    [
        ("cnndm", {"train": 10, "valid": 2, "test": 3}, {"no highlights": 1}),
        ("reddit", {"train": 16, "valid": 2, "test": 2}, {"no tldr": 2}),
        ("csl", {"train": 12, "valid": 2, "test": 3}, {}),
        ("ttnews", {"train": 15, "valid": 1, "test": 3}, {}),
    ],
)
def test_bundled_release_counts(tmp_path, dataset, counts, skipped):
    report = prepare(dataset, str(RAW / dataset), str(tmp_path / "out"))
    assert report["examples"] == counts
    assert {reason: entry["count"] for reason, entry in report["skipped"].items()} == skipped
    assert json.loads((tmp_path / "out" / "prepare.json").read_text()) == report
    for split, count in counts.items():
        source, target = lines(tmp_path / "out", f"{split}.source"), lines(tmp_path / "out", f"{split}.target")
        assert len(source) == len(target) == count and all(source) and all(target)


def test_cnndm_story_becomes_paragraphs_and_closed_highlights():
    story = "(CNN) -- First paragraph.\n\nSecond one\n\n@highlight\n\nA highlight\n\n@highlight\n\nDone!\n"
    assert parse_story(story, "x.story") == Record(
        "(CNN) -- First paragraph. Second one", "A highlight. Done!", "x.story"
    )
    assert parse_story("Only text.\n", "y.story") == Skip("no highlights", "y.story")


def test_cnndm_splits_follow_the_url_lists_by_sha1(tmp_path):
    prepare("cnndm", str(RAW / "cnndm"), str(tmp_path / "out"))
    url = (RAW / "cnndm" / "url_lists" / "all_test.txt").read_text().splitlines()[0]
    story = next(RAW.glob(f"cnndm/*/stories/{hashlib.sha1(url.encode()).hexdigest()}.story"))
    assert story.read_text().split("\n")[0].replace("(CNN) -- ", "") in lines(tmp_path / "out", "test.source")[0]


def test_cnndm_missing_story_or_url_list_is_an_error(raw_copy, tmp_path):
    raw = raw_copy("cnndm")
    url = (raw / "url_lists" / "all_val.txt").read_text().splitlines()[1]
    next(raw.glob(f"*/stories/{hashlib.sha1(url.encode()).hexdigest()}.story")).unlink()
    with pytest.raises(HashEEError, match=rf"all_val.txt:2: no story \w+.story for {url} \(1 of 2 URLs have none"):
        prepare("cnndm", str(raw), str(tmp_path / "out"))
    (raw / "url_lists" / "all_test.txt").unlink()
    with pytest.raises(HashEEError, match=r"cnndm: no all_test.txt \(the CNN/DM URL list of that split\)"):
        prepare("cnndm", str(raw), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_undecodable_bytes_and_empty_entries_are_skipped_and_counted(raw_copy, tmp_path):
    raw = raw_copy("reddit")
    path = raw / "tifu_all_tokenized_and_filtered.json"
    data = path.read_bytes().split(b"\n")
    data[0] = data[0].replace(b"so this happened", b"so this \xff\xfe happened")
    data[2] = b""
    data[3] = data[3].replace(b'"tldr": "', b'"tldr": " \\u200b\\t')  # only invisible text before the real tldr
    data[6] = json.dumps({"selftext_without_tldr": "\u200b \n\t", "tldr": "a summary ."}).encode()
    path.write_bytes(b"\n".join(data))
    report = prepare("reddit", str(raw), str(tmp_path / "out"))
    skipped = {reason: entry["count"] for reason, entry in report["skipped"].items()}
    assert skipped == {"no tldr": 2, "not valid UTF-8": 1, "empty line": 1, "empty document": 1}
    assert report["skipped"]["not valid UTF-8"]["first"].endswith("tifu_all_tokenized_and_filtered.json:1")
    assert sum(report["examples"].values()) == 20 - 3


def test_cleaning_drops_control_and_format_characters_and_folds_whitespace():
    assert clean_text("a\u200bb\x07 c\n\n d\u3000e\t\ufeff") == "ab c d e"
    tally = Tally()
    kept = list(
        clean(
            [
                Record("doc", "\u200b", "f:1"),
                Record("ok \ud83d", "s", "f:2"),
                Skip("no tldr", "f:3"),
                Record(" doc\r\n", " sum ", "f:4"),
            ],
            tally,
        )
    )
    assert kept == [Record("doc", "sum", "f:4")]
    assert tally.summary() == (
        "skipped 3: empty summary 1 (first: f:1), not valid UTF-8 1 (first: f:2), no tldr 1 (first: f:3)"
    )


def test_random_split_is_seeded_and_sized(tmp_path):
    prepare("reddit", str(RAW / "reddit"), str(tmp_path / "a"), seed=1)
    prepare("reddit", str(RAW / "reddit"), str(tmp_path / "b"), seed=1)
    other = prepare("reddit", str(RAW / "reddit"), str(tmp_path / "c"), seed=2, valid_fraction=0.25, test_fraction=0.25)
    assert lines(tmp_path / "a", "test.source") == lines(tmp_path / "b", "test.source")
    assert other["examples"] == {"train": 10, "valid": 5, "test": 5}
    everything = sorted(sum((lines(tmp_path / "a", f"{s}.source") for s in ("train", "valid", "test")), []))
    assert everything == sorted(sum((lines(tmp_path / "c", f"{s}.source") for s in ("train", "valid", "test")), []))
    with pytest.raises(HashEEError, match="--valid-fraction: csl comes with its own splits"):
        prepare("csl", str(RAW / "csl"), str(tmp_path / "d"), valid_fraction=0.1)
    with pytest.raises(HashEEError, match="nothing left for train after valid 10, test 10"):
        prepare("reddit", str(RAW / "reddit"), str(tmp_path / "e"), valid_fraction=0.5, test_fraction=0.5)


def test_ttnews_holds_out_test_without_the_evaluation_file(raw_copy, tmp_path):
    raw = raw_copy("ttnews")
    shutil.rmtree(raw / "toutiao4nlpcc_eval")
    report = prepare("ttnews", str(raw), str(tmp_path / "out"), test_fraction=0.2)
    assert report["examples"] == {"train": 12, "valid": 1, "test": 3}
    assert all("<Paragraph>" not in line for line in lines(tmp_path / "out", "train.source"))


def test_line_files_of_different_lengths_are_an_error(tmp_path):
    raw = tmp_path / "lines"
    raw.mkdir()
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        (raw / f"{split}.source").write_text("".join(f"document {i}\n" for i in range(n)))
        (raw / f"{split}.target").write_text("".join(f"summary {i}\n" for i in range(n)))
    assert prepare("lines", str(raw), str(tmp_path / "ok"))["examples"] == {"train": 3, "valid": 1, "test": 1}
    (raw / "train.target").write_text("summary 0\nsummary 1\n")
    with pytest.raises(HashEEError, match=r"train.source has 3 lines but .*train.target has 2; line i of one"):
        prepare("lines", str(raw), str(tmp_path / "bad"))


def test_a_failure_leaves_no_output_and_an_existing_one_needs_force(raw_copy, tmp_path):
    raw = raw_copy("ttnews")
    with open(raw / "toutiao4nlpcc" / "train_with_summ.txt", "a", encoding="utf-8") as out:
        out.write("{not json\n")  # the last line: train/valid are complete in memory, test already written
    with pytest.raises(HashEEError, match=r"train_with_summ.txt:17: not JSON"):
        prepare("ttnews", str(raw), str(tmp_path / "out" / "text"))
    assert os.listdir(tmp_path / "out") == []  # not even a temporary folder

    prepare("csl", str(RAW / "csl"), str(tmp_path / "csl"))
    with pytest.raises(HashEEError, match=r"csl: exists; pass --force to overwrite it"):
        prepare("csl", str(RAW / "csl"), str(tmp_path / "csl"))
    prepare("reddit", str(RAW / "reddit"), str(tmp_path / "csl"), force=True)
    assert json.loads((tmp_path / "csl" / "prepare.json").read_text())["dataset"] == "reddit"
    assert sorted(os.listdir(tmp_path)) == ["csl", "out", "raw"]


def test_cli_reports_counts_and_one_line_errors(tmp_path, capsys):
    main(["csl", str(RAW / "csl"), str(tmp_path / "out")])
    assert capsys.readouterr().out.splitlines() == ["csl: train 12, valid 2, test 3 examples", "nothing skipped"]
    with pytest.raises(SystemExit, match=r"^error: .*missing: no such directory$"):
        main(["csl", str(tmp_path / "missing"), str(tmp_path / "out2")])
    with pytest.raises(
        SystemExit, match=r"^error: .*: no tifu_all_tokenized_and_filtered.json \(the Reddit TIFU release\)$"
    ):
        main(["reddit", str(RAW / "csl"), str(tmp_path / "out3")])
