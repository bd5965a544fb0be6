"""The exit methods the comparison trains, as fairseq-train stages and generation settings.

Every method starts from the same checkpoint (``--restore-file``, or the
full-depth model the comparison trains first) and fine-tunes for the same
number of updates with the same options; what differs is listed here and
nowhere else. Methods whose exits are learned on a frozen backbone (CALM's
classifier, ConsistentEE) or need an architecture search first (LECO) add a
stage of ``--frozen-updates``, as do ConsistentEE's third stage (the whole
model at the policies' exits) and DAT's joint stage (the decoder with its
halting classifiers). Stages with the same name are the same run: CALM and
ConsistentEE share the multi-exit backbone (CALM's layer weights ``w_i = i``,
no label smoothing), as docs/exit-methods.md trains it; DAT has its own, with
the uniform weights of its aligned training; FREE trains its shallow-deep
decoder with its own loss.
"""

import argparse
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from ..calibration.knobs import Knob
from ..errors import HashEEError

# Label smoothing as in fairseq's BART summarization recipe, for every criterion that takes it, but CALM's
# backbone: t5x trains it without (flaxformer's calm_t5_1_1 configs: LABEL_SMOOTHING = 0.0), and smoothing
# 0.1 caps the top-1 margin its softmax measure thresholds near 0.9.
MULTI_EXIT = ("--criterion", "multi_exit_label_smoothed_cross_entropy", "--label-smoothing", "0.1")
CALM_MULTI_EXIT = ("--criterion", "multi_exit_label_smoothed_cross_entropy", "--label-smoothing", "0")
SMOOTHED = ("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")
# Decoder hash exits distilled from the full-depth start (the teacher, --distill-from; docs/exit-methods.md).
DISTILLED = ("--criterion", "hashee_distill", "--label-smoothing", "0.1")
# CALM's decaying threshold with the paper's temperature, as its CNN/DM results ran (exits/rules.py).
CALM_DECAY = ("--exit-threshold-decay", "4")


@dataclass(frozen=True)
class Stage:
    """One fairseq-train run: its save folder's name, where it starts, its own options."""

    name: str
    start: str  # "start" (the shared starting checkpoint) or an earlier stage's name
    options: Tuple[str, ...]
    frozen: bool = False  # an extra stage (exit parameters, a search, a joint stage): --frozen-updates
    takes_knob: bool = False  # a trained knob's value is among its options: one run per value
    # Options naming earlier stages' checkpoints ("start" or a stage), e.g. the checkpoint that measures
    # a difficulty decoder table: (("--difficulty-from", "multi-exit"),).
    reads: Tuple[Tuple[str, str], ...] = ()
    # Starts from its start's checkpoint without the exit tables, so that it builds its own.
    fresh_tables: bool = False


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    stages: Tuple[Stage, ...]  # the last one's checkpoint generates
    knob: Optional[str] = None  # the option swept, e.g. --exit-threshold
    sweep: Tuple[str, ...] = ()  # its default values; none: one row without the option unless --sweep
    knob_label: Optional[str] = None  # in the row's label; default: the option's last word
    # The knob's values: (lowest, highest or None, integers only), checked before anything trains.
    knob_range: Optional[Tuple[float, Optional[float], bool]] = None
    # The knob's value in the row without one (calibration orders it among the swept values);
    # None: every layer available, the safest.
    default_value: Optional[str] = None
    generate: Tuple[str, ...] = ()  # fairseq-generate options of every row of the method

    @property
    def trained_knob(self) -> bool:
        """Whether the knob is a training option (e.g. ConsistentEE's reward weight): each value trains
        its own copy of the stages that take it; otherwise it is a fairseq-generate option of one model."""
        return any(stage.takes_knob for stage in self.stages)


@dataclass(frozen=True)
class Point:
    """One row of the table: a method generated at one value of its knob."""

    method: Method
    value: Optional[str] = None

    @property
    def name(self) -> str:
        return self.method.key if self.value is None else f"{self.method.key}@{self.value}"

    @property
    def label(self) -> str:
        if self.value is None:
            return self.method.label
        return f"{self.method.label}, {self.method.knob_label or self.method.knob.rsplit('-', 1)[-1]} {self.value}"

    @property
    def stages(self) -> Tuple[Stage, ...]:
        """The training runs behind this row; the last one's checkpoint generates it."""
        if self.value is None or not self.method.trained_knob:
            return self.method.stages
        renamed = {s.name: f"{s.name}-{self.value}" for s in self.method.stages if s.takes_knob}
        return tuple(
            replace(
                s,
                name=renamed[s.name],
                start=renamed.get(s.start, s.start),
                options=s.options + (self.method.knob, self.value),
            )
            if s.takes_knob
            else s
            for s in self.method.stages
        )

    @property
    def generate_options(self) -> List[str]:
        knob = [] if self.value is None or self.method.trained_knob else [self.method.knob, self.value]
        return list(self.method.generate) + knob


def build_methods(encoder_layers: int, decoder_layers: int) -> Dict[str, Method]:
    """Every method for a model of this depth, in the table's order."""
    no_encoder_exits = ("--encoder-exit-layers", str(encoder_layers))
    multi_exit = Stage(
        "multi-exit",
        "start",
        no_encoder_exits + ("--decoder-exit-rule", "confidence", "--exit-confidence", "softmax") + CALM_MULTI_EXIT,
    )

    # DAT's aligned training weighs every exit alike (Elbayad et al. 2020); no rule while it trains: the
    # paper's alpha-0 phase. Then the decoder and the halting classifiers train together (L_dec + alpha
    # L_exit) on the correctness oracle, its conclusion's best trade-off (Tok-C geometric-like; sigma 0 and
    # lambda 0.1, dat_joint's defaults, as its best reported point).
    dat_backbone = Stage("dat-backbone", "start", no_encoder_exits + MULTI_EXIT + ("--exit-loss-weights", "uniform"))
    dat_joint = Stage(
        "dat-joint",
        "dat-backbone",
        no_encoder_exits
        + ("--decoder-exit-rule", "dat-halting", "--criterion", "dat_joint", "--label-smoothing", "0.1")
        + ("--dat-oracle", "correctness"),
        frozen=True,
    )
    threshold = dict(knob="--exit-threshold", knob_range=(0.0, 1.0, False))

    def learned_on_frozen(
        key: str,
        label: str,
        rule: str,
        criterion: str,
        *later: Stage,
        backbone: Stage = multi_exit,
        options=(),
        trained: bool = False,
        **knob,
    ) -> Method:
        """A rule whose parameters train (with the criterion's ``options``) on a frozen multi-exit
        ``backbone`` (then the ``later`` stages); its ``knob`` a generation option, or with ``trained``
        a training option the rule's stage takes."""
        rule_options = ("--decoder-exit-rule", rule, "--criterion", criterion) + tuple(options)
        stage = Stage(key, backbone.name, no_encoder_exits + rule_options, frozen=True, takes_knob=trained)
        return Method(key, label, (backbone, stage) + later, **knob)

    half_encoder, half_decoder = max(1, encoder_layers // 2), max(1, decoder_layers // 2)
    patience = tuple(str(p) for p in (2, 1, 0) if p <= decoder_layers - 2)
    methods = [
        Method("full", "full depth", (Stage("full", "start", no_encoder_exits + SMOOTHED),)),
        # --sweep static-half=3,2,1 keeps those decoder layers (the encoder keeps half): one trained
        # model per value, as calibration's candidates for a budget (the decoder runs once per token).
        Method(
            "static-half",
            "static half depth",
            (
                Stage(
                    "static-half",
                    "start",
                    ("--encoder-layers", str(half_encoder), "--decoder-layers", str(half_decoder))
                    + ("--encoder-exit-layers", str(half_encoder))
                    + SMOOTHED,
                    takes_knob=True,
                ),
            ),
            "--decoder-layers",
            knob_label="decoder layers",
            knob_range=(1, decoder_layers, True),
            default_value=str(half_decoder),
        ),
        Method("hashee-enc", "HashEE, encoder exits", (Stage("hashee-enc", "start", SMOOTHED),)),
        # --sweep hashee-encdec=2 trains decoder tables whose buckets stop at layer 2 (the fast
        # setting of docs/benchmark.md, scaled to this decoder); by default the buckets are every layer.
        # The frequency table as HashEE trains it: label-smoothed loss at each position's exit, from the
        # start (hashee-difficulty's recipe is measured against it in docs/exit-methods.md).
        Method(
            "hashee-encdec",
            "HashEE, encoder+decoder exits",
            (Stage("hashee-encdec", "start", ("--decoder-exits",) + SMOOTHED, takes_knob=True),),
            "--decoder-exit-max",
            knob_label="deepest decoder exit",
            knob_range=(1, decoder_layers, True),
        ),
        # The difficulty table, measured by the multi-exit stage CALM and ConsistentEE share, at a target
        # mean exit per fine-tune (docs/design.md section 2): HashEE's frontier. Fine-tuned from that
        # stage, under its own tables, its exits distilled from the full-depth start (docs/exit-methods.md,
        # "Training decoder hash exits").
        Method(
            "hashee-difficulty",
            "HashEE, encoder exits + difficulty decoder table",
            (
                multi_exit,
                Stage(
                    "hashee-difficulty",
                    multi_exit.name,
                    ("--decoder-exits", "--decoder-hash-type", "difficulty") + DISTILLED,
                    takes_knob=True,
                    reads=(("--difficulty-from", multi_exit.name), ("--distill-from", "start")),
                    fresh_tables=True,
                ),
            ),
            "--difficulty-mean-exit",
            tuple(f"{decoder_layers * share:g}" for share in (0.75, 0.625, 0.5)),
            knob_label="mean decoder exit",
            knob_range=(1, decoder_layers, False),
        ),
        Method("calm", "CALM (softmax)", (multi_exit,), sweep=("0.9", "0.8", "0.6"), generate=CALM_DECAY, **threshold),
        # CALM's cheap measure: its classifier (Linear(d, 2)) instead of an output projection per check.
        learned_on_frozen(
            "calm-classifier",
            "CALM (classifier)",
            "confidence",
            "calm_exit_classifier",
            options=("--exit-confidence", "classifier"),
            sweep=("0.9", "0.8", "0.6"),
            generate=CALM_DECAY,
            **threshold,
        ),
        Method("dat", "DAT (halting)", (dat_backbone, dat_joint), sweep=("0.7", "0.5", "0.3"), **threshold),
        # The policies' exits are set by the reward's depth cost, not by the threshold: with the
        # criterion's default (0.01) they learn to exit almost nowhere (docs/comparison.md). Their
        # third stage (the released train_both) trains the whole model at the policies' exits, the
        # same reward guiding the policies.
        learned_on_frozen(
            "consistentee",
            "ConsistentEE",
            "consistentee",
            "consistentee_policy",
            Stage(
                "consistentee-joint",
                "consistentee",
                no_encoder_exits + ("--decoder-exit-rule", "consistentee", "--criterion", "consistentee_joint"),
                frozen=True,
                takes_knob=True,
            ),
            trained=True,
            knob="--consistentee-alpha",
            sweep=("2", "5", "10"),
            knob_range=(0.0, None, False),
        ),
        Method(
            "leco",
            "LECO heads + agreement",
            (
                Stage(
                    "leco-search",
                    "start",
                    no_encoder_exits
                    + ("--exit-heads", "search", "--criterion", "leco_head_search", "--label-smoothing", "0.1"),
                    frozen=True,
                ),
                Stage(
                    "leco",
                    "leco-search",
                    no_encoder_exits + ("--exit-heads", "searched", "--decoder-exit-rule", "agreement") + MULTI_EXIT,
                ),
            ),
            "--exit-patience",
            patience,
            knob_range=(0, decoder_layers - 2, True),
        ),
        # FREE's shallow exit at its default (a quarter of the decoder, the released 6 of 24), trained
        # with its shallow-deep loss from the start; its threshold (the released 0.9 and lower) is set
        # when generating.
        Method(
            "free",
            "FREE (shallow-deep)",
            (
                Stage(
                    "free",
                    "start",
                    no_encoder_exits
                    + ("--decoder-exit-rule", "free", "--criterion", "free_shallow_deep", "--label-smoothing", "0.1"),
                ),
            ),
            "--exit-threshold",
            ("0.9", "0.7", "0.5"),
            knob_range=(0.0, 1.0, False),
        ),
    ]
    by_key = {m.key: m for m in methods}
    static_decoder = Method(
        "static-dec",
        "static half-depth decoder",
        (Stage("static-dec", "start", ("--decoder-layers", str(half_decoder)) + SMOOTHED),),
    )
    for part in COMBINED_PARTS:
        decoder_method = static_decoder if part == "static-dec" else by_key[part]
        methods.append(with_encoder_exits(decoder_method, no_encoder_exits))
    if decoder_layers < 2:
        methods = [m for m in methods if m.key in ("full", "hashee-enc")]
    return {m.key: m for m in methods}


# The decoder methods a combined row ``hashee-enc+PART`` runs under HashEE's encoder exits.
COMBINED_PARTS = ("static-dec", "calm", "dat", "consistentee", "leco", "free")
ENCODER_PART = "hashee-enc"


def with_encoder_exits(method: Method, no_encoder_exits: Tuple[str, ...]) -> Method:
    """``method`` (a decoder method) with HashEE's encoder exits: every stage trained and swept as the
    method's, without the option that keeps the encoder at full depth, its own run (``enc+NAME``)."""

    def renamed(name: Optional[str]) -> Optional[str]:
        return name if name in (None, "start") else f"enc+{name}"

    def encoder_exits(options: Tuple[str, ...]) -> Tuple[str, ...]:
        size = len(no_encoder_exits)
        return options[size:] if options[:size] == no_encoder_exits else options

    stages = tuple(
        replace(
            s,
            name=renamed(s.name),
            start=renamed(s.start),
            reads=tuple((option, renamed(name)) for option, name in s.reads),
            options=encoder_exits(s.options),
        )
        for s in method.stages
    )
    return replace(
        method, key=f"{ENCODER_PART}+{method.key}", label=f"HashEE encoder exits + {method.label}", stages=stages
    )


METHOD_KEYS = tuple(build_methods(2, 2))
# What --methods runs by default: every method, the combined rows only on request.
DEFAULT_METHOD_KEYS = tuple(key for key in METHOD_KEYS if "+" not in key)


def _check_combined(key: str) -> None:
    """One error naming the unknown part of a combined method ``ENCODER+DECODER``."""
    encoder, _, decoder = key.partition("+")
    if encoder != ENCODER_PART:
        raise HashEEError(
            f"--methods: {key}: unknown encoder part {encoder!r}; a combined method starts with {ENCODER_PART}+"
        )
    if decoder not in COMBINED_PARTS:
        raise HashEEError(
            f"--methods: {key}: unknown decoder part {decoder!r}; expected one of {', '.join(COMBINED_PARTS)}"
        )


def select_methods(available: Dict[str, Method], keys: Sequence[str]) -> List[Method]:
    """``keys`` in the table's order, full depth always first (every ratio is against it)."""
    for key in keys:
        if "+" in key:
            _check_combined(key)
    unknown = [k for k in keys if k not in METHOD_KEYS]
    if unknown:
        raise HashEEError(f"--methods: unknown method {unknown[0]!r}; expected some of {', '.join(METHOD_KEYS)}")
    missing = [k for k in keys if k not in available]
    if missing:
        raise HashEEError(f"--methods: {missing[0]} needs a decoder of at least 2 layers")
    wanted = set(keys) | {"full"}
    return [m for key, m in available.items() if key in wanted]


def sweep_points(method: Method, override: Optional[Sequence[str]] = None) -> List[Point]:
    if method.knob is None and override:
        raise HashEEError(f"--sweep: {method.key} has no knob to sweep")
    if override is not None and not override:
        raise HashEEError(f"--sweep: no values for {method.key}")
    values = method.sweep if override is None else tuple(override)
    if override is not None:
        for value in values:
            Knob(method.knob, *method.knob_range).parse(value, f"--sweep {method.key}")
    return [Point(method, v) for v in values] if values else [Point(method)]


def check_generate_options(points: Sequence[Point], generate_options: Sequence[str]) -> None:
    """Refuse, before anything trains, generation options under which fairseq-generate would refuse a
    row's own: CALM's decaying threshold needs its length N, ``--max-len-b`` under ``--max-len-a 0``."""
    decaying = [p.name for p in points if "--exit-threshold-decay" in p.generate_options]
    if not decaying or "--exit-threshold-decay-length" in generate_options:
        return
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--max-len-a", default="0")
    value = parser.parse_known_args(list(generate_options))[0].max_len_a
    try:
        length_grows = float(value) != 0
    except ValueError:
        return  # fairseq-generate's own error names it
    if length_grows:
        raise HashEEError(
            f"--generate-args: --max-len-a {value}: {decaying[0]} decays its threshold over the generation's "
            "length, --max-len-b under --max-len-a 0; give --max-len-a 0 or --exit-threshold-decay-length N"
        )
