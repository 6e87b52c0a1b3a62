"""`kiosk settle BILL.json`: split a bill and print the result as JSON.

Reads the bill from a file or `-` (stdin). Every bad input, malformed JSON
included, becomes an InputError naming the field; `kiosk.cli` prints it as one
stderr line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from kiosk.errors import InputError

from .bill import loads_request
from .engine import settle_request


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "settle",
        help="split a bill into the fund share and the personal share (prints setlinfo JSON)",
        description="Split a bill by the settlement rules and print setlinfo, detlcutinfo and ytd_after as JSON.",
    )
    p.add_argument("bill", metavar="BILL.json", help="the bill as JSON, or - for stdin")
    p.set_defaults(func=run)


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read the bill: {e.strerror}", field=path) from None


def run(args: argparse.Namespace) -> int:
    settlement = settle_request(loads_request(_read(args.bill)))
    text = json.dumps(settlement.to_json(), indent=2, ensure_ascii=False) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `kiosk settle bill.json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
