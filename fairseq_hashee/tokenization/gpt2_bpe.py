"""GPT-2 byte-level BPE for English BART, with the encoder.json / vocab.bpe released with BART.

fairseq's BART dictionary names every symbol by its GPT-2 id, so a line of
subwords for fairseq-preprocess is the space-separated ids (what fairseq's own
``gpt2`` BPE writes); the byte-level algorithm is fairseq's
(``fairseq.data.encoders.gpt2_bpe_utils``). Symbols that are not GPT-2 ids
(``<unk>``) decode as they are. The command line over it is
``hashee-gpt2-bpe`` (cli/gpt2_bpe.py).
"""

import json
from typing import List, Sequence

from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

from ..errors import HashEEError


class Gpt2Bpe:
    """Text <-> GPT-2 ids written as fairseq dictionary symbols."""

    def __init__(self, encoder_json: str, vocab_bpe: str):
        try:
            self._bpe = get_encoder(encoder_json, vocab_bpe)
        except FileNotFoundError as err:
            raise HashEEError(f"{err.filename}: no such file (GPT-2 BPE needs encoder.json and vocab.bpe)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
            raise HashEEError(
                f"{encoder_json}, {vocab_bpe}: not a GPT-2 encoder.json / vocab.bpe pair ({err})"
            ) from None

    def pieces(self, text: str) -> List[str]:
        return [str(index) for index in self._bpe.encode(text)]

    def text(self, pieces: Sequence[str]) -> str:
        return self._bpe.decode(
            [int(p) if p.isascii() and p.isdigit() and int(p) in self._bpe.decoder else p for p in pieces]
        )
