"""User-facing errors, reported as one line instead of a traceback.

Bad options, tables and checkpoints raise ``HashEEError`` naming the option,
file or symbol at fault. fairseq's command-line tools print a full traceback
for any exception, and fairseq sometimes re-raises ours inside its own (e.g.
"Cannot load model parameters from checkpoint X"); the hook below prints the
whole chain as one line, outermost message (which names the file) first.
"""

import sys


class HashEEError(ValueError):
    """A problem with the user's input, explained in its message."""


def _find(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, HashEEError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_one_line_errors() -> None:
    previous = sys.excepthook
    if getattr(previous, "_hashee", False):
        return

    def hook(exc_type, exc, tb):
        ours = _find(exc)
        if ours is None:
            return previous(exc_type, exc, tb)
        message = str(ours) if ours is exc else f"{exc} {ours}"
        sys.stderr.write(f"error: {message}\n")

    hook._hashee = True
    sys.excepthook = hook
