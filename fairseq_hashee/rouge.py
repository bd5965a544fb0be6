"""ROUGE-1/2/L F1 (x100) of hypothesis lines against reference lines, with rouge-score.

English is scored with rouge-score's tokenizer and Porter stemming, plus
ROUGE-Lsum over sentence-split lines as CNN/DM results are usually reported.
rouge-score's tokenizer keeps only ASCII letters and digits, so Chinese would
silently score 0: it is scored by characters (``--zh-unit char``, as CPT
reports: BERT's basic split, which makes every Chinese character and
punctuation mark a token and keeps runs of Latin letters or digits whole) or
by jieba words (``--zh-unit jieba``), and English scoring refuses references
that have no token it can see.

Scores are the plain mean of the per-pair F1 over all pairs. (rouge-score's
BootstrapAggregator reports the median of unseeded bootstrap resamples, which
changes in the last digits from run to run.)
"""

import logging
import math
import re
from typing import Dict, List, Sequence

from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from .tokenization.wordpiece import basic_words

# rouge-score logs "Using default tokenizer." (absl, INFO) for every English scorer it builds.
logging.getLogger("absl").setLevel(logging.WARNING)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class CharTokenizer:
    """Chinese by characters, as CPT scores: BERT's basic split (lowercased)."""

    def tokenize(self, text: str) -> List[str]:
        return basic_words(text)


class JiebaTokenizer:
    """Chinese by jieba words (lowercased, spaces dropped)."""

    def __init__(self):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self._cut = jieba.lcut

    def tokenize(self, text: str) -> List[str]:
        return [word for word in self._cut(text.lower()) if word.strip()]


def _english_sentences(text: str) -> str:
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def _check_english(references: Sequence[str]) -> None:
    """A non-empty reference without ASCII letters or digits would score 0 for any hypothesis."""
    unseen = [i for i, ref in enumerate(references, 1) if ref.strip() and not rouge_tokenize.tokenize(ref, None)]
    if unseen:
        raise ValueError(
            f"{len(unseen)} reference(s) have no ASCII letters or digits (first: line {unseen[0]}), which "
            "rouge-score's English tokenizer drops; for Chinese pass --lang zh"
        )


def _scorer(lang: str, zh_unit: str):
    """rouge-score's scorer for ``lang``, the ROUGE types it reports and how a text is prepared."""
    if lang == "en":
        types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        return rouge_scorer.RougeScorer(types, use_stemmer=True), types, _english_sentences
    if lang == "zh":
        if zh_unit not in ("char", "jieba"):
            raise ValueError(f"unknown Chinese unit {zh_unit!r}; expected 'char' or 'jieba'")
        types = ["rouge1", "rouge2", "rougeL"]
        tokenizer = CharTokenizer() if zh_unit == "char" else JiebaTokenizer()
        return rouge_scorer.RougeScorer(types, tokenizer=tokenizer), types, str.strip
    raise ValueError(f"unknown language {lang!r}; expected 'en' or 'zh'")


def pair_scores(
    hypotheses: Sequence[str], references: Sequence[str], lang: str = "en", zh_unit: str = "char"
) -> List[Dict[str, float]]:
    """F1 (0..1) per ROUGE type of each aligned hypothesis/reference pair."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    scorer, types, prepare = _scorer(lang, zh_unit)
    scores = []
    for hyp, ref in zip(hypotheses, references):
        pair = scorer.score(prepare(ref), prepare(hyp))
        scores.append({name: pair[name].fmeasure for name in types})
    return scores


def rouge(
    hypotheses: Sequence[str], references: Sequence[str], lang: str = "en", zh_unit: str = "char"
) -> Dict[str, float]:
    """Mean F1 x100 per ROUGE type over aligned hypothesis/reference pairs."""
    if not hypotheses:
        raise ValueError("nothing to score: no hypotheses")
    if lang == "en":
        _check_english(references)
    scores = pair_scores(hypotheses, references, lang, zh_unit)
    return {name: 100.0 * math.fsum(pair[name] for pair in scores) / len(scores) for name in scores[0]}
