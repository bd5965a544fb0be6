"""The wall-clock benchmark behind ``hashee-benchmark`` (cli/benchmark.py; docs/benchmark.md).

- ``settings.py``: what runs: the configurations, the models sharing one set
  of weights, exit tables, sampled inputs;
- ``measure.py``: how a figure is measured: FLOPs, peak memory, interleaved
  wall-clock rounds;
- ``report.py``: what is reported: rows with both speed-ups, the targets, the
  table and the plot.
"""
