"""The ``agentspace-grpc bench`` subcommand: arguments, the run, the files it writes."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

JSON_NAME = "bench.json"
CHART_NAME = "bench.png"
TABLE_NAME = "bench.md"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand (its code is imported only when it runs)."""
    parser = subparsers.add_parser(
        "bench",
        help="measure agentspace-grpc against the raw stub, GAPIC-style calls, raw aiohttp "
        "and google-api-python-client",
        description="Start constant-answer servers and the emulator in separate processes on "
        "127.0.0.1, measure every stack sequentially and with 64 calls in flight, and write "
        f"a table (stdout and {TABLE_NAME}), {JSON_NAME} and {CHART_NAME}. About 3.5 minutes; "
        "--quick: under 30 s.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions and calls (under 30 s)"
    )
    parser.add_argument(
        "--size", type=_positive_int, help="most calls per sample (default 4000; quick 400)"
    )
    parser.add_argument(
        "--repeats", type=_positive_int, help="repetitions per figure (default 9; quick 3)"
    )
    parser.add_argument(
        "--budget",
        type=_positive_float,
        metavar="SECONDS",
        help="time shared by the alternated samples (default 170; quick 12)",
    )
    parser.add_argument(
        "--inflight", type=_positive_int, default=64, help="calls in flight (default 64)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        metavar="DIR",
        help="where bench.json, bench.png and bench.md go (default bench-results/)",
    )
    parser.add_argument(
        "--no-emulator", action="store_true", help="skip the emulator's end-to-end runs"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the servers use every CPU (by default, with two or more CPUs, the server "
        "processes keep to one)",
    )
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; exit status 1 when a stack failed (a miss is not a failure)."""
    from agentspace_grpc.bench import _report, _run

    settings = _run.QUICK if args.quick else _run.Settings()
    settings = replace(
        settings,
        size=args.size or settings.size,
        repeats=args.repeats or settings.repeats,
        budget_s=args.budget or settings.budget_s,
        inflight=args.inflight,
        emulator=not args.no_emulator,
        pin=not args.no_pin,
        out=args.out,
    )
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"agentspace-grpc bench: cannot create {settings.out}: {exc}", file=sys.stderr)
        return 2
    results = _report.finalize(_run.run_sync(settings))
    _report.write_json(results, settings.out / JSON_NAME)
    _report.write_chart(results, settings.out / CHART_NAME)
    table = _report.table(results)
    (settings.out / TABLE_NAME).write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    sys.stdout.write(
        f"\nWrote {settings.out / JSON_NAME}, {settings.out / CHART_NAME} and "
        f"{settings.out / TABLE_NAME}\n"
    )
    failed = [s["title"] for s in results["stacks"].values() if s["status"] == "failed"]
    if failed:
        print(f"agentspace-grpc bench: failed stacks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
