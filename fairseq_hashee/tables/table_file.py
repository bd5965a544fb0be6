"""The exit-table file: readable, diffable, checked against the dictionary it was built for.

Layout (UTF-8 text)::

    # fairseq-hashee exit table v1
    stack: encoder
    hash_type: frequency
    options: buckets=1,2,3 seed=1 split=train
    num_layers: 6
    dictionary_size: 50264
    dictionary_sha256: 3f2a...
                                   <- blank line, then one line per symbol, in id order:
    <s>\t6
    ...
    the\t1|2|3                     <- random-incons: drawn per occurrence from these layers

The symbol column is for people and diffs; the loader also checks it against
the dictionary, line by line.
"""

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np

from ..errors import HashEEError
from ..io_utils import atomic_write
from .hash_functions import format_exit, parse_exit, special_symbol_mask

MAGIC = "# fairseq-hashee exit table v1"
STACKS = ("encoder", "decoder")
_HEADER_KEYS = ("stack", "hash_type", "options", "num_layers", "dictionary_size", "dictionary_sha256")


def dictionary_checksum(symbols: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(symbols).encode("utf-8")).hexdigest()


@dataclass
class ExitTableFile:
    stack: str
    hash_type: str
    options: Dict[str, str]
    num_layers: int
    symbols: Sequence[str]
    table: np.ndarray

    def write(self, path: str, overwrite: bool = False) -> None:
        """Write atomically; an existing file is replaced only with ``overwrite``."""
        if os.path.exists(path) and not overwrite:
            raise HashEEError(f"{path}: exists; pass --force to overwrite it")
        options = " ".join(f"{k}={v}" for k, v in self.options.items())
        with atomic_write(path) as out:
            out.write(
                f"{MAGIC}\nstack: {self.stack}\nhash_type: {self.hash_type}\noptions: {options}\n"
                f"num_layers: {self.num_layers}\ndictionary_size: {len(self.symbols)}\n"
                f"dictionary_sha256: {dictionary_checksum(self.symbols)}\n\n"
            )
            out.writelines(f"{sym}\t{format_exit(entry)}\n" for sym, entry in zip(self.symbols, self.table))


def read_table(path: str, symbols: Sequence[str], stack: str, num_layers: int, nspecial: int = 4) -> ExitTableFile:
    """Load a table for ``stack`` of ``num_layers`` layers over the dictionary ``symbols``
    (whose first ``nspecial`` are fairseq's special symbols; those and every other
    special-shaped symbol, see ``special_symbol_mask``, must run every layer).

    Every problem raises a one-line ``HashEEError`` naming the file (and line).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except FileNotFoundError:
        raise HashEEError(f"{path}: no such exit-table file") from None
    except UnicodeDecodeError as err:
        raise HashEEError(f"{path}: not a UTF-8 exit-table file (byte {err.start})") from None
    if not lines or lines[0] != MAGIC:
        raise HashEEError(f"{path}:1: not a fairseq-hashee exit table (expected {MAGIC!r})")

    header = {}
    for number, line in enumerate(lines[1:], start=2):
        if line == "":
            body_start = number
            break
        key, sep, value = line.partition(": ")
        if not sep or key not in _HEADER_KEYS:
            raise HashEEError(f"{path}:{number}: garbled header line {line[:60]!r}")
        header[key] = value
    else:
        raise HashEEError(f"{path}: truncated, the header never ends")
    missing = [k for k in _HEADER_KEYS if k not in header]
    if missing:
        raise HashEEError(f"{path}: header lacks {', '.join(missing)}")

    if header["stack"] not in STACKS:
        raise HashEEError(f"{path}: unknown stack {header['stack']!r}; expected encoder or decoder")
    if header["stack"] != stack:
        raise HashEEError(f"{path}: a {header['stack']} table cannot drive the {stack}")
    try:
        file_layers, file_size = int(header["num_layers"]), int(header["dictionary_size"])
    except ValueError:
        raise HashEEError(f"{path}: num_layers and dictionary_size must be integers") from None
    if file_layers != num_layers:
        raise HashEEError(f"{path}: built for {file_layers} {stack} layers, the model has {num_layers}")
    checksum = dictionary_checksum(symbols)
    if file_size != len(symbols) or header["dictionary_sha256"] != checksum:
        raise HashEEError(
            f"{path}: built for another dictionary ({file_size} symbols, sha256 "
            f"{header['dictionary_sha256'][:12]}...) than the one in use ({len(symbols)} symbols, "
            f"sha256 {checksum[:12]}...)"
        )

    body = lines[body_start : body_start + len(symbols)]
    trailing = [line for line in lines[body_start + len(symbols) :] if line]
    if len(body) < len(symbols) or body[-1] == "":
        raise HashEEError(f"{path}: truncated, expected {len(symbols)} symbol lines")
    if trailing:
        raise HashEEError(f"{path}:{body_start + len(symbols) + 1}: unexpected line after the table")
    table = np.empty(len(symbols), dtype=np.int64)
    special = special_symbol_mask(symbols, nspecial)
    for i, (line, symbol) in enumerate(zip(body, symbols)):
        number = body_start + i + 1
        name, sep, value = line.rpartition("\t")
        if not sep or name != symbol:
            raise HashEEError(f"{path}:{number}: expected symbol {symbol!r}, found {line[:60]!r}")
        try:
            table[i] = parse_exit(value, num_layers)
        except ValueError as err:
            raise HashEEError(f"{path}:{number}: {err}") from None
        if special[i] and table[i] != num_layers:
            raise HashEEError(
                f"{path}:{number}: special symbol {symbol!r} must run all {num_layers} layers, not exit at {value}"
            )
    options = dict(item.partition("=")[::2] for item in header["options"].split())
    return ExitTableFile(stack, header["hash_type"], options, num_layers, list(symbols), table)
