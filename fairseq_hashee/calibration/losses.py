"""Per-example losses that calibration controls, each against the full-depth model's summary.

CALM (Schuster et al. 2022, section 3) defines two guarantees, both losses in [0, 1]:

- textual consistency: the early-exit summary stays close to the full model's,
  loss ``1 - ROUGE(full, early)`` (F1, 0..1). It needs no reference, so any
  unlabelled documents calibrate it. Identical summaries lose 0, also when
  both are empty (rouge-score scores an empty pair 0);
- risk consistency: the early-exit summary is not worse than the full model's
  against the reference, loss ``max(0, ROUGE(ref, full) - ROUGE(ref,
  early))``. Clipping at 0 makes it an upper bound of the true difference;
  an early summary that beats the full one earns no credit.

CALM clips because its early exits copy full depth's summary on most
documents. Separately fine-tuned models (static depth, HashEE) write another
summary almost everywhere, better on some documents and worse on others, and
clipping charges a model of equal quality for every document where it happens
to be worse (about 0.05 ROUGE-L on the demo). So the third loss is the one a
user states a budget in ("at most one ROUGE-L point lost on average"):

- drop: the signed ``ROUGE(ref, full) - ROUGE(ref, early)``, in [-1, 1]; its
  expectation is the mean score lost, a better document paying for a worse one.

``metric`` picks the ROUGE F1 (rouge1, rouge2 or rougeL, the default as in
CALM) of the project's own scorer (fairseq_hashee/rouge.py: rouge-score with
stemming for English, characters or jieba words for Chinese).
"""

from typing import Dict, List, Sequence, Tuple

from ..rouge import pair_scores

# Each loss and the range its values are declared in (the p-values need a known bounded range).
RANGES: Dict[str, Tuple[float, float]] = {"textual": (0.0, 1.0), "risk": (0.0, 1.0), "drop": (-1.0, 1.0)}
LOSSES = tuple(RANGES)
METRICS = ("rouge1", "rouge2", "rougeL")


def _scores(hypotheses: Sequence[str], references: Sequence[str], lang: str, metric: str) -> List[float]:
    return [pair[metric] for pair in pair_scores(hypotheses, references, lang)]


def textual_losses(early: Sequence[str], full: Sequence[str], lang: str = "en", metric: str = "rougeL") -> List[float]:
    similarity = _scores(early, full, lang, metric)
    return [0.0 if e.strip() == f.strip() else 1.0 - s for e, f, s in zip(early, full, similarity)]


def drop_losses(
    early: Sequence[str], full: Sequence[str], references: Sequence[str], lang: str = "en", metric: str = "rougeL"
) -> List[float]:
    kept, got = _scores(full, references, lang, metric), _scores(early, references, lang, metric)
    return [k - g for k, g in zip(kept, got)]


def risk_losses(
    early: Sequence[str], full: Sequence[str], references: Sequence[str], lang: str = "en", metric: str = "rougeL"
) -> List[float]:
    return [max(0.0, drop) for drop in drop_losses(early, full, references, lang, metric)]


def losses(
    kind: str, early: Sequence[str], full: Sequence[str], references: Sequence[str], lang: str, metric: str = "rougeL"
) -> List[float]:
    """The per-example losses of ``kind`` (one of LOSSES), in RANGES[kind]."""
    if kind == "textual":
        return textual_losses(early, full, lang, metric)
    if kind == "risk":
        return risk_losses(early, full, references, lang, metric)
    return drop_losses(early, full, references, lang, metric)


def describe(kind: str, metric: str) -> str:
    """The loss in words, for the reports: what its delta bounds."""
    name = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}[metric]
    return {
        "textual": f"textual consistency (1 - {name} against full depth's summary)",
        "risk": f"risk consistency ({name} lost against the reference, clipped at 0)",
        "drop": f"{name} drop against the reference (full depth's minus the candidate's, signed)",
    }[kind]
