"""Session fixtures: a small real-text corpus and its binarized form (helpers.py has the rest);
how the suite shares the cores."""

import os
import sysconfig
from pathlib import Path

import pytest
import torch

from fairseq_hashee.cli.sample_data import docstring_pairs

from helpers import run_cli

# Under pytest-xdist every worker, and every fairseq-train/-generate it starts, gets its share of the
# cores: torch's default of one OpenMP thread per core, in two workers and their subprocesses at once
# on two cores, spends half its time spin-waiting (the suite: 12 min on the 2-core VM with it, 6 without).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

# `make test` hands whole files to 2-4 processes (pytest-xdist, --dist loadfile) in collection order
# (--no-loadscope-reorder): longest first, so that no long file starts last and runs alone while the
# other cores idle. Seconds on the 2-core VM (--durations=0, 2 workers): 135, 121, 103, 91, 89, 65,
# 58, 25, 11, 11; every other file takes under 4 s and follows in pytest's order.
LONGEST_FIRST = (
    "test_exit_methods_cli.py",
    "test_main_job.py",
    "test_compare.py",
    "test_pipelines.py",
    "test_cli.py",
    "test_bad_inputs.py",
    "test_free_cli.py",
    "test_cpt_cli.py",
    "test_calibrate_cli.py",
    "test_resume.py",
    "test_table_file.py",
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
