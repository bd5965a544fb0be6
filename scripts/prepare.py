#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.prepare` from a checkout; installed as `hashee-prepare` too."""

from fairseq_hashee.cli.prepare import main

if __name__ == "__main__":
    main()
