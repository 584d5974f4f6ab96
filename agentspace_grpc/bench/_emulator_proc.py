"""The emulator in its own process, set up for the end-to-end runs.

``python -m agentspace_grpc.bench._emulator_proc`` starts :class:`Emulator` on loopback with
two connectors, has one end user authorize both, and prints one JSON line: ``grpc``, ``http``,
``token`` (that user's bearer token for the emulator), ``cached`` (a connector whose access
tokens the emulator caches: the cache-hit path) and ``uncached`` (a connector whose provider
answers carry no ``expires_in``, so no access token is cached and every acquire refreshes
upstream: the refresh path). It stops at end of stdin.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from typing import Any, Final

from agentspace_grpc.bench._servers import serve_commands

USER: Final = "bench-user@example.com"
CACHED: Final = "projects/bench/locations/global/collections/cached/dataConnector"


def config() -> dict[str, Any]:
    """Provider answers without ``expires_in``: cached only where a lifetime is assumed."""
    return {
        "provider": {"send_expires_in": False},
        "connectors": [{"name": CACHED, "default_expires_in": 3600}],
    }


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _main() -> None:
    emulator_module: Any = importlib.import_module("agentspace_grpc.emulator")
    async with emulator_module.Emulator(config=config()) as emu:
        token = await _maybe_await(emu.user_token(USER))
        uncached = emu.connector
        async with emu.client(credentials=token) as client:
            for connector in (CACHED, uncached):
                redirect = await emu.consent(USER, connector=connector)
                await client.store_refresh_token(connector, redirect)
                # The first acquire fills the cache (for the cached connector).
                await client.acquire_access_token(connector)
        ready = {
            "grpc": emu.grpc_target,
            "http": emu.http_url,
            "token": token,
            "cached": CACHED,
            "uncached": uncached,
        }
        print(json.dumps(ready), flush=True)
        await serve_commands()


def main() -> int:
    """Run until stdin closes."""
    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
