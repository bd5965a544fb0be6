#!/usr/bin/env python
"""Operators per encoder forward and per decoder step, in tests/test_operator_counts.py's setting.

The figures the operator-count tests bound, printed per configuration (stock BART, HashEE with
no exits, encoder exits, encoder + decoder exits, half the layers empty, each dynamic rule), so
that a change to the skip path can be compared before and after: run it on both trees
(``PYTHONPATH=OLD_TREE python scripts/count_operators.py``) and compare. ``--json FILE`` writes
them too. Run from the repository root (it uses the tests' tiny models).
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import test_operator_counts as setting  # noqa: E402

from fairseq_hashee.exits.rules import rule_scores  # noqa: E402

from helpers import build_hashee, build_pair  # noqa: E402

RULES = {
    "CALM softmax": dict(decoder_exit_rule="confidence", exit_confidence="softmax"),
    "CALM saturation": dict(decoder_exit_rule="confidence", exit_confidence="saturation"),
    "DAT halting": dict(decoder_exit_rule="dat-halting"),
    "ConsistentEE": dict(decoder_exit_rule="consistentee"),
    "agreement (LECO)": dict(decoder_exit_rule="agreement"),
    "FREE (shallow exit 2)": dict(decoder_exit_rule="free", shallow_exit_layer=2),
}


def counts():
    layers = setting.LAYERS
    stock, hashee = build_pair(setting.DICTIONARY, layers=layers)
    src = setting._tokens(setting.BATCH, setting.SRC_LEN, seed=0, eos_last=True)
    rows = {"stock BART": setting._counts(stock, src)}
    for name, enc, dec in (
        ("no exits", None, None),
        ("encoder exits", range(1, layers + 1), None),
        ("encoder + decoder exits", range(1, layers + 1), range(1, layers + 1)),
    ):
        setting._tables(hashee, enc, dec)
        rows[name] = setting._counts(hashee, src)
    half = tuple(range(1, layers // 2 + 1))
    setting._tables(hashee, half, half)
    rows["half the layers empty"] = setting._counts(hashee, setting._tokens(setting.BATCH, setting.SRC_LEN, seed=0))
    prev = setting._tokens(setting.BATCH, setting.PREFIX + 1, seed=5, eos_first=True)
    lengths = torch.full((setting.BATCH,), setting.SRC_LEN)
    for name, options in RULES.items():
        model = build_hashee(setting.DICTIONARY, layers=layers, **options)
        rule = model.decoder.exit_rule
        if rule.threshold_range is not None:  # about half the rows exit below the top, as the test sets it
            rule.set_threshold(float(rule_scores(model, src, lengths, prev).median()))
        if hasattr(rule, "set_patience"):
            rule.set_patience(0)
        rows[name] = (None, setting._step_operators(model, src))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the counts to this file")
    args = parser.parse_args(argv)
    rows = counts()
    print(f"{'configuration':26s} {'encoder forward':>16s} {'decoder step':>13s}")
    for name, (encoder, step) in rows.items():
        print(f"{name:26s} {'' if encoder is None else encoder:>16} {step:>13}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({name: {"encoder_forward": e, "decoder_step": d} for name, (e, d) in rows.items()}, out, indent=2)


if __name__ == "__main__":
    main()
