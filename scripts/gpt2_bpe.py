#!/usr/bin/env python
"""Runs `fairseq_hashee.cli.gpt2_bpe` from a checkout; installed as `hashee-gpt2-bpe` too."""

from fairseq_hashee.cli.gpt2_bpe import main

if __name__ == "__main__":
    main()
