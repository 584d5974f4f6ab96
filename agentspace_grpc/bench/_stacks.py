"""The client stacks under measurement, each making one AcquireAccessToken call per ``call()``
(agentspace-grpc's: AcquireUserAuthorization when its name is an authorization's).

Every stack sends the same request body and the same three headers (``authorization``,
``x-goog-request-params``, ``x-goog-api-client``), so only the client differs. The peers are
the real libraries, used the way their own generated code or documentation uses them, at
their lightest: a static bearer token as a header rather than google-auth credential objects.

The floors and agentspace-grpc also take ``users`` (bearer tokens) and ``names`` (connectors)
to cycle through, one of each per call, so that a workload of many users or many connectors
makes every stack send the same distinct headers and names.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import itertools
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Literal

import aiohttp
import grpc

from agentspace_grpc import _proto
from agentspace_grpc._errors import is_authorization_name
from agentspace_grpc.bench._common import API_CLIENT, INFLIGHT, ROUTING_HEADER

Wire = Literal["grpc", "rest"]

# The keys of the two baselines: gRPC stacks are compared with the raw stub, REST stacks
# with raw aiohttp.
GRPC_FLOOR: Final = "grpc_stub"
REST_FLOOR: Final = "aiohttp_raw"


class StackUnavailable(Exception):
    """The stack cannot run here (a missing module); the text says why."""


class CallFailed(RuntimeError):
    """A call returned something other than a usable access token."""


class Stack(abc.ABC):
    """One way of calling AcquireAccessToken, set up once and called many times."""

    key: str
    title: str
    wire: Wire
    baseline: str | None

    def __init__(self, *, key: str, title: str, wire: Wire, baseline: str | None) -> None:
        self.key = key
        self.title = title
        self.wire = wire
        self.baseline = baseline

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open channels or sessions."""

    @abc.abstractmethod
    async def call(self) -> None:
        """One call as a sequential caller makes it."""

    async def call_concurrent(self) -> None:
        """One call as one of many concurrent callers makes it."""
        await self.call()

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release everything :meth:`start` opened."""


def _check(token: str) -> None:
    if not token:
        raise CallFailed("the answer carried no access token")


def callers(
    token: str, name: str, users: Sequence[str], names: Sequence[str]
) -> list[tuple[str, str]]:
    """The ``(bearer token, connector name)`` pairs a stack cycles through, one per call.

    ``users`` and ``names`` in turn; an empty sequence stands for the one ``token`` or ``name``.
    """
    tokens, connectors = list(users) or [token], list(names) or [name]
    count = max(len(tokens), len(connectors))
    return [(tokens[i % len(tokens)], connectors[i % len(connectors)]) for i in range(count)]


def _grpc_metadata(token: str, name: str) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {token}"),
        (ROUTING_HEADER, f"name={name}"),
        ("x-goog-api-client", API_CLIENT),
    )


class RawStub(Stack):
    """The generated ``grpc.aio`` stub called directly: the floor for the gRPC stacks."""

    def __init__(
        self,
        target: str,
        token: str,
        name: str,
        *,
        users: Sequence[str] = (),
        names: Sequence[str] = (),
        key: str = GRPC_FLOOR,
        title: str = "raw grpc.aio stub",
    ) -> None:
        super().__init__(key=key, title=title, wire="grpc", baseline=None)
        self._target = target
        self._callers = itertools.cycle(callers(token, name, users, names))
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self._target)
        self._stub = _proto.DataConnectorServiceStub(self._channel)

    async def call(self) -> None:
        token, name = next(self._callers)
        response = await self._stub.AcquireAccessToken(
            _proto.AcquireAccessTokenRequest(name=name), metadata=_grpc_metadata(token, name)
        )
        _check(response.access_token)

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class GapicStyle(Stack):
    """The stub wrapped as Google's generated async clients wrap it.

    ``google.api_core.gapic_v1.method_async.wrap_method`` with an ``AsyncRetry`` (the
    generated clients' usual UNAVAILABLE policy), a default timeout and client info (which
    adds ``x-goog-api-client``), and the routing header built per call with
    ``gapic_v1.routing_header``. Generated clients would also wrap the request in proto-plus
    and add a logging interceptor to the channel; neither is done here, so this stack is
    the cheapest GAPIC-style call possible.
    """

    def __init__(self, target: str, token: str, name: str) -> None:
        super().__init__(
            key="gapic", title="GAPIC-style (api-core)", wire="grpc", baseline=GRPC_FLOOR
        )
        self._target = target
        self._token = token
        self._name = name
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        from google.api_core import exceptions, retry_async
        from google.api_core.gapic_v1 import client_info, method_async

        self._channel = grpc.aio.insecure_channel(
            self._target,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        stub = _proto.DataConnectorServiceStub(self._channel)
        self._rpc = method_async.wrap_method(  # type: ignore[no-untyped-call]
            stub.AcquireAccessToken,
            default_retry=retry_async.AsyncRetry(
                initial=1.0,
                maximum=10.0,
                multiplier=1.3,
                predicate=retry_async.if_exception_type(exceptions.ServiceUnavailable),
                deadline=60.0,
            ),
            default_timeout=60.0,
            client_info=client_info.ClientInfo(  # type: ignore[no-untyped-call]
                client_library_version="0.1.0"
            ),
        )

    async def call(self) -> None:
        from google.api_core.gapic_v1 import routing_header

        # What a generated ``acquire_access_token(name=...)`` does before sending.
        request = _proto.AcquireAccessTokenRequest(name=self._name)
        metadata = (
            ("authorization", f"Bearer {self._token}"),
            routing_header.to_grpc_metadata(  # type: ignore[no-untyped-call]
                (("name", request.name),)
            ),
        )
        response = await self._rpc(request, metadata=metadata)
        _check(response.access_token)

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class RawAiohttp(Stack):
    """An aiohttp POST of the JSON body plus ``json.loads``: the floor for the REST stacks."""

    def __init__(
        self,
        base_url: str,
        token: str,
        name: str,
        *,
        users: Sequence[str] = (),
        names: Sequence[str] = (),
        key: str = REST_FLOOR,
        title: str = "raw aiohttp + json.loads",
    ) -> None:
        super().__init__(key=key, title=title, wire="rest", baseline=None)
        base = base_url.rstrip("/")
        # At its lightest: each connector's URL is built once, up front.
        self._callers = itertools.cycle(
            [
                (user, connector, f"{base}/v1alpha/{connector}:acquireAccessToken")
                for user, connector in callers(token, name, users, names)
            ]
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def call(self) -> None:
        assert self._session is not None
        token, name, url = next(self._callers)
        headers = {
            "authorization": f"Bearer {token}",
            ROUTING_HEADER: f"name={name}",
            "x-goog-api-client": API_CLIENT,
            "content-type": "application/json",
        }
        async with self._session.post(url, data=b"{}", headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise CallFailed(f"HTTP {response.status}: {body[:200]!r}")
        _check(json.loads(body)["accessToken"])

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class Discovery(Stack):
    """google-api-python-client built from the discovery document, as people call it today.

    Synchronous: the sequential run calls it on the event loop's thread (blocking it, as
    ``requests.post`` inside an async handler does); the concurrent run hands each call to a
    pool of 64 threads. Each thread has its own service object and ``httplib2.Http``, since
    neither is thread-safe.
    """

    def __init__(self, base_url: str, token: str, name: str) -> None:
        super().__init__(
            key="discovery", title="google-api-python-client", wire="rest", baseline=REST_FLOOR
        )
        self._base_url = base_url
        self._headers = {"authorization": f"Bearer {token}", ROUTING_HEADER: f"name={name}"}
        self._name = name
        self._local = threading.local()
        self._lock = threading.Lock()
        self._https: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        try:
            importlib.import_module("googleapiclient.discovery")
        except ImportError as exc:
            raise StackUnavailable(f"google-api-python-client is not installed ({exc})") from None
        self._pool = ThreadPoolExecutor(INFLIGHT, thread_name_prefix="bench-discovery")

    def _service(self) -> Any:
        service = getattr(self._local, "service", None)
        if service is None:
            import httplib2  # type: ignore[import-untyped]
            from googleapiclient.discovery import (  # type: ignore[import-untyped]
                build_from_document,
            )

            from agentspace_grpc.bench._discovery import discovery_document

            http = httplib2.Http(timeout=30)
            with self._lock:
                self._https.append(http)
            service = build_from_document(discovery_document(self._base_url), http=http)
            self._local.service = service
        return service

    def call_sync(self) -> None:
        """One blocking call."""
        request = (
            self._service()
            .projects()
            .locations()
            .collections()
            .dataConnector()
            .acquireAccessToken(name=self._name, body={})
        )
        request.headers.update(self._headers)
        _check(request.execute()["accessToken"])

    async def call(self) -> None:
        self.call_sync()

    async def call_concurrent(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.call_sync)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            https, self._https = self._https, []
        for http in https:
            http.close()


def _client_class() -> Any:
    try:
        module = importlib.import_module("agentspace_grpc")
        return module.DataConnectorClient
    except (ImportError, AttributeError) as exc:
        raise StackUnavailable(
            f"agentspace_grpc.DataConnectorClient is not available yet ({exc})"
        ) from None


class Agentspace(Stack):
    """``DataConnectorClient.acquire_access_token`` over one wire (``acquire_user_authorization``
    when ``name`` is an authorization).

    Single-flight is off unless asked for: 64 identical calls in flight would otherwise
    share one RPC, and the transport runs measure what one call costs; single-flight (its
    sharing and its bookkeeping cost) is measured on its own. With ``users`` (bearer
    tokens), the calls cycle through those end users, one per call, each passed as the
    call's ``credentials=``; with ``names``, through those connectors. With ``token_cache``
    (``TokenCache`` keyword arguments), the client has a token cache. With ``telemetry``, it
    has OpenTelemetry SDK providers (see :func:`sdk_providers`).
    """

    def __init__(
        self,
        *,
        key: str,
        title: str,
        wire: Wire,
        baseline: str | None,
        grpc_target: str,
        http_url: str,
        token: str,
        name: str,
        users: Sequence[str] = (),
        names: Sequence[str] = (),
        single_flight: bool = False,
        token_cache: dict[str, Any] | None = None,
        telemetry: bool = False,
    ) -> None:
        super().__init__(key=key, title=title, wire=wire, baseline=baseline)
        self._telemetry = telemetry
        self._providers: dict[str, Any] = {}
        self._grpc_target = grpc_target
        self._http_url = http_url
        self._token = token
        self._callers = itertools.cycle(callers(token, name, users, names))
        self._per_user = bool(users)
        self._single_flight = single_flight
        self._token_cache = token_cache
        self._authorization = is_authorization_name(name)
        self._client: Any = None
        self._acquire: Any = None

    async def start(self) -> None:
        cache = None
        if self._token_cache is not None:
            cache = importlib.import_module("agentspace_grpc").TokenCache(**self._token_cache)
        if self._telemetry:
            self._providers = sdk_providers()
        self._client = _client_class()(
            transport=self.wire,
            credentials=self._token,
            endpoint=self._grpc_target,
            rest_endpoint=self._http_url,
            insecure=True,
            single_flight=self._single_flight,
            token_cache=cache,
            **self._providers,
        )
        await self._client.__aenter__()
        self._acquire = (
            self._client.acquire_user_authorization
            if self._authorization
            else self._client.acquire_access_token
        )

    async def call(self) -> None:
        user, name = next(self._callers)
        if self._per_user:
            # One client, many end users: each call passes its user's credentials.
            token = await self._acquire(name, credentials=user)
        else:
            token = await self._acquire(name)
        _check(token.access_token)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        for provider in self._providers.values():
            provider.shutdown()


def sdk_providers() -> dict[str, Any]:
    """``tracer_provider`` and ``meter_provider`` as an application sets them up: spans
    batched to an exporter on the SDK's thread (one that drops them, so no export I/O is
    counted), metrics aggregated in memory until a reader collects them."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError as exc:
        raise StackUnavailable(f"opentelemetry-sdk is not installed ({exc})") from None

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {"tracer_provider": tracer_provider, "meter_provider": meter_provider}


def new_client(**kwargs: Any) -> Any:
    """A ``DataConnectorClient`` (raises :class:`StackUnavailable` when it is missing)."""
    return _client_class()(**kwargs)
