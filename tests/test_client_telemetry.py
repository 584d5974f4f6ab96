"""OpenTelemetry spans and metrics, and the per-call DEBUG record, of calls to real servers.

Spans and metrics go to the SDK's in-memory exporter and reader through providers passed to
the client (the process's global providers are shared with other tests); what depends on the
global providers, or on OpenTelemetry being absent, runs in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core.client_options import ClientOptions
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentspace_grpc import (
    DataConnectorClient,
    PermissionDenied,
    RetryPolicy,
    TokenCache,
    UsageError,
)
from agentspace_grpc import _proto as p
from tests._raw import closed_port
from tests._reliability import LogCapture, find_secrets
from tests._servers import CONNECTOR, RpcFault, Seen, Servers

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "google.cloud.discoveryengine.v1alpha.DataConnectorService"
ACQUIRE = f"{SERVICE}/AcquireAccessToken"
QUICK = RetryPolicy(initial_backoff=0.001, max_backoff=0.001)


@dataclass
class Telemetry:
    """SDK providers whose spans and metrics stay in memory."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def calls(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is trace.SpanKind.CLIENT]

    def attempts(self, call: ReadableSpan) -> list[ReadableSpan]:
        """The attempt spans under ``call``, in the order they started."""
        children = [
            s
            for s in self.spans()
            if s.parent is not None and s.parent.span_id == call.context.span_id
        ]
        return sorted(children, key=lambda s: s.start_time or 0)

    def points(self, metric: str) -> list[tuple[dict[str, Any], float]]:
        """``(attributes, value)`` of each data point (a histogram's value is its count)."""
        data = self.reader.get_metrics_data()
        out = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for found in scope.metrics:
                    if found.name == metric:
                        for point in found.data.data_points:
                            value = getattr(point, "value", None)
                            out.append((dict(point.attributes), getattr(point, "count", value)))
        return out

    def dump(self) -> list[str]:
        """Every exported span and metric, as an exporter would serialize them."""
        texts = [span.to_json() for span in self.spans()]
        data = self.reader.get_metrics_data()
        if data is not None:
            texts.append(data.to_json())
        return texts


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# ---- spans -------------------------------------------------------------------------------------


async def test_a_call_is_a_client_span_with_an_attempt_child(
    servers: Servers, transport: str, otel: Telemetry
) -> None:
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs(transport), **otel.kwargs()
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    (call,) = otel.calls()
    assert call.name == ACQUIRE
    system = "grpc" if transport == "grpc" else "http"
    assert attributes(call) == {
        "rpc.system": system,
        "rpc.service": SERVICE,
        "rpc.method": "AcquireAccessToken",
        "agentspace.transport": transport,
        "agentspace.attempts": 1,
    }
    assert call.status.is_ok
    (attempt,) = otel.attempts(call)
    assert attempt.context.trace_id == call.context.trace_id
    assert attributes(attempt) == {
        "rpc.system": system,
        "agentspace.transport": transport,
        "agentspace.attempt": 1,
    }
    # The attempt's context went out with the request (W3C traceparent).
    traceparent = servers.service.seen[0].headers["traceparent"]
    assert traceparent.split("-")[1:3] == [
        f"{attempt.context.trace_id:032x}",
        f"{attempt.context.span_id:016x}",
    ]
    assert otel.points("agentspace.client.calls") == [
        ({"rpc.method": "AcquireAccessToken", "outcome": "ok"}, 1)
    ]
    assert otel.points("agentspace.client.duration") == [
        ({"rpc.method": "AcquireAccessToken", "outcome": "ok"}, 1)
    ]


async def test_the_call_span_is_a_child_of_the_callers_span(
    servers: Servers, otel: Telemetry
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs("grpc"), **otel.kwargs()
    ) as client:
        with tracer.start_as_current_span("tool") as outer:
            await client.acquire_access_token(CONNECTOR)
    (call,) = otel.calls()
    assert call.parent is not None
    assert call.parent.span_id == outer.get_span_context().span_id


async def test_retries_are_attempt_spans_and_a_failure_sets_error_status(
    servers: Servers, transport: str, otel: Telemetry
) -> None:
    servers.service.fail_next(RpcFault(grpc.StatusCode.UNAVAILABLE, "busy"))
    async with DataConnectorClient(
        credentials="alice", retry=QUICK, **servers.client_kwargs(transport), **otel.kwargs()
    ) as client:
        await client.acquire_access_token(CONNECTOR)
        servers.service.fail_next(RpcFault(grpc.StatusCode.PERMISSION_DENIED, "no"))
        with pytest.raises(PermissionDenied):
            await client.acquire_access_token(CONNECTOR)
    retried, failed = otel.calls()
    assert attributes(retried)["agentspace.attempts"] == 2
    assert retried.status.is_ok
    first, second = otel.attempts(retried)
    assert attributes(first)["error.type"] == "UNAVAILABLE"
    assert attributes(first)["agentspace.action"] == "retry"
    assert not first.status.is_ok
    assert "error.type" not in attributes(second)
    assert attributes(second)["agentspace.attempt"] == 2

    assert attributes(failed)["error.type"] == "PERMISSION_DENIED"
    assert attributes(failed)["agentspace.transport"] == transport
    assert failed.status.status_code is trace.StatusCode.ERROR
    (attempt,) = otel.attempts(failed)
    assert attributes(attempt)["agentspace.action"] == "raise"
    assert sorted(otel.points("agentspace.client.calls"), key=str) == sorted(
        [
            ({"rpc.method": "AcquireAccessToken", "outcome": "ok"}, 1),
            ({"rpc.method": "AcquireAccessToken", "outcome": "PERMISSION_DENIED"}, 1),
        ],
        key=str,
    )


async def test_a_fallback_shows_as_a_grpc_attempt_then_a_rest_one(
    servers: Servers, otel: Telemetry
) -> None:
    async with DataConnectorClient(
        transport="auto",
        endpoint=f"127.0.0.1:{closed_port()}",
        rest_endpoint=servers.rest_url,
        credentials="alice",
        **otel.kwargs(),
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    (call,) = otel.calls()
    assert attributes(call)["rpc.system"] == "http"
    assert attributes(call)["agentspace.attempts"] == 2
    grpc_attempt, rest_attempt = otel.attempts(call)
    assert attributes(grpc_attempt)["rpc.system"] == "grpc"
    assert attributes(grpc_attempt)["error.type"] == "UNAVAILABLE"
    assert attributes(grpc_attempt)["agentspace.action"] == "fall back"
    assert attributes(rest_attempt)["rpc.system"] == "http"


async def test_a_single_flight_joiner_links_to_the_call_that_sent(
    servers: Servers, otel: Telemetry
) -> None:
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs("grpc"), **otel.kwargs()
    ) as client:
        # Started together: the first call's flight exists before the second one looks.
        await asyncio.gather(*(client.acquire_access_token(CONNECTOR) for _ in range(2)))
    assert len(servers.service.seen) == 1
    calls = otel.calls()
    sender = next(s for s in calls if attributes(s)["agentspace.attempts"] == 1)
    (joiner,) = [s for s in calls if s is not sender]
    assert attributes(joiner)["agentspace.attempts"] == 0
    assert attributes(joiner)["rpc.system"] == "grpc"
    assert otel.attempts(joiner) == []
    (link,) = joiner.links
    assert link.context.span_id == sender.context.span_id
    assert dict(link.attributes or {}) == {"agentspace.link": "single-flight"}
    assert len(otel.attempts(sender)) == 1


async def test_a_call_shared_again_after_its_starter_left_records_nothing_on_the_starter(
    servers: Servers, otel: Telemetry
) -> None:
    """When the caller that started a shared call is cancelled, the waiters share a new call;
    its attempts are not the starter's (whose span has ended)."""
    from tests.test_client_single_flight import Gate

    gate = Gate(servers)
    async with DataConnectorClient(
        credentials="alice", **servers.client_kwargs("grpc"), **otel.kwargs()
    ) as client:
        first = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await gate.arrivals.get()
        second = asyncio.ensure_future(client.acquire_access_token(CONNECTOR))
        await asyncio.sleep(0)  # the second caller joins the flight
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(gate.arrivals.get(), 10)  # the new call
        gate.open.set()
        await second
    assert len(servers.service.seen) == 2
    calls = {s.context.span_id: s for s in otel.calls()}
    starter = next(s for s in calls.values() if s.status.status_code is trace.StatusCode.ERROR)
    assert attributes(starter)["agentspace.attempts"] == 1
    assert len(otel.attempts(starter)) == 1
    for span in otel.spans():  # no attempt outlives the call it belongs to
        parent = calls.get(span.parent.span_id) if span.parent is not None else None
        if parent is not None:
            assert (span.end_time or 0) <= (parent.end_time or 0), span.name


async def test_a_token_cache_hit_is_a_call_without_attempts(
    servers: Servers, otel: Telemetry
) -> None:
    async with DataConnectorClient(
        credentials="alice",
        token_cache=TokenCache(),
        **servers.client_kwargs("rest"),
        **otel.kwargs(),
    ) as client:
        await client.acquire_access_token(CONNECTOR)
        await client.acquire_access_token(CONNECTOR)
    _, hit = otel.calls()
    assert attributes(hit)["agentspace.attempts"] == 0
    assert attributes(hit)["agentspace.cache_hit"] is True
    assert attributes(hit)["rpc.system"] == "http"  # the wire that answered the cached call
    assert otel.points("agentspace.client.calls") == [
        ({"rpc.method": "AcquireAccessToken", "outcome": "ok"}, 2)
    ]


async def test_no_span_metric_or_log_record_holds_a_secret(
    servers: Servers, transport: str, otel: Telemetry
) -> None:
    caller = "canary-caller-token-7c1e"  # the end user's bearer token
    answer = "canary-access-token-0b9d"  # the third party's token
    code = "canary-authorization-code-55aa"
    echoed = "canary-echoed-in-an-error-3f70"

    async def acquire(seen: Seen) -> p.AcquireAccessTokenResponse:
        if seen.request.scope == "fail":
            raise RpcFault(grpc.StatusCode.PERMISSION_DENIED, f"{echoed} {caller}")
        return p.AcquireAccessTokenResponse(access_token=answer)

    servers.service.on("AcquireAccessToken", acquire)
    logs = LogCapture()
    logger = logging.getLogger("agentspace_grpc")
    logger.addHandler(logs)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with DataConnectorClient(
            credentials=caller,
            token_cache=TokenCache(),
            retry=QUICK,
            **servers.client_kwargs(transport),
            **otel.kwargs(),
        ) as client:
            servers.service.fail_next(RpcFault(grpc.StatusCode.UNAVAILABLE, echoed))
            assert (await client.acquire_access_token(CONNECTOR)).access_token == answer
            await client.acquire_access_token(CONNECTOR)  # from the cache
            with pytest.raises(PermissionDenied):
                await client.acquire_access_token(CONNECTOR, scope="fail")
            await client.store_refresh_token(CONNECTOR, f"https://app.test/cb?code={code}")
            await client.store_user_authorization(
                "projects/demo/locations/global/authorizations/a", f"https://r.test/?code={code}"
            )
    finally:
        logger.removeHandler(logs)
        logger.setLevel(level)
    assert {s.name for s in otel.calls()} == {
        ACQUIRE,
        f"{SERVICE}/AcquireAndStoreRefreshToken",
        "google.cloud.discoveryengine.v1alpha.AuthorizationService/StoreUserAuthorization",
    }
    assert len(logs.texts) >= 10  # five calls, each a formatted record and its attributes
    texts = [*otel.dump(), *logs.texts]
    assert find_secrets(texts, [caller, answer, code, echoed]) == []


# ---- providers -----------------------------------------------------------------------------


async def test_client_options_tracer_provider_is_used(servers: Servers, otel: Telemetry) -> None:
    async with DataConnectorClient(
        credentials="alice",
        client_options=ClientOptions(tracer_provider=otel.tracer_provider),
        **servers.client_kwargs("grpc"),
    ) as client:
        await client.acquire_access_token(CONNECTOR)
    assert [s.name for s in otel.calls()] == [ACQUIRE]


def test_providers_are_checked(otel: Telemetry) -> None:
    with pytest.raises(UsageError, match="client_options tracer_provider conflicts with"):
        DataConnectorClient(
            credentials="alice",
            tracer_provider=TracerProvider(),
            client_options={"tracer_provider": otel.tracer_provider},
        )
    with pytest.raises(UsageError, match="tracer_provider must be an OpenTelemetry"):
        DataConnectorClient(credentials="alice", tracer_provider="console")
    with pytest.raises(UsageError, match="meter_provider must be an OpenTelemetry"):
        DataConnectorClient(credentials="alice", meter_provider=otel.reader)


def run_python(script: str) -> Any:
    """Run ``script`` in a fresh interpreter at the repository root; its last stdout line is
    JSON."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_global_provider_set_after_the_client_is_made_is_used_from_the_next_call() -> None:
    found = run_python(
        """
        import asyncio, json
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from agentspace_grpc import DataConnectorClient
        from tests._servers import CONNECTOR, serve

        started = []  # spans started through the global proxy while nothing is configured
        proxy_start = trace.ProxyTracer.start_span
        def counting(self, *args, **kwargs):
            started.append(args[0] if args else kwargs.get("name"))
            return proxy_start(self, *args, **kwargs)
        trace.ProxyTracer.start_span = counting

        async def main():
            async with serve() as servers:
                async with DataConnectorClient(
                    credentials="alice", **servers.client_kwargs("grpc")
                ) as client:
                    await client.acquire_access_token(CONNECTOR)
                    before = list(started)
                    exporter = InMemorySpanExporter()
                    provider = TracerProvider()
                    provider.add_span_processor(SimpleSpanProcessor(exporter))
                    trace.set_tracer_provider(provider)
                    reader = InMemoryMetricReader()
                    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
                    await client.acquire_access_token(CONNECTOR)
            names = [s.name for s in exporter.get_finished_spans()]
            data = json.loads(reader.get_metrics_data().to_json())
            metric_names = [
                m["name"] for r in data["resource_metrics"] for s in r["scope_metrics"]
                for m in s["metrics"]
            ]
            print(json.dumps({"before": before, "spans": names, "metrics": metric_names}))

        asyncio.run(main())
        """
    )
    assert found["before"] == []
    assert sorted(found["spans"]) == [ACQUIRE, f"{ACQUIRE} attempt"]
    assert sorted(found["metrics"]) == ["agentspace.client.calls", "agentspace.client.duration"]


def test_without_opentelemetry_calls_work_and_providers_are_refused() -> None:
    found = run_python(
        """
        import asyncio, json, logging, sys

        class NoOpenTelemetry:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError(f"{name} is blocked")
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        from agentspace_grpc import DataConnectorClient, UsageError
        from tests._servers import CONNECTOR, serve

        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append({k: getattr(record, k, None) for k in ("method", "status")})
        logger = logging.getLogger("agentspace_grpc")
        logger.addHandler(Keep())
        logger.setLevel(logging.DEBUG)

        async def main():
            async with serve() as servers:
                async with DataConnectorClient(
                    credentials="alice", **servers.client_kwargs("rest")
                ) as client:
                    token = await client.acquire_access_token(CONNECTOR)
            try:
                DataConnectorClient(credentials="alice", tracer_provider=object())
                refused = None
            except UsageError as exc:
                refused = str(exc)
            loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
            print(json.dumps({"token": token.access_token, "refused": refused,
                              "loaded": loaded, "records": records}))

        asyncio.run(main())
        """
    )
    assert found["token"] == "tp:alice:1"
    assert found["loaded"] == []
    assert "pip install 'agentspace-grpc[otel]'" in found["refused"]
    assert {"method": "AcquireAccessToken", "status": "OK"} in found["records"]


# ---- the DEBUG record ----------------------------------------------------------------------


async def test_each_call_logs_one_debug_record_with_structured_fields(
    servers: Servers, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with DataConnectorClient(
        credentials="alice", retry=QUICK, **servers.client_kwargs(transport)
    ) as client:
        caplog.set_level(logging.INFO, logger="agentspace_grpc")
        await client.acquire_access_token(CONNECTOR)
        assert [r for r in caplog.records if hasattr(r, "method")] == []  # DEBUG is off
        caplog.set_level(logging.DEBUG, logger="agentspace_grpc")
        servers.service.fail_next(RpcFault(grpc.StatusCode.UNAVAILABLE, "busy"))
        await client.acquire_access_token(CONNECTOR)
        servers.service.fail_next(RpcFault(grpc.StatusCode.PERMISSION_DENIED, "no"))
        with pytest.raises(PermissionDenied):
            await client.acquire_access_token(CONNECTOR)
    records = [r for r in caplog.records if hasattr(r, "method")]
    fields = [
        {k: getattr(r, k) for k in ("method", "transport", "attempt", "status")} for r in records
    ]
    assert fields == [
        {"method": "AcquireAccessToken", "transport": transport, "attempt": 2, "status": "OK"},
        {
            "method": "AcquireAccessToken",
            "transport": transport,
            "attempt": 1,
            "status": "PERMISSION_DENIED",
        },
    ]
    assert all(r.levelno == logging.DEBUG and r.name == "agentspace_grpc" for r in records)
    assert all(isinstance(r.duration, float) and r.duration > 0 for r in records)
    assert records[0].getMessage().startswith(f"AcquireAccessToken over {transport}: OK after 2")
