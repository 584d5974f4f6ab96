"""What a client keeps per event loop: both transports and the single-flight table.

A channel or session belongs to the loop that made it, so a client used from several loops (or
threads) has one :class:`LoopState` per loop. Each is closed by ``aclose()``, or, for a client
left open, when ``asyncio.run`` shuts its loop down (no unclosed session or channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncGenerator

from agentspace_grpc._errors import CLOSED_MID_CALL
from agentspace_grpc._flights import Flights
from agentspace_grpc._policy import Fallback
from agentspace_grpc._transports import GrpcTransport, RestTransport, Transport

__all__ = ["LoopState", "Loops"]


class LoopState:
    """One loop's transports and flights."""

    __slots__ = ("closed", "fixed", "flights", "grpc", "keeper", "probed", "rest")

    def __init__(self, fallback: Fallback, ssl_context: ssl.SSLContext | None) -> None:
        self.grpc = GrpcTransport()
        self.rest = RestTransport(ssl_context=ssl_context)
        # The one transport of a client that is not in auto mode (None in auto mode).
        self.fixed: Transport | None = {"grpc": self.grpc, "rest": self.rest}.get(fallback.mode)
        self.flights = Flights(fallback.wire)
        self.closed = False
        self.probed = 0  # the fallback count when gRPC was last probed on this loop
        self.keeper: AsyncGenerator[None, None] | None = None

    async def close(self) -> None:
        """Close both transports; calls in flight end with Cancelled."""
        if self.closed:
            return
        self.closed = True
        tasks = self.flights.cancel_all(CLOSED_MID_CALL)
        await asyncio.gather(self.grpc.aclose(), self.rest.aclose())
        if tasks:
            await asyncio.wait(tasks)


class Loops:
    """A client's loop states (made with its wire choice and TLS trust); the last one used is
    at hand without a lookup."""

    __slots__ = ("_fallback", "_ssl_context", "_states", "closed", "last_loop", "last_state")

    def __init__(self, fallback: Fallback, ssl_context: ssl.SSLContext | None) -> None:
        self._fallback = fallback
        self._ssl_context = ssl_context
        self._states: dict[asyncio.AbstractEventLoop, LoopState] = {}
        self.last_loop: asyncio.AbstractEventLoop | None = None
        self.last_state: LoopState | None = None
        self.closed = False

    def get(self, loop: asyncio.AbstractEventLoop) -> LoopState:
        """The state of ``loop``, made on first use (RuntimeError once closed)."""
        if loop is self.last_loop and self.last_state is not None:
            return self.last_state
        if self.closed:
            raise RuntimeError("this DataConnectorClient is closed")
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = LoopState(self._fallback, self._ssl_context)
            keeper = self._close_at_shutdown(loop, state)
            # Start the generator so the loop's asyncgen hooks register it (it does not
            # await before its yield, so one synchronous step does it).
            step = keeper.__anext__()
            with contextlib.suppress(StopIteration):
                step.send(None)
            state.keeper = keeper
        self.last_loop, self.last_state = loop, state
        return state

    async def aclose(self) -> None:
        """Close every loop's state: this loop's now, another running loop's there."""
        self.closed = True
        self.last_loop = self.last_state = None
        loop = asyncio.get_running_loop()
        for state_loop, state in list(self._states.items()):
            if state_loop is loop and state.keeper is not None:
                await state.keeper.aclose()
                continue
            self._forget(state_loop, state)
            if state_loop is loop:
                await state.close()
            elif not state_loop.is_closed():
                # A loop in another thread: close there (fire and forget).
                asyncio.run_coroutine_threadsafe(state.close(), state_loop)

    def _forget(self, loop: asyncio.AbstractEventLoop, state: LoopState) -> None:
        if self._states.get(loop) is state:
            del self._states[loop]
        if self.last_loop is loop:
            self.last_loop = self.last_state = None

    async def _close_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, state: LoopState
    ) -> AsyncGenerator[None, None]:
        """An async generator whose ``finally`` runs when ``asyncio.run`` shuts the loop down.

        ``shutdown_asyncgens()`` finalizes every started async generator while the loop still
        runs, so a client left open is closed on its loop.
        """
        try:
            yield
        finally:
            self._forget(loop, state)
            await state.close()
