"""hashee-compare says how far a training run is while it runs (issue: minutes with nothing printed)."""

from fairseq_hashee.compare import runs

# fairseq-train --log-format simple, as hashee-compare runs it
LOG = """\
2026-12-02 16:49:01 | INFO | fairseq_cli.train | model hashee_bart_base, criterion LabelSmoothedCrossEntropyCriterion
2026-12-02 16:49:25 | INFO | train_inner | epoch 001:    100 / 293 loss=9.503, nll_loss=9.227, num_updates=100, lr=0.001
2026-12-02 16:49:55 | INFO | train_inner | epoch 001:    200 / 293 loss=7.25, nll_loss=7.1, num_updates=200, lr=0.0007
"""


def _report(tmp_path, text, total=1000, elapsed=60.0):
    log = tmp_path / "train.log"
    log.write_text(text)
    said = []
    runs.training_progress(log, "base", total, said.append)(elapsed)
    return said


def test_progress_line_from_fairseq_log(tmp_path):
    # 200 of 1000 updates in 60 s: 800 more at the same pace take 4 minutes
    assert _report(tmp_path, LOG) == ["   base: 200/1000 updates, loss 7.25, 1.0 min elapsed, about 4.0 min left"]


def test_a_resumed_run_counts_its_pace_from_where_it_resumed(tmp_path):
    resumed = "INFO | fairseq.trainer | Loaded checkpoint x/checkpoint_last.pt (epoch 2 @ 100 updates)\n" + LOG
    # 100 updates in this run's 60 s: 800 left take 8 minutes
    assert _report(tmp_path, resumed)[0].endswith("about 8.0 min left")


def test_before_the_first_logged_update(tmp_path):
    said = _report(tmp_path, "INFO | fairseq_cli.train | loading\n", elapsed=45.0)
    assert said == ["   base: starting (45 s elapsed)"]


def test_run_tool_reports_while_the_run_lasts(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "PROGRESS_SECONDS", 0.2)
    calls = []
    runs.run_tool(
        "timeit", ["-n", "1", "-r", "1", "import time; time.sleep(1)"], tmp_path / "log", "sleep", progress=calls.append
    )
    assert len(calls) >= 2 and all(0 < elapsed < 5 for elapsed in calls)
