"""The emulator's configuration: connectors, authorizations, the built-in provider, identity
and the store.

The configuration is a TOML file (``--config FILE``) or the same structure as a mapping
(``Emulator(config={...})``). Every key is optional; unknown keys are errors, so a typo never
passes silently. The schema::

    [identity]                      # end-user identity tokens issued by the emulator
    token_lifetime = 3600           # seconds (>= 1) an end-user access token lives

    [store]
    lease_seconds = 30              # how long a refresh lease is held at most (> timeouts)
    memory_cache_seconds = 1.0      # how long an access token is served from process memory
                                    # before the shared store is read again (0 disables)

    [provider]                      # the built-in third-party OAuth 2.0 provider
    access_token_lifetime = 3600    # seconds (>= 1)
    send_expires_in = true          # include expires_in in token answers
    jwt_access_tokens = false       # issue access tokens as JWTs carrying exp (not opaque)
    grace_seconds = 60              # the immediately previous refresh token stays valid this
                                    # long after a rotation (0: never)
    code_lifetime = 600             # seconds an authorization code is valid

    [provider.faults]               # fault injection on the provider's token endpoint
    latency_ms = 0                  # delay before answering
    rate_429 = 0.0                  # probability of 429 Too Many Requests
    rate_5xx = 0.0                  # probability of 503 Service Unavailable
    retry_after = 1                 # Retry-After seconds sent with 429/503 (-1: none)
    invalid_grant_rate = 0.0        # probability of a forced invalid_grant (revokes nothing)
    grants = ["refresh_token"]      # the grant types the faults apply to

    [[connectors]]                  # zero or more; the default connector always exists
    name = "projects/p/locations/global/collections/c/dataConnector"
    authorize_url = "https://..."   # both URLs omitted: the built-in provider serves it
    token_url = "https://..."       # may start with {instance_uri}
    instance_hosts = ["acme.example.com", ".service-now.com"]
                                    # required when a URL uses {instance_uri}: the hosts a
                                    # request's instance_uri may name (".x": any subdomain of x)
    pkce = true                     # PKCE (S256) towards the provider; false if it cannot
    client_id = "..."
    client_secret = "..."           # or client_secret_env = "VARIABLE"
    auth_method = "client_secret_basic"   # or "client_secret_post"
    default_scopes = ["read", "write"]
    redirect_uri = "https://vertexaisearch.cloud.google.com/oauth-redirect"
    timeout_seconds = 10            # one upstream HTTP exchange
    expiry_margin_seconds = 60      # refresh this long before expiry (capped at 10% of life)
    default_expires_in = 0          # assumed lifetime when the provider omits expires_in
                                    # (0: such tokens are not cached)
    [connectors.actions]            # per-action required scopes
    create_issue = ["write"]

    [[authorizations]]              # zero or more; the default authorization always exists
    name = "projects/p/locations/global/authorizations/jira"
    display_name = "Jira"           # required
    # and the OAuth keys of [[connectors]]: authorize_url, token_url, pkce, client_id,
    # client_secret / client_secret_env, auth_method, default_scopes (the scopes every
    # token needs: a grant without one of them asks the user to authorize again),
    # redirect_uri, timeout_seconds, expiry_margin_seconds, default_expires_in

A connector or authorization without URLs is registered with the built-in provider; without a
``client_id`` it gets one derived from its name, and without a secret one derived from the data
directory's key (so that every emulator process on that directory agrees on it).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

DEFAULT_CONNECTOR: Final = (
    "projects/demo/locations/global/collections/default_collection/dataConnector"
)
DEFAULT_REDIRECT_URI: Final = "https://vertexaisearch.cloud.google.com/oauth-redirect"
DEFAULT_AUTHORIZATION: Final = "projects/demo/locations/global/authorizations/default_authorization"
CONNECTOR_PATTERN: Final = re.compile(
    r"projects/[^/]+/locations/[^/]+/collections/[^/]+/dataConnector"
)
AUTHORIZATION_PATTERN: Final = re.compile(r"projects/[^/]+/locations/[^/]+/authorizations/[^/]+")
#: The two kinds of OAuth resource, as :attr:`Connector.kind` names them.
CONNECTOR: Final = "data connector"
AUTHORIZATION: Final = "authorization"
#: Each kind of resource: its name pattern, and the pattern as the reference writes it.
RESOURCE_SHAPES: Final = {
    CONNECTOR: (CONNECTOR_PATTERN, "projects/*/locations/*/collections/*/dataConnector"),
    AUTHORIZATION: (AUTHORIZATION_PATTERN, "projects/*/locations/*/authorizations/*"),
}
_OAUTH_KEYS: Final = frozenset(
    {
        "name",
        "authorize_url",
        "token_url",
        "client_id",
        "client_secret",
        "client_secret_env",
        "auth_method",
        "default_scopes",
        "redirect_uri",
        "timeout_seconds",
        "expiry_margin_seconds",
        "default_expires_in",
        "pkce",
    }
)
_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")
_GRANTS: Final = ("authorization_code", "refresh_token")
INSTANCE_PLACEHOLDER: Final = "{instance_uri}"
_HOST: Final = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault injection on the built-in provider's token endpoint."""

    latency_ms: int = 0
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    retry_after: int = 1
    invalid_grant_rate: float = 0.0
    grants: tuple[str, ...] = ("refresh_token",)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Behaviour of the built-in third-party OAuth 2.0 provider."""

    access_token_lifetime: float = 3600.0
    send_expires_in: bool = True
    jwt_access_tokens: bool = False
    grace_seconds: float = 60.0
    code_lifetime: float = 600.0
    faults: Faults = field(default_factory=Faults)


@dataclass(frozen=True, slots=True)
class Connector:
    """One OAuth resource as the administrator configured it: a data connector, or an
    authorization (``kind``), which the store and the refresh protocol treat alike.

    ``client_secret`` is excluded from ``repr`` so that it never lands in a log line.
    """

    name: str
    client_id: str
    client_secret: str = field(repr=False)
    authorize_url: str
    token_url: str
    builtin: bool
    default_scopes: tuple[str, ...]
    actions: Mapping[str, tuple[str, ...]]
    redirect_uri: str = DEFAULT_REDIRECT_URI
    auth_method: str = "client_secret_basic"
    timeout_seconds: float = 10.0
    expiry_margin_seconds: float = 60.0
    default_expires_in: float = 0.0
    instance_hosts: tuple[str, ...] = ()
    pkce: bool = True
    kind: str = CONNECTOR
    display_name: str = ""

    @property
    def uses_instance(self) -> bool:
        """Whether a URL of this connector takes the request's ``instance_uri``."""
        return INSTANCE_PLACEHOLDER in self.token_url + self.authorize_url

    def instance_base(self, instance_uri: str) -> str:
        """``https://HOST`` for a request's ``instance_uri`` (``HOST`` or ``https://HOST``).

        The host must be in ``instance_hosts``: the connector's client secret and the user's
        authorization code go to that host, so no caller may pick it. Connectors whose URLs do
        not use the placeholder ignore the value (``""``).

        Raises:
            ValueError: the value is not an allowed host; the message names the rule.
        """
        if not self.uses_instance:
            return ""
        if not instance_uri:
            raise ValueError(
                f"instance_uri is required for {self.name} (one of its hosts: "
                f"{', '.join(self.instance_hosts)})"
            )
        host = instance_uri
        if host[:8].lower() == "https://":
            host = host[8:]
        host = host.removesuffix("/").lower()
        if not host.isascii() or not _HOST.fullmatch(host):
            raise ValueError(
                f"instance_uri {instance_uri!r} must be HOST or https://HOST (no user info, "
                "port, path, query or fragment)"
            )
        for allowed in self.instance_hosts:
            if host == allowed or (allowed.startswith(".") and host.endswith(allowed)):
                return f"https://{host}"
        raise ValueError(
            f"instance_uri host {host} is not allowed for {self.name} (instance_hosts: "
            f"{', '.join(self.instance_hosts)})"
        )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, validated."""

    connectors: Mapping[str, Connector]
    authorizations: Mapping[str, Connector] = field(default_factory=dict)
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    identity_token_lifetime: float = 3600.0
    lease_seconds: float = 30.0
    memory_cache_seconds: float = 1.0


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | Config | None) -> Config:
    """Reads and validates a configuration from a TOML file, a mapping or nothing (defaults)."""
    if isinstance(source, Config):
        return source
    if source is None:
        data: Mapping[str, Any] = {}
    elif isinstance(source, Mapping):
        data = source
    else:
        path = Path(source)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return _parse(data)


def with_overrides(config: Config, **provider: Any) -> Config:
    """A copy with provider settings (or ``faults_*`` fault settings) replaced, for CLI flags."""
    faults = {k.removeprefix("faults_"): v for k, v in provider.items() if k.startswith("faults_")}
    plain = {k: v for k, v in provider.items() if not k.startswith("faults_")}
    new_faults = _faults(faults, "provider.faults", config.provider.faults)
    new_provider = _provider_table(plain, config.provider, new_faults)
    return replace(config, provider=new_provider)


# ---- parsing ---------------------------------------------------------------------------


def _parse(data: Mapping[str, Any]) -> Config:
    _only(data, "", {"identity", "store", "provider", "connectors", "authorizations"})
    identity = _table(data, "identity", "")
    _only(identity, "identity", {"token_lifetime"})
    store = _table(data, "store", "")
    _only(store, "store", {"lease_seconds", "memory_cache_seconds"})
    provider_data = _table(data, "provider", "")
    faults_data = _table(provider_data, "faults", "provider")
    provider = _provider_table(
        {k: v for k, v in provider_data.items() if k != "faults"},
        ProviderConfig(),
        _faults(faults_data, "provider.faults", Faults()),
    )
    lease = _number(store, "lease_seconds", "store", 30.0, minimum=0.5)
    connectors: dict[str, Connector] = {
        DEFAULT_CONNECTOR: Connector(
            name=DEFAULT_CONNECTOR,
            client_id="agentspace-emulator-demo",
            client_secret="",
            authorize_url="",
            token_url="",
            builtin=True,
            default_scopes=("read", "write"),
            actions={"read_items": ("read",), "write_items": ("write",), "admin": ("admin",)},
        )
    }
    authorizations: dict[str, Connector] = {
        DEFAULT_AUTHORIZATION: replace(
            connectors[DEFAULT_CONNECTOR],
            name=DEFAULT_AUTHORIZATION,
            client_id="agentspace-emulator-default-authorization",
            actions={},
            kind=AUTHORIZATION,
            display_name="Default authorization (built-in provider)",
        )
    }
    for key, kind, found in (
        ("connectors", CONNECTOR, connectors),
        ("authorizations", AUTHORIZATION, authorizations),
    ):
        items = data.get(key, [])
        if not isinstance(items, list):
            raise ConfigError(f"{key} must be an array of tables ([[{key}]])")
        for index, item in enumerate(items):
            resource = _connector(item, f"{key}[{index}]", kind)
            found[resource.name] = resource
    for connector in (*connectors.values(), *authorizations.values()):
        # A lease must outlive the upstream call it protects, or two holders could refresh.
        if connector.timeout_seconds >= lease:
            raise ConfigError(
                f"{connector.kind} {connector.name}: timeout_seconds "
                f"({connector.timeout_seconds:g}) "
                f"must be shorter than store.lease_seconds ({lease:g})"
            )
    return Config(
        connectors=connectors,
        authorizations=authorizations,
        provider=provider,
        identity_token_lifetime=_number(identity, "token_lifetime", "identity", 3600.0, 1.0),
        lease_seconds=lease,
        memory_cache_seconds=_number(store, "memory_cache_seconds", "store", 1.0, 0.0),
    )


def _provider_table(
    data: Mapping[str, Any], base: ProviderConfig, faults: Faults
) -> ProviderConfig:
    where = "provider"
    _only(
        data,
        where,
        {
            "access_token_lifetime",
            "send_expires_in",
            "jwt_access_tokens",
            "grace_seconds",
            "code_lifetime",
        },
    )
    return ProviderConfig(
        access_token_lifetime=_number(
            data, "access_token_lifetime", where, base.access_token_lifetime, 1.0
        ),
        send_expires_in=_bool(data, "send_expires_in", where, base.send_expires_in),
        jwt_access_tokens=_bool(data, "jwt_access_tokens", where, base.jwt_access_tokens),
        grace_seconds=_number(data, "grace_seconds", where, base.grace_seconds, 0.0),
        code_lifetime=_number(data, "code_lifetime", where, base.code_lifetime, 1.0),
        faults=faults,
    )


def _faults(data: Mapping[str, Any], where: str, base: Faults) -> Faults:
    _only(
        data,
        where,
        {"latency_ms", "rate_429", "rate_5xx", "retry_after", "invalid_grant_rate", "grants"},
    )
    grants = data.get("grants", list(base.grants))
    if not isinstance(grants, list) or any(g not in _GRANTS for g in grants):
        raise ConfigError(f"{where}.grants must be a list drawn from {list(_GRANTS)}")
    return Faults(
        latency_ms=int(_number(data, "latency_ms", where, base.latency_ms, 0.0)),
        rate_429=_rate(data, "rate_429", where, base.rate_429),
        rate_5xx=_rate(data, "rate_5xx", where, base.rate_5xx),
        retry_after=int(_number(data, "retry_after", where, base.retry_after, -1.0)),
        invalid_grant_rate=_rate(data, "invalid_grant_rate", where, base.invalid_grant_rate),
        grants=tuple(grants),
    )


def _connector(item: Any, where: str, kind: str) -> Connector:
    """A ``[[connectors]]`` or ``[[authorizations]]`` table (``kind``)."""
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where} must be a table")
    if kind == CONNECTOR:
        _only(item, where, _OAUTH_KEYS | {"actions", "instance_hosts"})
    else:
        _only(item, where, _OAUTH_KEYS | {"display_name"})
    pattern, shape = RESOURCE_SHAPES[kind]
    name = _string(item, "name", where, None)
    if not pattern.fullmatch(name):
        raise ConfigError(f"{where}.name {name!r} does not match {shape}")
    display_name = _string(item, "display_name", where, None) if kind == AUTHORIZATION else ""
    authorize_url = _string(item, "authorize_url", where, "")
    token_url = _string(item, "token_url", where, "")
    if bool(authorize_url) != bool(token_url):
        raise ConfigError(f"{where}: give both authorize_url and token_url, or neither")
    for key, url in (("authorize_url", authorize_url), ("token_url", token_url)):
        if INSTANCE_PLACEHOLDER in url and kind == AUTHORIZATION:
            raise ConfigError(
                f"{where}.{key}: an authorization's URLs are fixed ({INSTANCE_PLACEHOLDER} is "
                "for data connectors, whose requests name an instance)"
            )
        if INSTANCE_PLACEHOLDER in url:
            rest = url.removeprefix(INSTANCE_PLACEHOLDER)
            if INSTANCE_PLACEHOLDER in rest or rest[:1] not in ("", "/", "?"):
                raise ConfigError(
                    f"{where}.{key}: {INSTANCE_PLACEHOLDER} may only stand at the start, for "
                    'https://HOST (e.g. "{instance_uri}/oauth/token")'
                )
        elif url and not re.match(r"https?://", url):
            raise ConfigError(f"{where}.{key} must be an http(s) URL")
        if "@" in urlsplit(url).netloc:  # errors name the host: no secret may stand in it
            raise ConfigError(f"{where}.{key} must not carry credentials ('user@'): use client_id")
    instance_hosts = _hosts(item, where)
    if INSTANCE_PLACEHOLDER in authorize_url + token_url and not instance_hosts:
        raise ConfigError(
            f"{where}: a URL uses {INSTANCE_PLACEHOLDER}, so instance_hosts must list the hosts "
            'a request may name (e.g. instance_hosts = [".service-now.com"])'
        )
    if instance_hosts and INSTANCE_PLACEHOLDER not in authorize_url + token_url:
        raise ConfigError(f"{where}.instance_hosts is set but no URL uses {INSTANCE_PLACEHOLDER}")
    builtin = not token_url
    if "client_secret" in item and "client_secret_env" in item:
        raise ConfigError(f"{where}: give client_secret or client_secret_env, not both")
    secret = _string(item, "client_secret", where, "")
    if "client_secret_env" in item:
        variable = _string(item, "client_secret_env", where, None)
        secret = os.environ.get(variable, "")
        if not secret:
            raise ConfigError(
                f"{where}.client_secret_env: environment variable {variable} is empty"
            )
    if not builtin and not secret:
        raise ConfigError(f"{where}: a {kind} with its own token_url needs a client secret")
    if not builtin and "client_id" not in item:
        raise ConfigError(f"{where}: a {kind} with its own token_url needs a client_id")
    auth_method = _string(item, "auth_method", where, "client_secret_basic")
    if auth_method not in _AUTH_METHODS:
        raise ConfigError(f"{where}.auth_method must be one of {list(_AUTH_METHODS)}")
    scopes = _scopes(item.get("default_scopes", ["read", "write"]), f"{where}.default_scopes")
    actions_data = item.get("actions", {})
    if not isinstance(actions_data, Mapping):
        raise ConfigError(f"{where}.actions must be a table of action = [scopes]")
    actions = {
        str(action): _scopes(required, f"{where}.actions.{action}")
        for action, required in actions_data.items()
    }
    default_id = "emulator-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return Connector(
        name=name,
        client_id=_string(item, "client_id", where, default_id),
        client_secret=secret,
        authorize_url=authorize_url,
        token_url=token_url,
        builtin=builtin,
        default_scopes=scopes,
        actions=actions,
        redirect_uri=_string(item, "redirect_uri", where, DEFAULT_REDIRECT_URI),
        auth_method=auth_method,
        timeout_seconds=_number(item, "timeout_seconds", where, 10.0, 0.1),
        expiry_margin_seconds=_number(item, "expiry_margin_seconds", where, 60.0, 0.0),
        default_expires_in=_number(item, "default_expires_in", where, 0.0, 0.0),
        instance_hosts=instance_hosts,
        pkce=_bool(item, "pkce", where, True),
        kind=kind,
        display_name=display_name,
    )


def _hosts(item: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = item.get("instance_hosts", [])
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise ConfigError(f"{where}.instance_hosts must be a list of host names")
    for host in value:
        if not host.isascii() or not _HOST.fullmatch(host.lower().removeprefix(".")):
            raise ConfigError(
                f'{where}.instance_hosts: {host!r} is not a host name ("acme.example.com", or '
                '".example.com" for any subdomain)'
            )
    return tuple(host.lower() for host in value)


def _only(data: Mapping[str, Any], where: str, allowed: Set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (allowed here: {', '.join(sorted(allowed))})"
        )


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where + '.' if where else ''}{key} must be a table")
    return value


def _number(data: Mapping[str, Any], key: str, where: str, default: float, minimum: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key} must be a number")
    if value < minimum:
        raise ConfigError(f"{where}.{key} must be at least {minimum:g} (got {value:g})")
    return float(value)


def _rate(data: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = _number(data, key, where, default, 0.0)
    if value > 1.0:
        raise ConfigError(f"{where}.{key} is a probability: between 0 and 1 (got {value:g})")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false")
    return value


def _string(data: Mapping[str, Any], key: str, where: str, default: str | None) -> str:
    if key not in data:
        if default is None:
            raise ConfigError(f"{where}.{key} is required")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string")
    return value


def _scopes(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ConfigError(f"{where} must be a list of scope strings")
    for scope in value:
        if any(ch.isspace() for ch in scope):
            raise ConfigError(f"{where}: scope {scope!r} contains whitespace")
    return tuple(dict.fromkeys(value))
