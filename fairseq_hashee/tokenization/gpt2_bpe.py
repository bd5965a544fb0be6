"""GPT-2 byte-level BPE for English BART, with the encoder.json / vocab.bpe released with BART.

fairseq's BART dictionary names every symbol by its GPT-2 id, so a line of
subwords for fairseq-preprocess is the space-separated ids (what fairseq's own
``gpt2`` BPE writes); the byte-level algorithm is fairseq's
(``fairseq.data.encoders.gpt2_bpe_utils``). The command line encodes whole
files in worker processes:

    hashee-gpt2-bpe --encoder-json encoder.json --vocab-bpe vocab.bpe \\
        --inputs train.source train.target --outputs train.bpe.source train.bpe.target \\
        --workers 8 --max-len 1023

and, with ``--decode``, turns lines of ids (fairseq-generate's hypotheses) back
into text, stdin to stdout. Symbols that are not GPT-2 ids (``<unk>``) are
written as they are.
"""

import argparse
import functools
import json
import sys
from typing import List, Sequence

from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

from ..errors import HashEEError
from .parallel import encode_files


class Gpt2Bpe:
    """Text <-> GPT-2 ids written as fairseq dictionary symbols."""

    def __init__(self, encoder_json: str, vocab_bpe: str):
        try:
            self._bpe = get_encoder(encoder_json, vocab_bpe)
        except FileNotFoundError as err:
            raise HashEEError(f"{err.filename}: no such file (GPT-2 BPE needs encoder.json and vocab.bpe)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
            raise HashEEError(f"{encoder_json}, {vocab_bpe}: not a GPT-2 encoder.json / vocab.bpe pair ({err})") from None

    def pieces(self, text: str) -> List[str]:
        return [str(index) for index in self._bpe.encode(text)]

    def text(self, pieces: Sequence[str]) -> str:
        return self._bpe.decode([int(p) if p.isascii() and p.isdigit() and int(p) in self._bpe.decoder else p for p in pieces])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--encoder-json", required=True, help="GPT-2 encoder.json")
    parser.add_argument("--vocab-bpe", required=True, help="GPT-2 vocab.bpe (the merges)")
    parser.add_argument("--inputs", nargs="+", help="text files, one example a line")
    parser.add_argument("--outputs", nargs="+", help="where the ids of each input go (same order)")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes")
    parser.add_argument("--max-len", type=int, help="cut longer lines to this many ids, counted (for BART: 1023, "
                        "fairseq-preprocess appends </s> to reach the 1024 positions)")
    parser.add_argument("--decode", action="store_true", help="read lines of ids on stdin, write text")
    args = parser.parse_args(argv)
    if args.decode == bool(args.inputs or args.outputs):
        parser.error("give either --inputs and --outputs (encode files) or --decode (stdin to stdout)")
    try:
        if args.decode:
            bpe = Gpt2Bpe(args.encoder_json, args.vocab_bpe)
            for line in sys.stdin:
                sys.stdout.write(bpe.text(line.split()) + "\n")
            return
        factory = functools.partial(Gpt2Bpe, args.encoder_json, args.vocab_bpe)
        for report in encode_files(factory, args.inputs, args.outputs or [], args.workers, args.max_len):
            print(report, file=sys.stderr)
    except HashEEError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
