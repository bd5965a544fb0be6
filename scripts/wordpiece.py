#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.wordpiece` from a checkout; installed as `hashee-wordpiece` too."""

from fairseq_hashee.cli.wordpiece import console_main

if __name__ == "__main__":
    console_main()
