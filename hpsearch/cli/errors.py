"""How a command fails on bad input: one line on stderr, exit status 2 (argparse's own)."""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


def bad_input(err: object) -> int:
    print(f"hpsearch: error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT
