"""The emulator in its own process, set up for the end-to-end runs.

``python -m agentspace_grpc.bench._emulator_proc [--users N]`` starts :class:`Emulator` on loopback
with two connectors and an authorization and prints one JSON line: ``grpc``, ``http``, ``cached`` (a
connector whose access tokens the emulator caches: the cache-hit path), ``authorization`` (an
authorization whose tokens it caches: AcquireUserAuthorization's cache-hit path), ``uncached`` (a
connector whose provider answers carry no ``expires_in``, so no access token is cached and every
acquire refreshes upstream: the refresh path), ``token`` (the bearer token of the user who
authorized ``cached`` and ``authorization``) and ``tokens`` (N users who authorized ``uncached``).
The refresh path takes many users because the emulator runs one refresh at a time per user and lets
concurrent callers of the same user share it; with a user per call in flight, every call is a real
refresh. It stops at end of stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
from collections.abc import Sequence
from typing import Any, Final

from agentspace_grpc.bench._procs import pin_from_environment
from agentspace_grpc.bench._servers import serve_commands

USER: Final = "bench-user@example.com"
CACHED: Final = "projects/bench/locations/global/collections/cached/dataConnector"
AUTHORIZATION: Final = "projects/bench/locations/global/authorizations/cached"


def config() -> dict[str, Any]:
    """Provider answers without ``expires_in``: cached only where a lifetime is assumed."""
    return {
        "provider": {"send_expires_in": False},
        "connectors": [{"name": CACHED, "default_expires_in": 3600}],
        "authorizations": [
            {"name": AUTHORIZATION, "display_name": "Cached", "default_expires_in": 3600}
        ],
    }


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _main(users: int) -> None:
    emulator_module: Any = importlib.import_module("agentspace_grpc.emulator")
    async with emulator_module.Emulator(config=config()) as emu:
        uncached = emu.connector
        async with emu.client() as client:

            async def authorize(email: str, connector: str) -> str:
                token = str(await _maybe_await(emu.user_token(email)))
                redirect = await emu.consent(email, connector=connector)
                await client.store_refresh_token(connector, redirect, credentials=token)
                # The first acquire fills the cache (for the cached connector).
                await client.acquire_access_token(connector, credentials=token)
                return token

            token = await authorize(USER, CACHED)
            redirect = await emu.consent(USER, connector=AUTHORIZATION)
            await client.store_user_authorization(AUTHORIZATION, redirect, credentials=token)
            await client.acquire_user_authorization(AUTHORIZATION, credentials=token)
            tokens: list[str] = []
            for start in range(0, users, 16):
                batch = range(start, min(users, start + 16))
                tokens += await asyncio.gather(
                    *(authorize(f"bench-user-{i}@example.com", uncached) for i in batch)
                )
        ready = {
            "grpc": emu.grpc_target,
            "http": emu.http_url,
            "cached": CACHED,
            "authorization": AUTHORIZATION,
            "uncached": uncached,
            "token": token,
            "tokens": tokens,
        }
        print(json.dumps(ready), flush=True)
        await serve_commands()


def main(argv: Sequence[str] | None = None) -> int:
    """Run until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m agentspace_grpc.bench._emulator_proc")
    parser.add_argument("--users", type=int, default=80, help="users for the refresh path")
    args = parser.parse_args(argv)
    pin_from_environment()
    asyncio.run(_main(max(1, args.users)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
