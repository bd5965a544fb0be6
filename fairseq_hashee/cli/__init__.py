"""Command-line tools (installed as console scripts, also run as scripts/*.py)."""
