"""Encode text files line by line into subword files, in worker processes, with a progress bar.

What fairseq-preprocess reads: one line of space-separated symbols per input
line, so the output stays aligned with the input (an empty line stays empty).
Lines longer than ``max_len`` symbols are cut there and counted: a document
longer than the model's positions would otherwise be cut silently at training
time (``--truncate-source``) or dropped. Every output is written to a temporary
file and renamed when complete.
"""

import functools
import multiprocessing
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

from tqdm import tqdm

from ..errors import HashEEError
from ..io_utils import atomic_write

_worker_encoder = None  # one per worker process, built by _start_worker


@dataclass
class FileReport:
    path: str  # the input
    lines: int
    max_len: Optional[int]
    truncated: int = 0
    first_truncated: Optional[int] = None  # line number

    def __str__(self) -> str:
        if not self.truncated:
            return f"{self.path}: {self.lines} lines"
        return (
            f"{self.path}: {self.lines} lines, {self.truncated} cut to {self.max_len} tokens "
            f"(first: line {self.first_truncated})"
        )


def _start_worker(factory: Callable) -> None:
    global _worker_encoder
    _worker_encoder = factory()


def _pieces(line: str) -> List[str]:
    return _worker_encoder.pieces(line)


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except OSError as err:
        raise HashEEError(f"{path}: cannot read ({err.strerror or err})") from None


def _read_lines(path: str) -> Iterator[str]:
    """The file's lines without their ends; "\\n" is the only line break, as for fairseq."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                yield line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise HashEEError(
                    f"{path}:{number}: not valid UTF-8 (clean the text with hashee-prepare first)"
                ) from None


def encode_files(
    factory: Callable,
    inputs: Sequence[str],
    outputs: Sequence[str],
    workers: int = 1,
    max_len: Optional[int] = None,
    chunksize: int = 64,
) -> List[FileReport]:
    """Encode each input into its output; ``factory()`` builds an object with ``pieces(text)``."""
    if len(inputs) != len(outputs):
        raise HashEEError(f"{len(inputs)} --inputs but {len(outputs)} --outputs")
    if max_len is not None and max_len < 1:
        raise HashEEError(f"--max-len: expected a positive number of tokens, got {max_len}")
    sizes = [_count_lines(path) for path in inputs]
    encoder = factory()  # also fails early, in this process, on a missing or broken vocabulary
    reports = []
    pool = multiprocessing.Pool(workers, _start_worker, (factory,)) if workers > 1 else None
    encode = (
        functools.partial(pool.imap, _pieces, chunksize=chunksize) if pool else functools.partial(map, encoder.pieces)
    )
    try:
        with tqdm(total=sum(sizes), unit=" lines", disable=None) as progress:
            for path, out_path, size in zip(inputs, outputs, sizes):
                report = FileReport(path, size, max_len)
                with atomic_write(out_path) as out:
                    for number, pieces in enumerate(encode(_read_lines(path)), 1):
                        if max_len is not None and len(pieces) > max_len:
                            pieces = pieces[:max_len]
                            report.truncated += 1
                            report.first_truncated = report.first_truncated or number
                        out.write(" ".join(pieces) + "\n")
                        progress.update()
                reports.append(report)
    finally:
        if pool:
            pool.terminate()
    return reports


def add_file_options(parser, unit: str, max_len_hint: str) -> None:
    """The command-line options of ``encode_files`` (hashee-gpt2-bpe, hashee-wordpiece):
    ``unit`` names what a line is cut into, ``max_len_hint`` the length a model takes."""
    parser.add_argument("--inputs", nargs="+", help="text files to encode, one example a line (in worker processes)")
    parser.add_argument("--outputs", nargs="+", help=f"where the {unit} of each input go (same order)")
    parser.add_argument("--workers", type=int, default=1, help="with --inputs: encoding processes")
    parser.add_argument(
        "--max-len", type=int, help=f"with --inputs: cut longer lines to this many {unit}, counted; {max_len_hint}"
    )
