"""Compare every exit method on one dataset: train each, generate the test split, one table.

    hashee-compare DATA_BIN --work-dir WORK [--restore-file model.pt] [--methods full,hashee-enc,...]

Each method (fairseq_hashee/compare/methods.py) fine-tunes from the same
checkpoint with the same options, seed and number of updates, then
fairseq-generate summarizes the test split with the same decoding settings, at
each value of the method's knob (--sweep). Without --restore-file a full-depth
model is first trained from scratch on the same data (--base-updates) and
stands in for the pretrained checkpoint. Prints the table (ROUGE, FLOPs and
wall-clock speed-ups, efficiency) and three test documents with every row's
summary side by side; writes WORK/compare.json, WORK/compare.txt and
WORK/frontier.png (ROUGE-L against the wall-clock speed-up per decoding step).
Resumable: finished training runs and generations are not redone.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..checkpoints import load_checkpoint
from ..compare import calibrated, report
from ..compare import methods as method_lib
from ..compare.runs import Data, generate, load_json, read_generate_out, save_json, time_generation, train_stages
from ..compare.start import stack_depths, starting_checkpoint
from ..errors import HashEEError, install_one_line_errors
from ..io_utils import atomic_write
from ..rouge import rouge

DEFAULT_TRAIN = (
    "--optimizer adam --adam-betas (0.9,0.98) --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 200 "
    "--dropout 0.1 --max-tokens 4096 --truncate-source --skip-invalid-size-inputs-valid-test --num-workers 0"
)
DEFAULT_GENERATE = "--beam 4 --max-len-b 48 --batch-size 32 --truncate-source --skip-invalid-size-inputs-valid-test"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("data", help="binarized data (fairseq-preprocess) with train, valid and test splits")
    parser.add_argument("--work-dir", required=True, help="checkpoints, generations and the report go here")
    parser.add_argument("-s", "--source-lang", help="source language suffix (default: the data's only pair)")
    parser.add_argument("-t", "--target-lang", help="target language suffix")
    parser.add_argument(
        "--methods",
        default=",".join(method_lib.DEFAULT_METHOD_KEYS),
        help="methods to compare (full depth always runs); hashee-enc+PART, PART one of "
        f"{', '.join(method_lib.COMBINED_PARTS)}: that decoder method under HashEE's encoder exits",
    )
    parser.add_argument("--arch", default="hashee_bart_base", help="a hashee_bart_* or hashee_cpt_* architecture")
    parser.add_argument("--model-args", default="", help="model options for every stage, e.g. dimensions")
    parser.add_argument("--restore-file", help="checkpoint every method fine-tunes from (e.g. a converted BART)")
    parser.add_argument("--base-updates", type=int, help="without --restore-file: updates of the full-depth base")
    parser.add_argument("--max-update", type=int, default=1000, help="updates of each method's fine-tuning")
    parser.add_argument(
        "--frozen-updates", type=int, default=300, help="updates of the extra stages (DAT, ConsistentEE, LECO search)"
    )
    parser.add_argument("--train-args", default=DEFAULT_TRAIN, help="fairseq-train options of every stage")
    parser.add_argument("--generate-args", default=DEFAULT_GENERATE, help="fairseq-generate options of every row")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="METHOD=V1,V2",
        help="values of a method's knob (threshold, patience, ConsistentEE's alpha) instead of its defaults",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="training runs side by side (on CPU each gets cores/jobs threads)"
    )
    parser.add_argument("--timing-rounds", type=int, default=1, help="interleaved generation timings per row")
    parser.add_argument(
        "--references", help="the test split's reference summaries as text, one per line (default: the T- lines)"
    )
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="ROUGE tokenization")
    parser.add_argument("--examples", type=int, default=3, help="test documents shown side by side")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    parser.add_argument("--plot", default=None, help="the frontier PNG (default WORK/frontier.png)")
    calibrated.add_args(parser)
    return parser.parse_args(argv)


def _languages(data: Path, source: Optional[str], target: Optional[str]):
    if not data.is_dir():
        raise HashEEError(f"{data}: no such data folder")
    if source and target:
        pair = (source, target)
    else:
        found = sorted({tuple(p.name.split(".")[1].split("-")) for p in data.glob("test.*-*.*.idx")})
        if len(found) != 1:
            where = ", ".join("-".join(f) for f in found) or "no test split"
            raise HashEEError(f"{data}: pass --source-lang/--target-lang ({where} found)")
        pair = found[0]
    for split in ("train", "valid", "test"):
        for lang in pair:
            index = data / f"{split}.{pair[0]}-{pair[1]}.{lang}.idx"
            if not index.exists():
                raise HashEEError(f"{index}: missing; binarize the {split} split with fairseq-preprocess")
    return pair


def _sweeps(values: List[str]) -> Dict[str, List[str]]:
    sweeps = {}
    for item in values:
        key, sep, listed = item.partition("=")
        if not sep or not listed.strip():
            raise HashEEError(f"--sweep {item!r}: expected METHOD=V1,V2")
        if key not in method_lib.METHOD_KEYS:
            raise HashEEError(f"--sweep: unknown method {key!r}; expected one of {', '.join(method_lib.METHOD_KEYS)}")
        sweeps[key] = [v.strip() for v in listed.split(",") if v.strip()]
    return sweeps


def _say(message: str) -> None:
    print(message, flush=True)


def main(argv=None):
    install_one_line_errors()
    args = parse_args(argv)
    started = time.perf_counter()
    data_dir = Path(args.data)
    source, target = _languages(data_dir, args.source_lang, args.target_lang)
    for name in ("max_update", "frozen_updates", "timing_rounds", "base_updates", "jobs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise HashEEError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if args.restore_file and args.base_updates:
        raise HashEEError("--base-updates: the base is trained only without --restore-file")
    import torch

    on_gpu = torch.cuda.is_available() and not args.cpu
    data = Data(
        path=str(data_dir),
        source_lang=source,
        target_lang=target,
        arch=args.arch,
        model_options=shlex.split(args.model_args),
        train_options=shlex.split(args.train_args) + ["--seed", str(args.seed)],
        generate_options=shlex.split(args.generate_args) + ["--seed", str(args.seed)],
        device_options=[] if on_gpu else ["--cpu"],
    )
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    restored = load_checkpoint(args.restore_file) if args.restore_file else None
    encoder_layers, decoder_layers = stack_depths(args.arch, data.model_options, args.restore_file, restored)
    available = method_lib.build_methods(encoder_layers, decoder_layers)
    chosen = method_lib.select_methods(available, [k.strip() for k in args.methods.split(",") if k.strip()])
    sweeps = _sweeps(args.sweep)
    for key in sweeps:
        if key not in [m.key for m in chosen]:
            raise HashEEError(f"--sweep: {key} is not among --methods")
    points = [p for m in chosen for p in method_lib.sweep_points(m, sweeps.get(m.key))]
    method_lib.check_generate_options(points, data.generate_options)
    stages = list(dict.fromkeys(stage for p in points for stage in p.stages))
    calibration = calibrated.settings(args, data_dir, (source, target), chosen)

    _say(f"== hashee-compare: {len(chosen)} methods, {len(stages)} training runs, {len(points)} rows; {work}")
    start, description = starting_checkpoint(args, data, work, encoder_layers, restored, _say)
    del restored  # a large model's weights need not stay in memory while the methods train
    _say(f"   every method starts from {description}")
    checkpoints = train_stages(
        data, work, stages, start, lambda s: args.frozen_updates if s.frozen else args.max_update, args.jobs, _say
    )

    references = (
        _references(args.references, data_dir / f"test.{source}-{target}.{source}") if args.references else None
    )
    decisions = []
    if calibration:
        decisions = calibrated.decide(calibration, args.lang, data, work, points, checkpoints, _say)
        calibrated.add_rows(decisions, points)
    rows = _generate_rows(args, data, work, points, checkpoints, references)
    report.wall_speedups(rows)
    if calibration:
        calibrated.measure(decisions, rows, calibration, args.lang)
    model = f"{args.arch}, {encoder_layers}+{decoder_layers} layers"
    _write_report(args, data, work, rows, model, decisions, calibration)
    _say(f"hashee-compare took {time.perf_counter() - started:.0f} s")


def _row_files(work: Path, point, checkpoints):
    """A row's generation folder and the checkpoint it generates with."""
    return work / "generate" / point.name.replace("@", "-"), checkpoints[point.stages[-1].name]


def _generate_rows(args, data: Data, work: Path, points, checkpoints, references) -> List[dict]:
    """Every row's summaries, ROUGE and figures (reused when generated before with the same
    checkpoint and options), then the extra timing rounds, interleaved."""
    rows = []
    for number, point in enumerate(points, start=1):
        _say(f"== [{number}/{len(points)}] generate {point.label}")
        folder, checkpoint = _row_files(work, point, checkpoints)
        settings = {"checkpoint": str(checkpoint), "options": point.generate_options, "generate": data.generate_options}
        cached = load_json(folder / "result.json")
        if cached is not None and cached["settings"] == settings and "decoder_calls" in cached:
            _say(f"   kept {folder} (generated before)")
        else:
            cached = generate(data, checkpoint, folder, point.generate_options)
            if references is not None:
                cached["references"] = [references[i] for i in cached["ids"]]
            cached.update(rouge(cached["hypotheses"], cached["references"], lang=args.lang))
            cached["settings"] = settings
            save_json(folder / "result.json", cached)
        row = dict(cached)
        row.update(
            method=point.method.key,
            method_label=point.method.label,
            label=point.label,
            value=point.value,
            seconds=[cached["seconds"]],
            distinct=len(set(cached["hypotheses"])),
        )
        rows.append(row)
        _say(f"   R-1 {row['rouge1']:.2f}, FLOPs {row['total_flops_x']:.2f}x, {cached['seconds']:.1f} s generating")
    for round_number in range(2, args.timing_rounds + 1):
        _say(f"== timing round {round_number}/{args.timing_rounds}")
        for point, row in zip(points, rows):
            folder, checkpoint = _row_files(work, point, checkpoints)
            row["seconds"].append(time_generation(data, checkpoint, folder, point.generate_options))
    return rows


def _write_report(args, data: Data, work: Path, rows: List[dict], model: str, decisions=(), calibration=None) -> None:
    """Print the table (and its "at delta" section) and the examples; write compare.json, compare.txt
    and the plot."""
    documents = read_generate_out(work / "generate" / "full" / "generate.out")["S"]
    text = report.table(rows)
    if decisions:
        text += "\n\n" + calibrated.section(decisions, rows, calibration)
    examples = report.side_by_side(rows, documents, args.examples)
    distinct = ", ".join(f"{row['label']} {row['distinct']}/{len(row['hypotheses'])}" for row in rows)
    _say("\n" + text + f"\ndistinct summaries: {distinct}\n\n" + examples)
    kept = ("ids", "hypotheses", "references", "settings")
    summary = {
        "data": data.path,
        "arch": args.arch,
        "model_args": args.model_args,
        "restore_file": args.restore_file,
        "max_update": args.max_update,
        "frozen_updates": args.frozen_updates,
        "train_args": args.train_args,
        "generate_args": args.generate_args,
        "device": "cpu" if "--cpu" in data.device_options else "cuda",
        "test_documents": len(rows[0]["ids"]),
        "rows": [{k: v for k, v in row.items() if k not in kept} for row in rows],
        "calibration": calibrated.summary(decisions, calibration),
    }
    save_json(work / "compare.json", summary)
    with atomic_write(str(work / "compare.txt")) as out:
        out.write(text + "\n\n" + examples + "\n")
    plot_path = args.plot or str(work / "frontier.png")
    device = "CPU" if "--cpu" in data.device_options else "GPU"
    title = f"{data.path}: {len(rows[0]['ids'])} test documents; {model}, {device}"
    report.plot(rows, plot_path, title)
    _say(f"\nwrote {work / 'compare.json'}, {work / 'compare.txt'}, {plot_path}")


def _references(path: str, test_prefix: Path) -> List[str]:
    """The reference file's lines, one per test example of the binarized data."""
    from fairseq.data import data_utils

    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.rstrip("\n") for line in handle]
    except FileNotFoundError:
        raise HashEEError(f"--references: {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise HashEEError(f"--references: {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    examples = len(data_utils.load_indexed_dataset(str(test_prefix), None))
    if len(lines) != examples:
        raise HashEEError(f"--references: {path} has {len(lines)} lines, the test split {examples} examples")
    return lines


if __name__ == "__main__":
    sys.exit(main())
