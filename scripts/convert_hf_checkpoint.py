#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.convert` from a checkout; installed as `hashee-convert` too."""

from fairseq_hashee.cli.convert import main

if __name__ == "__main__":
    main()
