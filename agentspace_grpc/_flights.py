"""Single-flight: identical concurrent calls on one event loop share one run of the call.

The first caller runs the call itself, in its own task (no task is created for it: a task and
its two extra event-loop turns are most of what single-flight would cost a call that nobody
joins); callers that arrive while it runs wait for its outcome. Nothing here knows the client
(the wire a waiter's own DEADLINE_EXCEEDED names comes from a callable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

from agentspace_grpc._errors import Cancelled, DeadlineExceeded, Transport
from agentspace_grpc._policy import MIN_ATTEMPT_SECONDS

__all__ = ["Flights"]

_log = logging.getLogger("agentspace_grpc")
_T = TypeVar("_T")


class _Flight:
    __slots__ = ("args", "deadline", "observer", "task", "timers", "waiters")

    def __init__(self, deadline: float, args: tuple[Any, ...], observer: object) -> None:
        self.deadline = deadline  # the one the shared call runs with
        self.args = args  # the starting waiter's
        self.observer = observer  # the starting waiter's own: a new call runs without one
        self.task: asyncio.Task[None] | None = None
        self.waiters: dict[asyncio.Future[Any], float] = {}  # waiter -> its own deadline
        # Timers set when the call ran again for later waiters (None until then).
        self.timers: list[asyncio.TimerHandle] | None = None


class Flights:
    """Concurrent identical calls on one loop share one call; each waiter keeps its deadline.

    The shared call runs in the task of the caller that started it, with that caller's
    deadline (its retries are planned against it). A waiter whose deadline is earlier stops
    waiting at its own deadline (a timer, not a wrapper). No waiter gets an outcome that only
    concerns another: when the shared call ends in DEADLINE_EXCEEDED, the waiters whose own
    deadline is later, with time left for an attempt, share a new call (in a task of its own,
    with the latest of their deadlines; a new call, not a retry), and when the caller that
    started it is cancelled, the waiters share a new call the same way. A waiter of such a new
    call that leaves never cancels it for the others; it is cancelled when no waiter is left.
    Nothing outlives the call: this is not a cache.
    """

    __slots__ = ("_flights", "_wire")

    def __init__(self, wire: Callable[[], Transport]) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self._wire = wire  # names the wire in a waiter's own DEADLINE_EXCEEDED

    async def run(
        self,
        key: Hashable,
        deadline: float,
        start: Callable[..., Coroutine[Any, Any, _T]],
        args: tuple[Any, ...],
        observer: object = None,
    ) -> _T:
        """Join the flight for ``key`` or start one running ``start(*args, observer,
        deadline)``; ``observer`` watches this caller's own call (a new call that later waiters
        share runs with None in its place, since its starter has left)."""
        flight = self._flights.get(key)
        if flight is None:
            # The first caller runs the call inline; its outcome goes to whoever joined.
            flight = self._flights[key] = _Flight(deadline, args, observer)
            try:
                result = await start(*args, observer, deadline)
            except (asyncio.CancelledError, DeadlineExceeded) as exc:
                # No outcome for the others (the caller ran out of its deadline, or was
                # cancelled): those with time left get a new call, in a task of its own.
                error = exc if isinstance(exc, DeadlineExceeded) else None
                if self._again_for_later_waiters(flight, error):
                    loop = asyncio.get_running_loop()
                    flight.task = loop.create_task(self._fly(key, flight, start, args))
                else:
                    self._settle(key, flight, None, error or Cancelled("the call was cancelled"))
                raise
            except BaseException as exc:  # handed to every waiter
                self._settle(key, flight, None, exc)
                raise
            self._settle(key, flight, result, None)
            return result
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_T] = loop.create_future()
        flight.waiters[waiter] = deadline
        timer = None
        if deadline < flight.deadline:
            timer = loop.call_at(deadline, self._expire, flight, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            flight.waiters.pop(waiter, None)
            task = flight.task
            if not flight.waiters and task is not None and not task.done():
                task.cancel()
                # Like wait_for: return once the shared call has really stopped.
                await asyncio.wait((task,))
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def observer(self, key: Hashable) -> object:
        """The observer of the caller that started the call in flight for ``key`` (None: no
        call in flight, or none given)."""
        flight = self._flights.get(key)
        return None if flight is None else flight.observer

    async def _fly(
        self,
        key: Hashable,
        flight: _Flight,
        start: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
    ) -> None:
        # The outcome goes to the waiters from here (not from a done callback), which saves
        # an event-loop turn per call.
        while True:
            try:
                result = await start(*args, None, flight.deadline)
            except asyncio.CancelledError:
                self._settle(key, flight, None, Cancelled("the call was cancelled"))
                raise
            except DeadlineExceeded as exc:
                if self._again_for_later_waiters(flight, exc):
                    continue
                self._settle(key, flight, None, exc)
            except BaseException as exc:  # handed to every waiter
                self._settle(key, flight, None, exc)
            else:
                self._settle(key, flight, result, None)
            return

    def _again_for_later_waiters(self, flight: _Flight, error: DeadlineExceeded | None) -> bool:
        """After the shared call ran out of time (``error``), or its caller was cancelled
        (None): True when waiters with time for an attempt (and, after a DEADLINE_EXCEEDED, a
        later deadline) remain; they stay, with the flight's deadline now the latest of theirs,
        and every other waiter gets ``error`` (or stops at its own deadline's timer)."""
        loop = asyncio.get_running_loop()
        cutoff = loop.time() + MIN_ATTEMPT_SECONDS
        if error is not None:
            cutoff = max(flight.deadline, cutoff)
        later = {w: d for w, d in flight.waiters.items() if d > cutoff and not w.done()}
        if not later:
            return False
        for waiter, deadline in flight.waiters.items():
            if waiter in later or waiter.done():
                continue
            if error is not None:
                waiter.set_exception(error)
            else:  # too close to its own deadline for an attempt: it ends there
                loop.call_at(deadline, self._expire, flight, waiter)
        flight.waiters = later
        flight.deadline = max(later.values())
        timers = flight.timers if flight.timers is not None else []
        for waiter, deadline in later.items():
            if deadline < flight.deadline:  # they had no timer: their deadline was later
                timers.append(loop.call_at(deadline, self._expire, flight, waiter))
        flight.timers = timers
        _log.debug(
            "a shared call ended early (its caller's deadline or cancellation); %d waiter(s) "
            "with more time share a new one",
            len(later),
        )
        return True

    def _settle(
        self, key: Hashable, flight: _Flight, result: Any, error: BaseException | None
    ) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.timers is not None:
            for timer in flight.timers:
                timer.cancel()
        for waiter in flight.waiters:
            if waiter.done():
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(result)

    def _expire(self, flight: _Flight, waiter: asyncio.Future[Any]) -> None:
        if waiter.done():
            return
        waiter.set_exception(
            DeadlineExceeded(
                "the call's deadline passed before the answer came",
                transport=self._wire(),
            )
        )
        flight.waiters.pop(waiter, None)
        if not flight.waiters and flight.task is not None:
            flight.task.cancel()

    def cancel_all(self, reason: str) -> list[asyncio.Task[None]]:
        """Fail every waiter with Cancelled and cancel the tasks (the client is closing)."""
        tasks = []
        for key, flight in list(self._flights.items()):
            self._settle(key, flight, None, Cancelled(reason))
            flight.waiters.clear()
            if flight.task is not None:
                flight.task.cancel()
                tasks.append(flight.task)
        return tasks
