"""pytest fixtures for testing code against the local emulator (registered as ``pytest11``).

Fixtures (namespaced, so that they never shadow another plugin's ``client``):

- ``agentspace_emulator``: a running :class:`agentspace_grpc.emulator.Emulator` on a fresh data
  directory under ``tmp_path``. It runs on its own thread and event loop, so it serves sync
  tests, pytest-asyncio tests and subprocesses alike; its addresses are plain strings. When
  ``AGENTSPACE_EMULATOR_HOST`` and ``AGENTSPACE_EMULATOR_REST`` are set, it is instead a
  :class:`RunningEmulator` for the emulator they point at, and none is started.
- ``agentspace_emulator_config``: the configuration the ``agentspace_emulator`` fixture starts
  its emulator with (None: defaults); override it in a ``conftest.py`` or a test module. A
  running emulator keeps its own configuration.
- ``agentspace_user``: the end user's email that ``agentspace_client`` acts for, new for every
  test (so that tests sharing a running emulator never see each other's tokens); override it
  to choose one.
- ``agentspace_client``: an open ``DataConnectorClient`` pointed at the emulator with
  ``agentspace_user``'s credentials (needs pytest-asyncio).

Importing this module imports nothing beyond pytest: the emulator and the client are loaded
when a fixture is first used, and a missing ``agentspace-grpc[emulator]`` extra fails only
the tests that start an emulator, with a message saying what to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    import google.oauth2.credentials

    from agentspace_grpc import DataConnectorClient
    from agentspace_grpc._credentials import CredentialsLike
    from agentspace_grpc.emulator import Emulator

try:  # pytest-asyncio is optional: only the async ``agentspace_client`` fixture needs it.
    import pytest_asyncio

    _HAVE_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - depends on the user's environment
    _HAVE_PYTEST_ASYNCIO = False

_HOST_ENV = "AGENTSPACE_EMULATOR_HOST"
_REST_ENV = "AGENTSPACE_EMULATOR_REST"


class RunningEmulator:
    """An emulator already running elsewhere, with the helpers of ``Emulator`` that tests use.

    Its addresses come from the emulator variables; end-user identities are minted over its
    HTTP port, and :meth:`client` lets the variables point the client at it (with the client's
    own rule: a non-loopback host needs ``AGENTSPACE_EMULATOR_INSECURE=1``).
    """

    def __init__(self, grpc_target: str, http_url: str) -> None:
        from agentspace_grpc.emulator._config import DEFAULT_AUTHORIZATION, DEFAULT_CONNECTOR

        if not http_url.startswith(("http://", "https://")):
            raise ValueError(f"{_REST_ENV} must be the emulator's http(s):// URL, not {http_url!r}")
        self.grpc_target = grpc_target
        self.http_url = http_url.rstrip("/")
        self.connector = DEFAULT_CONNECTOR
        self.authorization = DEFAULT_AUTHORIZATION

    def __repr__(self) -> str:
        return f"RunningEmulator({self.http_url})"

    def _mint(self, email: str) -> dict[str, Any]:
        import urllib.request

        url = f"{self.http_url}/emulator/v1/users/{quote(email, safe='@')}/token"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(url, method="POST")  # noqa: S310 (http(s) only)
        with direct.open(request, timeout=30) as answer:
            minted: dict[str, Any] = json.load(answer)
        return minted

    def user_token(self, email: str) -> str:
        """A fresh end-user bearer token for ``email``."""
        return str(self._mint(email)["access_token"])

    def user_credentials(self, email: str) -> google.oauth2.credentials.Credentials:
        """google-auth credentials for ``email`` that refresh against the emulator."""
        import google.oauth2.credentials

        minted = self._mint(email)
        return google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=minted["refresh_token"],
            token_uri=minted["token_uri"],
            client_id=minted["client_id"],
            client_secret=minted["client_secret"],
        )

    async def consent(
        self, email: str, connector: str | None = None, scopes: Sequence[str] | None = None
    ) -> str:
        """Runs the consent for ``email`` over HTTP; returns the full redirect URI to store.

        ``connector`` names a data connector or an authorization (default: the default
        connector).
        """
        from agentspace_grpc.emulator._consent import consent_over_http

        token = await asyncio.to_thread(self.user_token, email)  # urllib: not on the loop
        return await consent_over_http(
            self.http_url, token, email, connector or self.connector, scopes
        )

    async def consent_uri(self, resource: str, credentials: CredentialsLike) -> str:
        """A URL that starts consent to ``resource`` in a browser with no credentials, for the
        user ``credentials`` identify (as ``Emulator.consent_uri``)."""
        from agentspace_grpc.emulator._consent import request_consent_uri

        return await request_consent_uri(self.http_url, resource, credentials)

    def client(self, **kwargs: Any) -> DataConnectorClient:
        """A ``DataConnectorClient`` that the emulator variables point at this emulator."""
        from agentspace_grpc import DataConnectorClient

        return DataConnectorClient(**kwargs)


def _running_emulator() -> RunningEmulator | None:
    host, rest = os.environ.get(_HOST_ENV), os.environ.get(_REST_ENV)
    if not host and not rest:
        return None
    if not host or not rest:
        pytest.fail(
            f"set both {_HOST_ENV} and {_REST_ENV} (the 'grpc' and 'http' values of the "
            "emulator's ready line) to test against a running emulator, or neither",
            pytrace=False,
        )
    return RunningEmulator(host, rest)


@pytest.fixture
def agentspace_emulator_config() -> Any:
    """The emulator's configuration (a TOML path, a mapping, or None for the defaults)."""
    return None


@pytest.fixture
def agentspace_user(request: pytest.FixtureRequest) -> str:
    """A new end user for each test: ``<test name>-<random>@example.com``."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40] or "test"
    return f"{name}-{secrets.token_hex(4)}@example.com"


@pytest.fixture
def agentspace_emulator(
    tmp_path: Path, agentspace_emulator_config: Any
) -> Iterator[Emulator | RunningEmulator]:
    """The emulator of the emulator variables, else one started on a fresh data directory."""
    running = _running_emulator()
    if running is not None:
        yield running
        return
    try:
        from agentspace_grpc.emulator import Emulator
    except ImportError as exc:  # pragma: no cover - depends on the user's environment
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(
            "the agentspace_emulator fixture needs the emulator extra: pip install "
            f"'agentspace-grpc[emulator]' ({missing})",
            pytrace=False,
        )
    data_dir = tmp_path / "agentspace-emulator"
    with Emulator(data_dir=data_dir, config=agentspace_emulator_config) as emu:
        yield emu


if _HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def agentspace_client(
        agentspace_emulator: Emulator | RunningEmulator, agentspace_user: str
    ) -> AsyncIterator[Any]:
        """A ``DataConnectorClient`` for ``agentspace_user``, open for the test."""
        credentials = agentspace_emulator.user_credentials(agentspace_user)
        async with agentspace_emulator.client(credentials=credentials) as made:
            yield made

else:  # pragma: no cover - depends on the user's environment

    @pytest.fixture
    def agentspace_client() -> Any:
        """Unavailable without pytest-asyncio."""
        pytest.fail(
            "the agentspace_client fixture needs pytest-asyncio (pip install pytest-asyncio)"
        )
