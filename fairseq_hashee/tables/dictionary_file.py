"""fairseq dict.txt files, checked line by line before fairseq reads them.

fairseq's own loader reports a malformed line without naming the file or the
line, a duplicate symbol with a paragraph about Camembert, and a non-UTF-8
file not at all clearly; every summarization run starts by loading two of
these files, so the task checks them here and says where the problem is.
"""

from fairseq.data import Dictionary

from ..errors import HashEEError

OVERWRITE_FLAG = "#fairseq:overwrite"


def check_dictionary_file(path: str) -> None:
    """Raise a one-line ``HashEEError`` naming ``path`` and the line at fault."""
    try:
        with open(path, "rb") as handle:
            raw_lines = handle.read().split(b"\n")
    except FileNotFoundError:
        raise HashEEError(f"{path}: no such dictionary file") from None
    except IsADirectoryError:
        raise HashEEError(f"{path}: is a directory, not a dictionary file") from None
    first_seen = {}
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            raise HashEEError(f"{path}:{number}: not UTF-8 (byte {err.start} of the line)") from None
        if line.strip() == "" and number == len(raw_lines):
            continue  # the newline that ends the file
        fields = line.rstrip().rsplit(" ", 2)
        overwrite = len(fields) == 3 and fields[2] == OVERWRITE_FLAG
        symbol_fields = fields[:-1] if overwrite else line.rstrip().rsplit(" ", 1)
        if len(symbol_fields) != 2 or not symbol_fields[0] or not symbol_fields[1].lstrip("-").isdigit():
            raise HashEEError(f"{path}:{number}: expected '<symbol> <count> [{OVERWRITE_FLAG}]', got {line[:60]!r}")
        symbol = symbol_fields[0]
        if symbol in first_seen and not overwrite:
            raise HashEEError(
                f"{path}:{number}: symbol {symbol!r} already on line {first_seen[symbol]} "
                f"(add {OVERWRITE_FLAG} to keep both ids)"
            )
        first_seen.setdefault(symbol, number)
    if not first_seen:
        raise HashEEError(f"{path}: the dictionary has no symbols")


def load_dictionary(path: str) -> Dictionary:
    check_dictionary_file(path)
    return Dictionary.load(path)
