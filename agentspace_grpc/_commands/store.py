"""``agentspace-grpc store``: store an end user's refresh token (AcquireAndStoreRefreshToken for
a data connector, StoreUserAuthorization for an authorization).

After the user consented at the third party, the browser lands on the redirect URI with
``code=...&state=...``; the service exchanges that code and files the refresh token under
the caller's identity, so this must run with the end user's own credentials. The redirect URI
holds a secret (the code): it is never printed. The third party's extra answer fields are
printed with their tokens and secrets as fingerprints, unless ``--show-token`` asks for them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agentspace_grpc._commands import _common
from agentspace_grpc._errors import is_authorization_name


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``store`` subcommand."""
    parser = _common.new_parser(
        subparsers,
        "store",
        help_text="store an end user's refresh token after consent",
        description="Call AcquireAndStoreRefreshToken (NAME is a data connector) or "
        "StoreUserAuthorization (NAME is an authorization) with the full redirect URI that the "
        "third party sent the user's browser back to (code= and every other parameter): the "
        "service exchanges the code and stores the refresh token for the calling user, so "
        "use that user's credentials.",
    )
    parser.add_argument(
        "--redirect-uri",
        required=True,
        metavar="URI",
        help="the full redirect URI after consent, query included; prefer '-' (read stdin): "
        "the authorization code in it is a secret that a command line shows in ps and history",
    )
    parser.add_argument(
        "--scopes",
        nargs="+",
        action="extend",
        default=[],
        metavar="SCOPE",
        help="data connectors: the scopes the user consented to (space-separated or repeated)",
    )
    parser.add_argument(
        "--instance-uri", metavar="URI", help="data connectors: the third party's instance URI"
    )
    parser.add_argument(
        "--show-token",
        action="store_true",
        help="print the third party's extra answer fields as they are; by default the values "
        "of tokens, secrets, passwords and codes among them are shown as fingerprints",
    )
    _common.add_connection_arguments(parser)
    parser.set_defaults(handler=run)


def redirect_uri_from(value: str) -> str:
    """The redirect URI from the flag ('-': stdin), checked for a code without echoing it."""
    uri = sys.stdin.readline().strip() if value == "-" else value.strip()
    if not uri:
        raise _common.CommandError("--redirect-uri is empty")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _common.CommandError(
            "--redirect-uri must be the full http(s) URL the browser was sent back to"
        )
    query = parse_qs(parts.query)
    if "error" in query:
        raise _common.CommandError(
            f"the consent did not succeed: the third party answered error={query['error'][0]}; "
            "run the consent flow again",
            _common.EXIT_AUTHORIZE,
        )
    if not query.get("code"):
        raise _common.CommandError(
            "--redirect-uri has no code= parameter: pass the whole URI the browser landed on "
            "after consent, query string included"
        )
    return uri


def run(args: argparse.Namespace) -> int:
    """Store the refresh token and print the third party's extra answer fields."""

    async def main() -> int:
        authorization = is_authorization_name(args.name)
        if authorization and (args.scopes or args.instance_uri is not None):
            raise _common.CommandError(
                "--scopes and --instance-uri apply to data connectors, not to an authorization"
            )
        uri = redirect_uri_from(args.redirect_uri)
        scopes = [scope for value in args.scopes for scope in value.split()]
        credentials = await _common.credentials_from(args)
        async with _common.make_client(args, credentials) as client:
            if authorization:
                await client.store_user_authorization(args.name, uri, timeout=args.timeout)
                extra = {}
            else:
                extra = await client.store_refresh_token(
                    args.name,
                    uri,
                    scopes=scopes,
                    instance_uri=args.instance_uri,
                    timeout=args.timeout,
                )
        transport = _common.answered_by(client)
        if not args.show_token:
            extra = _common.conceal(extra)
        if args.json:
            data: dict[str, Any] = {
                "resource": args.name,
                "connector": args.name,
                "stored": True,
                "transport": transport,
            }
            if not authorization:
                data["additional_oauth_responses"] = extra
            _common.print_json(data)
            return _common.EXIT_OK
        who = f" of {args.emulator_user}" if args.emulator_user else ""
        what = "authorization" if authorization else "refresh token"
        print(f"stored the {what}{who} for {args.name} (transport {transport})")
        for key in sorted(extra):
            print(f"  {_common.inert(key)}: {_common.inert(str(extra[key]))}")
        return _common.EXIT_OK

    return _common.run("store", args, main)
