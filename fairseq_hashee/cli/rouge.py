"""ROUGE-1/2/L F1 (x100) of hypothesis lines against reference lines, with rouge-score.

English is scored with rouge-score's tokenizer and Porter stemming, plus
ROUGE-Lsum over sentence-split lines as CNN/DM results are usually reported.
rouge-score's tokenizer drops every non-ASCII character, so Chinese would
silently score 0: it is scored by characters (as CPT reports) or by jieba words.
"""

import argparse
import json
import re
from typing import Dict, List, Sequence

from rouge_score import rouge_scorer, scoring

from ..io_utils import atomic_write

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class CharTokenizer:
    """Chinese by characters: every non-space character is a token."""

    def tokenize(self, text: str) -> List[str]:
        return [ch for ch in text if not ch.isspace()]


class JiebaTokenizer:
    """Chinese by jieba words."""

    def tokenize(self, text: str) -> List[str]:
        import jieba

        return [w for w in jieba.lcut(text) if w.strip()]


def _english_sentences(text: str) -> str:
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(
    hypotheses: Sequence[str], references: Sequence[str], lang: str = "en", zh_unit: str = "char"
) -> Dict[str, float]:
    """Mean F1 x100 per ROUGE type over aligned hypothesis/reference pairs."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("nothing to score: no hypotheses")
    if lang == "en":
        types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
        prepare = _english_sentences
    elif lang == "zh":
        types = ["rouge1", "rouge2", "rougeL"]
        tokenizer = CharTokenizer() if zh_unit == "char" else JiebaTokenizer()
        scorer = rouge_scorer.RougeScorer(types, tokenizer=tokenizer)
        prepare = str.strip
    else:
        raise ValueError(f"unknown language {lang!r}; expected 'en' or 'zh'")
    aggregator = scoring.BootstrapAggregator()
    for hyp, ref in zip(hypotheses, references):
        aggregator.add_scores(scorer.score(prepare(ref), prepare(hyp)))
    result = aggregator.aggregate()
    return {t: 100.0 * result[t].mid.fmeasure for t in types}


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle]
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise SystemExit(f"error: {path}: not UTF-8 ({err.reason} at byte {err.start})") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hyp", required=True, help="hypotheses, one per line")
    parser.add_argument("--ref", required=True, help="references, one per line")
    parser.add_argument("--lang", choices=["en", "zh"], default="en")
    parser.add_argument("--zh-unit", choices=["char", "jieba"], default="char", help="Chinese token unit")
    parser.add_argument("--json", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)

    hyps, refs = _read_lines(args.hyp), _read_lines(args.ref)
    if len(hyps) != len(refs):
        parser.error(f"{args.hyp} has {len(hyps)} lines but {args.ref} has {len(refs)}")
    if not hyps:
        parser.error(f"{args.hyp}: empty, nothing to score")
    scores = rouge(hyps, refs, args.lang, args.zh_unit)
    print(" ".join(f"{name.upper().replace('ROUGE', 'ROUGE-')}: {value:.2f}" for name, value in scores.items()))
    if args.json:
        with atomic_write(args.json) as out:
            json.dump(scores, out, indent=2)


if __name__ == "__main__":
    main()
