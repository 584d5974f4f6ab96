"""Constant-answer servers for the transport-cost runs, each in its own process.

``python -m agentspace_grpc.bench._servers grpc|http`` binds 127.0.0.1 on port 0, prints one
JSON line ``{"port": N}`` on stdout when it is ready, then reads commands from stdin: ``count``
prints ``{"calls": N}`` (the AcquireAccessToken calls answered so far, which is how the harness
counts the RPCs that reached the server); end of input stops the server, exit status 0.

Both servers answer AcquireAccessToken with the same fixed response, after checking that the
request is well formed and carries the headers every stack must send (authorization, routing
header, api-client header), so a stack that skipped one fails instead of looking cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from aiohttp import web

from agentspace_grpc import _proto
from agentspace_grpc._wire import ROWS, TranscodingError, match, message_to_json
from agentspace_grpc.bench._common import (
    ANSWER_SCOPES,
    ANSWER_TOKEN,
    CONNECTOR,
    REQUIRED_HEADERS,
)
from agentspace_grpc.bench._procs import pin_from_environment

_ANSWER = _proto.AcquireAccessTokenResponse(
    access_token=ANSWER_TOKEN,
    refresh_token_info=_proto.RefreshTokenInfo(name=CONNECTOR, scopes=ANSWER_SCOPES),
)
_ROW = ROWS["AcquireAccessToken"]


def _missing(keys: Sequence[str]) -> list[str]:
    return [h for h in REQUIRED_HEADERS if h not in keys]


class _Counter:
    """AcquireAccessToken calls answered."""

    def __init__(self) -> None:
        self.calls = 0


_Context = grpc.aio.ServicerContext[Any, Any]


async def _serve_grpc(counter: _Counter) -> tuple[int, grpc.aio.Server]:
    async def acquire(
        request: _proto.AcquireAccessTokenRequest, context: _Context
    ) -> _proto.AcquireAccessTokenResponse:
        counter.calls += 1
        keys = [key for key, _ in context.invocation_metadata() or ()]
        missing = _missing(keys)
        if missing or not request.name:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bench server: missing {', '.join(missing) or 'name'}",
            )
        return _ANSWER

    # Only AcquireAccessToken is served: grpc answers UNIMPLEMENTED for the others.
    handlers = {
        _ROW.name: grpc.unary_unary_rpc_method_handler(
            acquire,
            request_deserializer=_ROW.request_class.FromString,
            response_serializer=_ROW.response_class.SerializeToString,
        )
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_ROW.service, handlers),))
    server.add_registered_method_handlers(_ROW.service, handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return port, server


def _http_app(counter: _Counter) -> web.Application:
    answer = message_to_json(_ANSWER)

    async def handle(request: web.Request) -> web.Response:
        counter.calls += 1
        try:
            row, value = match(request.method, request.raw_path.partition("?")[0])
            if row is not _ROW:
                raise web.HTTPNotFound(text=f"bench server answers only {_ROW.name}")
            _ROW.from_http(value, request.query.keys(), await request.read())
        except TranscodingError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        missing = _missing([key.lower() for key in request.headers])
        if missing:
            raise web.HTTPBadRequest(text=f"bench server: missing {', '.join(missing)}")
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _serve_http(counter: _Counter) -> tuple[int, web.AppRunner]:
    runner = web.AppRunner(_http_app(counter), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return port, runner


async def serve_commands(count: Callable[[], int] | None = None) -> None:
    """Answer ``count`` on stdin until end of input (the parent's stop signal)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"count" and count is not None:
            print(json.dumps({"calls": count()}), flush=True)


async def _main(wire: str) -> None:
    counter = _Counter()
    if wire == "grpc":
        port, server = await _serve_grpc(counter)
        print(json.dumps({"port": port}), flush=True)
        try:
            await serve_commands(lambda: counter.calls)
        finally:
            await server.stop(None)
    else:
        port, runner = await _serve_http(counter)
        print(json.dumps({"port": port}), flush=True)
        try:
            await serve_commands(lambda: counter.calls)
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one constant-answer server until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m agentspace_grpc.bench._servers")
    parser.add_argument("wire", choices=("grpc", "http"))
    args = parser.parse_args(argv)
    pin_from_environment()
    asyncio.run(_main(args.wire))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
