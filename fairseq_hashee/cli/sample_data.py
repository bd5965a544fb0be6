"""Build a small real-text summarization corpus that needs no download.

The text is the documentation every Python installation carries: each
docstring of the standard library whose first sentence is followed by more
text gives one pair, the first sentence as the summary and the rest as the
document. Output: ``{train,valid,test}.{src,tgt}``, one example per line.
"""

import argparse
import ast
import random
import re
import sys
import sysconfig
from pathlib import Path
from typing import Iterator, List, Tuple

from ..io_utils import atomic_write

_FIRST_SENTENCE = re.compile(r"^(.{10,}?[.!?])\s+([A-Z(`'\"].*)$")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def docstring_pairs(
    root: Path, min_doc_words: int = 12, max_doc_words: int = 200, max_summary_words: int = 40
) -> List[Tuple[str, str]]:
    """(document, summary) pairs from the docstrings under ``root``, deduplicated, in file order."""
    seen, pairs = set(), []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        for doc in _docstrings(path):
            text = " ".join(doc.split())
            match = _FIRST_SENTENCE.match(text)
            if not match:
                continue
            summary, document = match.group(1), match.group(2)
            n_doc, n_sum = len(document.split()), len(summary.split())
            if not (min_doc_words <= n_doc <= max_doc_words and 3 <= n_sum <= max_summary_words):
                continue
            if (document, summary) in seen:
                continue
            seen.add((document, summary))
            pairs.append((document, summary))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for {train,valid,test}.{src,tgt}")
    parser.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"], help="folder of Python sources to read")
    parser.add_argument("--valid", type=int, default=100, help="pairs in the valid split")
    parser.add_argument("--test", type=int, default=100, help="pairs in the test split")
    parser.add_argument("--max-train", type=int, default=4000, help="at most this many training pairs")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    root = Path(args.stdlib)
    if not root.is_dir():
        parser.error(f"--stdlib: {root} is not a folder")
    pairs = docstring_pairs(root)
    if len(pairs) < args.valid + args.test + 10:
        parser.error(f"--stdlib: only {len(pairs)} usable docstrings under {root}")
    random.Random(args.seed).shuffle(pairs)
    splits = {
        "valid": pairs[: args.valid],
        "test": pairs[args.valid : args.valid + args.test],
        "train": pairs[args.valid + args.test :][: args.max_train],
    }
    for split, rows in splits.items():
        for side, column in (("src", 0), ("tgt", 1)):
            with atomic_write(str(Path(args.out_dir) / f"{split}.{side}")) as out:
                out.writelines(row[column] + "\n" for row in rows)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"wrote {counts} pairs from {root} to {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
