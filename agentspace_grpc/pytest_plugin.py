"""pytest fixtures for testing code against the local emulator (registered as ``pytest11``).

Fixtures:

- ``emulator``: a running :class:`agentspace_grpc.emulator.Emulator` on a fresh data
  directory under ``tmp_path``. It runs on its own thread and event loop, so it serves sync
  tests, pytest-asyncio tests and subprocesses alike; its addresses are plain strings.
- ``emulator_config``: the configuration the ``emulator`` fixture uses (None: defaults);
  override it in a ``conftest.py`` or a test module to configure connectors or the provider.
- ``emulator_user``: the end user's email that ``client`` acts for
  (``"test-user@example.com"``); override to change it.
- ``client``: an open ``DataConnectorClient`` pointed at the emulator with ``emulator_user``'s
  credentials (needs pytest-asyncio).

Importing this module imports nothing beyond pytest: the emulator and the client are loaded
when a fixture is first used, and a missing ``agentspace-grpc[emulator]`` extra fails only
the tests that ask for the emulator, with a message saying what to install.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from agentspace_grpc.emulator import Emulator

try:  # pytest-asyncio is optional: only the async ``client`` fixture needs it.
    import pytest_asyncio

    _HAVE_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - depends on the user's environment
    _HAVE_PYTEST_ASYNCIO = False


@pytest.fixture
def emulator_config() -> Any:
    """The emulator's configuration (a TOML path, a mapping, or None for the defaults)."""
    return None


@pytest.fixture
def emulator_user() -> str:
    """The end user that the ``client`` fixture acts for."""
    return "test-user@example.com"


@pytest.fixture
def emulator(tmp_path: Path, emulator_config: Any) -> Iterator[Emulator]:
    """A running emulator on a fresh data directory (stopped after the test)."""
    try:
        from agentspace_grpc.emulator import Emulator
    except ImportError as exc:  # pragma: no cover - depends on the user's environment
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(
            "the emulator fixture needs the emulator extra: pip install "
            f"'agentspace-grpc[emulator]' ({missing})",
            pytrace=False,
        )
    with Emulator(data_dir=tmp_path / "agentspace-emulator", config=emulator_config) as emu:
        yield emu


if _HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def client(emulator: Emulator, emulator_user: str) -> AsyncIterator[Any]:
        """A ``DataConnectorClient`` for ``emulator_user``, open for the test."""
        made = emulator.client(credentials=emulator.user_credentials(emulator_user))
        async with made:
            yield made

else:  # pragma: no cover - depends on the user's environment

    @pytest.fixture
    def client() -> Any:
        """Unavailable without pytest-asyncio."""
        pytest.fail("the client fixture needs pytest-asyncio (pip install pytest-asyncio)")
