"""One entry point: `python -m pipeline <stage> [options] [key=value ...]`.

Make targets are thin calls of these commands. Trailing `key=value` words override config keys.
Errors the user can fix print one clear message and exit with status 2.

This is the top floor: `parser` (argparse, every command's options and help) and `commands` (one small
`cmd_*` function per command, which imports its stage lazily, so `check`, `plan` and `validate` start
without torch). Nothing in the package imports it.
"""

from __future__ import annotations

import sys

from pipeline.cli.parser import build_parser
from pipeline.core.errors import PipelineError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (PipelineError, FileNotFoundError) as e:  # every error a user can fix: one line, status 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
