"""The README's main job and the hash-type ablation, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow


def test_main_job_prints_rouge_and_speedup(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "sample" / "run.sh"), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "ROUGE-1:" in out and "ROUGE-L:" in out
    rouge1 = float(out.split("ROUGE-1:")[1].split()[0])
    assert rouge1 > 5.0, out[-2000:]
    assert "speed-up (FLOPs): encoder" in out
    hyps = (tmp_path / "work" / "generate" / "test.hyp").read_text().splitlines()
    assert len(hyps) >= 90 and all(h.strip() for h in hyps)


def test_hash_type_ablation_prints_one_row_per_type(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "MAX_UPDATE": "20", "BEAM": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "ablation" / "hash_types.sh"), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads((tmp_path / "work" / "ablation.json").read_text())
    assert [r["hash"] for r in rows] == ["random", "random-incons", "frequency", "mi", "cluster"]
    for row in rows:
        assert row["speedup_encoder"] > 1.0 and row["speedup_total"] > 1.0
        assert f"\n{row['hash']:<14}" in proc.stdout
