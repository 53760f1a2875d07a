"""Thin wrapper: `python tools/export_c.py ...` is `tfqnet export-c ...` (see tfqnet/cli.py)."""

import sys

from tfqnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-c", *sys.argv[1:]]))
