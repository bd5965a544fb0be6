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
    proc = _example("sample/run.sh", work, BASE_UPDATES="30", MAX_UPDATE="4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    labels = ["full depth", "static half depth", "HashEE, encoder exits", "HashEE, encoder+decoder exits"]
    summary = json.loads((work / "compare" / "compare.json").read_text())
    assert [row["label"] for row in summary["rows"]] == labels
    assert summary["test_documents"] == 100
    for row in summary["rows"]:
        assert f"\n{row['label']:<40} {row['rouge1']:6.2f}" in out
    assert out.count("-- test document") == 3
    full, half, enc, encdec = summary["rows"]
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
