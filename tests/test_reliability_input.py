"""Bad input: property tests over resource names, JSON bodies, headers and redirect URIs,
sent to the transcoder, to the emulator's REST and gRPC fronts, and through the client.

Never INTERNAL or HTTP 500: always INVALID_ARGUMENT (or the right code: NOT_FOUND for a
connector that does not exist, FAILED_PRECONDITION for scopes not granted, UNAUTHENTICATED
for a bad identity) with a message naming the problem, and the store unchanged (the
emulator's and the provider's counters, and the user's cached token, compared before and
after). Hypothesis runs derandomized, without deadlines, with bounded examples.

The converse holds too: an injected internal bug (a test-only monkeypatch that makes an
internal function raise) still yields INTERNAL, so validation never swallows real failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.rpc import status_pb2
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from agentspace_grpc import (
    DataConnectorClient,
    DataConnectorError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    UndecodableAnswer,
    UsageError,
    _token,
)
from agentspace_grpc import _proto as p
from agentspace_grpc import _wire as w
from agentspace_grpc.emulator import Emulator
from tests._emulator_helpers import (
    CONNECTOR,
    bearer,
    channel_to,
    emulator_stats,
    failure_of,
    provider_stats,
    rest,
)
from tests._raw import closed_port, grpc_bytes_server
from tests._servers import FakeService, serve

T = TypeVar("T")
ALICE = "alice@example.com"  # has a stored grant (scopes read, write)
GRANTED = {"read", "write"}
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PATHS = {
    "AcquireAccessToken": ("POST", ":acquireAccessToken"),
    "AcquireAndStoreRefreshToken": ("POST", ":acquireAndStoreRefreshToken"),
    "CheckRefreshToken": ("GET", ":checkRefreshToken"),
}
# The JSON names each method's body accepts (both spellings), and their JSON types.
FIELDS: dict[str, dict[str, str]] = {
    "AcquireAccessToken": {"name": "string", "scope": "string", "action": "string"},
    "AcquireAndStoreRefreshToken": {
        "name": "string",
        "scopes": "strings",
        "fullRedirectUri": "string",
        "full_redirect_uri": "string",
        "instanceUri": "string",
        "instance_uri": "string",
    },
}
CLIENT_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"}
GRPC_CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


# ---- strategies ------------------------------------------------------------------------------

# Any code point, lone surrogates included (they reach a server as JSON escapes).
any_text = st.text(st.characters(codec=None, categories=None), max_size=24)
segments = st.text(
    st.characters(codec=None, exclude_categories=("Cs",)) | st.sampled_from("/%?#:*.;@ "),
    max_size=10,
)


@st.composite
def names(draw: st.DrawFn) -> str:
    """Resource names: free text, the right shape with odd segments, or a mangled good one."""
    kind = draw(st.sampled_from(["text", "shape", "mangled"]))
    if kind == "text":
        return draw(any_text)
    if kind == "shape":
        parts = [draw(segments) for _ in range(4)]
        return "projects/{}/locations/{}/collections/{}/dataConnector".format(*parts)
    at = draw(st.integers(0, len(CONNECTOR)))
    return CONNECTOR[:at] + draw(segments) + CONNECTOR[at:]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def bodies(draw: st.DrawFn, method: str) -> dict[str, Any]:
    """JSON objects mixing the method's fields (right or wrong types) with unknown keys."""
    known = list(FIELDS[method])
    keys = draw(st.lists(st.sampled_from(known) | any_text, max_size=4, unique=True))
    body: dict[str, Any] = {}
    for key in keys:
        kind = FIELDS[method].get(key)
        good = st.lists(any_text, max_size=3) if kind == "strings" else any_text
        body[key] = draw(good | json_values if kind else json_values)
    return body


def problems(method: str, body: dict[str, Any]) -> set[str]:
    """The keys that make ``body`` invalid: unknown keys, and known keys of the wrong type."""
    wrong = set()
    spellings = FIELDS[method]
    for key, value in body.items():
        kind = spellings.get(key)
        if kind is None:
            wrong.add(key)
        elif value is None:
            continue  # JSON null means the default
        elif (kind == "string" and not isinstance(value, str)) or (
            kind == "strings"
            and not (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            wrong.add(key)
    # Two spellings of one field in one body: "given twice".
    for camel, snake in (("fullRedirectUri", "full_redirect_uri"), ("instanceUri", "instance_uri")):
        if camel in body and snake in body:
            wrong |= {camel, snake}
    return wrong


def has_lone_surrogate(value: Any) -> bool:
    """True when a string anywhere in ``value`` cannot be UTF-8 encoded."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


@st.composite
def redirect_uris(draw: st.DrawFn) -> str:
    """Redirect URIs: free text, or a URL with any mix of code / state / error parameters."""
    if draw(st.booleans()):
        return draw(any_text)
    base = draw(
        st.sampled_from(
            [
                "https://vertexaisearch.cloud.google.com/oauth-redirect",
                "https://evil.example/oauth-redirect",
                "http://vertexaisearch.cloud.google.com/oauth-redirect",
                "",
            ]
        )
    )
    params = draw(
        st.dictionaries(st.sampled_from(["code", "state", "error", "scope", "x"]), any_text)
    )
    encoded = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in params.items()})
    return f"{base}?{encoded}"


# Printable ASCII: what gRPC metadata values may hold (HTTP also allows a tab).
grpc_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=40
)


def authorizations(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Authorization values: junk, Bearer junk, and look-alikes of the emulator's tokens."""
    return st.one_of(
        text,
        text.map(lambda v: "Bearer " + v),
        text.map(lambda v: "bearer aea1." + v),
        st.tuples(text, text).map(lambda v: f"Bearer aea1.{v[0]}.{v[1]}"),
    )


def attempt(function: Callable[..., T], *args: Any) -> tuple[T | None, Exception | None]:
    """``function(*args)``: its result, or the exception it raised."""
    try:
        return function(*args), None
    except Exception as exc:
        return None, exc


async def attempt_async(call: Awaitable[T]) -> tuple[T | None, Exception | None]:
    """The awaited result, or the exception raised."""
    try:
        return await call, None
    except Exception as exc:
        return None, exc


def rpc_error(error: Exception | None) -> grpc.aio.AioRpcError:
    """The gRPC failure a call had to end with."""
    assert isinstance(error, grpc.aio.AioRpcError), f"expected an RPC error, got {error!r}"
    return error


def names_the_problem(message: str, words: set[str]) -> bool:
    lowered = message.lower()
    return any(word.lower() in lowered for word in words if word)


# ---- the transcoder (pure functions) -----------------------------------------------------


@PROPERTY
@given(name=names(), method=st.sampled_from(sorted(PATHS)))
def test_transcoder_to_http_takes_any_name(name: str, method: str) -> None:
    row = w.ROWS[method]
    request, error = attempt(row.to_http, row.request_class(name=name))
    if request is None:
        assert isinstance(error, w.TranscodingError), repr(error)
        assert "name" in str(error)
        assert "projects/*/locations/*/collections/*/dataConnector" in str(error)
    else:
        assert request[1].startswith("/v1alpha/projects/")
        assert request[1].isascii()


@PROPERTY
@given(verb=st.sampled_from(["GET", "POST", "PUT", "DELETE"]) | header_text, path=any_text)
@example(verb="POST", path="/v1alpha/" + CONNECTOR + ":acquireAccessToken")
def test_transcoder_match_takes_any_path(verb: str, path: str) -> None:
    matched, error = attempt(w.match, verb, path)
    if matched is None:
        assert isinstance(error, w.RouteNotFound | w.MethodNotAllowed), repr(error)
        assert str(error)
    else:
        row, value = matched
        assert row.name in PATHS
        assert value.startswith("projects/")


@PROPERTY
@given(data=st.data(), method=st.sampled_from(sorted(FIELDS)))
@example(data=None, method="AcquireAccessToken")
def test_transcoder_from_http_takes_any_body(data: st.DataObject | None, method: str) -> None:
    row = w.ROWS[method]
    raw_bodies = [b"[" * 100_000 + b"]" * 100_000, b'{"scope": "\\ud800"}', b"\xff{"]
    if data is not None:
        body = data.draw(bodies(method))
        raw_bodies = [json.dumps(body).encode(), data.draw(st.binary(max_size=40))]
    for raw in raw_bodies:
        _, error = attempt(row.from_http, CONNECTOR, [], raw)
        if error is not None:
            assert isinstance(error, w.TranscodingError), repr(error)
            assert str(error)


@PROPERTY
@given(
    status=st.integers(300, 599),
    body=st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()),
    content_type=st.none() | st.sampled_from(["application/json", "text/html", "x"]),
)
@example(status=502, body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")
@example(status=400, body=b'{"error": {"message": "\\ud800"}}', content_type="application/json")
def test_transcoder_reads_any_error_answer(status: int, body: bytes, content_type: str) -> None:
    """What the client does with any non-2xx answer: a Status, never an exception."""
    described = w.status_from_http(status, body, content_type)
    assert isinstance(described, status_pb2.Status)
    assert described.code != 0
    assert described.message


@PROPERTY
@given(body=st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()))
@example(body=b"[" * 100_000 + b"]" * 100_000)
@example(body=b'{"accessToken": "\\udfff"}')
def test_transcoder_reads_any_success_answer(body: bytes) -> None:
    """What the client does with any 2xx answer: a message, or a ValueError to classify."""
    _, error = attempt(lambda: _token.answer_from_json(body, p.AcquireAccessTokenResponse))
    if error is not None:
        assert isinstance(error, ValueError), repr(error)
        assert str(error)


# ---- the emulator ------------------------------------------------------------------------------


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(data_dir=tmp_path / "data") as running:
        redirect = await running.consent(ALICE)
        async with channel_to(running.grpc_target) as stub:
            await stub.AcquireAndStoreRefreshToken(
                p.AcquireAndStoreRefreshTokenRequest(name=CONNECTOR, full_redirect_uri=redirect),
                metadata=bearer(running.user_token(ALICE)),
            )
        yield running


async def snapshot(emu: Emulator) -> tuple[dict[str, int], dict[str, int], str]:
    """What must not change: both sets of counters and ALICE's (cached) access token."""
    async with channel_to(emu.grpc_target) as stub:
        answer = await stub.AcquireAccessToken(
            p.AcquireAccessTokenRequest(name=CONNECTOR), metadata=bearer(emu.user_token(ALICE))
        )
    return (
        await emulator_stats(emu.http_url),
        await provider_stats(emu.http_url),
        answer.access_token,
    )


@pytest.fixture
async def unchanged(emu: Emulator) -> AsyncIterator[Emulator]:
    """The emulator, whose store must be the same after the test as before it."""
    before = await snapshot(emu)
    yield emu
    assert await snapshot(emu) == before


def assert_google_error(status: int, body: Any, allowed: set[str]) -> str:
    assert status != 500, body
    assert isinstance(body, dict), body
    error = body["error"]
    assert error["status"] in allowed, error
    assert error["code"] == status
    assert error["message"]
    return str(error["message"])


def rest_path(name: str, method: str, *, raw_subdelims: bool) -> str:
    safe = "/:@!$&'()*+,;=" if raw_subdelims else "/"
    encoded = quote(name.encode("utf-8", "surrogatepass"), safe=safe)
    return f"/v1alpha/{encoded}{PATHS[method][1]}"


async def post_json(emu: Emulator, method: str, raw: bytes) -> tuple[int, Any]:
    path = rest_path(CONNECTOR, method, raw_subdelims=False)
    return await rest(emu.http_url, "POST", path, emu.user_token(ALICE), raw_body=raw)


def says_bad_unicode(message: str) -> bool:
    return "unicode" in message.lower() or "utf-8" in message.lower()


@PROPERTY
@given(name=names(), method=st.sampled_from(sorted(PATHS)), raw=st.booleans())
async def test_rest_front_takes_any_resource_name(
    unchanged: Emulator, name: str, method: str, raw: bool
) -> None:
    emu = unchanged
    verb = PATHS[method][0]
    path = rest_path(name, method, raw_subdelims=raw)
    status, body = await rest(emu.http_url, verb, path, emu.user_token(ALICE), raw_body=b"")
    if name == CONNECTOR:  # an empty insertion: the request is fine but for its empty body
        assert status == 200 or assert_google_error(status, body, CLIENT_ERRORS)
        return
    message = assert_google_error(status, body, CLIENT_ERRORS | {"UNIMPLEMENTED"})
    assert names_the_problem(
        message, {"name", "connector", "no method is served", "not allowed", "not a"}
    ), message


@PROPERTY
@given(body=bodies("AcquireAccessToken"))
@example(body={"scope": "\ud800"})
@example(body={"action": "ok", "scope": ["\udfff"]})
async def test_rest_front_takes_any_acquire_body(unchanged: Emulator, body: dict[str, Any]) -> None:
    scopes = set(str(body.get("scope") or "").split())
    assume(not scopes or not scopes <= GRANTED)  # asking for granted scopes refreshes
    await check_body(unchanged, "AcquireAccessToken", body)


@PROPERTY
@given(body=bodies("AcquireAndStoreRefreshToken"))
@example(body={"scopes": ["ok", "\udfff"], "fullRedirectUri": "x"})
@example(body={"fullRedirectUri": "x", "full_redirect_uri": "y"})
async def test_rest_front_takes_any_store_body(unchanged: Emulator, body: dict[str, Any]) -> None:
    await check_body(unchanged, "AcquireAndStoreRefreshToken", body)


async def check_body(emu: Emulator, method: str, body: dict[str, Any]) -> None:
    status, answer = await post_json(emu, method, json.dumps(body).encode())
    if status == 200:
        assert method == "AcquireAccessToken"
        assert not problems(method, body)
        return
    message = assert_google_error(status, answer, CLIENT_ERRORS)
    wrong = problems(method, body)
    if wrong:
        assert answer["error"]["status"] == "INVALID_ARGUMENT", answer
        assert names_the_problem(message, wrong | {repr(key) for key in wrong}), (message, wrong)
    elif has_lone_surrogate(body):
        assert answer["error"]["status"] == "INVALID_ARGUMENT", answer
        assert says_bad_unicode(message), message
    elif answer["error"]["status"] == "INVALID_ARGUMENT":
        assert names_the_problem(message, {"action", "full_redirect_uri", "name"}), message


@pytest.mark.parametrize(
    "raw",
    [b"[" * 50_000 + b"]" * 50_000, b"{", b"\xff\xfe", b"null", b"[]", b'"x"', b"1e999999"],
    ids=["deep", "truncated", "binary", "null", "array", "string", "number"],
)
@pytest.mark.parametrize("method", sorted(FIELDS))
async def test_rest_front_takes_any_body_bytes(
    unchanged: Emulator, method: str, raw: bytes
) -> None:
    status, answer = await post_json(unchanged, method, raw)
    message = assert_google_error(status, answer, {"INVALID_ARGUMENT"})
    assert names_the_problem(message, {"body", "json"}), message


@PROPERTY
@given(authorization=authorizations(header_text), extra=header_text)
async def test_rest_front_takes_any_authorization_header(
    unchanged: Emulator, authorization: str, extra: str
) -> None:
    path = rest_path(CONNECTOR, "AcquireAccessToken", raw_subdelims=False)
    headers = {"Authorization": authorization, "x-goog-request-params": extra, "X-Extra": extra}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{unchanged.http_url}{path}", data=b"{}", headers=headers) as response,
    ):
        status, body = response.status, await response.json(content_type=None)
    message = assert_google_error(status, body, {"UNAUTHENTICATED"})
    assert status == 401
    assert names_the_problem(message, {"bearer", "token", "credentials"}), message


@PROPERTY
@given(uri=redirect_uris(), scopes=st.lists(any_text, max_size=2))
@example(  # a non-ASCII consent state: hmac.compare_digest raised, HTTP 500
    uri="https://vertexaisearch.cloud.google.com/oauth-redirect?code=c&state=st1.%C3%A9.%C3%A9",
    scopes=[],
)
async def test_rest_front_takes_any_redirect_uri(
    unchanged: Emulator, uri: str, scopes: list[str]
) -> None:
    body = {"fullRedirectUri": uri, "scopes": scopes}
    status, answer = await post_json(
        unchanged, "AcquireAndStoreRefreshToken", json.dumps(body).encode()
    )
    message = assert_google_error(status, answer, {"INVALID_ARGUMENT"})
    if has_lone_surrogate(body):
        assert says_bad_unicode(message), message
    else:
        assert names_the_problem(message, {"full_redirect_uri"}), message


utf8_text = st.text(st.characters(codec="utf-8"), max_size=24)


@PROPERTY
@given(
    name=names().filter(lambda n: not has_lone_surrogate(n)),
    scope=utf8_text,
    action=utf8_text,
    uri=redirect_uris().filter(lambda u: not has_lone_surrogate(u)),
    scopes=st.lists(utf8_text, max_size=2),
)
async def test_grpc_front_takes_any_request(
    unchanged: Emulator, name: str, scope: str, action: str, uri: str, scopes: list[str]
) -> None:
    assume(not scope.split() or not set(scope.split()) <= GRANTED)
    metadata = bearer(unchanged.user_token(ALICE))
    async with channel_to(unchanged.grpc_target) as stub:
        calls = [
            stub.AcquireAccessToken(
                p.AcquireAccessTokenRequest(name=name, scope=scope, action=action),
                metadata=metadata,
            ),
            stub.AcquireAndStoreRefreshToken(
                p.AcquireAndStoreRefreshTokenRequest(
                    name=name, full_redirect_uri=uri, scopes=scopes, instance_uri=action
                ),
                metadata=metadata,
            ),
            stub.CheckRefreshToken(p.CheckRefreshTokenRequest(name=name), metadata=metadata),
        ]
        for call in calls:
            _, error = await attempt_async(call)
            if error is None:
                assert name == CONNECTOR
                continue
            failure = failure_of(rpc_error(error))
            assert failure.code in GRPC_CLIENT_ERRORS, (failure.code, failure.message)
            assert failure.message


@PROPERTY
@given(authorization=authorizations(grpc_header_text))
async def test_grpc_front_takes_any_authorization(unchanged: Emulator, authorization: str) -> None:
    async with channel_to(unchanged.grpc_target) as stub:
        _, error = await attempt_async(
            stub.AcquireAccessToken(
                p.AcquireAccessTokenRequest(name=CONNECTOR),
                metadata=(("authorization", authorization),),
            )
        )
    failure = rpc_error(error)
    assert failure.code() == grpc.StatusCode.UNAUTHENTICATED, failure
    assert names_the_problem(failure.details() or "", {"bearer", "token", "credentials"})


@pytest.mark.parametrize("method", sorted(PATHS))
@PROPERTY
@given(raw=st.binary(min_size=1, max_size=40))
@example(raw=b"\x0a\x02\xff\xfe")  # field 1 (name) with invalid UTF-8
@example(raw=b"\xff\xff\xff")
async def test_grpc_front_rejects_malformed_protobuf_as_invalid_argument(
    unchanged: Emulator, method: str, raw: bytes
) -> None:
    """Bytes that are not the request message: INVALID_ARGUMENT, like a bad JSON body."""
    async with grpc.aio.insecure_channel(unchanged.grpc_target) as channel:
        call = channel.unary_unary(w.ROWS[method].grpc_path)
        _, error = await attempt_async(call(raw, metadata=bearer(unchanged.user_token(ALICE))))
    if error is not None:
        failure = rpc_error(error)
        assert failure.code() in GRPC_CLIENT_ERRORS, (failure.code(), failure.details())
        assert failure.details()


# ---- through the client ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rest"])
@PROPERTY
@given(name=names(), uri=redirect_uris())
async def test_client_takes_any_name_and_redirect_uri(
    unchanged: Emulator, transport: str, name: str, uri: str
) -> None:
    emu = unchanged
    async with DataConnectorClient(
        transport=transport,  # type: ignore[arg-type]
        endpoint=f"127.0.0.1:{closed_port()}",
        credentials="x",
        retry=None,
    ) as unreachable:
        _, error = await attempt_async(unreachable.acquire_access_token(name))
    # A name the client refuses is refused before any I/O (else: Unavailable, no server).
    misuse = isinstance(error, UsageError)
    if misuse:
        assert "name" in str(error)
    else:
        assert isinstance(error, DataConnectorError), repr(error)
    async with emu.client(transport=transport, credentials=emu.user_token(ALICE)) as client:
        for call in (
            client.acquire_access_token(name),
            client.store_refresh_token(name, uri or "x"),
        ):
            answer, error = await attempt_async(call)
            if error is None:
                assert name == CONNECTOR, answer
            elif misuse:
                assert isinstance(error, UsageError), repr(error)
            else:
                assert isinstance(error, InvalidArgument | NotFound | FailedPrecondition), repr(
                    error
                )
                assert error.message


@pytest.fixture
async def answering() -> AsyncIterator[dict[str, Any]]:
    """A REST front and a gRPC server answering AcquireAccessToken with whatever the test put
    in ``answer`` ("status", "body", "content_type" for REST; "bytes" for gRPC)."""
    answer: dict[str, Any] = {}

    async def rest_answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(
            status=answer["status"], body=answer["body"], content_type=answer["content_type"]
        )

    service = FakeService()
    service.rest_hook = rest_answer
    async with (
        grpc_bytes_server("AcquireAccessToken", lambda request: bytes(answer["bytes"])) as target,
        serve(service) as servers,
    ):
        answer["grpc"] = target
        answer["rest"] = servers.rest_url
        yield answer


@PROPERTY
@given(
    status=st.integers(200, 599),
    body=st.binary(max_size=60)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda v: json.dumps({"error": v}).encode(),
        st.dictionaries(st.sampled_from(["code", "message", "status", "details"]), json_values),
    ),
    content_type=st.sampled_from(["application/json", "text/html", "application/octet-stream"]),
)
@example(status=200, body=b"[" * 50_000 + b"]" * 50_000, content_type="application/json")
@example(status=503, body=b"[" * 50_000 + b"]" * 50_000, content_type="application/json")
@example(status=400, body=b'{"error": {"message": "\\ud800"}}', content_type="application/json")
@example(status=200, body=b'{"accessToken": "\\udfff"}', content_type="application/json")
async def test_client_takes_any_rest_answer(
    answering: dict[str, Any], status: int, body: bytes, content_type: str
) -> None:
    """Whatever a server or a gateway answers: a token, or a DataConnectorError."""
    answering.update(status=status, body=body, content_type=content_type)
    async with DataConnectorClient(
        transport="rest", rest_endpoint=answering["rest"], credentials="x", retry=None
    ) as client:
        token, error = await attempt_async(client.acquire_access_token(CONNECTOR))
    if error is None:
        assert 200 <= status < 300
        assert token is not None
        assert token.access_token
    else:
        assert isinstance(error, DataConnectorError), repr(error)
        assert error.transport == "rest"
        assert error.http_status in (status, None)  # None: a 2xx answer without a token
        assert error.message


@PROPERTY
@given(raw=st.binary(max_size=60))
@example(raw=b"\x12\x02\xff\xfe")  # field 2 (access_token) with invalid UTF-8
async def test_client_takes_any_grpc_answer(answering: dict[str, Any], raw: bytes) -> None:
    answering["bytes"] = raw
    async with DataConnectorClient(
        transport="grpc", endpoint=answering["grpc"], credentials="x", retry=None
    ) as client:
        token, error = await attempt_async(client.acquire_access_token(CONNECTOR))
    if error is None:
        assert token is not None
        assert token.access_token
    else:
        assert isinstance(error, UndecodableAnswer), repr(error)  # not the expected message
        assert error.transport == "grpc"


# ---- injected internal bugs are INTERNAL -------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "attribute", "error"),
    [
        ("agentspace_grpc.emulator._store.Store", "cached", RuntimeError("injected")),
        ("agentspace_grpc.emulator._identity.Identity", "user_from_authorization", KeyError("x")),
        ("agentspace_grpc._wire.Row", "_merge", ValueError("injected, not validation")),
    ],
    ids=["store", "identity", "transcoder"],
)
async def test_an_injected_internal_bug_is_internal(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch, target: str, attribute: str, error: Exception
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    token = emu.user_token(ALICE)
    module_name, class_name = target.rsplit(".", 1)
    monkeypatch.setattr(
        getattr(importlib.import_module(module_name), class_name), attribute, broken
    )
    status, body = await post_json(emu, "AcquireAccessToken", b"{}")
    assert status == 500, body
    assert body["error"]["status"] == "INTERNAL"
    assert "incident" in body["error"]["message"]
    wires = ["rest"]
    if attribute != "_merge":  # the gRPC front does not transcode
        wires.append("grpc")
        async with channel_to(emu.grpc_target) as stub:
            _, error = await attempt_async(
                stub.AcquireAccessToken(
                    p.AcquireAccessTokenRequest(name=CONNECTOR), metadata=bearer(token)
                )
            )
        assert rpc_error(error).code() == grpc.StatusCode.INTERNAL, error
    for transport in wires:
        async with emu.client(transport=transport, credentials=token) as client:
            with pytest.raises(Internal, match="incident"):
                await client.acquire_access_token(CONNECTOR)


# ---- every HTTP endpoint: shaped 4xx, never 5xx -------------------------------------------------

ENDPOINTS = (
    ("POST", "/oauth2/token"),
    ("POST", "/emulator/v1/users/{email}/token"),
    ("GET", "/emulator/v1/consent"),
    ("GET", "/emulator/v1/stats"),
    ("GET", "/healthz"),
    ("GET", "/provider/authorize"),
    ("POST", "/provider/token"),
    ("GET", "/provider/userinfo"),
    ("GET", "/provider/stats"),
    ("POST", f"/v1alpha/{CONNECTOR}:acquireAccessToken"),
    ("GET", f"/v1alpha/{CONNECTOR}:checkRefreshToken"),
)
OAUTH_ROUTES = ("/oauth2/", "/provider/")
# What an HTTP client can put in a header value: any character but controls and surrogates.
unicode_header = st.text(st.characters(codec=None, exclude_categories=("Cc", "Cs")), max_size=30)
unicode_text = st.text(st.characters(codec=None, exclude_categories=("Cs",)), max_size=20)
FORM_KEYS = (
    "grant_type",
    "refresh_token",
    "code",
    "code_verifier",
    "redirect_uri",
    "client_id",
    "client_secret",
)
QUERY_KEYS = (
    "connector",
    "scope",
    "instance_uri",
    "client_id",
    "redirect_uri",
    "response_type",
    "state",
    "login_hint",
    "code_challenge",
    "code_challenge_method",
)
CONTENT_TYPES = (
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=latin-1",
    "application/json",
    "multipart/form-data",
    "text/plain",
)


def fields(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.sampled_from(keys) | unicode_text, unicode_text, max_size=4)


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    """Form bodies with the OAuth fields (any text), or any bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=40))
    form = draw(fields(FORM_KEYS))
    return urlencode({k: v.encode() for k, v in form.items()}).encode()


def assert_shaped(path: str, status: int, location: str | None, raw: bytes) -> None:
    """Never 5xx; an error in the endpoint's shape; a redirect that says what happened."""
    assert status < 500, (status, raw[:300])
    if 300 <= status < 400:
        assert location, status
        if path.startswith("/provider/authorize"):
            assert "error=" in location, location
        return
    body = json.loads(raw)
    if status < 400:
        assert isinstance(body, dict), body
    elif path.startswith(OAUTH_ROUTES):
        assert isinstance(body["error"], str), body
        assert isinstance(body["error_description"], str), body
    else:
        assert_google_error(status, body, {code for code in CODE_NAMES if code != "INTERNAL"})


CODE_NAMES = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "UNAUTHENTICATED",
    "UNIMPLEMENTED",
    "PERMISSION_DENIED",
    "INTERNAL",
}


@settings(PROPERTY, max_examples=80)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    segment=st.none() | unicode_text,
    query=fields(QUERY_KEYS),
    authorization=st.none() | authorizations(unicode_header) | st.just("ALICE"),
    basic=st.none() | unicode_header.map(lambda v: "Basic " + v),
    content_type=st.none() | st.sampled_from(CONTENT_TYPES),
    body=form_bodies(),
)
@example(  # a non-ASCII bearer token: hmac.compare_digest raised, HTTP 500
    endpoint=ENDPOINTS[9],
    segment=None,
    query={},
    authorization="Bearer aea1.é.é",
    basic=None,
    content_type="application/json",
    body=b"{}",
)
@example(
    endpoint=ENDPOINTS[2],
    segment=None,
    query={},
    authorization="Bearer aea1.x.\u00e9",
    basic=None,
    content_type=None,
    body=b"",
)
@example(  # a form that is not UTF-8: HTTP 500 on both token endpoints
    endpoint=ENDPOINTS[0],
    segment=None,
    query={},
    authorization=None,
    basic=None,
    content_type=CONTENT_TYPES[0],
    body=b"grant_type=%FF",
)
@example(  # multipart without a boundary
    endpoint=ENDPOINTS[6],
    segment=None,
    query={},
    authorization=None,
    basic="Basic é",
    content_type=CONTENT_TYPES[3],
    body=b"--x",
)
async def test_every_http_endpoint_takes_any_request(
    unchanged: Emulator,
    endpoint: tuple[str, str],
    segment: str | None,
    query: dict[str, str],
    authorization: str | None,
    basic: str | None,
    content_type: str | None,
    body: bytes,
) -> None:
    emu = unchanged
    method, path = endpoint
    email = quote(segment if segment is not None else ALICE, safe="")
    path = path.replace("{email}", email)
    if segment is not None and "{email}" not in endpoint[1]:
        path += "/" + quote(segment, safe="")  # an unknown route under a known one
    headers = {}
    if authorization == "ALICE":
        authorization = f"Bearer {emu.user_token(ALICE)}"
    if authorization is not None or basic is not None:
        headers["Authorization"] = basic if basic is not None else str(authorization)
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"{emu.http_url}{path}",
            params=query,
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as response,
    ):
        raw = await response.read()
        assert_shaped(path, response.status, response.headers.get("Location"), raw)


PARSER_TARGETS = [path.replace("{email}", ALICE).encode() for _, path in ENDPOINTS]


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Sends ``request`` as is and reads until the server closes (bounded: no hang)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def final_status(answer: bytes) -> int:
    """The status of the last response head (after any ``100 Continue``)."""
    statuses = re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ", answer)
    assert statuses, answer[:200]
    return int(statuses[-1]) if int(statuses[0]) == 100 else int(statuses[0])


@settings(PROPERTY, max_examples=60)
@given(
    verb=st.sampled_from([b"GET", b"POST", b"PUT"]) | st.binary(min_size=1, max_size=8),
    target=st.tuples(st.sampled_from(PARSER_TARGETS), st.binary(max_size=20)).map(
        lambda parts: parts[0] + parts[1]
    ),
    header=st.binary(max_size=40),
    body=st.binary(max_size=40),
)
@example(verb=b"GET", target=b"/\xff", header=b"", body=b"")
@example(verb=b"POST", target=PARSER_TARGETS[9], header=b"Bearer aea1.\xff.\xfe", body=b"{}")
@example(verb=b"GET", target=PARSER_TARGETS[7], header=b"Bearer \xed\xa0\x80", body=b"")
@example(verb=b"GET", target=PARSER_TARGETS[2], header=b"Bearer " + b"a" * 9000, body=b"")
async def test_raw_requests_get_a_4xx_never_a_5xx_or_a_hang(
    unchanged: Emulator, verb: bytes, target: bytes, header: bytes, body: bytes
) -> None:
    """What an HTTP client cannot send (raw bytes in the request line and headers)."""
    port = int(unchanged.http_url.rsplit(":", 1)[1])
    request = (
        verb
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: emulator\r\nConnection: close\r\nAuthorization: "
        + header
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    answer = await raw_exchange(port, request)
    assert 200 <= final_status(answer) < 500, answer[:300]
