"""BERT WordPiece tokenization for CPT, from a BERT ``vocab.txt``.

CPT (the Chinese BART-like model) was trained on text split by BERT's
uncased tokenizer, so data for fine-tuning it must be split the same way or
the checkpoint sees ids it never learned. This is that algorithm, written
against its description and checked against transformers' ``BertTokenizer``
in the tests:

1. basic splitting: drop U+0000, U+FFFD and control/format/unassigned
   characters (category C*, except tab, newline and carriage return, which
   are whitespace); turn whitespace into spaces; put spaces around every CJK
   ideograph; lowercase; decompose (NFD) and drop non-spacing marks, so
   accents go; cut words at every punctuation character (Unicode P* and every
   ASCII symbol that is not a letter or digit);
2. WordPiece: each word becomes the longest vocabulary entry that starts it,
   then the longest ``##``-prefixed entry that continues it, and so on; a word
   that cannot be covered, or is longer than 100 characters, is ``[UNK]``.

Special tokens written literally in the text ("[SEP]") stay single tokens, as
BertTokenizer keeps them.

The target is the classic Python BertTokenizer, which CPT was trained with.
transformers >= 5 backs ``BertTokenizer`` with the Rust ``tokenizers``
library, which differs on a few rare inputs; we keep the classic answer:
a capital sigma ending a word lowercases to final sigma (Python's str.lower);
U+2B820..U+2B91F are CJK ideographs (the Rust range starts at U+2B920);
characters unassigned in Python's Unicode database are dropped, not kept;
punctuation and accents added in recent Unicode versions split and strip
(Rust's category tables are older); vocabulary lines keep trailing spaces
instead of being trimmed. Like the classic tokenizer, the answer for
characters new in Unicode follows the running Python's Unicode database.

The command line over it is ``hashee-wordpiece`` (cli/wordpiece.py).
"""

import functools
import operator
import os
import re
import unicodedata
from itertools import chain
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ..errors import HashEEError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
_REQUIRED = (PAD, UNK, CLS, SEP)
# Structural tokens that carry no text; [UNK] is kept so lost content stays visible.
_NOT_TEXT = frozenset((PAD, CLS, SEP, MASK))
_CONTINUATION = "##"

# The blocks BERT treats as Chinese characters (CJK Unified Ideographs, its
# extensions A to E and the compatibility ideographs). Hangul, kana and CJK
# punctuation are not among them: they are split like any other script.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(code: int) -> bool:
    return any(low <= code <= high for low, high in _CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    code = ord(ch)
    if code < 128:
        return not ch.isalnum() and 33 <= code <= 126
    return unicodedata.category(ch).startswith("P")


class _LazyTable(dict):
    """A str.translate table whose entries are computed the first time a character is seen.

    A table covering all of Unicode would take a second to build; text only
    ever uses a few thousand characters, and translate runs in C.
    """

    def __init__(self, rule):
        super().__init__()
        self._rule = rule

    def __missing__(self, code: int):
        value = self[code] = self._rule(chr(code))
        return value


def _clean_rule(ch: str) -> Optional[str]:
    category = unicodedata.category(ch)
    if ch in "\t\n\r " or category == "Zs":
        return " "
    if ch in "\x00\ufffd" or category.startswith("C"):
        return None
    if _is_cjk(ord(ch)):
        return f" {ch} "
    return ch


def _split_rule(ch: str) -> Optional[str]:
    if unicodedata.category(ch) == "Mn":
        return None
    if _is_punctuation(ch):
        return f" {ch} "
    return ch


# Applied before lowercasing (drop/space/CJK) and after NFD (accents/punctuation):
# the order matters, since NFD can turn a letter into base + mark or yield punctuation.
_CLEAN = _LazyTable(_clean_rule)
_SPLIT = _LazyTable(_split_rule)


def basic_words(text: str) -> List[str]:
    """BERT's basic split (step 1 above): every CJK ideograph and punctuation mark a word,
    other runs of letters and digits one word each, lowercased and without accents."""
    text = text.translate(_CLEAN).lower()
    if not text.isascii():
        text = unicodedata.normalize("NFD", text)
    return text.translate(_SPLIT).split()


@functools.lru_cache(maxsize=None)
def _joins_without_space(ch: str) -> bool:
    """Chinese is written without spaces: ideographs and non-ASCII (full-width, CJK) punctuation."""
    code = ord(ch)
    if _is_cjk(code) or 0x3000 <= code <= 0x303F or 0xFF00 <= code <= 0xFFEF:
        return True
    return code >= 128 and unicodedata.category(ch).startswith("P")


class WordPieceTokenizer:
    """BERT uncased WordPiece over a vocab.txt whose line numbers are the model's ids."""

    max_input_chars_per_word = 100

    def __init__(self, tokens: Sequence[str], source: str = "<vocabulary>", cache_size: int = 1 << 18):
        self.source = source
        self._tokens = list(tokens)
        # A duplicated line maps text to its last id, as BertTokenizer's dict does;
        # every id still decodes to its own line.
        self._ids = {token: index for index, token in enumerate(self._tokens)}
        missing = [name for name in _REQUIRED if name not in self._ids]
        if missing:
            raise HashEEError(
                f"vocab file {source} has no {', '.join(missing)} line; a BERT vocab.txt needs {' '.join(_REQUIRED)}"
            )
        self._unk_piece = (UNK,)
        # No piece is longer than the longest entry: start matching there, not at the word's end.
        self._longest = max(map(len, self._tokens))
        specials = [name for name in (PAD, UNK, CLS, SEP, MASK) if name in self._ids]
        self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        # Words repeat (in Chinese most are single characters): split each once.
        self._pieces = functools.lru_cache(maxsize=cache_size)(self._split_word)
        self._piece_ids = functools.lru_cache(maxsize=cache_size)(self._split_word_ids)

    @classmethod
    def from_vocab_file(cls, path: Union[str, "os.PathLike[str]"]) -> "WordPieceTokenizer":
        """Read vocab.txt, one token a line.

        Every line counts, blank or duplicated, since ids are line numbers in the checkpoint.
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise HashEEError(f"cannot read vocab file {path}: {exc.strerror or exc}") from None
        if not data:
            raise HashEEError(f"vocab file {path} is empty")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise HashEEError(
                f"vocab file {path}, line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})"
            ) from None
        # Lines end as Python's text files end them (\n, \r\n or \r), as BertTokenizer reads them.
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if lines[-1] == "":
            lines.pop()
        return cls(lines, source=path)

    # Special ids -------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    @property
    def cls_id(self) -> int:
        return self._ids[CLS]

    @property
    def sep_id(self) -> int:
        return self._ids[SEP]

    @property
    def mask_id(self) -> Optional[int]:
        """None when the vocabulary has no [MASK] (fine-tuning never needs it)."""
        return self._ids.get(MASK)

    @property
    def decoder_start_id(self) -> int:
        """CPT's decoder is fed [SEP] first.

        fairseq does this by itself when [SEP] is the dictionary's end-of-sentence symbol.
        """
        return self.sep_id

    # Tokenization ------------------------------------------------------------

    def _words(self, text: str) -> List[str]:
        if "[" not in text:
            return basic_words(text)
        words: List[str] = []
        for index, part in enumerate(self._specials.split(text)):
            if index % 2:
                words.append(part)  # a special token, which is its own vocabulary entry
            elif part:
                words.extend(basic_words(part))
        return words

    def _split_word(self, word: str) -> Tuple[str, ...]:
        length = len(word)
        if length > self.max_input_chars_per_word:
            return self._unk_piece
        if word in self._ids:
            return (word,)
        pieces = []
        start = 0
        while start < length:
            prefix = _CONTINUATION if start else ""
            for end in range(min(length, start + self._longest), start, -1):
                piece = prefix + word[start:end]
                if piece in self._ids:
                    break
            else:
                return self._unk_piece
            pieces.append(piece)
            start = end
        return tuple(pieces)

    def _split_word_ids(self, word: str) -> Tuple[int, ...]:
        return tuple(self._ids[piece] for piece in self._pieces(word))

    def tokenize(self, text: str) -> List[str]:
        """The word pieces of ``text``, as BertTokenizer.tokenize gives them."""
        return list(chain.from_iterable(map(self._pieces, self._words(text))))

    def encode(self, text: str) -> List[int]:
        """The ids of ``text``'s pieces, without [CLS]/[SEP]."""
        return list(chain.from_iterable(map(self._piece_ids, self._words(text))))

    def _framed(self, text: str, max_len: Optional[int]) -> List[int]:
        body = self.encode(text)
        if max_len is not None:
            if max_len < 2:
                raise HashEEError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
            body = body[: max_len - 2]
        return [self.cls_id, *body, self.sep_id]

    def encode_source(self, text: str, max_len: Optional[int] = None) -> List[int]:
        """[CLS] pieces [SEP]: the encoder input CPT was pre-trained on.

        Truncation keeps the closing [SEP]: CPT's inputs always end with one.
        """
        return self._framed(text, max_len)

    def encode_target(self, text: str, max_len: Optional[int] = None) -> List[int]:
        """[CLS] pieces [SEP]: what CPT's decoder learns to emit.

        The decoder's input is this shifted right behind ``decoder_start_id``
        ([SEP] [CLS] pieces), which fairseq's batching produces by itself when
        [SEP] is the dictionary's end-of-sentence symbol, so the target keeps
        its [SEP] at the end rather than starting with one.
        """
        return self._framed(text, max_len)

    # Decoding ----------------------------------------------------------------

    def decode(self, tokens: Union[str, Iterable[Union[int, str]]]) -> str:
        """Text from ids or pieces (or one string of space-separated pieces).

        ``##`` pieces join the word before them; words are separated by a space
        only when neither side is Chinese (ideograph or full-width/CJK
        punctuation), so Chinese comes back without spaces. [PAD], [CLS],
        [SEP] and [MASK] are skipped; [UNK] is kept. Lowercasing and stripped
        accents cannot be undone.
        """
        if isinstance(tokens, str):
            tokens = tokens.split()
        words: List[str] = []
        for token in tokens:
            if not isinstance(token, str):
                token = self._token_of(token)
            if not token or token in _NOT_TEXT:  # a blank vocab line has no text either
                continue
            if token.startswith(_CONTINUATION) and len(token) > len(_CONTINUATION):
                token = token[len(_CONTINUATION) :]
                if words:
                    words[-1] += token
                    continue
            words.append(token)
        out: List[str] = []
        for word in words:
            if out and not (_joins_without_space(out[-1][-1]) or _joins_without_space(word[0])):
                out.append(" ")
            out.append(word)
        return "".join(out)

    def _token_of(self, index) -> str:
        try:
            index = operator.index(index)
            if index < 0:
                raise IndexError
            return self._tokens[index]
        except (IndexError, TypeError, ValueError):
            raise HashEEError(f"id {index!r} is not in vocab file {self.source} ({len(self._tokens)} ids)") from None


class WordPieceSubwords:
    """WordPiece as a fairseq dictionary converted by hashee-convert spells it.

    ``prepend`` ("<s>", which is [CLS] there) starts every line, framing a CPT
    sentence as [CLS] ... [SEP] once fairseq appends [SEP] as </s>. Built from
    the vocabulary's path, so worker processes can each load their own.
    """

    def __init__(self, vocab: str, prepend: Optional[str] = None):
        self.tokenizer = WordPieceTokenizer.from_vocab_file(vocab)
        self._prefix = [prepend] if prepend else []

    def pieces(self, text: str) -> List[str]:
        return self._prefix + self.tokenizer.tokenize(text)

    def text(self, pieces: Sequence[str]) -> str:
        return self.tokenizer.decode(pieces)
