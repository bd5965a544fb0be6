"""Writing files and folders so that a crash never leaves a half-written one behind."""

import contextlib
import os
import shutil
import tempfile
from typing import IO, Iterator

from .errors import HashEEError


@contextlib.contextmanager
def atomic_write(path: str, encoding: str = "utf-8", binary: bool = False) -> Iterator[IO]:
    """Write ``path`` through a temporary file in the same folder, renamed on success."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # the folder, or one above it, is a file
        raise HashEEError(f"{folder}: not a folder (a file is in the way), so {path} cannot be written") from None
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str, force: bool = False) -> Iterator[str]:
    """Fill a folder that appears complete or not at all.

    Yields a temporary sibling of ``path`` to write into; on success it is
    renamed to ``path`` (replacing an existing one only with ``force``), on any
    failure it is removed.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not force:
        raise HashEEError(f"{path}: exists; pass --force to overwrite it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = tmp + ".old"
    if os.path.exists(path):
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
