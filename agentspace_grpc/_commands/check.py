"""``agentspace-grpc check``: whether the end user stored a refresh token (CheckRefreshToken).

The service deprecated this RPC: ``acquire`` answers the same question (exit status 3 when the
user must authorize). The deprecation is said once on stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from agentspace_grpc._commands import _common

DEPRECATION_NOTE = (
    "CheckRefreshToken is deprecated by the service; prefer `agentspace-grpc acquire`, which "
    "exits with status 3 when the user must authorize"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``check`` subcommand."""
    parser = _common.new_parser(
        subparsers,
        "check",
        help_text="check that an end user stored a refresh token (deprecated RPC)",
        description="Call the deprecated CheckRefreshToken: prints the scopes of the refresh "
        "token that the end user stored for the connector, or exits with status 3 when there "
        "is none.",
    )
    _common.add_connection_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the stored refresh token and print its scopes."""

    async def main() -> int:
        credentials = await _common.credentials_from(args)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeprecationWarning)
            try:
                async with _common.make_client(args, credentials) as client:
                    scopes = await client.check_refresh_token(args.name, timeout=args.timeout)
            finally:
                if any(issubclass(w.category, DeprecationWarning) for w in caught):
                    print(f"agentspace-grpc check: warning: {DEPRECATION_NOTE}", file=sys.stderr)
        transport = _common.answered_by(client)
        if args.json:
            _common.print_json(
                {
                    "connector": args.name,
                    "stored": True,
                    "scopes": list(scopes),
                    "transport": transport,
                }
            )
            return _common.EXIT_OK
        print(f"connector  {args.name}")
        print("stored     yes")
        print(f"scopes     {_common.inert(' '.join(scopes)) or '(none reported)'}")
        print(f"transport  {transport}")
        return _common.EXIT_OK

    return _common.run("check", args, main)
