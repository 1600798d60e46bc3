"""Refine every coarse mask in a folder: the same as ``cascadepsp refine ...`` (see ``--help``)."""

import sys

from cascadepsp.cli import main

if __name__ == "__main__":
    sys.exit(main(["refine", *sys.argv[1:]]))
