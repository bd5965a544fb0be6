"""Per-example losses in [0, 1] that calibration controls, both against the full-depth model's summary.

CALM (Schuster et al. 2022, section 3) defines two guarantees:

- textual consistency: the early-exit summary stays close to the full model's,
  loss ``1 - ROUGE-L(full, early)`` (F1, 0..1). It needs no reference, so any
  unlabelled documents calibrate it. Identical summaries lose 0, also when
  both are empty (rouge-score scores an empty pair 0);
- risk consistency: the early-exit summary is not worse than the full model's
  against the reference, loss ``max(0, ROUGE-L(ref, full) - ROUGE-L(ref,
  early))``. Clipping at 0 makes it an upper bound of the true difference, so
  controlling its mean controls ``E[ROUGE-L(full)] - E[ROUGE-L(early)]``;
  an early summary that beats the full one earns no credit.

ROUGE-L is the project's own (fairseq_hashee/rouge.py: rouge-score with stemming for
English, characters or jieba words for Chinese).
"""

from typing import List, Sequence

from ..rouge import pair_scores

LOSSES = ("textual", "risk")


def _rouge_l(hypotheses: Sequence[str], references: Sequence[str], lang: str) -> List[float]:
    return [pair["rougeL"] for pair in pair_scores(hypotheses, references, lang)]


def textual_losses(early: Sequence[str], full: Sequence[str], lang: str = "en") -> List[float]:
    similarity = _rouge_l(early, full, lang)
    return [0.0 if e.strip() == f.strip() else 1.0 - s for e, f, s in zip(early, full, similarity)]


def risk_losses(early: Sequence[str], full: Sequence[str], references: Sequence[str], lang: str = "en") -> List[float]:
    kept, lost = _rouge_l(full, references, lang), _rouge_l(early, references, lang)
    return [max(0.0, k - e) for k, e in zip(kept, lost)]


def losses(kind: str, early: Sequence[str], full: Sequence[str], references: Sequence[str], lang: str) -> List[float]:
    """The per-example losses of ``kind`` (one of LOSSES)."""
    if kind == "textual":
        return textual_losses(early, full, lang)
    return risk_losses(early, full, references, lang)
