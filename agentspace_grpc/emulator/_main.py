"""``agentspace-grpc emulator``: run the emulator as a process.

Prints exactly one JSON line on stdout when both ports are ready (keys ``grpc``, ``http``,
``token_uri``, ``authorize_uri``, ``connector``, ``authorization``); logs go to stderr; SIGINT
and SIGTERM stop it with exit status 0. This module imports nothing heavy until :func:`run` is
called.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

CRASH_ENV = "AGENTSPACE_EMULATOR_CRASH_AT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's command-line flags."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--grpc-port", type=int, default=0, help="gRPC port (0: any free port)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (0: any free port)")
    parser.add_argument(
        "--data-dir", help="directory for the store, the provider and the key (default: temporary)"
    )
    parser.add_argument("--config", help="TOML configuration (connectors, provider, faults)")
    parser.add_argument(
        "--key-file", help="encryption key file (default: $AGENTSPACE_EMULATOR_KEY or generated)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    group = parser.add_argument_group("built-in provider (override the config)")
    group.add_argument("--access-token-lifetime", type=float, metavar="SECONDS")
    group.add_argument(
        "--no-expires-in", action="store_true", help="omit expires_in from token answers"
    )
    group.add_argument("--grace-seconds", type=float, metavar="SECONDS")
    group.add_argument("--fault-latency-ms", type=int, metavar="MS")
    group.add_argument("--fault-429-rate", type=float, metavar="P")
    group.add_argument("--fault-5xx-rate", type=float, metavar="P")
    group.add_argument("--fault-retry-after", type=int, metavar="SECONDS")
    group.add_argument("--fault-invalid-grant-rate", type=float, metavar="P")


def register(subparsers: Any) -> None:
    """Adds the ``emulator`` subcommand to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "emulator",
        help="run the local emulator (gRPC and REST on loopback)",
        description="Run the local DataConnectorService emulator. Prints one JSON line with "
        "its addresses when ready; logs go to stderr.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "access_token_lifetime": args.access_token_lifetime,
        "grace_seconds": args.grace_seconds,
        "faults_latency_ms": args.fault_latency_ms,
        "faults_rate_429": args.fault_429_rate,
        "faults_rate_5xx": args.fault_5xx_rate,
        "faults_retry_after": args.fault_retry_after,
        "faults_invalid_grant_rate": args.fault_invalid_grant_rate,
    }
    out = {k: v for k, v in pairs.items() if v is not None}
    if args.no_expires_in:
        out["send_expires_in"] = False
    return out


def run(args: argparse.Namespace) -> int:
    """Runs the emulator until SIGINT/SIGTERM; returns the exit status."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import asyncio

    from agentspace_grpc.emulator._config import ConfigError, load_config, with_overrides
    from agentspace_grpc.emulator._crypto import KeyMaterialError
    from agentspace_grpc.emulator._emulator import Emulator

    crash_at = os.environ.get(CRASH_ENV) or None
    try:
        config = with_overrides(load_config(args.config), **_overrides(args))
        emulator = Emulator(
            data_dir=args.data_dir,
            config=config,
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            key_file=args.key_file,
            crash_at=crash_at,
        )
    except (ConfigError, KeyMaterialError, ValueError) as exc:
        print(f"agentspace-grpc emulator: error: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await emulator.start()
        except (OSError, KeyMaterialError, ConfigError) as exc:
            print(f"agentspace-grpc emulator: error: {exc}", file=sys.stderr)
            return 1
        try:
            sys.stdout.write(json.dumps(emulator.ready_info()) + "\n")
            sys.stdout.flush()
            await stop.wait()
            logging.getLogger("agentspace_grpc.emulator").info("stopping")
        finally:
            await emulator.stop()
        return 0

    return asyncio.run(main())
