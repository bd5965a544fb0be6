"""The README's main job and the hash-type ablation, end to end."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow


def _example(script, work, **knobs):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], **knobs}
    return subprocess.run(
        ["bash", str(REPO / "examples" / script), str(work)], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The built-in corpus, prepared once: both examples start with prepare.sh, which skips a finished run."""
    work = tmp_path_factory.mktemp("sample") / "work"
    proc = _example("sample/prepare.sh", work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


def _work_with_data(prepared, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(prepared, work)
    return work


def test_main_job_prints_the_comparison_and_summaries_side_by_side(prepared, tmp_path):
    """The demo's shape at a few updates (its figures at full length are in the README)."""
    work = _work_with_data(prepared, tmp_path)
    # At delta 0.9 every method's one candidate is certified whatever 30 updates learned (a loss is a
    # ROUGE-L difference, far below 0.9 on average), so the calibrated rows are known in advance.
    proc = _example("sample/run.sh", work, BASE_UPDATES="30", MAX_UPDATE="4", CALIBRATE="0.9", TIMING_ROUNDS="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    labels = ["full depth", "static half depth", "HashEE, encoder exits", "HashEE, encoder+decoder exits"]
    summary = json.loads((work / "compare" / "compare.json").read_text())
    assert [row["label"] for row in summary["rows"]] == labels + [f"{label}, at delta 0.9" for label in labels[1:]]
    assert [c["method"] for c in summary["calibration"]] == ["static-half", "hashee-enc", "hashee-encdec"]
    assert "\nat delta 0.9 (epsilon 0.1; risk consistency" in out
    for row, original in zip(summary["rows"][len(labels) :], summary["rows"][1 : len(labels)]):
        assert 0.0 <= row["calibration"]["test_loss"] <= 0.9
        assert f"\n  {row['label']}: p " in out
        # each method's one candidate is the row the comparison generated: shown with its timings,
        # not generated, timed or printed beside the summaries again
        assert row["same_as"] == original["label"] and row["wall_x"] == original["wall_x"]
        assert f"   {row['label']} " not in out
    assert summary["test_documents"] == 100
    width = max(len(row["label"]) for row in summary["rows"])
    for row in summary["rows"]:
        assert f"\n{row['label']:<{width}} {row['rouge1']:6.2f}" in out
    assert out.count("-- test document") == 3
    full, half, enc, encdec = summary["rows"][: len(labels)]
    assert half["encoder_flops_x"] == 2.0 and enc["decoder_flops_x"] == 1.0
    assert enc["encoder_flops_x"] > 1.0 and encdec["decoder_flops_x"] > 1.0


def test_hash_type_ablation_prints_one_row_per_type(prepared, tmp_path):
    """Two of the five types (one table from statistics, one without): each type is the same script run."""
    work = _work_with_data(prepared, tmp_path)
    proc = _example("ablation/hash_types.sh", work, MAX_UPDATE="20", BEAM="1", HASH_TYPES="random mi")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads((work / "ablation.json").read_text())
    assert [r["hash"] for r in rows] == ["random", "mi"]
    for row in rows:
        assert row["speedup_encoder"] > 1.0 and row["speedup_total"] > 1.0
        assert f"\n{row['hash']:<14}" in proc.stdout
