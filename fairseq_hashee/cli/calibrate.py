"""Calibrate an exit rule's knob so that the quality lost against full depth stays within delta.

    hashee-calibrate CHECKPOINT DATA_BIN --delta 0.1 --epsilon 0.1 [--loss textual|risk|drop] [--metric rougeL]
                     [--p-value wsr|hb] [--subset calib]

Generates the calibration split (``--subset``: ``calib`` when the data has it,
else ``valid``) once at full depth and once per
candidate value of the checkpoint rule's knob (``--exit-threshold``, or
``--exit-patience`` for the agreement rule), with fairseq-generate as the
comparison runs it, and picks the fastest value that Learn-then-Test certifies
(fairseq_hashee/calibration/ltt.py): with probability at least 1 - epsilon over
the calibration examples, the expected per-example loss on new examples from
the same distribution is at most delta. Prints every candidate's mean loss and
p-value, the choice and the fairseq-generate options that use it; ``--json``
writes all of it.
"""

import argparse
import ast
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

from ..calibration.knobs import checkpoint_knob
from ..calibration.losses import RANGES, describe, losses
from ..calibration.ltt import Calibration, calibrate, check_level
from ..calibration.options import add_options
from ..calibration.split import calibration_subset, first_examples
from ..checkpoints import load_checkpoint
from ..compare.runs import Data, generate, save_json
from ..errors import HashEEError, install_one_line_errors
from .compare import DEFAULT_GENERATE

MODEL_OVERRIDES = "--model-overrides"
# The full-depth reference is the checkpoint's model without its rule: every position runs every
# decoder layer. The candidates keep the rule, so hashee-calibrate sets this key and nobody else.
RULE_OFF = {"decoder_exit_rule": "none"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("checkpoint", help="a model trained with a dynamic decoder exit rule (--decoder-exit-rule)")
    parser.add_argument("data", help="binarized data (fairseq-preprocess) holding the calibration split")
    parser.add_argument("--delta", type=float, default=0.1, help="the expected loss tolerated, in (0, 1)")
    parser.add_argument("--epsilon", type=float, default=0.1, help="the probability the guarantee may fail, in (0, 1)")
    add_options(parser, "", default_loss="textual", subset_options=("--subset", "--calibration-subset"))
    parser.add_argument("--max-examples", type=int, help="calibrate on the split's first N examples only")
    parser.add_argument("--grid", help="candidate values, comma-separated (default: the knob's whole range)")
    parser.add_argument("-s", "--source-lang", help="source language suffix (default: the checkpoint's)")
    parser.add_argument("-t", "--target-lang", help="target language suffix (default: the checkpoint's)")
    parser.add_argument("--generate-args", default=DEFAULT_GENERATE, help="fairseq-generate options of every run")
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="ROUGE tokenization")
    parser.add_argument("--work-dir", help="keep the generations here (default: a temporary folder, removed)")
    parser.add_argument("--json", help="write the candidates, p-values and the choice to this file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    return parser.parse_args(argv)


def split_model_overrides(generate_args: str) -> Tuple[List[str], Dict]:
    """``--generate-args`` as the options but ``--model-overrides``, and the overrides they give
    (a dict, read as fairseq-generate reads it; the last given wins, as there). The full-depth run
    adds RULE_OFF to them and every candidate takes them as they are, so the two generate the
    same model but for its rule; overrides that set the rule themselves are refused."""
    tokens, rest, text = shlex.split(generate_args), [], None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == MODEL_OVERRIDES:
            if index + 1 == len(tokens):
                raise HashEEError(f"--generate-args: {MODEL_OVERRIDES} needs a value")
            text, index = tokens[index + 1], index + 2
            continue
        if token.startswith(MODEL_OVERRIDES + "="):
            text = token.partition("=")[2]
        else:
            rest.append(token)
        index += 1
    if text is None:
        return rest, {}
    try:
        overrides = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        overrides = None
    if not isinstance(overrides, dict):
        raise HashEEError(
            f"--generate-args: {MODEL_OVERRIDES} expects a Python dict of model options, e.g. "
            f"\"{{'exit_impl': 'masked'}}\", got {text!r}"
        )
    for key, value in RULE_OFF.items():
        if key in overrides:
            raise HashEEError(
                f"--generate-args: {MODEL_OVERRIDES} sets {key}, which hashee-calibrate sets itself (the "
                f"checkpoint's rule for the candidates, {value!r} for the full-depth reference)"
            )
    return rest, overrides


def overrides_option(overrides: Dict) -> List[str]:
    """``--model-overrides`` with a dict literal fairseq reads back, written as JSON where JSON
    says the same (the printed options stay easy to copy), else as Python writes it."""
    if not overrides:
        return []
    text = json.dumps(overrides)
    try:
        same = ast.literal_eval(text) == overrides
    except (ValueError, SyntaxError):  # true, false, null
        same = False
    return [MODEL_OVERRIDES, text if same else repr(overrides)]


def _pair(args, state: dict):
    task = (state.get("cfg") or {}).get("task") or {}
    source = args.source_lang or (task.get("source_lang") if isinstance(task, dict) else None)
    target = args.target_lang or (task.get("target_lang") if isinstance(task, dict) else None)
    if not source or not target:
        raise HashEEError(f"{args.checkpoint}: names no language pair; pass --source-lang and --target-lang")
    return source, target


def _report(result: Calibration, option: str, speedups) -> str:
    lines = [f"{option:>16} {'mean loss':>10} {result.p_value + ' p':>9} {'dec x':>6}  Learn-then-Test"]
    for index, (value, risk, p, speedup) in enumerate(zip(result.values, result.risks, result.p_values, speedups)):
        if index >= result.tested:
            verdict = "not tested (testing stopped above)"
        elif result.chosen is not None and index <= result.chosen:
            verdict = f"certified (p <= {result.epsilon:g})"
        else:
            verdict = f"not certified (p > {result.epsilon:g}): testing stops"
        lines.append(f"{value:>16} {risk:10.4f} {p:9.3g} {speedup:5.2f}x  {verdict}")
    return "\n".join(lines)


def run(args) -> Tuple[dict, str]:
    """Calibrate as ``args`` say: the summary ``--json`` writes, and the candidates' table."""
    check_level("--delta", args.delta)
    check_level("--epsilon", args.epsilon)
    if args.max_examples is not None and args.max_examples < 1:
        raise HashEEError(f"--max-examples: must be at least 1, got {args.max_examples}")
    generate_options, overrides = split_model_overrides(args.generate_args)
    full_depth = overrides_option({**overrides, **RULE_OFF})
    state = load_checkpoint(args.checkpoint)
    knob = checkpoint_knob(state, args.checkpoint)
    values = knob.safest_first(args.grid.split(","), "--grid") if args.grid else knob.default_grid()
    pair = _pair(args, state)
    del state
    data_dir = Path(args.data)
    if not data_dir.is_dir():
        raise HashEEError(f"{data_dir}: no such data folder")
    args.subset, examples = calibration_subset(data_dir, pair, args.subset, "--subset")

    import torch

    with tempfile.TemporaryDirectory(prefix="hashee-calibrate-") as scratch:
        work = Path(args.work_dir or scratch)
        if args.max_examples is not None and args.max_examples < examples:
            examples = args.max_examples
            first_examples(data_dir, args.subset, pair, examples, work / "data")
            data_dir = work / "data"
        data = Data(
            path=str(data_dir),
            source_lang=pair[0],
            target_lang=pair[1],
            arch="",
            model_options=[],
            train_options=[],
            generate_options=generate_options + ["--seed", str(args.seed)],
            device_options=[] if torch.cuda.is_available() and not args.cpu else ["--cpu"],
        )
        print(f"== full depth: {examples} examples of {args.subset}", flush=True)
        full = generate(data, Path(args.checkpoint), work / "full", full_depth, args.subset)
        runs = []
        for number, value in enumerate(values, start=1):
            print(f"== [{number}/{len(values)}] {knob.option} {value}", flush=True)
            candidate = overrides_option(overrides) + [knob.option, value]
            run_ = generate(data, Path(args.checkpoint), work / f"value-{value}", candidate, args.subset)
            if run_["ids"] != full["ids"]:
                raise HashEEError(f"{knob.option} {value}: generated other examples than full depth")
            runs.append(run_)
    per_value = [
        losses(args.loss, r["hypotheses"], full["hypotheses"], full["references"], args.lang, args.metric) for r in runs
    ]
    result = calibrate(values, per_value, args.delta, args.epsilon, args.p_value, RANGES[args.loss])
    options = [knob.option, result.value] if result.value is not None else full_depth
    summary = {
        "checkpoint": args.checkpoint,
        "subset": args.subset,
        "examples": examples,
        "loss": args.loss,
        "metric": args.metric,
        "p_value": args.p_value,
        "delta": args.delta,
        "epsilon": args.epsilon,
        "option": knob.option,
        "candidates": [
            {
                "value": v,
                "mean_loss": risk,
                "p_value": p,
                "certified": result.chosen is not None and i <= result.chosen,
                "decoder_flops_x": r["decoder_flops_x"],
                "total_flops_x": r["total_flops_x"],
                "seconds": r["seconds"],
            }
            for i, (v, risk, p, r) in enumerate(zip(values, result.risks, result.p_values, runs))
        ],  # fmt: skip
        "chosen": result.value,
        "generate_options": options,
    }
    return summary, _report(result, knob.option, [r["decoder_flops_x"] for r in runs])


def conclusion(summary: dict) -> str:
    """The choice in words and the fairseq-generate options that use it."""
    what = f"expected {describe(summary['loss'], summary['metric'])} at most {summary['delta']:g}"
    if summary["chosen"] is None:
        head = (
            f"no value of {summary['option']} is certified ({what} with probability >= {1 - summary['epsilon']:g}, "
            f"{summary['examples']} {summary['subset']} examples): keep full depth"
        )
    else:
        head = (
            f"chosen: {summary['option']} {summary['chosen']} ({what} with probability >= "
            f"{1 - summary['epsilon']:g}, on {summary['examples']} {summary['subset']} examples)"
        )
    return head + "\nfairseq-generate options: " + shlex.join(summary["generate_options"])


def main(argv=None):
    install_one_line_errors()
    args = parse_args(argv)
    summary, table = run(args)
    print("\n" + table + "\n\n" + conclusion(summary))
    if args.json:
        save_json(Path(args.json), summary)


if __name__ == "__main__":
    sys.exit(main())
