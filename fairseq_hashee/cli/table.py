"""Build a HashEE exit table and print its bucket histogram and expected FLOPs speed-up.

From a binarized dataset (every hash type)::

    hashee-table DATA_BIN --stack encoder --num-layers 6 --hash-type frequency -o enc.table

or from a fairseq dict.txt and its counts (every type but mi)::

    hashee-table --dict dict.txt --stack encoder --num-layers 6 --hash-type random -o enc.table

The cluster hash clusters the token embeddings of a checkpoint (``--checkpoint
model.pt``, e.g. the released weights you will fine-tune).

The file is what ``--encoder-hash-table`` / ``--decoder-hash-table`` load.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from fairseq.data import Dictionary

from ..checkpoints import load_model_state
from ..errors import HashEEError
from ..io_utils import atomic_write
from ..modules import flops
from ..modules.exit_table import draw_exits
from ..tables import hash_functions
from ..tables.recipe import SplitSides, TableOptions, TableRecipe, recipe_from_split
from ..tables.token_stats import TokenStats


def expected_speedup(table, sides: SplitSides, stack: str, shape: flops.StackShape, max_sentences: int):
    """FLOPs speed-up of ``stack`` over the sentences of a split (teacher-forced, batch 1)."""
    src = sides.load(sides.source_lang, sides.src_dict)
    tgt = sides.load(sides.target_lang, sides.tgt_dict) if stack == "decoder" else None
    table = torch.from_numpy(table)
    generator = torch.Generator().manual_seed(0)  # for random-incons draws
    exits = lambda tokens: draw_exits(table[tokens], shape.layers, generator)[None]  # noqa: E731
    meter = flops.SpeedupMeter()
    for i in range(min(len(src), max_sentences)):
        source = src[i].long()
        if stack == "encoder":
            meter.add_encoder(shape, exits(source))
            continue
        target = tgt[i].long()
        prev = torch.cat([target[-1:], target[:-1]])  # fairseq's prev_output_tokens: eos first
        meter.add_decoder(shape, exits(prev), 0, torch.tensor([len(source)]))
    return flops.speedup_report(meter.sums)


def checkpoint_embeddings(args, vocab_size: int):
    """The stack's token-embedding matrix from --checkpoint, for the cluster hash."""
    if args.hash_type != "cluster":
        return None
    if not args.checkpoint:
        raise HashEEError("--hash-type cluster needs --checkpoint (the model whose embeddings it clusters)")
    state = load_model_state(args.checkpoint)
    key = f"{args.stack}.embed_tokens.weight"
    if key not in state:
        raise HashEEError(f"{args.checkpoint}: no {key} in the checkpoint's model")
    if state[key].size(0) != vocab_size:
        raise HashEEError(
            f"{args.checkpoint}: {key} has {state[key].size(0)} rows, the dictionary {vocab_size} symbols"
        )
    return state[key].float().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("data", nargs="?", help="binarized data folder (fairseq-preprocess --destdir)")
    parser.add_argument("--dict", help="build from this dict.txt's counts instead of a dataset")
    parser.add_argument("-o", "--output", required=True, help="table file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing table file")
    parser.add_argument("--stack", choices=["encoder", "decoder"], required=True)
    parser.add_argument("--num-layers", type=int, required=True, help="layers of the stack")
    parser.add_argument("--hash-type", choices=hash_functions.HASH_TYPES, default="frequency")
    parser.add_argument("--exit-layers", help="comma-separated exit layers; overrides min/max/step")
    parser.add_argument("--exit-min", type=int, default=1)
    parser.add_argument("--exit-max", type=int)
    parser.add_argument("--exit-step", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--checkpoint", help="model.pt whose token embeddings the cluster hash clusters")
    parser.add_argument("-s", "--source-lang", default="src")
    parser.add_argument("-t", "--target-lang", default="tgt")
    parser.add_argument("--split", default="train", help="split whose statistics build the table")
    parser.add_argument("--speedup-split", default="valid", help="split to measure the expected speed-up on")
    parser.add_argument("--max-sentences", type=int, default=10000, help="of the speed-up split")
    parser.add_argument("--embed-dim", type=int, default=768, help="model dimension (bart_base: 768)")
    parser.add_argument("--ffn-dim", type=int, default=3072, help="feed-forward dimension (bart_base: 3072)")
    parser.add_argument("--json", help="also write the histogram and speed-up here")
    args = parser.parse_args(argv)
    try:
        run(args, parser)
    except HashEEError as err:
        sys.exit(f"error: {err}")


def run(args, parser):
    if (args.data is None) == (args.dict is None):
        parser.error("give either a binarized DATA folder or --dict")
    if os.path.exists(args.output) and not args.force:
        raise HashEEError(f"{args.output}: exists; pass --force to overwrite it")
    options = TableOptions(
        args.hash_type, args.exit_layers, args.exit_min, args.exit_max, args.exit_step, args.seed, "--"
    )
    options.buckets(args.num_layers)  # a bad option fails before anything is read
    sides = None
    if args.dict:
        if not os.path.exists(args.dict):
            raise HashEEError(f"{args.dict}: no such dictionary file")
        if args.hash_type == "mi":
            raise HashEEError("--hash-type mi needs a binarized dataset (both sides), not --dict")
        dictionary = Dictionary.load(args.dict)
        stats = TokenStats(np.asarray(dictionary.count, dtype=np.int64))
        recipe = TableRecipe(
            args.stack,
            options,
            args.num_layers,
            dictionary.symbols,
            dictionary.nspecial,
            stats,
            os.path.basename(args.dict),
        )
    else:
        for lang in (args.source_lang, args.target_lang):
            if not os.path.exists(os.path.join(args.data, f"dict.{lang}.txt")):
                raise HashEEError(f"{args.data}: no dict.{lang}.txt (see -s/-t)")
        src_dict, tgt_dict = (
            Dictionary.load(os.path.join(args.data, f"dict.{lang}.txt"))
            for lang in (args.source_lang, args.target_lang)
        )
        sides = SplitSides(args.data, args.split, args.source_lang, args.target_lang, src_dict, tgt_dict)
        recipe = recipe_from_split(sides, args.stack, options, args.num_layers)
    built = recipe.build(checkpoint_embeddings(args, len(recipe.symbols)), args.checkpoint or "")
    built.write(args.output, overwrite=args.force)

    report = {"histogram": recipe.histogram(built.table)}
    print(f"{args.stack} exit table ({args.hash_type}) -> {args.output}")
    print(f"  {report['histogram']}")
    if sides is not None:
        sides.split = args.speedup_split
        vocab = len(sides.tgt_dict) if args.stack == "decoder" else 0
        shape = flops.StackShape(
            args.num_layers, args.embed_dim, args.ffn_dim, kv_input_dim=args.embed_dim, vocab=vocab
        )
        speed = expected_speedup(built.table, sides, args.stack, shape, args.max_sentences)
        short = "enc" if args.stack == "encoder" else "dec"
        report.update(speedup=speed[f"{short}_speedup"], mean_exit=speed[f"{short}_mean_exit"])
        print(
            f"  expected {args.stack} FLOPs speed-up on {args.speedup_split}: {report['speedup']:.2f}x "
            f"(mean exit layer {report['mean_exit']:.2f}, d={args.embed_dim}, ffn={args.ffn_dim})"
        )
    if args.json:
        with atomic_write(args.json) as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
