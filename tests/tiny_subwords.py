"""Tiny subword vocabularies built from a test's own text (test-only).

A byte-level BPE in GPT-2's file formats (encoder.json + vocab.bpe, and a
BART-style dict.txt naming symbols by GPT-2 id), and a BERT vocab.txt with the
dictionary hashee-convert would make of it, so the English and Chinese
pipelines run end to end without the released files.
"""

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import regex
from fairseq.data.encoders.gpt2_bpe_utils import bytes_to_unicode

from fairseq_hashee.conversion.vocabulary import map_vocab
from fairseq_hashee.tokenization.wordpiece import basic_words

GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _most_frequent_pair(words: Counter):
    pairs = Counter()
    for word, count in words.items():
        for pair in zip(word, word[1:]):
            pairs[pair] += count
    return max(pairs, key=lambda pair: (pairs[pair], pair)) if pairs else None


def _merge(word, pair):
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def byte_bpe(texts: Iterable[str], num_merges: int, out_dir: Path):
    """Learn ``num_merges`` merges over GPT-2's byte alphabet; write encoder.json, vocab.bpe, dict.txt."""
    byte_chars = bytes_to_unicode()
    words = Counter()
    for text in texts:
        for token in GPT2_SPLIT.findall(text):
            words[tuple(byte_chars[b] for b in token.encode("utf-8"))] += 1
    symbols = [byte_chars[b] for b in range(256)]
    merges = []
    for _ in range(num_merges):
        pair = _most_frequent_pair(words)
        if pair is None:
            break
        merges.append(pair)
        symbols.append(pair[0] + pair[1])
        words = Counter({_merge(word, pair): count for word, count in words.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = {symbol: index for index, symbol in enumerate(symbols)}
    (out_dir / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (out_dir / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (out_dir / "dict.txt").write_text("".join(f"{index} 1\n" for index in range(len(symbols))), encoding="utf-8")
    return out_dir


def bert_vocab(texts: Iterable[str], out_dir: Path):
    """vocab.txt of the BERT basic words of ``texts``, and hashee-convert's dict.txt for it."""
    words = sorted({word for text in texts for word in basic_words(text)})
    symbols = BERT_SPECIALS + words
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("".join(s + "\n" for s in symbols), encoding="utf-8")
    map_vocab(symbols, str(out_dir / "vocab.txt")).write_dict(str(out_dir / "dict.txt"))
    return out_dir
