"""``agentspace-grpc status``: whether an end user can use a data connector (or an
authorization) now.

Asks as ``client.connection_status`` does (an acquire whose token is discarded; never the
deprecated CheckRefreshToken) and says so in the exit status: 0 connected, 3 the user must
authorize (again), 5 try again later. No token is ever printed, not even a fingerprint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Final

from agentspace_grpc._commands import _common
from agentspace_grpc._errors import is_authorization_name

_EXIT: Final = {
    "connected": _common.EXIT_OK,
    "not_connected": _common.EXIT_AUTHORIZE,
    "reauthorization_required": _common.EXIT_AUTHORIZE,
    "unavailable": _common.EXIT_RETRY_LATER,
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` subcommand."""
    parser = _common.new_parser(
        subparsers,
        "status",
        help_text="say whether an end user is connected to a data connector or authorization",
        description="Acquire a token and discard it: prints whether the end user is "
        "connected, must connect, must reconnect (a scope is missing or the grant was "
        "revoked) or the service is unavailable, and exits 0, 3, 3 or 5 accordingly. "
        "Never prints a token.",
    )
    parser.add_argument(
        "--scope", help="ask about this scope instead of the connector's default (connectors only)"
    )
    parser.add_argument(
        "--action", help="ask about the tool or action about to run (its scopes are checked)"
    )
    _common.add_connection_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Ask for the connection status and print it."""

    async def main() -> int:
        credentials = await _common.credentials_from(args)
        async with _common.make_client(args, credentials) as client:
            status = await client.connection_status(
                args.name, scope=args.scope, action=args.action, timeout=args.timeout
            )
        if args.json:
            _common.print_json(
                {
                    "resource": args.name,
                    "connector": args.name,
                    "state": status.state,
                    "scopes": list(status.scopes),
                    "missing_scopes": list(status.missing_scopes),
                    "reason": status.reason,
                    "authorization_uri": status.authorization_uri,
                }
            )
            return _EXIT[status.state]
        label = "resource " if is_authorization_name(args.name) else "connector"
        print(f"{label}  {args.name}")
        print(f"state      {status.state}")
        if status.scopes:
            print(f"scopes     {_common.inert(' '.join(status.scopes))}")
        if status.missing_scopes:
            print(f"missing    {_common.inert(' '.join(status.missing_scopes))}")
        if status.reason:
            print(f"reason     {_common.inert(status.reason)}")
        if status.needs_consent:
            store = f"agentspace-grpc store {args.name} --redirect-uri -"
            if status.authorization_uri:  # not a secret: it is bound to this user
                uri = _common.inert(status.authorization_uri)
                hint = f"open {uri} in a browser as this user, then store the URI it ends at"
            else:
                hint = "run the consent flow as this user, then store the redirect URI"
            print(f"agentspace-grpc status: {hint} with: {store}", file=sys.stderr)
        return _EXIT[status.state]

    return _common.run("status", args, main)
