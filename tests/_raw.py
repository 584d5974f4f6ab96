"""Raw servers, for the tests that break the wire itself: no DataConnectorService behind them.

- :func:`closed_port`: a port nothing listens on.
- :func:`tcp_server`: answers each connection with a coroutine of the test's (bad status lines,
  echoes, cut headers).
- :func:`grpc_bytes_server`: a gRPC method answering whatever bytes the test gives.
- :func:`reset_connection`: from an aiohttp handler (a ``rest_hook`` of the scripted servers),
  reset the client's connection.
- :class:`TcpProxy`: a TCP proxy that forwards, refuses, resets (on accept or on demand),
  stalls, or drops idle connections.
- :class:`ConnectProxy`: an HTTP CONNECT proxy (what HTTPS_PROXY points at), mapping any
  requested host to a local port and recording the targets asked for.

The servers that answer like the service are in :mod:`tests._servers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import grpc
import grpc.aio
from aiohttp import web

from agentspace_grpc._wire import ROWS

__all__ = [
    "ConnectProxy",
    "TcpProxy",
    "closed_port",
    "grpc_bytes_server",
    "reset_connection",
    "tcp_server",
]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(reply: Reply) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 running ``reply`` for each connection; yields its port."""
    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def grpc_bytes_server(method: str, reply: Callable[[bytes], bytes]) -> AsyncIterator[str]:
    """A gRPC server whose ``method`` (a row name) answers ``reply(request bytes)`` as is, with
    no (de)serializer; yields its ``127.0.0.1:PORT``."""
    row = ROWS[method]

    async def answer(request: bytes, context: Any) -> bytes:
        return reply(request)

    handlers: dict[str, Any] = {method: grpc.unary_unary_rpc_method_handler(answer)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(row.service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


def reset_connection(request: web.Request) -> None:
    """From an aiohttp handler: reset the client's connection (RST) without answering."""
    _reset(request.transport)


ProxyMode = Literal["forward", "reset", "stall"]


class TcpProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 in front of ``127.0.0.1:target_port``.

    ``mode`` applies to new connections: "forward" (default), "reset" (RST right after
    accept) or "stall" (accept, read and never answer). :meth:`reset_all` resets every open
    connection now (a reset mid-call); :meth:`refuse` stops listening (connection refused)
    and :meth:`listen` resumes on the same port; ``idle_timeout`` resets connections that
    carried no byte for that many seconds (a NAT or proxy idle drop); :meth:`pause` holds
    every byte of the open connections (a partition that keeps the TCP connections up) until
    :meth:`resume`.

    Use as ``async with TcpProxy(port) as proxy:``; ``proxy.address`` is ``127.0.0.1:PORT``.
    ``accepted`` and ``dropped`` (idle drops) count connections; :meth:`wait_for` waits for
    them.
    """

    def __init__(self, target_port: int, *, idle_timeout: float | None = None) -> None:
        self.target_port = target_port
        self.idle_timeout = idle_timeout
        self.mode: ProxyMode = "forward"
        self.port = 0
        self.accepted = 0
        self.dropped = 0
        self._change = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._closed_servers: list[asyncio.Server] = []  # refused, awaited in aclose()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    async def __aenter__(self) -> TcpProxy:
        await self.listen()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def listen(self) -> None:
        """Listen (again) on ``self.port`` (0 the first time)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones stay.

        ``close()`` closes the listening socket at once. Not ``wait_closed()``: since Python
        3.12 it also waits for the open connections, which are meant to stay.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self._closed_servers.append(server)

    def pause(self) -> None:
        """Hold the bytes of every forwarded connection (they stay open) until :meth:`resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again what :meth:`pause` held, in order."""
        self._flowing.set()

    def reset_all(self) -> int:
        """Reset every open connection (both sides) now; returns how many."""
        writers = list(self._writers)
        for writer in writers:
            _reset(writer.transport)
        self._writers.clear()
        return len(writers)

    async def aclose(self) -> None:
        """Stop listening, reset every connection and stop the pumps."""
        await self.refuse()
        self.reset_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        servers, self._closed_servers = self._closed_servers, []
        for server in servers:
            await server.wait_closed()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Until ``condition()`` holds; checked whenever a connection is accepted or dropped."""
        while not condition():
            await self._change.wait()

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._changed()
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, self.mode))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: ProxyMode
    ) -> None:
        if mode == "reset":
            _reset(writer.transport)
            return
        self._writers.add(writer)
        if mode == "stall":
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            finally:
                self._writers.discard(writer)
                writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._writers.discard(writer)
            _reset(writer.transport)
            return
        self._writers.add(up_writer)
        loop = asyncio.get_running_loop()
        activity = [loop.time()]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self._flowing.wait()
                    activity[0] = loop.time()
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                # One side ended: end both, abruptly (the peer sees a reset or EOF).
                for end in (writer, up_writer):
                    self._writers.discard(end)
                    end.transport.abort()

        pumps = [
            loop.create_task(pump(reader, up_writer)),
            loop.create_task(pump(up_reader, writer)),
        ]
        try:
            while not all(p.done() for p in pumps):
                if self.idle_timeout is None:
                    await asyncio.wait(pumps)
                    break
                await asyncio.wait(pumps, timeout=self.idle_timeout / 4)
                if loop.time() - activity[0] > self.idle_timeout:
                    for end in (writer, up_writer):
                        self._writers.discard(end)
                        _reset(end.transport)
                    self.dropped += 1
                    self._changed()
                    break
        finally:
            for pump_task in pumps:
                pump_task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1: every tunnel goes to ``127.0.0.1:target_port``.

    ``targets`` records the ``host:port`` each CONNECT asked for, so a test can tell which
    connections went through the proxy.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.targets: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for HTTPS_PROXY."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            # Since Python 3.12 this waits for the connections too: the tunnels end first.
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.transport.abort()
            return
        verb, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if verb != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.targets.append(target)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        writer.transport.abort()
