"""The exit table: which layer each token id exits at, from the options and a split's statistics.

- ``hash_functions.py``: the hash functions from token to exit layer, their buckets and the
  special symbols that always run every layer;
- ``token_stats.py``: the token frequencies of a split that some hash functions read;
- ``recipe.py``: options plus statistics -> a table (shared by the task, ``hashee-table`` and
  the benchmark);
- ``table_file.py``: the table file written and read back, with its checks;
- ``dictionary_file.py``: a ``dict.txt`` checked before fairseq reads it.

A regular package (not a namespace one) so that ``find_packages`` installs it and the import
contract (``.importlinter``) sees it.
"""
