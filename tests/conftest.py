"""Session fixtures: a small real-text corpus and its binarized form (helpers.py has the rest)."""

import sysconfig
from pathlib import Path

import pytest

from fairseq_hashee.cli.sample_data import docstring_pairs

from helpers import run_cli

# `make test` hands whole files to 2-4 processes (pytest-xdist, --dist loadfile) in collection order
# (--no-loadscope-reorder): longest first, so that no long file starts last and runs alone while the
# other cores idle. Seconds on the 2-core VM (--durations=0); files not listed take under 30 s and
# follow in pytest's order.
LONGEST_FIRST = (
    "test_main_job.py",
    "test_exit_methods_cli.py",
    "test_incremental.py",
    "test_compare.py",
    "test_cli.py",
    "test_pipelines.py",
    "test_cpt_cli.py",
    "test_bad_inputs.py",
    "test_calibrate_cli.py",
    "test_resume.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A few hundred real (document, summary) pairs, word-tokenized, in fairseq-preprocess layout."""
    pairs = docstring_pairs(Path(sysconfig.get_paths()["stdlib"]) / "json")
    pairs += docstring_pairs(Path(sysconfig.get_paths()["stdlib"]) / "email")
    assert len(pairs) > 60, len(pairs)
    root = tmp_path_factory.mktemp("corpus")
    splits = {"train": pairs[20:], "valid": pairs[:10], "test": pairs[10:20]}
    for split, rows in splits.items():
        for side, column in (("src", 0), ("tgt", 1)):
            text = "".join(" ".join(row[column].lower().split()[:60]) + "\n" for row in rows)
            (root / f"{split}.{side}").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def data_bin(text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("data-bin")
    run_cli(
        "fairseq_cli.preprocess",
        "--source-lang",
        "src",
        "--target-lang",
        "tgt",
        "--trainpref",
        text_corpus / "train",
        "--validpref",
        text_corpus / "valid",
        "--testpref",
        text_corpus / "test",
        "--joined-dictionary",
        "--nwordssrc",
        "400",
        "--destdir",
        out,
        "--workers",
        "1",
    )
    return out
