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
    """The built-in corpus, prepared once: both examples start with prepare.sh, which skips a finished run.
    A calib split of 200 pairs (the demo's 1,000 take minutes to generate once per candidate)."""
    work = tmp_path_factory.mktemp("sample") / "work"
    proc = _example("sample/prepare.sh", work, CALIB="200")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work


def _work_with_data(prepared, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(prepared, work)
    return work


def test_main_job_prints_the_comparison_and_summaries_side_by_side(prepared, tmp_path):
    """The demo's shape at a few updates (its figures at full length are in the README)."""
    work = _work_with_data(prepared, tmp_path)
    assert (work / "data-bin" / "calib.src-tgt.src.idx").exists()
    assert len((work / "raw" / "calib.src").read_text().splitlines()) == 200
    # At delta 0.9 every candidate is certified whatever 30 updates learned (a loss is a signed ROUGE-L
    # difference, far below 0.9 on average), so the marked rows are known in advance.
    proc = _example(
        "sample/run.sh",
        work,
        BASE_UPDATES="30",
        MAX_UPDATE="4",
        CALIBRATE="0.9",
        TIMING_ROUNDS="1",
        STATIC_DEPTHS="3,2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    static = ["static half depth, decoder layers 3", "static half depth, decoder layers 2"]
    labels = ["full depth", *static, "HashEE, encoder exits", "HashEE, encoder+decoder exits"]
    summary = json.loads((work / "compare" / "compare.json").read_text())
    # the certified rows are marked, not copied: one row per trained setting
    assert [row["label"] for row in summary["rows"]] == labels
    assert [c["method"] for c in summary["calibration"]] == ["static-half", "hashee-enc", "hashee-encdec"]
    for decision in summary["calibration"]:
        assert (decision["loss"], decision["p_value"], decision["subset"]) == ("drop", "wsr", "calib")
        assert decision["examples"] == 200
    assert [c["value"] for c in summary["calibration"][0]["candidates"]] == ["3", "2"]  # deepest decoder first
    marked = [row["label"] for row in summary["rows"] if "calibration" in row]
    assert marked == labels[2:]  # static depth's fastest certified value, then each HashEE row
    assert "\n* at delta 0.9 (epsilon 0.1; expected ROUGE-L drop against the reference" in out
    for row in summary["rows"][2:]:
        assert -0.9 <= row["calibration"]["test_loss"] <= 0.9
        assert f"\n  {row['label']}: p " in out
    assert summary["test_documents"] == 100
    width = max([40] + [len(row["label"]) + 2 * ("calibration" in row) for row in summary["rows"]])
    for row in summary["rows"]:
        cell = row["label"] + (" *" if "calibration" in row else "")
        assert f"\n{cell:<{width}} {row['rouge1']:6.2f}" in out
    assert out.count("-- test document") == 3
    full, half3, half2, enc, encdec = summary["rows"]
    assert half2["encoder_flops_x"] == 2.0 and half2["decoder_flops_x"] > half3["decoder_flops_x"] > 1.0
    assert enc["decoder_flops_x"] == 1.0
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
