"""A checkpoint's vocabulary as a fairseq dictionary, and the row order that goes with it.

fairseq dictionaries always start with ``<s> <pad> </s> <unk>`` (ids 0-3).
English BART's ``vocab.json`` already has that layout. A BERT ``vocab.txt``
(CPT, Chinese BART) has ``[PAD]`` at 0 and ``[UNK] [CLS] [SEP]`` further on,
so its four special rows move into fairseq's slots, with the roles CPT gives
them: sentences are framed ``[CLS] ... [SEP]`` and decoding starts from
``[SEP]``, which is exactly fairseq's bos / eos use. Every other symbol keeps
its order. In text prepared for fairseq-preprocess, ``[CLS]`` is written
``<s>`` (and ``[SEP]`` is the ``</s>`` fairseq appends).
"""

from collections import Counter
from dataclasses import dataclass
from typing import List, Sequence

import torch

from ..errors import HashEEError
from ..io_utils import atomic_write
from .hf_files import read_json_object

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
# fairseq slot -> BERT symbol playing that role in CPT.
BERT_SPECIALS = ("[CLS]", "[PAD]", "[SEP]", "[UNK]")
OVERWRITE_FLAG = "#fairseq:overwrite"


@dataclass
class VocabMapping:
    kind: str  # "bert" (vocab.txt) or "bart" (vocab.json)
    order: torch.Tensor  # fairseq id -> checkpoint id, to permute embedding rows
    symbols: List[str]  # the fairseq dictionary, in fairseq id order

    def write_dict(self, path: str) -> None:
        """fairseq's dict.txt (specials implicit); counts are unknown, so 0."""
        seen = Counter()
        lines = []
        for symbol in self.symbols[len(FAIRSEQ_SPECIALS) :]:
            # A repeated symbol keeps its id (and maps to the last one, as BERT's tokenizer does).
            flag = f" {OVERWRITE_FLAG}" if seen[symbol] or symbol in FAIRSEQ_SPECIALS else ""
            seen[symbol] += 1
            lines.append(f"{symbol} 0{flag}\n")
        with atomic_write(path) as out:
            out.writelines(lines)


def map_vocab(symbols: Sequence[str], source: str) -> VocabMapping:
    for index, symbol in enumerate(symbols):
        if symbol == "" or any(ch.isspace() for ch in symbol):
            raise HashEEError(
                f"{source}: symbol {index} ({symbol!r}) is empty or has whitespace; a fairseq dictionary cannot hold it"
            )
    if list(symbols[: len(FAIRSEQ_SPECIALS)]) == list(FAIRSEQ_SPECIALS):
        return VocabMapping("bart", torch.arange(len(symbols)), list(symbols))
    missing = [s for s in BERT_SPECIALS if s not in symbols]
    if missing:
        raise HashEEError(
            f"{source}: neither a BART vocabulary (starting {' '.join(FAIRSEQ_SPECIALS)}) "
            f"nor a BERT one (no {', '.join(missing)})"
        )
    special_ids = [list(symbols).index(s) for s in BERT_SPECIALS]
    rest = [i for i in range(len(symbols)) if i not in set(special_ids)]
    order = torch.tensor(special_ids + rest)
    return VocabMapping("bert", order, list(FAIRSEQ_SPECIALS) + [symbols[i] for i in rest])


def gpt2_symbols(mapping: VocabMapping, encoder_json: str) -> VocabMapping:
    """English BART with fairseq's GPT-2 BPE: fairseq's BART dictionary names each
    symbol by its GPT-2 id (what ``fairseq.data.encoders.gpt2_bpe`` writes), where
    vocab.json names it by its byte-level string; ``encoder.json`` maps one to the other."""
    encoder = read_json_object(encoder_json, "GPT-2 encoder.json")
    if mapping.kind != "bart":
        raise HashEEError(f"{encoder_json}: GPT-2 ids only apply to a BART vocab.json, not a BERT vocab.txt")
    symbols = [str(encoder[s]) if s in encoder and s not in FAIRSEQ_SPECIALS else s for s in mapping.symbols]
    return VocabMapping(mapping.kind, mapping.order, symbols)
