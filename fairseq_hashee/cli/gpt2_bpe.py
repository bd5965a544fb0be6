"""GPT-2 byte-level BPE of whole files for fairseq-preprocess (English BART), and back to text.

Encodes files in worker processes::

    hashee-gpt2-bpe --encoder-json encoder.json --vocab-bpe vocab.bpe \\
        --inputs train.source train.target --outputs train.bpe.source train.bpe.target \\
        --workers 8 --max-len 1023

and, with ``--decode``, turns lines of ids (fairseq-generate's hypotheses) back
into text, stdin to stdout. The BPE itself is tokenization/gpt2_bpe.py.
"""

import argparse
import functools
import sys

from ..errors import HashEEError
from ..tokenization.gpt2_bpe import Gpt2Bpe
from ..tokenization.parallel import add_file_options, encode_files


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--encoder-json", required=True, help="GPT-2 encoder.json")
    parser.add_argument("--vocab-bpe", required=True, help="GPT-2 vocab.bpe (the merges)")
    add_file_options(parser, "ids", "for BART 1023, fairseq-preprocess appends </s> to reach the 1024 positions")
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
