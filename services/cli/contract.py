"""`aceorch contract`: write (or check) asyncapi.yaml, the NATS contract for proxies in any language."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILE_NAME = "asyncapi.yaml"  # at the repository root, beside README.md


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    contract = commands.add_parser(
        "contract",
        help=f"write the AsyncAPI document of the NATS contract ({FILE_NAME})",
        description="Generate the AsyncAPI 3.0 document of every subject, payload and reply from the code.",
    )
    contract.add_argument(
        "--output", default=FILE_NAME, help="where to write it, '-' for stdout (default: %(default)s)"
    )
    contract.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file differs")
    contract.set_defaults(run="contract")


def contract(args: argparse.Namespace) -> int:
    from shared.asyncapi import render  # only here: the other commands start without building it

    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if args.check:
        current = path.read_text() if path.exists() else None
        if current != text:
            print(f"aceorch contract: {path} is not what the code generates; run `aceorch contract`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0
