"""``agentspace-grpc acquire``: fetch an end user's third-party access token
(AcquireAccessToken for a data connector, AcquireUserAuthorization for an authorization).

Prints the resource, the granted scopes, the wire that answered and the token's fingerprint;
the token itself only with ``--show-token`` (then alone on stdout, so that
``TOKEN=$(agentspace-grpc acquire NAME --show-token)`` works, with the details on stderr).
When an authorization answers with its authorization URI, the error on stderr carries it
(exit status 3).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agentspace_grpc._commands import _common
from agentspace_grpc._errors import is_authorization_name
from agentspace_grpc._status import acquire_either


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``acquire`` subcommand."""
    parser = _common.new_parser(
        subparsers,
        "acquire",
        help_text="fetch an end user's third-party access token from a data connector or an "
        "authorization",
        description="Call AcquireAccessToken (NAME is a data connector) or "
        "AcquireUserAuthorization (NAME is an authorization): the service mints a fresh "
        "third-party access token (Jira, Salesforce, ...) from the refresh token that the end "
        "user stored with `store`. Prints the resource, the scopes and the wire that "
        "answered; the token itself only with --show-token. When an authorization needs the "
        "user's consent, its authorization URI is printed on stderr (exit status 3).",
    )
    parser.add_argument(
        "--scope", help="data connectors: ask for this scope instead of the connector's default"
    )
    parser.add_argument(
        "--action",
        help="data connectors: the tool or action about to run (the service checks its scopes)",
    )
    parser.add_argument(
        "--show-token",
        action="store_true",
        help="print the access token (alone on stdout; the details go to stderr)",
    )
    _common.add_connection_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Acquire one token and print what the user asked for."""

    async def main() -> int:
        authorization = is_authorization_name(args.name)
        if authorization and (args.scope is not None or args.action is not None):
            raise _common.CommandError(
                "--scope and --action apply to data connectors; an authorization has its scopes"
            )
        credentials = await _common.credentials_from(args)
        async with _common.make_client(args, credentials) as client:
            token = await acquire_either(
                client, args.name, scope=args.scope, action=args.action, timeout=args.timeout
            )
        transport = _common.answered_by(client, token)
        if args.json:
            data: dict[str, Any] = {
                "resource": token.resource,
                "connector": token.connector,
                "scopes": list(token.scopes),
                "transport": transport,
                "token_sha256": _common.fingerprint(token.access_token),
            }
            if args.show_token:
                data["access_token"] = token.access_token
            _common.print_json(data)
            return _common.EXIT_OK
        details = sys.stderr if args.show_token else sys.stdout
        print(f"{'resource ' if authorization else 'connector'}  {token.resource}", file=details)
        scopes = _common.inert(" ".join(token.scopes)) or "(none reported)"
        print(f"scopes     {scopes}", file=details)
        print(f"transport  {transport}", file=details)
        hint = "" if args.show_token else " (--show-token prints the token)"
        print(f"token      sha256:{_common.fingerprint(token.access_token)}{hint}", file=details)
        if args.show_token:
            sys.stdout.write(token.access_token + "\n")
            sys.stdout.flush()
        return _common.EXIT_OK

    return _common.run("acquire", args, main)
