"""Thin wrapper: `python tools/check.py ...` is `tfqnet check ...` (see tfqnet/cli.py)."""

import sys

from tfqnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["check", *sys.argv[1:]]))
