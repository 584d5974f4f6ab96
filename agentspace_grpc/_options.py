"""The constructor's arguments checked, with ``client_options`` and the universe domain merged.

``client_options`` is a ``google.api_core.client_options.ClientOptions`` or a dict, read by
attribute or key name (api-core is not imported). The options this client can honour are
merged with the constructor's keyword arguments; any other option that is set is refused,
because silently ignoring an API key or a client certificate would send the call without it.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

import google.auth
import google.auth.credentials
import google.auth.exceptions

from agentspace_grpc._credentials import (
    CLOUD_PLATFORM_SCOPE,
    DEFAULT_UNIVERSE,
    CredentialsLike,
    check_credentials,
)
from agentspace_grpc._errors import UsageError
from agentspace_grpc._policy import RetryPolicy
from agentspace_grpc._refresh import describe

__all__ = ["UNIVERSE_ENV", "Settings", "resolve"]

#: The environment variable Google's clients read the universe domain from.
UNIVERSE_ENV: Final = "GOOGLE_CLOUD_UNIVERSE_DOMAIN"

_HONOURED: Final = (
    "api_endpoint",
    "quota_project_id",
    "universe_domain",
    "scopes",
    "credentials_file",
    "tracer_provider",
)
_DOMAIN: Final = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class Settings:
    """The constructor's arguments with ``client_options`` merged in and checked."""

    endpoint: str | None
    quota_project: str | None
    universe: str
    scopes: tuple[str, ...]
    credentials: CredentialsLike = field(repr=False)  # may be a bearer token string
    tracer_provider: object


def resolve(
    client_options: object,
    *,
    transport: object,
    insecure: object,
    single_flight: object,
    retry: object,
    quota_project: str | None,
    ssl_context: object,
    credentials: CredentialsLike,
    endpoint: str | None,
    universe_domain: str | None,
    tracer_provider: object,
) -> Settings:
    """Check the constructor's arguments and merge ``client_options`` in (no network I/O).

    Raises:
        UsageError: An argument is malformed, an unsupported option is set, an option
            conflicts with a keyword argument (``credentials_file`` is loaded here).
    """
    if transport not in ("auto", "grpc", "rest"):
        raise UsageError(f"transport must be 'auto', 'grpc' or 'rest', not {transport!r}")
    if not isinstance(insecure, bool):
        raise UsageError("insecure must be True or False")
    if not isinstance(single_flight, bool):
        raise UsageError("single_flight must be True or False")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise UsageError("retry must be a RetryPolicy or None")
    if quota_project is not None and (not isinstance(quota_project, str) or not quota_project):
        raise UsageError("quota_project must be a non-empty string or None")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise UsageError("ssl_context must be an ssl.SSLContext or None")
    check_credentials(credentials)
    options = _read(client_options)
    endpoint = _merge(endpoint, "endpoint", options, "api_endpoint")
    if "://" in str(options.get("api_endpoint", "")):
        raise UsageError(
            "client_options api_endpoint takes 'host[:port]' (as endpoint= does), not a URL; "
            "a REST base URL goes in rest_endpoint="
        )
    quota_project = _merge(quota_project, "quota_project", options, "quota_project_id")
    universe = _merge(universe_domain, "universe_domain", options, "universe_domain")
    if universe is not None:
        universe = _check_universe(universe, "universe_domain")
    else:
        universe = _check_universe(os.environ.get(UNIVERSE_ENV, DEFAULT_UNIVERSE), UNIVERSE_ENV)
    scopes = _scopes(options.get("scopes"))
    if isinstance(credentials, str) and options.get("scopes") is not None:
        raise UsageError(
            "client_options scopes cannot apply to an access-token string (credentials=): "
            "pass google-auth credentials or leave scopes unset"
        )
    credentials_file = options.get("credentials_file")
    if credentials_file is not None:
        if credentials is not None:
            raise UsageError(
                "client_options credentials_file and credentials= are both set; pass one"
            )
        credentials = _load(credentials_file, scopes)
    option_tracer = options.get("tracer_provider")
    if option_tracer is not None:
        if tracer_provider is not None and tracer_provider is not option_tracer:
            raise UsageError(
                "client_options tracer_provider conflicts with tracer_provider=; set one of them"
            )
        tracer_provider = option_tracer
    return Settings(endpoint, quota_project, universe, scopes, credentials, tracer_provider)


def _read(client_options: object) -> dict[str, object]:
    """The options that are set (not None), refusing those this client cannot honour."""
    if client_options is None:
        return {}
    if isinstance(client_options, Mapping):
        items = dict(client_options)
    elif hasattr(client_options, "__dict__"):
        items = {k: v for k, v in vars(client_options).items() if not k.startswith("_")}
    else:
        raise UsageError(
            "client_options must be a google.api_core ClientOptions, a dict or None, "
            f"not {type(client_options).__name__}"
        )
    options = {key: value for key, value in items.items() if value is not None}
    for key in options:
        if key not in _HONOURED:
            raise UsageError(
                f"client_options {key!r} is not supported by DataConnectorClient "
                f"(supported: {', '.join(_HONOURED)})"
            )
    return options


def _merge(
    argument: str | None, argument_name: str, options: dict[str, object], key: str
) -> str | None:
    value = options.get(key)
    if value is None:
        return argument
    if not isinstance(value, str) or not value:
        raise UsageError(f"client_options {key} must be a non-empty string")
    if argument is not None and argument != value:
        raise UsageError(
            f"client_options {key}={value!r} conflicts with {argument_name}={argument!r}; "
            "set one of them"
        )
    return value


def _check_universe(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DOMAIN.fullmatch(value):
        raise UsageError(
            f"{what} must be a lower-case domain name such as 'googleapis.com', not {value!r}"
        )
    return value


def _scopes(value: object) -> tuple[str, ...]:
    if value is None:
        return (CLOUD_PLATFORM_SCOPE,)
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(scope, str) and scope for scope in value)
    ):
        raise UsageError("client_options scopes must be a non-empty sequence of scope strings")
    return tuple(value)


def _load(path: object, scopes: tuple[str, ...]) -> CredentialsLike:
    if not isinstance(path, str | os.PathLike):
        raise UsageError("client_options credentials_file must be a path")
    # google-auth's error can chain the file's JSON parse error, which holds the whole file (a
    # private key): ours is raised after the except block, so none stays attached.
    failure: UsageError | None = None
    try:
        credentials, _ = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
            os.fspath(path), scopes=scopes
        )
    except google.auth.exceptions.DefaultCredentialsError as exc:
        failure = UsageError(f"client_options credentials_file: {describe(exc)}")
    if failure is not None:
        raise failure
    return cast(google.auth.credentials.Credentials, credentials)
