"""Shared fixtures: servers bind port 0 on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests._servers import Servers, serve


@pytest.fixture(params=["grpc", "rest"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs over both wires."""
    return str(request.param)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    """A test service behind a gRPC front and a REST front (a module may override it)."""
    async with serve() as running:
        yield running
