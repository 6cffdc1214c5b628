"""The `tinymem` command line: train, eval, presets, methods, mitigate, find-memorized, convert-memorized.

Bad input (unknown preset, key, method or value) prints one line naming it and the allowed values and
exits with status 2, without a traceback. Each command group is one module (`models`, `mitigate`,
`memorized`); they print through `output` and import heavy libraries (torch) only inside their commands,
so that building the parser, and `tinymem --help`, stays fast.
"""

from __future__ import annotations

import argparse
import sys

from tinymem.cli import memorized, mitigate, models
from tinymem.errors import TinyMemError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `tinymem` parser with every subcommand; each one's `func` runs it."""
    p = argparse.ArgumentParser(prog="tinymem", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    models.add_commands(sub)  # presets, train, eval
    mitigate.add_commands(sub)  # methods, mitigate
    memorized.add_commands(sub)  # find-memorized, convert-memorized
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one `tinymem` command; returns its exit status (2 for bad input, 130 when interrupted)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep the CLI output to what the user asked for
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TinyMemError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
