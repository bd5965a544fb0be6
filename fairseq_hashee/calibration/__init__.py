"""Choosing an exit knob on held-out data with a statistical guarantee on the quality it loses.

- ``ltt.py``: Learn-then-Test (Angelopoulos et al. 2021) as CALM (Schuster et al.
  2022) applies it: Hoeffding-Bentkus p-values and fixed-sequence testing;
- ``losses.py``: the per-example losses it controls (textual and risk
  consistency against the full-depth model, with ROUGE-L);
- ``knobs.py``: which option a model's exit rule is calibrated by, its range and
  its default candidates, safest first.
"""
