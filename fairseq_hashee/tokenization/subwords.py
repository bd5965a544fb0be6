"""The subword encodings a HashEE checkpoint can be paired with, found by their released file names.

==============  =======================  ==============================================
kind            files                    for
==============  =======================  ==============================================
gpt2            encoder.json, vocab.bpe  English BART (fairseq's BART dict.txt)
wordpiece       vocab.txt                CPT / Chinese BART (hashee-convert's dict.txt)
sentencepiece   spm.model                the sample pipeline (hashee-spm)
==============  =======================  ==============================================

Each encoding has ``pieces(text)`` (the dictionary symbols of a line, exactly as
the pipelines in examples/ write them for fairseq-preprocess) and
``text(pieces)``; a model only works with the encoding its data was made with.
"""

import os
from typing import List, Optional, Sequence

import sentencepiece

from ..errors import HashEEError
from .gpt2_bpe import Gpt2Bpe
from .wordpiece import WordPieceSubwords

# The symbol that starts a CPT sentence ([CLS] in hashee-convert's dictionary).
CPT_START = "<s>"


class SentencePieceSubwords:
    def __init__(self, model: str):
        self._model = sentencepiece.SentencePieceProcessor(model_file=model)

    def pieces(self, text: str) -> List[str]:
        return self._model.encode(text, out_type=str)

    def text(self, pieces: Sequence[str]) -> str:
        return self._model.decode(list(pieces))


KINDS = {
    "gpt2": (("encoder.json", "vocab.bpe"), Gpt2Bpe),
    "wordpiece": (("vocab.txt",), lambda vocab: WordPieceSubwords(vocab, prepend=CPT_START)),
    "sentencepiece": (("spm.model",), SentencePieceSubwords),
}


def load_subwords(directory: str, kind: Optional[str] = None):
    """The encoding whose files are in ``directory``: ``kind``'s, or the only one present."""
    if kind is not None and kind not in KINDS:
        raise HashEEError(f"subwords={kind!r}: expected one of {', '.join(KINDS)}")
    present = [
        name for name, (files, _) in KINDS.items() if all(os.path.isfile(os.path.join(directory, f)) for f in files)
    ]
    wanted = ", ".join(f"{' + '.join(files)} ({name})" for name, (files, _) in KINDS.items())
    if kind is None:
        if not present:
            raise HashEEError(f"{directory}: no subword files; expected {wanted}")
        if len(present) > 1:
            raise HashEEError(f"{directory}: holds the files of {' and '.join(present)}; say which with subwords=")
        kind = present[0]
    elif kind not in present:
        raise HashEEError(f"{directory}: no {' + '.join(KINDS[kind][0])} for subwords={kind!r}")
    files, build = KINDS[kind]
    return build(*(os.path.join(directory, name) for name in files))
