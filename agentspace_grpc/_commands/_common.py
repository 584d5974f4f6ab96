"""What ``acquire``, ``store`` and ``check`` share: flags, credentials, errors and exit statuses.

The exit status says what the caller should do next, so scripts can branch on it:

====  =================================================================================
0     success
1     any other failure (INTERNAL, UNKNOWN, an unexpected answer)
2     usage or bad input: a bad flag, connector name or token file; INVALID_ARGUMENT; a
      connector that does not exist
3     the end user must authorize (again): no refresh token stored for them
      (``AuthorizationRequired``; an authorization's URI is printed), scopes not granted, or
      the grant was revoked
4     the credentials were refused: UNAUTHENTICATED or PERMISSION_DENIED
5     try again later: UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED
130   interrupted (Ctrl-C)
====  =================================================================================

What a server says is printed through :func:`inert` (control characters escaped). Secrets
never reach the terminal: tokens, and the secret-looking fields of a third party's
answer (:func:`conceal`), are shown as a SHA-256 fingerprint unless the user asks for them
(``--show-token``), and error messages are built from the service's
status, the connector name and the user's email, never from a token or a redirect URI.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import stat
import sys
import textwrap
import unicodedata
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from agentspace_grpc._endpoints import EMULATOR_HOST_ENV, EMULATOR_REST_ENV
from agentspace_grpc._errors import is_authorization_name
from agentspace_grpc._wire import status_from_http

if TYPE_CHECKING:
    from agentspace_grpc import AccessToken, DataConnectorClient

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTHORIZE: Final = 3
EXIT_DENIED: Final = 4
EXIT_RETRY_LATER: Final = 5
EXIT_INTERRUPTED: Final = 130

EXIT_STATUS_EPILOG: Final = """\
exit status:
  0    success
  1    any other failure (INTERNAL, UNKNOWN, an unexpected answer)
  2    usage or bad input: a bad flag, connector name or token file; INVALID_ARGUMENT;
       a data connector that does not exist
  3    the end user must authorize (again): nothing stored for them on this resource
       (an authorization prints its authorization URI), scopes not granted, or the grant
       was revoked; run the consent flow, then `store`
  4    the credentials were refused: UNAUTHENTICATED or PERMISSION_DENIED
  5    try again later: UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED
  130  interrupted

environment:
  AGENTSPACE_EMULATOR_HOST  gRPC host:port of a running emulator (used when no --endpoint)
  AGENTSPACE_EMULATOR_REST  its REST base URL, e.g. http://127.0.0.1:8081
  AGENTSPACE_EMULATOR_INSECURE=1  allow those two to name a non-loopback host
"""

CONNECTOR_HELP: Final = (
    "NAME: projects/PROJECT/locations/LOCATION/collections/COLLECTION/dataConnector\n"
    "   or projects/PROJECT/locations/LOCATION/authorizations/AUTHORIZATION"
)

_MAX_TOKEN_FILE: Final = 64 * 1024
_EMAIL: Final = re.compile(r"[^@\s/]+@[^@\s/]+")
_FINGERPRINT_HEX: Final = 8
_SECRET_KEY: Final = re.compile(
    r"tokens?$|secret|passw|code|key$|credential|jwt|assertion|webhook", re.IGNORECASE
)
# Controls, invisible format characters (bidi overrides), line separators, lone surrogates.
_NOT_INERT: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_HELP_WIDTH: Final = 79


class CommandError(Exception):
    """A failure the command line explains itself (bad input found before any call, ...)."""

    def __init__(self, message: str, exit_status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status


# ---- arguments ---------------------------------------------------------------------------


def positive_seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def new_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    command: str,
    *,
    help_text: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand parser with the connector argument and the exit-status epilog."""
    # The epilog is laid out by hand, so the description is wrapped here.
    text = textwrap.fill(description, _HELP_WIDTH) + "\n\n" + CONNECTOR_HELP
    parser = subparsers.add_parser(
        command,
        help=help_text,
        description=text,
        epilog=EXIT_STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name", metavar="NAME", help="the data connector's or the authorization's resource name"
    )
    return parser


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every token subcommand takes: where to call, as whom, and how to print."""
    wire = parser.add_argument_group("where to call (default: Discovery Engine, or the emulator)")
    wire.add_argument(
        "--transport",
        choices=("auto", "grpc", "rest"),
        default="auto",
        help="the wire: gRPC, REST, or gRPC falling back to REST when gRPC cannot reach the "
        "service (default: auto)",
    )
    wire.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="host serving both wires (default: $AGENTSPACE_EMULATOR_HOST if set, else "
        "discoveryengine.googleapis.com or its us/eu host)",
    )
    wire.add_argument(
        "--rest-endpoint",
        metavar="URL",
        help="base URL for REST only, e.g. the emulator's http://127.0.0.1:PORT "
        "(default: $AGENTSPACE_EMULATOR_REST if set)",
    )
    wire.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext to a non-loopback host (loopback is plaintext already)",
    )
    wire.add_argument("--quota-project", metavar="PROJECT", help="project billed for quota")
    wire.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="deadline of the whole call, retries included (default: 60)",
    )
    who = parser.add_argument_group(
        "whose credentials (default: Application Default Credentials)",
        "The service keys tokens by the END USER's identity: use that user's credentials.",
    )
    exclusive = who.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the end user's Google access token ('-': read stdin; a pipe such "
        "as <(gcloud auth print-access-token) works too); a regular file must be yours, "
        "with no group or other access (chmod 600); its content is never printed",
    )
    exclusive.add_argument(
        "--emulator-user",
        metavar="EMAIL",
        help="emulator only: act as EMAIL, with an identity token minted by the emulator "
        "(needs --rest-endpoint or $AGENTSPACE_EMULATOR_REST)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    output.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log the client's decisions (retries, fallback) on stderr",
    )


# ---- credentials -------------------------------------------------------------------------


def read_token_file(path: str) -> str:
    """The access token held in ``path`` ('-': stdin); never echoes the content.

    The token grants access to the user's data, like a private key: a regular file (symlinks
    followed) must belong to the user and grant no access to group or others (``chmod 600``).
    Pipes such as ``<(gcloud auth print-access-token)`` have no such mode and are accepted.
    """
    if path == "-":
        data = sys.stdin.buffer.read(_MAX_TOKEN_FILE + 1)
        where = "standard input"
    else:
        where = f"token file {path}"
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                if os.name == "posix" and stat.S_ISREG(info.st_mode):
                    if info.st_uid != os.geteuid():
                        raise CommandError(
                            f"{where} belongs to another user (uid {info.st_uid}); a token "
                            "file must be your own"
                        )
                    if info.st_mode & 0o077:
                        raise CommandError(
                            f"{where} is open to other users (mode "
                            f"{stat.S_IMODE(info.st_mode):04o}); restrict it first: "
                            f"chmod 600 {path}"
                        )
                data = handle.read(_MAX_TOKEN_FILE + 1)
        except FileNotFoundError:
            raise CommandError(f"{where} does not exist") from None
        except IsADirectoryError:
            raise CommandError(f"{where} is a directory, not a file") from None
        except PermissionError:
            raise CommandError(f"cannot read {where}: permission denied") from None
        except OSError as exc:
            raise CommandError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > _MAX_TOKEN_FILE:
        raise CommandError(f"{where} is too large to hold an access token")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError(f"{where} is not UTF-8 text") from None
    if not text:
        raise CommandError(f"{where} is empty: it must hold one access token")
    if text.startswith("{"):
        raise CommandError(
            f"{where} holds JSON, not an access token; to use a credentials file (service "
            "account or authorized user) set GOOGLE_APPLICATION_CREDENTIALS to it and drop "
            "--token-file"
        )
    if "\n" in text:
        raise CommandError(f"{where} must hold a single access token on one line")
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    return text


def emulator_rest_url(args: argparse.Namespace) -> str | None:
    """The emulator's HTTP base URL from the flags or the environment."""
    url = args.rest_endpoint or os.environ.get(EMULATOR_REST_ENV) or None
    return url.rstrip("/") if url else None


async def mint_emulator_token(args: argparse.Namespace) -> str:
    """An end-user identity token for ``--emulator-user``, minted by the emulator."""
    import aiohttp

    email = args.emulator_user
    if not _EMAIL.fullmatch(email):
        raise CommandError(f"--emulator-user takes an email address, not {email!r}")
    base = emulator_rest_url(args)
    if base is None:
        raise CommandError(
            "--emulator-user needs the emulator's HTTP address: set "
            f"{EMULATOR_REST_ENV} (the 'http' value of its ready line) or pass --rest-endpoint"
        )
    url = f"{base}/emulator/v1/users/{quote(email, safe='@')}/token"
    try:
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.post(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
        ):
            if response.status == 404:
                raise CommandError(
                    f"{base} is not an agentspace-grpc emulator (it has no /emulator/v1 "
                    "endpoints): --emulator-user works only with the emulator"
                )
            if response.status != 200:
                problem = status_from_http(
                    response.status, await response.read(), response.content_type
                ).message
                raise CommandError(f"the emulator refused to mint a token for {email}: {problem}")
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise CommandError(
            f"cannot reach the emulator at {base} to mint {email}'s token: "
            f"{exc or type(exc).__name__}",
            EXIT_RETRY_LATER,
        ) from None
    except ValueError:
        raise CommandError(f"{base} answered with something that is not JSON") from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise CommandError(f"the emulator at {base} sent no token for {email}", EXIT_ERROR)
    return token


async def credentials_from(args: argparse.Namespace) -> str | None:
    """The end user's access token from the flags, or None for the client's default (ADC)."""
    if args.token_file is not None:
        return read_token_file(args.token_file)
    if args.emulator_user is not None:
        return await mint_emulator_token(args)
    return None


def make_client(args: argparse.Namespace, credentials: str | None) -> DataConnectorClient:
    """A client configured from the flags (the emulator variables apply as in the library)."""
    from agentspace_grpc import DataConnectorClient

    return DataConnectorClient(
        transport=args.transport,
        credentials=credentials,
        endpoint=args.endpoint,
        rest_endpoint=args.rest_endpoint,
        insecure=args.insecure,
        quota_project=args.quota_project,
    )


# ---- printing what a server said ---------------------------------------------------------


def inert(text: str) -> str:
    """``text`` made safe for a terminal: control and invisible characters escaped (``\\x1b``).

    Whatever a server (or a redirect's ``error=``) says would otherwise reach the terminal as
    is: escape sequences that move the cursor, retitle the window or hide text, bidi overrides,
    and newlines that fake a line of this command's own output.
    """
    return "".join(
        ascii(char)[1:-1] if unicodedata.category(char) in _NOT_INERT else char for char in text
    )


# ---- which wire answered -----------------------------------------------------------------


class ClientLog(logging.Handler):
    """Shows the client's warnings on stderr (every record with ``--verbose``)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        """Print the record if it is a warning (or anything with ``--verbose``)."""
        if self.verbose or record.levelno >= logging.WARNING:
            message = inert(record.getMessage())
            print(f"agentspace-grpc: {record.levelname.lower()}: {message}", file=sys.stderr)


def answered_by(client: DataConnectorClient, token: AccessToken | None = None) -> str:
    """The wire that carried the call that just succeeded: "grpc" or "rest".

    An acquire's token says so itself; for the other calls the client's current wire right
    after the call is the one that answered it (the commands make one call at a time).
    """
    if token is not None:
        return token.transport
    return client.current_transport


# ---- errors ------------------------------------------------------------------------------


def fingerprint(token: str) -> str:
    """A short, one-way label of a token: the first hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:_FINGERPRINT_HEX]


def conceal(value: Any) -> Any:
    """``value`` with every secret-looking key's value shown as ``sha256:<fingerprint>``.

    A third party's answer can hold the user's own tokens (Slack's ``authed_user`` carries an
    access and a refresh token, as JSON text). A key is secret-looking when it ends in
    ``token(s)`` or ``key``, or contains ``secret``, ``passw``, ``code``, ``credential``,
    ``jwt``, ``assertion`` or ``webhook`` (a webhook URL is a bearer), in any case; mappings
    and lists are searched at any depth, and so are strings that hold a JSON object or array.
    """
    if isinstance(value, Mapping):
        return {
            key: _fingerprinted(item) if _SECRET_KEY.search(str(key)) else conceal(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [conceal(item) for item in value]
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        concealed = conceal(parsed)
        return value if concealed == parsed else json.dumps(concealed)
    return value


def _fingerprinted(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"sha256:{fingerprint(text)}"


def _who(exc: Any, args: argparse.Namespace | None) -> str | None:
    metadata: Mapping[str, str] = getattr(exc, "metadata", {}) or {}
    principal = getattr(exc, "principal", None)
    found = principal or metadata.get("principal") or metadata.get("user")
    if not found and args is not None:
        found = getattr(args, "emulator_user", None)
    return str(found) if found else None


def _credentials_hint(args: argparse.Namespace | None) -> str:
    if args is None:
        return "pass the end user's credentials"
    if getattr(args, "token_file", None):
        return "the access token in the token file may have expired or belong to another issuer"
    if getattr(args, "emulator_user", None):
        return "is the emulator at --rest-endpoint the one at --endpoint?"
    if os.environ.get(EMULATOR_HOST_ENV) or os.environ.get(EMULATOR_REST_ENV):
        return "the emulator needs an end user: pass --emulator-user EMAIL or --token-file FILE"
    return (
        "run `gcloud auth application-default login` as the end user, or pass --token-file "
        "with the user's access token"
    )


def describe_error(
    exc: BaseException, name: str, args: argparse.Namespace | None
) -> tuple[int, str]:
    """The exit status and a message saying what happened and what to do about it."""
    from agentspace_grpc import (
        AuthorizationRequired,
        DataConnectorError,
        DeadlineExceeded,
        FailedPrecondition,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
        UsageError,
    )

    if isinstance(exc, CommandError):
        return exc.exit_status, exc.message
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if not isinstance(exc, DataConnectorError):
        return EXIT_ERROR, f"unexpected {type(exc).__name__}: {exc}"
    said = exc.message.rstrip(" .")  # the server's words; advice follows them
    kind = "authorization" if is_authorization_name(name) else "data connector"
    who = _who(exc, args)
    user = f"user {who}" if who else "the end user of these credentials"
    if isinstance(exc, AuthorizationRequired):
        resource = exc.resource or name
        store = f"agentspace-grpc store {resource} --redirect-uri URI"
        if exc.authorization_uri is not None:  # not a secret: it is bound to this user
            message = (
                f"{user} must authorize {resource}: open {exc.authorization_uri} in a browser "
                f"as that user, then store the URI it ends at with: {store}"
            )
        else:
            what = resource if is_authorization_name(resource) else f"data connector {resource}"
            message = (
                f"{user} has not authorized {what}; run the consent flow as that user, then "
                f"store the redirect URI with: {store}"
            )
        if who and who.endswith(".gserviceaccount.com"):
            message += (
                " (these are service-account credentials: the service files tokens under the "
                "END USER's identity, so pass the user's own credentials)"
            )
        return EXIT_AUTHORIZE, message
    if isinstance(exc, FailedPrecondition) and exc.reason == "SCOPES_MISSING":
        missing = exc.metadata.get("missing_scopes", "")
        return EXIT_AUTHORIZE, (
            f"{user} has not granted the scopes this needs on {name}: {missing or said}; "
            "run the consent flow again asking for them, then store the new redirect URI"
            + (f" with --scopes {missing}" if missing else "")
        )
    if isinstance(exc, FailedPrecondition) and exc.reason == "REFRESH_TOKEN_REVOKED":
        return EXIT_AUTHORIZE, (
            f"the third party revoked the grant of {user} on {name}; run the consent flow "
            "again, then store the new redirect URI"
        )
    if isinstance(exc, NotFound):
        return EXIT_USAGE, (
            f"not found: {said}; check the {kind}'s name and the endpoint "
            "(data stores in eu/us use the eu-/us-discoveryengine hosts)"
        )
    if isinstance(exc, InvalidArgument):
        return EXIT_USAGE, f"the service rejected the request: {said}"
    if isinstance(exc, Unauthenticated):
        return EXIT_DENIED, (
            f"the credentials were not accepted: {said}; {_credentials_hint(args)}"
        )
    if isinstance(exc, PermissionDenied):
        return EXIT_DENIED, (
            f"permission denied on {name}: {said}; check that this account may use the "
            f"{kind}'s project (IAM), and the quota project if one is set"
        )
    if isinstance(exc, Unavailable):
        if exc.reason == "UPSTREAM_UNAVAILABLE":
            wait = f" (it asked to wait {exc.retry_delay:g} s)" if exc.retry_delay else ""
            return EXIT_RETRY_LATER, (
                f"the third party behind {name} is unavailable: {said}; retry later{wait}"
            )
        if exc.transport is None:  # before any wire: refreshing the credentials failed
            return EXIT_RETRY_LATER, (
                f"unavailable: {said}; check the network path to the credentials' token "
                "endpoint (and HTTPS_PROXY / NO_PROXY)"
            )
        if exc.transport == "rest":
            hint = f"check --rest-endpoint / --endpoint / ${EMULATOR_REST_ENV}"
        else:
            hint = f"check --endpoint / ${EMULATOR_HOST_ENV}, or try --transport rest"
        over = f" over {exc.transport}" if exc.transport else ""
        return EXIT_RETRY_LATER, (f"the service could not be reached{over}: {said}; {hint}")
    if isinstance(exc, DeadlineExceeded):
        return EXIT_RETRY_LATER, (
            f"no answer before the deadline: {said}; retry, or raise --timeout"
        )
    if isinstance(exc, ResourceExhausted):
        return EXIT_RETRY_LATER, f"resource exhausted: {said}; retry later"
    return EXIT_ERROR, f"{exc.code.name}: {said}"


def error_json(exc: BaseException, exit_status: int, message: str) -> dict[str, Any]:
    """The ``--json`` form of a failure (with an authorization's URI when it sent one)."""
    code = getattr(exc, "code", None)
    error = {
        "exit_status": exit_status,
        "status": getattr(code, "name", None),
        "reason": getattr(exc, "reason", None),
        "message": message,
    }
    uri = getattr(exc, "authorization_uri", None)
    if uri is not None:
        error["authorization_uri"] = uri
    return {"error": error}


# ---- running -----------------------------------------------------------------------------


def print_json(data: Mapping[str, Any]) -> None:
    """One JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


def run(
    command: str,
    args: argparse.Namespace,
    main: Callable[[], Coroutine[Any, Any, int]],
) -> int:
    """Run a subcommand's coroutine; turn failures into a message and an exit status."""
    log = ClientLog(args.verbose)
    logger = logging.getLogger("agentspace_grpc")
    old_level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print(f"agentspace-grpc {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        status, message = describe_error(exc, args.name, args)
        print(f"agentspace-grpc {command}: error: {inert(message)}", file=sys.stderr)
        if args.json:
            print_json(error_json(exc, status, message))
        if args.verbose and status == EXIT_ERROR:
            import traceback

            for line in traceback.format_exc().splitlines():
                print(inert(line), file=sys.stderr)
        return status
    finally:
        logger.removeHandler(log)
        logger.setLevel(old_level)
