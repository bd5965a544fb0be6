#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.rouge` from a checkout; installed as a console script too."""

from fairseq_hashee.cli.rouge import main

if __name__ == "__main__":
    main()
