"""The ``agentspace-grpc`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agentspace_grpc import __version__
from agentspace_grpc._commands import acquire as _acquire_cli
from agentspace_grpc._commands import check as _check_cli
from agentspace_grpc._commands import demo as _demo_cli
from agentspace_grpc._commands import status as _status_cli
from agentspace_grpc._commands import store as _store_cli
from agentspace_grpc.bench import _cli as _bench_cli
from agentspace_grpc.emulator import _main as _emulator_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentspace-grpc",
        description="Fetch end users' third-party access tokens from Discovery Engine data "
        "connectors, or run the local emulator.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _acquire_cli.register(subparsers)
    _store_cli.register(subparsers)
    _check_cli.register(subparsers)
    _status_cli.register(subparsers)
    _demo_cli.register(subparsers)
    _bench_cli.register(subparsers)
    _emulator_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
