"""Per-call observability: OpenTelemetry spans and metrics, and one DEBUG log record per call.

OpenTelemetry is optional (the ``otel`` extra); without it only the log record exists. A
public call that passed its argument checks gets a CLIENT span ``<service>/<Method>`` and,
for each request sent, a child ``<service>/<Method> attempt`` span saying what the failure
policy did next (``agentspace.action``), so retries, fallback and credential refreshes show.
The attempt's context goes out in the request's headers (the global propagator's
``traceparent``). A call that joined another's single-flight call sends nothing itself: its
span links to the span of the call that did, whose attempts are children of that call's span.

Only method names, wires, counts and status code names are recorded: never a header, a
token, a request or an error's message.

With no provider argument nothing is created until a global provider is set, and the check
is two module-attribute reads per call (the API's getters also read the environment, which
would cost more than the rest of the check); a provider set later is used from the next call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from agentspace_grpc._errors import DataConnectorError, UsageError
from agentspace_grpc._errors import Transport as Wire
from agentspace_grpc._headers import VERSION, Headers
from agentspace_grpc._wire import Row

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.metrics import _internal as _metrics_state

    OTEL = True
except ImportError:
    OTEL = False

__all__ = ["OTEL", "Call", "Observer"]

_log = logging.getLogger("agentspace_grpc")

_SCOPE: Final = "agentspace_grpc"
# Seconds: an acquire takes milliseconds on a LAN and up to a minute with retries.
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60)
_RPC_SYSTEM: Final[dict[Wire, str]] = {"grpc": "grpc", "rest": "http"}
# If an API release drops the globals the fast check reads, every call asks the API instead.
_FAST = OTEL and hasattr(_trace, "_TRACER_PROVIDER") and hasattr(_metrics_state, "_METER_PROVIDER")


def _status(error: BaseException | None) -> tuple[str, str | None]:
    """The call's status code name, and its ``error.type`` (None when it succeeded)."""
    if error is None:
        return "OK", None
    if isinstance(error, DataConnectorError):
        return error.code.name, error.code.name
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED", "CANCELLED"
    return "UNKNOWN", type(error).__qualname__


class Observer:
    """One client's tracer and instruments, and the per-call check of whether to use them."""

    __slots__ = ("_calls", "_duration", "_explicit", "_tracer")

    _tracer: _trace.Tracer | None  # None: OpenTelemetry is not installed
    _calls: _metrics.Counter
    _duration: _metrics.Histogram

    def __init__(self, tracer_provider: object, meter_provider: object) -> None:
        self._explicit = tracer_provider is not None or meter_provider is not None
        if not OTEL:
            if self._explicit:
                raise UsageError(
                    "tracer_provider and meter_provider need OpenTelemetry: "
                    "pip install 'agentspace-grpc[otel]'"
                )
            self._tracer = None
            return
        if tracer_provider is not None and not isinstance(tracer_provider, _trace.TracerProvider):
            raise UsageError("tracer_provider must be an OpenTelemetry TracerProvider or None")
        if meter_provider is not None and not isinstance(meter_provider, _metrics.MeterProvider):
            raise UsageError("meter_provider must be an OpenTelemetry MeterProvider or None")
        # The global getters hand out proxies that follow a provider set later.
        tracers = tracer_provider or _trace.get_tracer_provider()
        meters = meter_provider or _metrics.get_meter_provider()
        self._tracer = tracers.get_tracer(_SCOPE, VERSION)
        meter = meters.get_meter(_SCOPE, VERSION)
        self._calls = meter.create_counter(
            "agentspace.client.calls", unit="{call}", description="Calls, by method and outcome"
        )
        self._duration = meter.create_histogram(
            "agentspace.client.duration",
            unit="s",
            description="Duration of calls, retries included",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )

    def start(self, row: Row) -> Call | None:
        """The record of a call that starts now, or None when nothing would use it."""
        traced = self._tracer is not None and (
            self._explicit
            or not _FAST
            or _trace._TRACER_PROVIDER is not None
            or _metrics_state._METER_PROVIDER is not None
        )
        debug = _log.isEnabledFor(logging.DEBUG)
        if traced or debug:
            return Call(self if traced else None, row, debug)
        return None


class Call:
    """One public call being observed: its span, the attempts it sent and the wire last used."""

    __slots__ = ("_debug", "_observer", "_row", "_started", "attempts", "span", "wire")

    def __init__(self, observer: Observer | None, row: Row, debug: bool) -> None:
        self._observer = observer
        self._row = row
        self._debug = debug
        self.attempts = 0
        self.wire: Wire | None = None
        self.span: _trace.Span | None = None
        if observer is not None and observer._tracer is not None:
            self.span = observer._tracer.start_span(
                f"{row.service}/{row.name}",
                kind=_trace.SpanKind.CLIENT,
                attributes={"rpc.service": row.service, "rpc.method": row.name},
            )
        self._started = time.perf_counter()

    def attempt(self, wire: Wire, headers: Headers) -> tuple[_trace.Span | None, Headers]:
        """A request is about to go over ``wire``: its span, and ``headers`` with its trace
        context added."""
        self.attempts += 1
        self.wire = wire
        if self.span is None or self._observer is None or self._observer._tracer is None:
            return None, headers
        span = self._observer._tracer.start_span(
            f"{self._row.service}/{self._row.name} attempt",
            context=_trace.set_span_in_context(self.span),
            attributes={
                "rpc.system": _RPC_SYSTEM[wire],
                "agentspace.transport": wire,
                "agentspace.attempt": self.attempts,
            },
        )
        carrier: dict[str, str] = {}
        _propagate.inject(carrier, context=_trace.set_span_in_context(span))
        return span, (*headers, *carrier.items())

    @staticmethod
    def attempt_ended(span: _trace.Span, error: BaseException | None, action: str | None) -> None:
        """End an attempt's span: its error and what the call did next."""
        _, error_type = _status(error)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(_trace.StatusCode.ERROR, error_type)
        if action is not None:
            span.set_attribute("agentspace.action", action)
        span.end()

    def joined(self, shared: Call | None) -> None:
        """This call waits for ``shared``'s answer (single-flight): link their spans."""
        if self.span is not None and shared is not None and shared.span is not None:
            self.span.add_link(shared.span.get_span_context(), {"agentspace.link": "single-flight"})

    def ended(
        self, error: BaseException | None, wire: Wire | None = None, *, cached: bool = False
    ) -> None:
        """The call is over: end its span, count it and log it.

        ``wire`` is the one that carried the answer when this call sent nothing itself (a
        single-flight join or a token cache hit).
        """
        duration = time.perf_counter() - self._started
        status, error_type = _status(error)
        if self.wire is not None:
            wire = self.wire
        elif isinstance(error, DataConnectorError):
            wire = error.transport
        row = self._row
        span = self.span
        if span is not None:
            found: dict[str, str | int | bool] = {"agentspace.attempts": self.attempts}
            if wire is not None:
                found["rpc.system"] = _RPC_SYSTEM[wire]
                found["agentspace.transport"] = wire
            if cached:
                found["agentspace.cache_hit"] = True
            if error_type is not None:
                found["error.type"] = error_type
                span.set_status(_trace.StatusCode.ERROR, error_type)
            span.set_attributes(found)
            span.end()
        if self._observer is not None:
            labels = {"rpc.method": row.name, "outcome": "ok" if error is None else status}
            self._observer._calls.add(1, labels)
            self._observer._duration.record(duration, labels)
        if self._debug:
            _log.debug(
                "%s over %s: %s after %d attempt(s) in %.1f ms",
                row.name,
                wire or "no wire",
                status,
                self.attempts,
                duration * 1e3,
                extra={
                    "method": row.name,
                    "transport": wire,
                    "attempt": self.attempts,
                    "status": status,
                    "duration": duration,
                },
            )
