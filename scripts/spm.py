#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.spm` from a checkout; installed as a console script too."""

from fairseq_hashee.cli.spm import main

if __name__ == "__main__":
    main()
