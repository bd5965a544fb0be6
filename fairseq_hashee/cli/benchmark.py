"""Benchmark HashEE against fairseq's BART on the same weights: FLOPs and wall-clock side by side.

    hashee-benchmark --json bench.json

In one run, on the same weights and inputs, it times (a) the encoder forward
and (b) beam-search generation for four models: fairseq's stock BART, HashEE
with every exit at the last layer, HashEE with encoder exits, and HashEE with
encoder and decoder exits. For each it reports the FLOPs speed-up (full FLOPs
over FLOPs spent, as the speed-up report counts them), the wall-clock speed-up
over stock BART (configurations run interleaved, in --repeats rounds; the
median of the rounds' ratios, so drift of the machine between rounds
cancels), their ratio (efficiency), tokens per second and peak memory,
then checks the targets of the speed-up work and writes everything as JSON.

Weights are random (the --arch's dimensions) or a checkpoint's. Tables come
from a hash over synthetic Zipf-distributed text (the default: ids ranked by
frequency, as a real dictionary is) or over a binarized dataset (--data).
Decoding is forced along sampled target tokens (prefix tokens), so every
configuration decodes the same number of steps on realistic decoder inputs;
--free-decoding lets the model choose. --sweep times the encoder for several
bucket settings and --plot draws wall-clock against FLOPs speed-up.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture
from fairseq.sequence_generator import SequenceGenerator

from .. import hash_functions, models
from ..checkpoints import load_model_state
from ..errors import HashEEError
from ..exits import build_exit_rule
from ..exits.rules import rule_scores
from ..io_utils import atomic_write
from ..modules import flops
from ..table_builder import SplitSides, TableOptions, TableRecipe, recipe_from_split
from ..token_stats import TokenStats

STOCK, NO_EXITS, ENC_EXITS, ALL_EXITS = (
    "fairseq BART",
    "HashEE, no exits",
    "HashEE, encoder exits",
    "HashEE, enc+dec exits",
)
# The methods HashEE is compared with (docs/exit-methods.md), on the same weights: a
# static half-depth model (the first layers of each stack), and dynamic decoder rules
# beside HashEE encoder exits, their thresholds at the median of their scores on the
# setting's own inputs (random weights give no meaningful confidence to fix one at).
STATIC_HALF, CALM_SOFTMAX, CALM_SATURATION, DAT_HALTING, CONSISTENTEE = (
    "static half depth",
    "CALM softmax, enc exits",
    "CALM saturation, enc ex.",
    "DAT halting, enc exits",
    "ConsistentEE, enc exits",
)
RULE_CONFIGS = {
    CALM_SOFTMAX: {"decoder_exit_rule": "confidence", "exit_confidence": "softmax"},
    CALM_SATURATION: {"decoder_exit_rule": "confidence", "exit_confidence": "saturation"},
    DAT_HALTING: {"decoder_exit_rule": "dat-halting"},
    CONSISTENTEE: {"decoder_exit_rule": "consistentee"},
}
CONFIGS = (STOCK, NO_EXITS, ENC_EXITS, ALL_EXITS, STATIC_HALF, *RULE_CONFIGS)
TARGETS = {"no_exit_overhead": 1.03, "encoder_efficiency": 0.9, "generation_efficiency": 0.8}
# The resident-set measure moves by a fraction of a MiB between identical runs.
MEMORY_TOLERANCE_MIB = 1.0


class _Dictionaries:
    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def synthetic_dictionary(size: int) -> Dictionary:
    dictionary = Dictionary()
    for i in range(size - len(dictionary)):
        dictionary.add_symbol(f"tok{i}")
    return dictionary


def model_overrides(text: str) -> Dict[str, int]:
    """``--model-args "encoder_layers=2,encoder_embed_dim=32"`` as a dict."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        try:
            overrides[key.strip()] = int(value)
        except ValueError:
            raise HashEEError(f"--model-args: expected name=integer pairs, got {item!r}") from None
        if not sep:
            raise HashEEError(f"--model-args: expected name=integer pairs, got {item!r}")
    return overrides


class Models(NamedTuple):
    """Every model a benchmark runs, sharing one set of weights."""

    hashee: torch.nn.Module
    stock: Optional[torch.nn.Module]  # fairseq's BART (BART architectures only)
    half: torch.nn.Module  # the first half of each of HashEE's stacks (static truncation)
    rules: Dict[str, torch.nn.Module]  # a decoder exit rule per rule configuration


def build_models(args, dictionary, max_source: int) -> Models:
    """HashEE, stock fairseq BART and the static half-depth model with the same weights,
    and the dynamic rules (their own parameters random)."""
    model_args = argparse.Namespace(
        arch=args.arch,
        task="hashee_summarization",
        dropout=0.0,
        attention_dropout=0.0,
        max_source_positions=max_source,
        max_target_positions=max(args.tgt_len + 2, 8),
        **model_overrides(args.model_args),
    )
    ARCH_CONFIG_REGISTRY[args.arch](model_args)
    torch.manual_seed(args.seed)
    hashee = models.HashEEBARTModel if args.arch.startswith("hashee_bart") else models.HashEECPTModel
    hashee = hashee.build_model(model_args, _Dictionaries(dictionary))
    if args.checkpoint:
        hashee.load_state_dict(load_model_state(args.checkpoint), strict=True)
    stock = None
    if args.arch.startswith("hashee_bart"):
        stock_args = argparse.Namespace(**{**vars(model_args), "arch": "bart_base"})
        bart_base_architecture(stock_args)
        stock = BARTModel.build_model(stock_args, _Dictionaries(dictionary))
        share_parameters(hashee, stock)
    half_args = argparse.Namespace(**vars(model_args))
    half_args.encoder_layers = (hashee.encoder.num_layers + 1) // 2
    half_args.decoder_layers = (hashee.decoder.num_layers + 1) // 2
    half = type(hashee).build_model(half_args, _Dictionaries(dictionary))
    share_parameters(hashee, half)  # layers 0..k-1 are the full model's first k
    for stack, full in ((half.encoder, hashee.encoder), (half.decoder, hashee.decoder)):
        stack.load_state_dict({"full_depth": full.full_depth}, strict=False)  # report against the full depth
    rules = {
        config: build_exit_rule(
            argparse.Namespace(**options), hashee.decoder.shape.embed_dim, hashee.decoder.num_layers
        )
        for config, options in RULE_CONFIGS.items()
    }
    return Models(hashee, stock, half, rules)


def share_parameters(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Make ``target``'s parameters the very tensors of ``source``'s, by name.

    Same weights then means same memory: neither model can be favoured by
    where its weights happen to lie (page placement moves wall-clock by a
    few percent between copies on the CPU), and the weights are held once.
    """
    params = dict(source.named_parameters(remove_duplicate=False))
    for module_name, module in target.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            full = f"{module_name}.{name}" if module_name else name
            if full not in params:
                raise HashEEError(f"benchmark: stock BART parameter {full} has no HashEE counterpart")
            module._parameters[name] = params[full]


def zipf_probabilities(dictionary: Dictionary, exponent: float = 1.0) -> np.ndarray:
    """Probability of each id in synthetic text: Zipf over the non-special ids, in id order."""
    probs = np.zeros(len(dictionary))
    ranks = np.arange(len(dictionary) - dictionary.nspecial)
    probs[dictionary.nspecial :] = 1.0 / (ranks + 2.7) ** exponent
    return probs / probs.sum()


def _stack_options(args, stack: str) -> TableOptions:
    layers = args.encoder_exit_layers if stack == "encoder" else args.decoder_exit_layers
    return TableOptions(args.hash_type, exit_layers=layers, seed=args.seed, option_prefix=f"--{stack}-")


def _embeddings(stack) -> np.ndarray:
    return stack.embed_tokens.weight.detach().float().cpu().numpy()


def synthetic_tables(args, hashee, dictionary) -> Dict[str, np.ndarray]:
    """Tables hashed from the statistics of synthetic Zipf text over ``dictionary``."""
    stats = TokenStats(np.round(zipf_probabilities(dictionary) * 1e9).astype(np.int64))
    tables = {}
    for stack in ("encoder", "decoder"):
        module = getattr(hashee, stack)
        recipe = TableRecipe(
            stack,
            _stack_options(args, stack),
            module.num_layers,
            dictionary.symbols,
            dictionary.nspecial,
            stats,
            "synthetic Zipf text",
        )
        tables[stack] = recipe.build(_embeddings(module), "benchmark model").table
    return tables


def dataset_tables(args, hashee, dictionary) -> Dict[str, np.ndarray]:
    """Tables hashed from the training split of ``--data``."""
    sides = SplitSides(args.data, "train", args.source_lang, args.target_lang, dictionary, dictionary)
    tables = {}
    for stack in ("encoder", "decoder"):
        module = getattr(hashee, stack)
        recipe = recipe_from_split(sides, stack, _stack_options(args, stack), module.num_layers)
        tables[stack] = recipe.build(_embeddings(module), "benchmark model").table
    return tables


class Inputs:
    """Sources (and forced targets) of one setting, sampled once and reused by every configuration."""

    def __init__(self, args, dictionary, probs, src_len: int, batch: int, device):
        gen = torch.Generator().manual_seed(args.seed + src_len * 131 + batch)
        weights = torch.from_numpy(probs)
        src = torch.multinomial(weights, batch * src_len, replacement=True, generator=gen).view(batch, src_len)
        src[:, -1] = dictionary.eos()
        tgt = torch.multinomial(weights, batch * args.tgt_len, replacement=True, generator=gen).view(
            batch, args.tgt_len
        )
        self.src_tokens = src.to(device)
        self.src_lengths = torch.full((batch,), src_len, device=device)
        self.prefix = None if args.free_decoding else tgt.to(device)
        # The teacher-forced decoder input of the sampled targets: what rule thresholds are set on.
        self.prev = torch.cat([torch.full((batch, 1), dictionary.eos()), tgt[:, :-1]], dim=1).to(device)
        self.sample = {"net_input": {"src_tokens": self.src_tokens, "src_lengths": self.src_lengths}}


def set_tables(hashee, encoder: Optional[np.ndarray], decoder: Optional[np.ndarray]) -> None:
    for stack, table in ((hashee.encoder, encoder), (hashee.decoder, decoder)):
        full = torch.full_like(stack.exit_table, stack.num_layers)
        stack.set_exit_table(full if table is None else torch.from_numpy(table), "benchmark")


def peak_memory(fn: Callable[[], None], device) -> Optional[float]:
    """Peak memory (MiB) while ``fn`` runs: CUDA's allocator peak, or on Linux the
    process's resident-set high-water mark (reset through /proc/self/clear_refs)
    above its resident set before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        before = _proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        fn()
        return _proc_status("VmHWM") - before
    except (OSError, KeyError):
        return None


@contextlib.contextmanager
def resident_set_follows_live_memory(device):
    """Within the block, make the CPU resident set follow live tensors.

    glibc serves large blocks with mmap only until the first ones are freed,
    then raises that threshold (up to 32 MiB on 64-bit) and keeps freed
    activations resident, so the peak of one configuration would hide inside
    the leftovers of another. A fixed 64 KiB threshold from the start turns
    that off. Timing must not run that way (every large tensor would be a
    fresh mapping, page faults included, a cost a running process does not
    pay), so on exit the allocator gets the settings glibc itself reaches
    once warm, for good: switching back and forth leaves the heap in a state
    whose peaks are no longer comparable.
    """
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield  # CUDA measures its own allocator; elsewhere the peak is approximate
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 << 10)
    libc.mallopt(m_trim_threshold, 64 << 10)
    try:
        yield
    finally:
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)


def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "mallopt") else None


def _proc_status(field: str) -> float:
    """A memory field of /proc/self/status, in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def timed(fn: Callable[[], None], device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class Setting(NamedTuple):
    """One input setting: what is run, on which inputs, with which tables."""

    kind: str  # "encoder" or "generate"
    inputs: Inputs
    tables: Dict[str, np.ndarray]


def _runner(setting: Setting, models: Models, args, dictionary) -> Callable[[str], Tuple[torch.nn.Module, Callable]]:
    """For a configuration, the model it runs and the call that runs it (tables and rule installed)."""
    inputs, tables = setting.inputs, setting.tables
    hashee = models.hashee
    thresholds: Dict[str, float] = {}

    def prepare(config):
        model = {STOCK: models.stock, STATIC_HALF: models.half}.get(config, hashee)
        if model is hashee:
            set_tables(
                hashee,
                None if config == NO_EXITS else tables["encoder"],
                tables["decoder"] if config == ALL_EXITS else None,
            )
            hashee.decoder.exit_rule = models.rules.get(config)
            if config in RULE_CONFIGS:
                if config not in thresholds:
                    thresholds[config] = float(
                        rule_scores(hashee, inputs.src_tokens, inputs.src_lengths, inputs.prev).median()
                    )
                models.rules[config].set_threshold(thresholds[config])
        if setting.kind == "encoder":
            return model, lambda: model.encoder(inputs.src_tokens, inputs.src_lengths)
        generator = SequenceGenerator(
            [model],
            dictionary,
            beam_size=args.beam,
            max_len_a=0,
            max_len_b=args.tgt_len,
            min_len=1 if args.free_decoding else args.tgt_len,
        )
        return model, lambda: generator.generate([model], inputs.sample, prefix_tokens=inputs.prefix)

    return prepare


def _describe(setting: Setting) -> str:
    src = setting.inputs.src_tokens
    return f"{setting.kind}, source length {src.size(1)}, batch {src.size(0)}"


def _configs(models: Models, kind: str) -> List[str]:
    """Stock BART where the architecture has one; decoder rules in generation only."""
    return [
        c for c in CONFIGS if (c != STOCK or models.stock is not None) and (kind == "generate" or c not in RULE_CONFIGS)
    ]


def count_setting(setting: Setting, models: Models, args, dictionary, device) -> Tuple[dict, dict]:
    """FLOPs report and peak memory of every configuration (after a warm-up pass)."""
    prepare = _runner(setting, models, args, dictionary)
    configs = _configs(models, setting.kind)
    counts, memory = {}, {}
    with torch.inference_mode():
        for c in configs:
            prepare(c)[1]()
        for c in configs:
            model, fn = prepare(c)
            if c != STOCK:
                with flops.measuring(model) as meter:
                    fn()
                counts[c] = flops.speedup_report(meter.sums)
                counts[c]["sums"] = dict(meter.sums)
            memory[c] = peak_memory(fn, device)
    return counts, memory


def time_setting(setting: Setting, models: Models, args, dictionary, device) -> Dict[str, List[float]]:
    """Wall-clock seconds of every configuration, ``--repeats`` times, interleaved
    so that drift of the machine hits all alike (after a warm-up pass)."""
    prepare = _runner(setting, models, args, dictionary)
    configs = _configs(models, setting.kind)
    walls = {c: [] for c in configs}
    with torch.inference_mode():
        for c in configs:
            prepare(c)[1]()
        for _ in range(args.repeats):
            for c in configs:
                fn = prepare(c)[1]
                walls[c].append(timed(fn, device))
    return walls


def setting_rows(setting: Setting, counts: dict, memory: dict, walls: Dict[str, List[float]], args) -> List[dict]:
    """One row per configuration. Its wall-clock speed-up is the median over the
    repeats of each round's ratio: the configurations of a round ran back to
    back, so drift of the machine between rounds cancels in the ratio."""
    inputs = setting.inputs
    baseline = walls[STOCK if STOCK in walls else NO_EXITS]
    rows = []
    for c, runs in walls.items():
        wall = statistics.median(runs)
        wall_speedup = statistics.median(base / run for base, run in zip(baseline, runs))
        report = counts.get(c, counts[NO_EXITS])
        key = "enc_speedup" if setting.kind == "encoder" else "total_speedup"
        flops_speedup = 1.0 if c == STOCK else report[key]
        tokens = inputs.src_tokens.numel() if setting.kind == "encoder" else inputs.src_tokens.size(0) * args.tgt_len
        rows.append(
            {
                "kind": setting.kind,
                "src_len": inputs.src_tokens.size(1),
                "batch": inputs.src_tokens.size(0),
                "config": c,
                "wall_s": wall,
                "wall_runs_s": runs,
                "wall_speedup": wall_speedup,
                "flops_speedup": flops_speedup,
                "efficiency": wall_speedup / flops_speedup,
                "tokens_per_s": tokens / wall,
                "peak_memory_mib": memory[c],
                "enc_mean_exit": report["enc_mean_exit"],
                "dec_mean_exit": report["dec_mean_exit"],
            }
        )
    return rows


def check_targets(rows: List[dict]) -> List[dict]:
    def find(kind, config, **where):
        return [
            r for r in rows if r["kind"] == kind and r["config"] == config and all(r[k] == v for k, v in where.items())
        ]

    checks = []
    for kind in ("encoder", "generate"):
        # Speed-ups are over stock BART when it ran (a BART architecture).
        for ours in find(kind, NO_EXITS) if find(kind, STOCK) else []:
            ratio = 1.0 / ours["wall_speedup"]  # the rows' paired estimate, not a ratio of medians
            checks.append(
                {
                    "target": f"no-exit overhead, {kind} (src {ours['src_len']}, batch {ours['batch']})",
                    "value": ratio,
                    "want": f"<= {TARGETS['no_exit_overhead']}",
                    "met": ratio <= TARGETS["no_exit_overhead"],
                }
            )
        for stock, ours in zip(find(kind, STOCK), find(kind, ALL_EXITS)):
            if ours["peak_memory_mib"] is not None and stock["peak_memory_mib"] is not None:
                checks.append(
                    {
                        "target": f"peak memory, {kind} (src {ours['src_len']}, batch {ours['batch']})",
                        "value": ours["peak_memory_mib"] - stock["peak_memory_mib"],
                        "want": f"<= {MEMORY_TOLERANCE_MIB} MiB over stock",
                        "met": ours["peak_memory_mib"] <= stock["peak_memory_mib"] + MEMORY_TOLERANCE_MIB,
                    }
                )
    for row in find("encoder", ENC_EXITS):
        checks.append(
            {
                "target": f"encoder efficiency (src {row['src_len']}, batch {row['batch']})",
                "value": row["efficiency"],
                "want": f">= {TARGETS['encoder_efficiency']}",
                "met": row["efficiency"] >= TARGETS["encoder_efficiency"],
            }
        )
    for config, name in ((ALL_EXITS, "enc+dec exits"), *((rule, rule) for rule in RULE_CONFIGS)):
        for row in find("generate", config):
            checks.append(
                {
                    "target": f"generation efficiency, {name} (src {row['src_len']}, batch {row['batch']})",
                    "value": row["efficiency"],
                    "want": f">= {TARGETS['generation_efficiency']}",
                    "met": row["efficiency"] >= TARGETS["generation_efficiency"],
                }
            )
    return checks


def format_rows(rows: List[dict]) -> str:
    head = (
        f"{'kind':<9}{'src':>6}{'bsz':>5}  {'configuration':<24}"
        f"{'wall s':>9}{'wall x':>8}{'FLOPs x':>9}{'eff.':>7}{'tok/s':>10}{'peak MiB':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mem = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "n/a"
        lines.append(
            f"{r['kind']:<9}{r['src_len']:>6}{r['batch']:>5}  {r['config']:<24}{r['wall_s']:>9.3f}"
            f"{r['wall_speedup']:>8.2f}{r['flops_speedup']:>9.2f}{r['efficiency']:>7.2f}"
            f"{r['tokens_per_s']:>10.0f}{mem:>10}"
        )
    return "\n".join(lines)


def plot(points: List[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HashEEError("--plot needs matplotlib (pip install 'fairseq-hashee[bench]')") from None
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [p["flops_speedup"] for p in points], [p["wall_speedup"] for p in points]
    top = max(xs + ys) * 1.1
    ax.plot([1, top], [1, top], "k--", lw=0.8, label="wall = FLOPs")
    ax.plot([1, top], [0.9, 0.9 * top], "k:", lw=0.8, label="wall = 0.9 x FLOPs")
    ax.scatter(xs, ys)
    for p, x, y in zip(points, xs, ys):
        ax.annotate(p["label"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FLOPs speed-up")
    ax.set_ylabel("wall-clock speed-up")
    ax.set_title("HashEE encoder: wall-clock vs FLOPs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


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
    parser.add_argument("--src-len", default="512,1024", help="source lengths of the encoder benchmark")
    parser.add_argument("--batch-size", default="1,8", help="batch sizes of the encoder benchmark")
    parser.add_argument("--gen-src-len", type=int, default=512, help="source length of the generation benchmark")
    parser.add_argument("--gen-batch-size", default="1", help="batch sizes of the generation benchmark")
    parser.add_argument("--tgt-len", type=int, default=128, help="target tokens generated")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--free-decoding", action="store_true", help="let the model choose tokens (not forced)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per configuration (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
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


def run(args) -> dict:
    src_lens = _ints(args.src_len, "--src-len")
    batches, gen_batches = _ints(args.batch_size, "--batch-size"), _ints(args.gen_batch_size, "--gen-batch-size")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    # Memory first, with the allocator set for measuring it from the start; then time.
    with resident_set_follows_live_memory(device):
        if args.data:
            dictionary = Dictionary.load(os.path.join(args.data, f"dict.{args.source_lang}.txt"))
        elif args.checkpoint:
            dictionary = synthetic_dictionary(load_model_state(args.checkpoint)["encoder.embed_tokens.weight"].size(0))
        else:
            dictionary = synthetic_dictionary(args.vocab_size)
        models = build_models(args, dictionary, max(src_lens + [args.gen_src_len]))
        hashee = models.hashee
        tables = dataset_tables(args, hashee, dictionary) if args.data else synthetic_tables(args, hashee, dictionary)
        for module in (models.hashee, models.stock, models.half, *models.rules.values()):
            if module is not None:
                module.to(device=device, dtype=dtype).eval()
        probs = zipf_probabilities(dictionary)

        settings = (
            []
            if "encoder" in skip
            else [
                Setting("encoder", Inputs(args, dictionary, probs, n, b, device), tables)
                for n in src_lens
                for b in batches
            ]
        )
        settings += (
            []
            if "generate" in skip
            else [
                Setting("generate", Inputs(args, dictionary, probs, args.gen_src_len, b, device), tables)
                for b in gen_batches
            ]
        )
        swept = []
        for buckets in args.sweep.split(";") if args.sweep else []:
            sweep_args = argparse.Namespace(**{**vars(args), "encoder_exit_layers": buckets})
            sweep_tables = (
                dataset_tables(sweep_args, hashee, dictionary)
                if args.data
                else synthetic_tables(sweep_args, hashee, dictionary)
            )
            inputs = Inputs(args, dictionary, probs, src_lens[0], batches[0], device)
            swept.append((buckets, Setting("encoder", inputs, sweep_tables)))

        measured = settings + [setting for _, setting in swept]
        counted = []
        for setting in measured:
            print(f"counting {_describe(setting)}", file=sys.stderr)
            counted.append(count_setting(setting, models, args, dictionary, device))

    results = []
    for setting, (counts, memory) in zip(measured, counted):
        print(f"timing {_describe(setting)}", file=sys.stderr)
        walls = time_setting(setting, models, args, dictionary, device)
        results.append(setting_rows(setting, counts, memory, walls, args))
    rows = [row for result in results[: len(settings)] for row in result]
    sweep = [
        {**[r for r in result if r["config"] == ENC_EXITS][0], "buckets": buckets}
        for (buckets, _), result in zip(swept, results[len(settings) :])
    ]

    checks = check_targets(rows)
    print(format_rows(rows))
    for s in sweep:
        print(
            f"sweep buckets {s['buckets']:<16} FLOPs x {s['flops_speedup']:.2f}  wall x {s['wall_speedup']:.2f}  "
            f"efficiency {s['efficiency']:.2f}"
        )
    print()
    for c in checks:
        print(f"{'MET ' if c['met'] else 'MISS'}  {c['target']}: {c['value']:.3f} (want {c['want']})")
    result = {
        "settings": {
            **{k: v for k, v in vars(args).items()},
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "rows": rows,
        "sweep": sweep,
        "targets": checks,
    }
    if args.json:
        with atomic_write(args.json) as out:
            json.dump(result, out, indent=2)
    if args.plot:
        points = [
            {**r, "label": f"enc {r['src_len']}x{r['batch']}"}
            for r in rows
            if r["kind"] == "encoder" and r["config"] == ENC_EXITS
        ]
        points += [{**s, "label": s["buckets"]} for s in sweep]
        plot(points, args.plot)
    return result


if __name__ == "__main__":
    main()
