"""The `kiosk` command. Each concern registers its own sub-commands.

A concern exposes `register(subparsers)` in its `cli` module; the sub-command
sets `func(args) -> int`. Faults of the project (KioskError) print one clear
line on stderr and exit 2; nobody sees a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from kiosk.errors import KioskError

# Concerns that register sub-commands.
_CONCERNS = [
    "kiosk.settlement.cli",
    "kiosk.credit.cli",
    "kiosk.vision.cli",
    "kiosk.security.cli",
    "kiosk.services.cli",
    "kiosk.app.cli",
    "kiosk.fleet.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiosk", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _CONCERNS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a concern not built yet
            if e.name and name.startswith(e.name):
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KioskError as e:
        print(f"kiosk {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
