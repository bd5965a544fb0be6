"""Train a sentencepiece model, or encode/decode text lines with one.

The sample pipeline uses it to build a subword vocabulary on the spot; the
encoded form (pieces joined by spaces) is what fairseq-preprocess reads and
what ``--post-process sentencepiece`` undoes.
"""

import argparse
import sys

import sentencepiece as spm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="learn a model from text files")
    train.add_argument("--input", nargs="+", required=True)
    train.add_argument("--model-prefix", required=True)
    train.add_argument("--vocab-size", type=int, default=1000)
    train.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    for name in ("encode", "decode"):
        cmd = sub.add_parser(name, help=f"{name} stdin to stdout, line by line")
        cmd.add_argument("--model", required=True)
    args = parser.parse_args(argv)

    if args.command == "train":
        spm.SentencePieceTrainer.train(
            input=",".join(args.input),
            model_prefix=args.model_prefix,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=1.0,
            # fairseq's dictionary adds its own <s>, <pad>, </s>, <unk>.
            bos_id=-1,
            eos_id=-1,
            unk_surface="<unk>",
            minloglevel=2,
        )
        return
    model = spm.SentencePieceProcessor(model_file=args.model)
    for line in sys.stdin:
        line = line.rstrip("\n")
        if args.command == "encode":
            sys.stdout.write(" ".join(model.encode(line, out_type=str)) + "\n")
        else:
            sys.stdout.write(model.decode(line.split()) + "\n")


if __name__ == "__main__":
    main()
