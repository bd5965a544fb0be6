#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.sample_data` from a checkout; installed as a console script too."""

from fairseq_hashee.cli.sample_data import main

if __name__ == "__main__":
    main()
