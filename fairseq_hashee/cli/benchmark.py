"""Benchmark HashEE against fairseq's BART on the same weights: FLOPs and wall-clock side by side.

    hashee-benchmark --json bench.json

In one run, on the same weights and inputs, it times (a) the encoder forward
and (b) beam-search generation, forced along sampled targets and free, for
fairseq's stock BART, HashEE with every exit at the last layer, with encoder
exits, with encoder and decoder exits, a static half-depth model and the
dynamic decoder rules. For each it reports the FLOPs speed-up (full FLOPs
over FLOPs spent, as the speed-up report counts them) and two wall-clock
speed-ups: end to end over stock BART, and over HashEE with no exits (the
same kernels: what the exits buy; over the FLOPs speed-up, the efficiency).
Configurations run interleaved in rounds, and a speed-up is the median of the
rounds' ratios, so drift of the machine between rounds cancels. Then it
checks the targets of the speed-up work and writes everything as JSON.

Weights are random (the --arch's dimensions) or a checkpoint's. Tables come
from a hash over synthetic Zipf-distributed text (the default: ids ranked by
frequency, as a real dictionary is) or over a binarized dataset (--data).
Forced decoding follows sampled target tokens (prefix tokens), so every
configuration decodes the same steps on realistic decoder inputs; free
decoding lets the model choose. --sweep times the encoder for several bucket
settings and --plot draws wall-clock against FLOPs speed-up.

How each figure is measured: fairseq_hashee/benchmark/measure.py; what runs:
settings.py; what is reported and judged: report.py.
"""

import argparse
import json
import os
import platform
import sys
from typing import List

import torch
from fairseq.data import Dictionary

from ..benchmark import measure, report
from ..benchmark.settings import (
    CONFIG_KEYS,
    DECODINGS,
    ENC_EXITS,
    Inputs,
    Setting,
    build_models,
    check_rule_configs,
    chosen_configs,
    exit_tables,
    synthetic_dictionary,
    zipf_probabilities,
)
from ..checkpoints import load_model_state
from ..errors import HashEEError
from ..io_utils import atomic_write
from ..tables import hash_functions

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--arch", default="hashee_bart_base", help="dimensions of the model (default bart_base)")
    parser.add_argument("--model-args", help="override arch options, e.g. 'encoder_layers=2,encoder_embed_dim=32'")
    parser.add_argument("--checkpoint", help="weights (and vocabulary size) from this HashEE checkpoint")
    parser.add_argument("--vocab-size", type=int, default=50265, help="synthetic dictionary size (BART's)")
    parser.add_argument("--data", help="binarized dataset: its dictionary and train split build the tables")
    parser.add_argument("-s", "--source-lang", default="src")
    parser.add_argument("-t", "--target-lang", default="tgt")
    parser.add_argument("--hash-type", default="frequency", choices=hash_functions.HASH_TYPES)
    parser.add_argument("--encoder-exit-layers", help="encoder buckets (default 1..L)")
    parser.add_argument("--decoder-exit-layers", help="decoder buckets (default 1..L)")
    parser.add_argument("--src-len", default="512", help="source lengths of the encoder benchmark")
    parser.add_argument("--batch-size", default="1,8", help="batch sizes of the encoder benchmark")
    parser.add_argument("--gen-src-len", type=int, default=512, help="source length of the generation benchmark")
    parser.add_argument("--gen-batch-size", default="1,8", help="batch sizes of the generation benchmark")
    parser.add_argument("--tgt-len", type=int, default=128, help="target tokens generated")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument(
        "--decoding", default="forced,free", help="generation: forced along sampled targets, free, or both"
    )
    parser.add_argument("--configs", default="", help=f"comma-separated, of: {', '.join(CONFIG_KEYS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of the encoder settings (median)")
    parser.add_argument(
        "--gen-repeats", type=int, default=2, help="timed rounds of the generation settings (each runs seconds)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip", default="", help="comma-separated: encoder, generate")
    parser.add_argument("--sweep", help="encoder bucket settings to sweep, e.g. '1,2,3,4,5,6;3,4,5,6;5,6'")
    parser.add_argument("--plot", help="PNG of wall-clock vs FLOPs speed-up (encoder rows and sweep)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write settings, rows and target checks here")
    args = parser.parse_args(argv)
    try:
        run(args)
    except HashEEError as err:
        sys.exit(f"error: {err}")


def _ints(text: str, option: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HashEEError(f"{option}: expected comma-separated integers, got {text!r}") from None


def _decodings(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DECODINGS]
    if unknown or not names:
        raise HashEEError(f"--decoding: expected forced, free or both, got {text!r}")
    return names


def _dictionary(args) -> Dictionary:
    if args.data:
        return Dictionary.load(os.path.join(args.data, f"dict.{args.source_lang}.txt"))
    if args.checkpoint:
        return synthetic_dictionary(load_model_state(args.checkpoint)["encoder.embed_tokens.weight"].size(0))
    return synthetic_dictionary(args.vocab_size)


def _save(args, result: dict) -> None:
    if args.json:
        with atomic_write(args.json) as out:
            json.dump(result, out, indent=2)


def run(args) -> dict:
    src_lens = _ints(args.src_len, "--src-len")
    batches, gen_batches = _ints(args.batch_size, "--batch-size"), _ints(args.gen_batch_size, "--gen-batch-size")
    decodings = _decodings(args.decoding)
    args.configs = chosen_configs(args.configs)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    # Memory first, with the allocator set for measuring it from the start; then time.
    with measure.resident_set_follows_live_memory(device):
        dictionary = _dictionary(args)
        models = build_models(args, dictionary, max(src_lens + [args.gen_src_len]))
        check_rule_configs(models, args.configs)
        hashee = models.hashee
        tables = exit_tables(args, hashee, dictionary)
        for module in (models.hashee, models.stock, models.half, *models.rules.values()):
            if module is not None:
                module.to(device=device, dtype=DTYPES[args.dtype]).eval()
        probs = zipf_probabilities(dictionary)

        def inputs(src_len, batch):
            return Inputs(args, dictionary, probs, src_len, batch, device)

        settings = []
        if "encoder" not in skip:
            settings += [Setting("encoder", inputs(n, b), tables) for n in src_lens for b in batches]
        if "generate" not in skip:
            # The other methods' rows are comparisons, not batching figures: at the first batch size.
            settings += [
                Setting("generate", inputs(args.gen_src_len, b), tables, decoding, other_methods=b == gen_batches[0])
                for b in gen_batches
                for decoding in decodings
            ]
        swept = []
        for buckets in args.sweep.split(";") if args.sweep else []:
            sweep_args = argparse.Namespace(**{**vars(args), "encoder_exit_layers": buckets})
            swept.append(
                (
                    buckets,
                    Setting("encoder", inputs(src_lens[0], batches[0]), exit_tables(sweep_args, hashee, dictionary)),
                )
            )

        measured = settings + [setting for _, setting in swept]
        counted = []
        for setting in measured:
            print(f"counting {setting.describe()}", file=sys.stderr)
            counted.append(measure.count_setting(setting, models, args, dictionary, device))

    result = {
        "settings": {
            **vars(args),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "complete": False,
        "rows": [],
        "sweep": [],
        "targets": [],
    }
    # Each setting's rows are printed and saved as soon as they are measured: a run cut
    # short (a time limit) keeps what it measured.
    print(f"{report.HEADER}\n{'-' * len(report.HEADER)}", flush=True)
    for index, (setting, (counts, memory)) in enumerate(zip(measured, counted)):
        print(f"timing {setting.describe()}", file=sys.stderr)
        repeats = args.repeats if setting.kind == "encoder" else args.gen_repeats
        walls = measure.time_setting(setting, models, args, dictionary, device, repeats)
        rows = report.setting_rows(setting, counts, memory, walls, args)
        if index < len(settings):
            result["rows"] += rows
            print(report.format_rows(rows), flush=True)
        else:
            buckets = swept[index - len(settings)][0]
            result["sweep"].append({**[r for r in rows if r["config"] == ENC_EXITS][0], "buckets": buckets})
        _save(args, result)

    for s in result["sweep"]:
        print(
            f"sweep buckets {s['buckets']:<16} FLOPs x {s['flops_speedup']:.2f}  "
            f"wall x {s['exit_wall_speedup']:.2f}  efficiency {s['efficiency']:.2f}"
        )
    result["targets"] = report.check_targets(result["rows"])
    result["complete"] = True
    print()
    print(report.format_checks(result["targets"]))
    _save(args, result)
    if args.plot:
        points = [
            {**r, "label": f"enc {r['src_len']}x{r['batch']}"}
            for r in result["rows"]
            if r["kind"] == "encoder" and r["config"] == ENC_EXITS
        ]
        points += [{**s, "label": s["buckets"]} for s in result["sweep"]]
        report.plot(points, args.plot)
    return result


if __name__ == "__main__":
    main()
