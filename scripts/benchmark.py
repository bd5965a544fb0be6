#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.benchmark` from a checkout; installed as `hashee-benchmark` too."""

from fairseq_hashee.cli.benchmark import main

if __name__ == "__main__":
    main()
