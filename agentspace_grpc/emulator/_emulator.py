"""The :class:`Emulator`: one gRPC port and one HTTP port on loopback, over a data directory."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
from aiohttp import web

from agentspace_grpc._client import DataConnectorClient
from agentspace_grpc._credentials import CredentialsLike
from agentspace_grpc._transports.base import format_host_port, is_loopback
from agentspace_grpc.emulator._clock import Clock
from agentspace_grpc.emulator._config import (
    DEFAULT_AUTHORIZATION,
    DEFAULT_CONNECTOR,
    Config,
    Connector,
    load_config,
)
from agentspace_grpc.emulator._consent import (
    EmulatorError,
    consent_over_http,
    request_consent_uri,
)
from agentspace_grpc.emulator._crash import CRASH_POINTS
from agentspace_grpc.emulator._crypto import Keyring, load_keyring
from agentspace_grpc.emulator._emulator_front import EmulatorFront
from agentspace_grpc.emulator._grpc import start_grpc
from agentspace_grpc.emulator._identity import (
    IDENTITY_CLIENT_ID,
    IDENTITY_CLIENT_SECRET,
    ConsentStates,
    Identity,
    b64url,
    check_email,
)
from agentspace_grpc.emulator._provider import Client, Provider
from agentspace_grpc.emulator._provider_front import ProviderFront
from agentspace_grpc.emulator._provider_store import ProviderStore
from agentspace_grpc.emulator._rest import api_application
from agentspace_grpc.emulator._service import Service
from agentspace_grpc.emulator._store import Store, new_owner

if TYPE_CHECKING:
    import google.oauth2.credentials

log = logging.getLogger("agentspace_grpc.emulator")

_WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - only compared against


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _address(host: str, port: int) -> str:
    """``host:port`` to connect to (a wildcard bind is reached over loopback)."""
    return format_host_port("127.0.0.1" if host in _WILDCARDS else host, port)


def _resolve(
    connectors: Mapping[str, Connector], http_url: str, keys: Keyring
) -> dict[str, Connector]:
    """Fills in the built-in provider's URLs and derived client secrets."""
    secret_key = keys.mac_key("builtin-client-secret")
    out: dict[str, Connector] = {}
    for name, connector in connectors.items():
        if connector.builtin:
            secret = connector.client_secret or b64url(
                hmac.new(secret_key, connector.client_id.encode(), hashlib.sha256).digest()
            )
            connector = replace(
                connector,
                client_secret=secret,
                authorize_url=f"{http_url}/provider/authorize",
                token_url=f"{http_url}/provider/token",
            )
        out[name] = connector
    return out


class Emulator:
    """A local DataConnectorService and AuthorizationService: ``async with Emulator() as emu:``
    (or ``with`` on a thread).

    Args:
        data_dir: where the store, the provider's state and the key live; None: a temporary
            directory removed when the emulator stops.
        config: a TOML file, a mapping of the same shape, a :class:`Config`, or None.
        host: the interface to bind (loopback unless told otherwise).
        grpc_port / http_port: 0 picks free ports.
        key_file: the encryption key file (else ``AGENTSPACE_EMULATOR_KEY``, else generated).
        clock: seconds since the epoch (:func:`time.time`): read for every expiry the emulator
            issues or checks (tokens, consents, codes, caches); a test moves its own forward
            instead of sleeping.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
        *,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        key_file: str | os.PathLike[str] | None = None,
        crash_at: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        if crash_at is not None and crash_at not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {crash_at!r} (known: {', '.join(CRASH_POINTS)})")
        self._config = load_config(config)
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self._host = host
        self._ports = (grpc_port, http_port)
        self._key_file = key_file
        self._crash_at = crash_at
        self._clock = clock
        self._started = False
        self._temp_dir: Path | None = None
        self._data_dir: Path | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._store: Store | None = None
        self._provider_store: ProviderStore | None = None
        self._service: Service | None = None
        self._identity: Identity | None = None
        self._grpc_port = 0
        self._http_port = 0
        self._bound = ""  # the address both servers are bound to (an IP literal)
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        where = self.http_url if self._started else "stopped"
        return f"Emulator({where})"

    # ---- addresses ---------------------------------------------------------------------------

    def _need_started(self) -> None:
        if not self._started:
            raise EmulatorError("the emulator is not running: use 'async with Emulator() as emu'")

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC server."""
        self._need_started()
        return _address(self._host, self._grpc_port)

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP server (REST, identity, consent, provider)."""
        self._need_started()
        return f"http://{_address(self._host, self._http_port)}"

    @property
    def token_uri(self) -> str:
        """The identity token endpoint (google-auth ``token_uri``)."""
        return f"{self.http_url}/oauth2/token"

    @property
    def authorize_uri(self) -> str:
        """The built-in provider's authorize endpoint."""
        return f"{self.http_url}/provider/authorize"

    @property
    def connector(self) -> str:
        """The default connector's resource name."""
        return DEFAULT_CONNECTOR

    @property
    def authorization(self) -> str:
        """The default authorization's resource name."""
        return DEFAULT_AUTHORIZATION

    @property
    def data_dir(self) -> Path:
        """The data directory in use."""
        self._need_started()
        assert self._data_dir is not None
        return self._data_dir

    def ready_info(self) -> dict[str, str]:
        """What the process prints as its ready line: the addresses it is really bound to
        (``0.0.0.0`` stays ``0.0.0.0``, so nobody mistakes it for loopback)."""
        self._need_started()
        http = f"http://{format_host_port(self._bound, self._http_port)}"
        return {
            "grpc": format_host_port(self._bound, self._grpc_port),
            "http": http,
            "token_uri": f"{http}/oauth2/token",
            "authorize_uri": f"{http}/provider/authorize",
            "connector": self.connector,
            "authorization": self.authorization,
        }

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the data directory and starts both servers."""
        if self._started:
            raise EmulatorError("the emulator is already running")
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self._started = True
        if not is_loopback(self._bound.split("%", 1)[0]):
            log.warning(
                "the emulator listens on %s, not on loopback: anyone who can reach its ports "
                "can mint end-user identities and act as any user (it is a test server)",
                self._bound,
            )
        log.info("emulator ready: grpc %s, http %s", self.grpc_target, self.http_url)

    async def _start(self) -> None:
        if self._data_dir_arg is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="agentspace-emulator-"))
            self._data_dir = self._temp_dir
        else:
            self._data_dir = self._data_dir_arg
            self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = load_keyring(self._data_dir, self._key_file, os.environ)
        sock = _bind(self._host, self._ports[1])
        self._bound, self._http_port = sock.getsockname()[:2]
        http_url = f"http://{_address(self._host, self._http_port)}"
        resources = _resolve(
            {**self._config.connectors, **self._config.authorizations}, http_url, keys
        )
        clients = {
            c.client_id: Client(
                c.client_id, c.client_secret, c.redirect_uri, c.default_scopes, c.pkce
            )
            for c in resources.values()
            if c.builtin
        }
        states = ConsentStates(keys, self._clock)
        self._provider_store = ProviderStore(self._data_dir)
        await self._provider_store.open()
        provider = Provider(
            self._provider_store, self._config.provider, clients, states, self._clock
        )
        store_class = Store if self._crash_at is None else CRASH_POINTS[self._crash_at]
        self._store = store_class(self._data_dir, keys)
        await self._store.open()
        self._identity = Identity(keys, self._config.identity_token_lifetime, self._clock)
        self._session = aiohttp.ClientSession(trust_env=False)
        self._service = Service(
            self._config,
            resources,
            self._store,
            self._identity,
            states,
            self._session,
            new_owner(),
            http_url=http_url,
            clock=self._clock,
        )
        app = api_application(self._service)
        EmulatorFront(
            self._identity, self._service, self._store, f"{http_url}/oauth2/token"
        ).add_routes(app)
        ProviderFront(provider).add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._grpc_server, self._grpc_port = await start_grpc(
            self._service, self._bound, self._ports[0]
        )

    async def stop(self) -> None:
        """Stops both servers and closes the data directory (removing a temporary one)."""
        self._started = False
        if self._grpc_server is not None:
            await self._grpc_server.stop(0.5)
            self._grpc_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._service is not None:
            await self._service.close()
            self._service = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        for db in (self._store, self._provider_store):
            if db is not None:
                await db.close()
        self._store = self._provider_store = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> Emulator:
        """Runs the emulator on a private event loop in a daemon thread (for sync code)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                try:
                    await self.start()
                except BaseException as exc:
                    failure.append(exc)
                finally:
                    started.set()

            loop.run_until_complete(boot())
            if not failure:
                loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name="agentspace-emulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = self._thread_loop = None

    # ---- helpers for tests and demos -------------------------------------------------------------

    def user_token(self, email: str) -> str:
        """A fresh end-user bearer token for ``email``."""
        self._need_started()
        assert self._identity is not None
        return self._identity.access_token_for(check_email(email))[0]

    def user_credentials(self, email: str) -> google.oauth2.credentials.Credentials:
        """google-auth credentials for ``email`` that refresh against the emulator."""
        import google.oauth2.credentials

        self._need_started()
        assert self._identity is not None
        return google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=self._identity.refresh_token_for(check_email(email)),
            token_uri=self.token_uri,
            client_id=IDENTITY_CLIENT_ID,
            client_secret=IDENTITY_CLIENT_SECRET,
        )

    async def consent(
        self, email: str, connector: str | None = None, scopes: Sequence[str] | None = None
    ) -> str:
        """Runs the consent for ``email`` over HTTP; returns the full redirect URI to store.

        ``connector`` names a data connector or an authorization (default: the default
        connector).
        """
        return await consent_over_http(
            self.http_url, self.user_token(email), email, connector or self.connector, scopes
        )

    async def consent_uri(self, resource: str, credentials: CredentialsLike) -> str:
        """A URL that starts consent to ``resource`` in a browser with no credentials, for the
        user ``credentials`` identify (so ``consent_uri=emu.consent_uri`` works as is)."""
        return await request_consent_uri(self.http_url, resource, credentials)

    async def _get_json(self, path: str) -> dict[str, int]:
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(f"{self.http_url}{path}") as response,
        ):
            response.raise_for_status()
            data = await response.json()
        return {str(k): int(v) for k, v in data.items()}

    async def provider_stats(self) -> dict[str, int]:
        """The built-in provider's counters (``GET /provider/stats``), across processes."""
        return await self._get_json("/provider/stats")

    async def stats(self) -> dict[str, int]:
        """The emulator's counters (``GET /emulator/v1/stats``), across processes."""
        return await self._get_json("/emulator/v1/stats")

    def client(self, **kwargs: Any) -> DataConnectorClient:
        """A ``DataConnectorClient`` pointed at this emulator (both wires)."""
        kwargs.setdefault("endpoint", self.grpc_target)
        kwargs.setdefault("rest_endpoint", self.http_url)
        return DataConnectorClient(**kwargs)
