"""Build a small real-text summarization corpus that needs no download.

The text is the documentation every Python installation carries. Each
documented class or function of the standard library gives one pair: the
summary is its docstring's first sentence; the document is what a reader sees
before that sentence is written for them, the qualified name and the
signature, followed by the rest of the docstring (often empty). Identifiers are
split into words (``LogRecord.getMessage`` -> ``log record get message``) and
both sides are lower-cased, so that the words a summary shares with its
document are the same subwords on both sides: a tiny model trained for minutes
on two CPU cores then writes summaries about their documents instead of the
corpus's most common sentence. Output: ``{train,valid,test,calib}.{src,tgt}``,
one example per line: valid selects checkpoints, test is reported on, and calib
(1,000 pairs, held out of training like the others) is what calibration
certifies a budget on; a mean ROUGE drop of a few thousandths needs about that
many documents to be told apart from one of 0.01 (docs/calibration.md).
"""

import argparse
import ast
import random
import re
import sys
import sysconfig
from pathlib import Path
from typing import Iterator, List, Tuple

from ..errors import HashEEError, install_one_line_errors
from ..io_utils import atomic_write

_FIRST_SENTENCE = re.compile(r"^(.{10,}?[.!?])(?:\s+([A-Z(`'\"].*))?$")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])|([A-Z])([A-Z][a-z])")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def identifier_words(name: str) -> str:
    """``email.Message.get_all`` -> ``email message get all``; ``HTTPServer`` -> ``http server``."""
    spaced = _CAMEL.sub(lambda m: f"{m.group(1) or m.group(3)} {m.group(2) or m.group(4)}", name)
    return " ".join(re.sub(r"[._]+", " ", spaced).lower().split())


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _definitions(node: ast.AST, qualified: str) -> Iterator[Tuple[ast.AST, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFINITIONS):
            name = f"{qualified}.{child.name}" if qualified else child.name
            yield child, name
            yield from _definitions(child, name)


def _heading(node: ast.AST, qualified: str) -> str:
    """How a reference page titles the definition: its name and signature, then where it lives
    (``get message ( self ) , function of logging log record``)."""
    owner, _, name = qualified.rpartition(".")
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(identifier_words(ast.unparse(base)) for base in node.bases)
        return f"{identifier_words(name)} ( {bases} ) , class in {identifier_words(owner)}"
    arguments = [identifier_words(a.arg) for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    signature = ", ".join(a for a in arguments if a)
    return f"{identifier_words(name)} ( {signature} ) , function of {identifier_words(owner)}"


def _documented(path: Path, module: str) -> Iterator[Tuple[str, str]]:
    """(heading, docstring) of every documented class and function in ``path``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node, qualified in _definitions(tree, module):
        doc = ast.get_docstring(node)
        if doc:
            yield _heading(node, qualified), doc


def docstring_pairs(
    root: Path, min_rest_words: int = 0, max_doc_words: int = 32, max_summary_words: int = 40
) -> List[Tuple[str, str]]:
    """(document, summary) pairs from the definitions under ``root``, deduplicated, in file order.

    ``min_rest_words``: the docstring must go on for at least this many words
    after its first sentence; the document keeps its first ``max_doc_words``.
    """
    seen, pairs = set(), []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _SKIP_DIRS & set(relative.parts):
            continue
        for heading, doc in _documented(path, _module_name(relative)):
            match = _FIRST_SENTENCE.match(" ".join(doc.split()))
            if not match:
                continue
            summary, rest = match.group(1).lower(), (match.group(2) or "").lower()
            if len(rest.split()) < min_rest_words or not 3 <= len(summary.split()) <= max_summary_words:
                continue
            document = " ".join(f"{heading} : {rest}".split()[:max_doc_words])
            if (document, summary) in seen:
                continue
            seen.add((document, summary))
            pairs.append((document, summary))
    return pairs


def main(argv=None):
    install_one_line_errors()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for {train,valid,test,calib}.{src,tgt}")
    parser.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"], help="folder of Python sources to read")
    parser.add_argument("--valid", type=int, default=100, help="pairs in the valid split")
    parser.add_argument("--test", type=int, default=100, help="pairs in the test split")
    parser.add_argument("--calib", type=int, default=1000, help="pairs in the calib split (calibration)")
    parser.add_argument("--max-train", type=int, default=8000, help="at most this many training pairs")
    parser.add_argument("--max-doc-words", type=int, default=32, help="words of each document kept")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    root, out_dir = Path(args.stdlib), Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HashEEError(
            f"{out_dir}: exists and is not a folder (the folder to write {{train,valid,test,calib}}.{{src,tgt}} into)"
        )
    if not root.is_dir():
        raise HashEEError(f"--stdlib: {root} is not a folder")
    pairs = docstring_pairs(root, max_doc_words=args.max_doc_words)
    held_out = args.valid + args.test + args.calib
    if len(pairs) < held_out + 10:
        raise HashEEError(f"--stdlib: only {len(pairs)} usable docstrings under {root}")
    random.Random(args.seed).shuffle(pairs)
    # valid and test first, as before the calib split existed: the same documents for the same seed
    splits = {
        "valid": pairs[: args.valid],
        "test": pairs[args.valid : args.valid + args.test],
        "calib": pairs[args.valid + args.test : held_out],
        "train": pairs[held_out:][: args.max_train],
    }
    for split, rows in splits.items():
        for side, column in (("src", 0), ("tgt", 1)):
            with atomic_write(str(out_dir / f"{split}.{side}")) as out:
                out.writelines(row[column] + "\n" for row in rows)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"wrote {counts} pairs from {root} to {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
