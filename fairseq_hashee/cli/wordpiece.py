"""``hashee-wordpiece``: BERT WordPiece pieces for fairseq-preprocess, and back to text.

Writes the pieces of each stdin line (or with ``--decode``, the text of each
line of pieces), the form fairseq-preprocess reads: about 10,000 lines of 160
characters a second on one CPU core; with ``--inputs``/``--outputs`` it
encodes whole files in ``--workers`` processes and cuts lines longer than
``--max-len`` tokens, counting them. The algorithm is tokenization/wordpiece.py.
"""

import argparse
import functools
import sys
from typing import BinaryIO, List, Optional, Sequence, TextIO

from ..errors import HashEEError
from ..tokenization.parallel import add_file_options, encode_files
from ..tokenization.wordpiece import WordPieceSubwords


def main(
    argv: Optional[Sequence[str]] = None,
    stdin: Optional[BinaryIO] = None,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    parser = argparse.ArgumentParser(
        prog="hashee-wordpiece",
        description="Write the BERT WordPiece pieces of each stdin line, space-separated, to stdout.",
    )
    parser.add_argument("--vocab", required=True, help="BERT vocab.txt (e.g. CPT's)")
    parser.add_argument("--decode", action="store_true", help="read lines of pieces, write text")
    parser.add_argument(
        "--prepend",
        metavar="SYMBOL",
        help="write SYMBOL before the pieces of every line: with a dictionary from hashee-convert, "
        "'<s>' is [CLS], which frames a CPT sentence as [CLS] ... [SEP] (fairseq appends [SEP] as </s>)",
    )
    add_file_options(parser, "tokens", "--prepend included; for CPT 511, fairseq-preprocess appends the 512th")
    args = parser.parse_args(argv)
    if args.inputs or args.outputs:
        if args.decode:
            parser.error("--decode reads stdin; --inputs/--outputs encode files")
        return _encode_files(args, stderr if stderr is not None else sys.stderr)
    if args.max_len is not None:
        parser.error("--max-len goes with --inputs/--outputs")
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    try:
        subwords = WordPieceSubwords(args.vocab, args.prepend)
    except HashEEError as exc:
        stderr.write(f"error: {exc}\n")
        return 1

    if args.decode:
        convert = subwords.tokenizer.decode
    else:

        def convert(line: str) -> str:
            return " ".join(subwords.pieces(line))

    bad: List[int] = []
    for number, raw in enumerate(stdin, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            # An empty line, not a missing one: source and target files must stay line-aligned.
            bad.append(number)
            if len(bad) <= 20:
                stderr.write(f"line {number}: not valid UTF-8, written as an empty line\n")
            line = ""
        stdout.write((convert(line) + "\n").encode("utf-8"))
    stdout.flush()
    if bad:
        stderr.write(
            f"skipped {len(bad)} line(s) that are not valid UTF-8 (first: line {bad[0]}); "
            "each was written as an empty line\n"
        )
    return 0


def _encode_files(args, stderr: TextIO) -> int:
    factory = functools.partial(WordPieceSubwords, args.vocab, args.prepend)
    try:
        for report in encode_files(factory, args.inputs or [], args.outputs or [], args.workers, args.max_len):
            stderr.write(f"{report}\n")
    except HashEEError as exc:
        stderr.write(f"error: {exc}\n")
        return 1
    return 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
