"""Readers of the public summarization releases, one module each: raw files -> records.

Each module knows one release's layout and fields (``read(raw_dir)``), and says
which splits it lacks (``HELD_OUT``: fractions held out of its examples).
``hashee-prepare`` (cli/prepare.py) cleans the records and writes the
``{train,valid,test}.{source,target}`` files the pipelines in examples/ encode.
"""

from . import cnndm, csl, lines, reddit, ttnews

READERS = {module.NAME: module for module in (cnndm, reddit, csl, ttnews, lines)}

__all__ = ["READERS"]
