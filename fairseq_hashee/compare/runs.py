"""Running fairseq-train and fairseq-generate for the comparison, resumably, and reading what they print.

Every run is a fairseq command-line tool in its own process, exactly as a user
would start it; its log is kept next to its outputs. A run that finished
leaves a marker (training) or its result file (generation), so a rerun of the
comparison skips it; an interrupted training run resumes from its
``checkpoint_last.pt`` as fairseq-train always does.
"""

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..checkpoints import load_checkpoint
from ..errors import HashEEError
from ..io_utils import atomic_write
from ..modules import flops
from .methods import Stage

USER_DIR = str(Path(__file__).resolve().parent.parent)
# The plugin's report under the names the comparison's rows carry.
_ROW_KEYS = dict(
    zip(
        flops.REPORT_KEYS,
        (
            "encoder_flops_x",
            "decoder_flops_x",
            "total_flops_x",
            "encoder_mean_exit",
            "decoder_mean_exit",
            "decoder_calls",
        ),
    )
)
_TRANSLATED = re.compile(r"Translated (\S+) sentences \((\S+) tokens\) in .* \((\S+) sentences/s")


@dataclass
class Data:
    """The binarized dataset and the options every run of the comparison shares."""

    path: str
    source_lang: str
    target_lang: str
    arch: str
    model_options: List[str]  # dimensions, for every training stage
    train_options: List[str]  # optimisation, batches, positions: every training stage
    generate_options: List[str]  # beam, lengths, batches, positions, post-processing: every generation
    device_options: List[str]  # --cpu, --fp16 ...

    def common(self) -> List[str]:
        return [
            self.path,
            "--user-dir",
            USER_DIR,
            "--task",
            "hashee_summarization",
            "--source-lang",
            self.source_lang,
            "--target-lang",
            self.target_lang,
            *self.device_options,
        ]


def _last_error(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line:
            return line.strip()
    return lines[-1].strip() if lines else "no output"


# How often a training run says how far it is, and what fairseq's log lines say of it.
PROGRESS_SECONDS = 30
_UPDATES = re.compile(r"num_updates[= ](\d+)")
_LOSS = re.compile(r"\bloss[= ]([-\d.]+)")
_RESUMED = re.compile(r"Loaded checkpoint .* @ (\d+) updates")


def run_tool(
    module: str,
    args: Sequence[str],
    log: Path,
    what: str,
    stdout: Optional[Path] = None,
    threads: Optional[int] = None,
    progress: Optional[Callable[[float], None]] = None,
) -> None:
    """Run ``python -m module args``; on failure one line naming the run, its error and its log.
    ``progress`` is called with the seconds elapsed every ``PROGRESS_SECONDS`` while it runs."""
    command = [sys.executable, "-m", module, *map(str, args)]
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as err:
        out = open(stdout, "w", encoding="utf-8") if stdout else err
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
            while True:
                try:
                    proc.wait(timeout=PROGRESS_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if progress is not None:
                        progress(time.monotonic() - started)
        finally:
            if proc.poll() is None:  # interrupted: the run goes with the comparison
                proc.kill()
                proc.wait()
            if stdout:
                out.close()
    if proc.returncode != 0:
        raise HashEEError(f"{what} failed: {_last_error(log)} (log: {log})")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def training_progress(log: Path, name: str, total: int, say: Callable[[str], None]) -> Callable[[float], None]:
    """What a training run reports while it runs: updates done of ``total``, the last logged
    loss, elapsed and estimated remaining time, one line read from the end of its fairseq log."""

    def report(elapsed: float) -> None:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        done = [int(m) for m in _UPDATES.findall(text[-20000:])]
        if not done:
            say(f"   {name}: starting ({_minutes(elapsed)} elapsed)")
            return
        resumed = _RESUMED.search(text[:20000])  # a resumed run started past update 0
        first = int(resumed.group(1)) if resumed else 0
        losses = _LOSS.findall(text[-20000:])
        line = f"   {name}: {done[-1]}/{total} updates"
        if losses:
            line += f", loss {float(losses[-1]):.2f}"
        line += f", {_minutes(elapsed)} elapsed"
        if done[-1] > first:
            left = elapsed / (done[-1] - first) * max(total - done[-1], 0)
            line += f", about {_minutes(left)} left"
        say(line)

    return report


def _train_args(data: Data, save_dir: Path, start: Optional[Path], options: Sequence[str], updates: int) -> List[str]:
    begin = [] if start is None else ["--finetune-from-model", start]
    args = [*data.common(), "--arch", data.arch, *data.model_options, *begin, *options, "--max-update", updates]
    args += ["--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple", *data.train_options]
    return [str(a) for a in args]


def stage_finished(data: Data, save_dir: Path, start: Optional[Path], options: Sequence[str], updates: int) -> bool:
    """Whether this very run (same command) finished before; another command there is refused."""
    marker = save_dir / ".finished"
    if not marker.exists() or not (save_dir / "checkpoint_best.pt").exists():
        return False
    if json.loads(marker.read_text(encoding="utf-8")) != _train_args(data, save_dir, start, options, updates):
        raise HashEEError(
            f"{save_dir}: trained with other options than this comparison's; use another --work-dir or delete it"
        )
    return True


def train_stage(
    data: Data,
    save_dir: Path,
    start: Optional[Path],
    options: Sequence[str],
    updates: int,
    threads: Optional[int] = None,
    say: Optional[Callable[[str], None]] = None,
) -> Path:
    """Train one stage into ``save_dir`` (kept when this run finished before); its best checkpoint.
    With ``say``, the run reports its progress every ``PROGRESS_SECONDS``."""
    best = save_dir / "checkpoint_best.pt"
    if stage_finished(data, save_dir, start, options, updates):
        return best
    save_dir.mkdir(parents=True, exist_ok=True)
    args = _train_args(data, save_dir, start, options, updates)
    log = save_dir / "train.log"
    progress = None if say is None else training_progress(log, save_dir.name, updates, say)
    run_tool("fairseq_cli.train", args, log, f"training {save_dir.name}", threads=threads, progress=progress)
    if not best.exists():
        raise HashEEError(f"training {save_dir.name} wrote no {best} (log: {save_dir / 'train.log'})")
    save_json(save_dir / ".finished", args)
    return best


def train_stages(
    data: Data,
    work: Path,
    stages: Sequence[Stage],
    start: Path,
    updates: Callable[[Stage], int],
    jobs: int,
    say: Callable[[str], None],
) -> Dict[str, Path]:
    """Train every stage once its start (and the stages whose checkpoints it reads, if any) is trained,
    up to ``jobs`` at a time; each stage's best checkpoint.

    On a CPU, runs side by side split its cores (OMP_NUM_THREADS): a small model's training does
    not use a second core well, so two runs of one thread each finish sooner than one after the other.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 and "--cpu" in data.device_options else None
    checkpoints: Dict[str, Path] = {"start": start}
    waiting, running = list(stages), {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while waiting or running:
            ready = [s for s in waiting if all(name in checkpoints for name in (s.start, *dict(s.reads).values()))]
            for stage in ready[: jobs - len(running)]:
                waiting.remove(stage)
                save_dir = work / "train" / stage.name
                number = len(stages) - len(waiting)
                options = stage.options
                for option, name in stage.reads:
                    options += (option, str(checkpoints[name]))
                begin = checkpoints[stage.start]
                if stage.fresh_tables and stage.start != "start":  # the shared start has no tables already
                    begin = save_dir / "start.pt"
                if stage_finished(data, save_dir, begin, options, updates(stage)):
                    say(f"== [{number}/{len(stages)}] train {stage.name}: kept {save_dir} (finished before)")
                else:
                    say(f"== [{number}/{len(stages)}] train {stage.name}: {updates(stage)} updates from {stage.start}")
                    if begin != checkpoints[stage.start]:
                        save_dir.mkdir(parents=True, exist_ok=True)
                        save_without_tables(load_checkpoint(str(checkpoints[stage.start])), begin)
                job = pool.submit(train_stage, data, save_dir, begin, options, updates(stage), threads, say)
                running[job] = (stage, time.perf_counter())
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in finished:
                stage, began = running.pop(job)
                checkpoints[stage.name] = job.result()
                say(f"   {stage.name}: {checkpoints[stage.name]} ({time.perf_counter() - began:.0f} s)")
    return checkpoints


def save_without_tables(state: dict, target: Path) -> None:
    """A loaded checkpoint saved to ``target`` without its exit tables, so that a model fine-tuned
    from it builds its own: a restored table wins over the one the task builds (docs/design.md
    section 2), as resuming needs."""
    import torch

    state["model"] = {k: v for k, v in state["model"].items() if not k.endswith("exit_table")}
    with atomic_write(str(target), binary=True) as out:
        torch.save(state, out)


def read_report(log: Path) -> Dict[str, float]:
    """The plugin's FLOPs report (with the decoder's calls, beam search's steps) and fairseq-generate's
    throughput (seconds, tokens generated), from a generation log."""
    text = log.read_text(encoding="utf-8", errors="replace")
    report = flops.parse_report(text)
    translated = _TRANSLATED.search(text)
    if not report or not translated:
        raise HashEEError(f"{log}: no speed-up report or throughput line; did fairseq-generate finish?")
    sentences, tokens, per_second = (float(group.replace(",", "")) for group in translated.groups())
    figures = {_ROW_KEYS[key]: value for key, value in report.items()}
    figures["seconds"] = sentences / per_second if per_second else float("inf")
    figures["tokens"] = int(tokens)
    return figures


def _run_generate(
    data: Data, checkpoint: Path, folder: Path, options: Sequence[str], what: str, subset: str = "test"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    args = [*data.common(), "--path", checkpoint, "--gen-subset", subset, *data.generate_options, *options]
    run_tool("fairseq_cli.generate", args, folder / "generate.log", what, folder / "generate.out")


def read_generate_out(path: Path) -> Dict[str, Dict[int, str]]:
    """fairseq-generate's output by line kind: ``S`` sources, ``T`` targets, ``D`` detokenized
    hypotheses (the best of each beam), each by sample id."""
    lines: Dict[str, Dict[int, str]] = {"S": {}, "T": {}, "D": {}}
    for line in path.read_text(encoding="utf-8").splitlines():
        tag, _, rest = line.partition("-")
        index, _, text = rest.partition("\t")
        if tag in lines and index.isdigit():
            # D-id <tab> score <tab> text; S and T lines have no score
            lines[tag][int(index)] = text.partition("\t")[2] if tag == "D" else text
    return lines


def generate(
    data: Data, checkpoint: Path, out_dir: Path, options: Sequence[str], subset: str = "test"
) -> Dict[str, object]:
    """Summarize a split (the test split unless ``subset``): hypotheses and references in the split's
    order, the report's figures."""
    _run_generate(data, checkpoint, out_dir, options, f"generating {out_dir.name}", subset)
    lines = read_generate_out(out_dir / "generate.out")
    hypotheses, references = lines["D"], lines["T"]
    if not hypotheses:
        raise HashEEError(f"generating {out_dir.name}: no hypotheses (log: {out_dir / 'generate.log'})")
    order = sorted(hypotheses)
    return {
        "ids": order,
        "hypotheses": [hypotheses[i] for i in order],
        "references": [references.get(i, "") for i in order],
        **read_report(out_dir / "generate.log"),
    }


def time_generation(data: Data, checkpoint: Path, out_dir: Path, options: Sequence[str]) -> float:
    """Generate again (into ``out_dir/timing``) and return fairseq-generate's own timing: no loading."""
    _run_generate(data, checkpoint, out_dir / "timing", options, f"timing {out_dir.name}")
    return read_report(out_dir / "timing" / "generate.log")["seconds"]


def load_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def save_json(path: Path, value) -> None:
    with atomic_write(str(path)) as out:
        json.dump(value, out, indent=1, ensure_ascii=False)
        out.write("\n")
