"""The transcoding module: HTTP rules from the descriptors, JSON mapping, error envelopes."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentspace_grpc import _proto as p
from agentspace_grpc import _transcode as t
from agentspace_grpc._token import AccessToken, token_from_json, token_from_response
from tests._protos import compile_test_proto

NAME = "projects/p1/locations/global/collections/default_collection/dataConnector"
PATTERN = "projects/*/locations/*/collections/*/dataConnector"


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return compile_test_proto("library", tmp_path_factory.mktemp("pb"))


@pytest.fixture(scope="module")
def routes(lib: ModuleType) -> t.Routes:
    return t.compile_service(lib.DESCRIPTOR.services_by_name["Library"])


# ---- our service ------------------------------------------------------------------------


def test_acquire_access_token_request() -> None:
    request = p.AcquireAccessTokenRequest(name=NAME, scope="read:jira", action="search")
    http = t.ROUTES["AcquireAccessToken"].to_http(request)
    assert http.method == "POST"
    assert http.path == f"/v1alpha/{NAME}:acquireAccessToken"
    assert http.query == ()
    assert json.loads(http.body or b"") == {"scope": "read:jira", "action": "search"}


def test_empty_acquire_body_is_an_empty_object() -> None:
    http = t.ROUTES["AcquireAccessToken"].to_http(p.AcquireAccessTokenRequest(name=NAME))
    assert http.body == b"{}"


def test_store_request_uses_camel_case() -> None:
    request = p.AcquireAndStoreRefreshTokenRequest(
        name=NAME, scopes=["a", "b"], full_redirect_uri="https://x/cb?code=1&state=2"
    )
    http = t.ROUTES["AcquireAndStoreRefreshToken"].to_http(request)
    assert http.path.endswith(":acquireAndStoreRefreshToken")
    assert json.loads(http.body or b"") == {
        "scopes": ["a", "b"],
        "fullRedirectUri": "https://x/cb?code=1&state=2",
    }


def test_check_refresh_token_is_a_get_without_body() -> None:
    http = t.ROUTES["CheckRefreshToken"].to_http(p.CheckRefreshTokenRequest(name=NAME))
    assert (http.method, http.body, http.query) == ("GET", None, ())
    assert http.path == f"/v1alpha/{NAME}:checkRefreshToken"


def test_path_values_are_percent_encoded() -> None:
    name = "projects/my proj?x#y%/locations/é/collections/a:b/dataConnector"
    http = t.ROUTES["AcquireAccessToken"].to_http(p.AcquireAccessTokenRequest(name=name))
    assert http.path == (
        "/v1alpha/projects/my%20proj%3Fx%23y%25/locations/%C3%A9/collections/a%3Ab/"
        "dataConnector:acquireAccessToken"
    )
    route, params, _ = t.ROUTES.match("POST", http.path)
    assert route.name == "AcquireAccessToken"
    assert params == {"name": name}


@pytest.mark.parametrize(
    "name",
    [
        "",
        "projects/p",
        "projects/p/locations/l/collections/c/dataConnectors",
        "projects//locations/l/collections/c/dataConnector",
        "projects/../locations/l/collections/c/dataConnector",
        "projects/p/locations/l/collections/c/dataConnector/extra",
    ],
)
def test_bad_name_is_rejected_naming_the_patterns(name: str) -> None:
    with pytest.raises(t.TranscodingError) as caught:
        t.ROUTES["AcquireAccessToken"].to_http(p.AcquireAccessTokenRequest(name=name))
    assert PATTERN in str(caught.value)
    assert "AcquireAccessToken" in str(caught.value)


def test_server_match_and_decode_accepts_both_spellings() -> None:
    path = f"/v1alpha/{NAME}:acquireAndStoreRefreshToken"
    route, params, index = t.ROUTES.match("POST", path)
    for body in (
        b'{"fullRedirectUri": "u", "scopes": ["s"], "instanceUri": "i"}',
        b'{"full_redirect_uri": "u", "scopes": ["s"], "instance_uri": "i"}',
    ):
        request = route.from_http(params, (), body, binding=index)
        assert request == p.AcquireAndStoreRefreshTokenRequest(
            name=NAME, scopes=["s"], full_redirect_uri="u", instance_uri="i"
        )


def test_server_decode_of_empty_body() -> None:
    route, params, index = t.ROUTES.match("POST", f"/v1alpha/{NAME}:acquireAccessToken")
    for body in (b"", b"{}", b"  "):
        assert route.from_http(params, (), body, binding=index) == p.AcquireAccessTokenRequest(
            name=NAME
        )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"scope": "s", "colour": "red"}', ["unknown field", "colour"]),
        (b'{"scope": 3}', ["scope", "string"]),
        (b"[1, 2]", ["JSON object"]),
        (b"{not json", ["not valid JSON"]),
        (b'{"scope": "a", "scope": "b"}', []),  # JSON's last-wins duplicate: accepted
    ],
)
def test_server_decode_rejects_bad_bodies(body: bytes, words: list[str]) -> None:
    route, params, index = t.ROUTES.match("POST", f"/v1alpha/{NAME}:acquireAccessToken")
    if not words:
        assert route.from_http(params, (), body, binding=index).scope == "b"
        return
    with pytest.raises(t.TranscodingError) as caught:
        route.from_http(params, (), body, binding=index)
    for word in words:
        assert word in str(caught.value)


def test_server_rejects_unknown_query_but_accepts_system_parameters() -> None:
    route, params, index = t.ROUTES.match("POST", f"/v1alpha/{NAME}:acquireAccessToken")
    assert route.from_http(params, (("alt", "json"), ("$.xgafv", "2")), b"{}", binding=index)
    with pytest.raises(t.TranscodingError, match="unknown query parameter 'scope'"):
        route.from_http(params, (("scope", "x"),), b"{}", binding=index)


def test_server_route_errors() -> None:
    with pytest.raises(t.MethodNotAllowed, match="POST"):
        t.ROUTES.match("GET", f"/v1alpha/{NAME}:acquireAccessToken")
    with pytest.raises(t.RouteNotFound):
        t.ROUTES.match("POST", f"/v1alpha/{NAME}:deleteEverything")
    with pytest.raises(t.RouteNotFound):
        t.ROUTES.match("POST", "/v1alpha/projects/p:acquireAccessToken")


# ---- the test-only proto ----------------------------------------------------------------


def test_get_with_query_parameters(lib: ModuleType, routes: t.Routes) -> None:
    request = lib.GetBookRequest(
        name="shelves/s1/books/b 2",
        view=lib.FULL,
        page_size=20,
        tags=["x", "y z"],
        options=lib.Options(deep=True, limit=2**40),
        min_rating=2.5,
    )
    http = routes["GetBook"].to_http(request)
    assert (http.method, http.path, http.body) == ("GET", "/v1/shelves/s1/books/b%202", None)
    assert http.query == (
        ("view", "FULL"),
        ("pageSize", "20"),
        ("tags", "x"),
        ("tags", "y z"),
        ("options.deep", "true"),
        ("options.limit", str(2**40)),
        ("minRating", "2.5"),
    )
    route, params, index = routes.match("GET", http.path)
    assert route.from_http(params, http.query, b"", binding=index) == request
    # proto names are accepted in the query as well
    decoded = route.from_http(params, (("page_size", "7"),), b"", binding=index)
    assert decoded.page_size == 7


def test_body_that_is_one_sub_field(lib: ModuleType, routes: t.Routes) -> None:
    book = lib.Book(name="shelves/a/books/b", title="T", pages=300, labels={"k": "v"})
    request = lib.UpdateBookRequest(book=book, request_id="r1")
    http = routes["UpdateBook"].to_http(request)
    assert (http.method, http.path) == ("PATCH", "/v1/shelves/a/books/b")
    assert http.query == (("requestId", "r1"),)
    assert json.loads(http.body or b"") == {
        "name": "shelves/a/books/b",
        "title": "T",
        "pages": "300",
        "labels": {"k": "v"},
    }
    route, params, index = routes.match("PATCH", http.path)
    assert route.from_http(params, http.query, http.body or b"", binding=index) == request


def test_additional_bindings(lib: ModuleType, routes: t.Routes) -> None:
    route = routes["CreateShelf"]
    first = route.to_http(lib.CreateShelfRequest(parent="orgs/o1", shelf=lib.Shelf(theme="sea")))
    assert (first.path, json.loads(first.body or b"")) == (
        "/v1/orgs/o1/shelves",
        {"shelf": {"theme": "sea"}},
    )
    second = route.to_http(lib.CreateShelfRequest(shelf=lib.Shelf(theme="sky"), validate_only=True))
    assert (second.path, second.query) == ("/v1/shelves", (("validateOnly", "true"),))
    assert json.loads(second.body or b"") == {"theme": "sky"}
    matched, params, index = routes.match("POST", "/v1/shelves")
    assert index == 1
    decoded = matched.from_http(params, second.query, second.body or b"", binding=index)
    assert decoded == lib.CreateShelfRequest(shelf=lib.Shelf(theme="sky"), validate_only=True)


def test_multi_segment_variable_keeps_slashes(lib: ModuleType, routes: t.Routes) -> None:
    request = lib.ReadFileRequest(path="a/b c/d%2Fe", offset=2**63)
    http = routes["ReadFile"].to_http(request)
    assert http.path == "/v1/files/a/b%20c/d%252Fe:read"
    assert http.query == (("offset", str(2**63)),)
    route, params, index = routes.match("GET", http.path)
    assert route.from_http(params, http.query, b"", binding=index) == request
    # an encoded slash received from the wire stays encoded
    _, raw_params, _ = routes.match("GET", "/v1/files/x%2Fy:read")
    assert raw_params == {"path": "x%2Fy"}


def test_bad_query_values_are_named(routes: t.Routes) -> None:
    route, params, index = routes.match("GET", "/v1/shelves/s/books/b")
    for query, words in [
        ((("pageSize", "ten"),), "pageSize"),
        ((("view", "HUGE"),), "BASIC"),
        ((("options", "x"),), "message field"),
        ((("nope", "1"),), "unknown query parameter"),
        ((("pageSize", str(2**40)),), "out of range"),
    ]:
        with pytest.raises(t.TranscodingError, match=words):
            route.from_http(params, query, b"", binding=index)


# ---- JSON mapping: same as json_format ----------------------------------------------------

texts = st.text(max_size=12)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def books(draw: st.DrawFn) -> Any:
    from agentspace_grpc_testpb import library_pb2 as lib  # compiled by the fixture

    book = lib.Book(
        name=draw(texts),
        title=draw(texts),
        pages=draw(int64s),
        rating=draw(st.floats(allow_nan=False, width=64)),
        cover=draw(st.binary(max_size=10)),
        labels=draw(st.dictionaries(texts, texts, max_size=3)),
        view=draw(st.sampled_from([0, 1, 2])),
        chapter_pages=draw(st.lists(int64s, max_size=3)),
        in_print=draw(st.booleans()),
    )
    for _ in range(draw(st.integers(0, 2))):
        book.authors.add(display_name=draw(texts), born=draw(st.integers(0, 2**32 - 1)))
    choice = draw(st.sampled_from(["none", "isbn", "catalog"]))
    if choice == "isbn":
        book.isbn = draw(texts)
    elif choice == "catalog":
        book.catalog_number = draw(int64s)
    if draw(st.booleans()):
        book.published.seconds = draw(st.integers(0, 2**33))
    if draw(st.booleans()):
        book.editors[draw(st.integers(-5, 5))].display_name = draw(texts)
    return book


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_json_mapping_agrees_with_json_format(lib: ModuleType, data: st.DataObject) -> None:
    book = data.draw(books())
    ours = json.loads(t.message_to_json(book))
    assert ours == json_format.MessageToDict(book)
    assert t.message_from_json(t.message_to_json(book), lib.Book, ignore_unknown=False) == book
    reference = json_format.MessageToJson(book, preserving_proto_field_name=True).encode()
    assert t.message_from_json(reference, lib.Book, ignore_unknown=False) == book


def test_unknown_fields_are_ignored_on_request(lib: ModuleType) -> None:
    body = b'{"accessToken": "t", "futureField": {"x": 1}, "refreshTokenInfo": {"name": "n"}}'
    response = t.message_from_json(body, p.AcquireAccessTokenResponse, ignore_unknown=True)
    assert response.access_token == "t"
    assert response.refresh_token_info.name == "n"
    with pytest.raises(t.TranscodingError, match="futureField"):
        t.message_from_json(body, p.AcquireAccessTokenResponse, ignore_unknown=False)


def test_json_null_means_default_and_int64_accepts_numbers(lib: ModuleType) -> None:
    book = t.message_from_json(
        b'{"title": null, "pages": 12, "catalogNumber": "-3", "rating": "NaN"}',
        lib.Book,
        ignore_unknown=False,
    )
    assert (book.title, book.pages, book.catalog_number) == ("", 12, -3)
    assert book.rating != book.rating


def test_oneof_conflict_is_rejected(lib: ModuleType) -> None:
    with pytest.raises(t.TranscodingError, match="oneof"):
        t.message_from_json(b'{"isbn": "x", "catalogNumber": "1"}', lib.Book, ignore_unknown=False)


# ---- errors -------------------------------------------------------------------------------


def _status_with_error_info() -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="user has not authorized")
    info = error_details_pb2.ErrorInfo(
        reason="REFRESH_TOKEN_NOT_FOUND",
        domain="discoveryengine.googleapis.com",
        metadata={"connector": NAME},
    )
    status.details.add().Pack(info)
    status.details.add().Pack(error_details_pb2.RetryInfo())
    return status


def test_status_round_trips_through_json() -> None:
    status = _status_with_error_info()
    body = t.status_to_json(status)
    document = json.loads(body)
    assert document["error"]["code"] == 404
    assert document["error"]["status"] == "NOT_FOUND"
    assert document["error"]["details"][0]["@type"].endswith("google.rpc.ErrorInfo")
    assert document["error"]["details"][0]["reason"] == "REFRESH_TOKEN_NOT_FOUND"
    assert t.status_from_http(404, body, "application/json; charset=UTF-8") == status


def test_json_status_wins_over_http_status() -> None:
    body = b'{"error": {"code": 400, "message": "m", "status": "FAILED_PRECONDITION"}}'
    status = t.status_from_http(400, body, "application/json")
    assert (status.code, status.message) == (code_pb2.FAILED_PRECONDITION, "m")


@pytest.mark.parametrize(
    ("http_status", "body", "content_type", "code", "words"),
    [
        (502, b"<html>Bad Gateway</html>", "text/html", code_pb2.UNAVAILABLE, "text/html"),
        (503, b"", None, code_pb2.UNAVAILABLE, "empty body"),
        (504, b"upstream timed out", "text/plain", code_pb2.UNAVAILABLE, "HTTP 504"),
        (500, b'{"error": "nope"}', "application/json", code_pb2.INTERNAL, "not a Google"),
        (404, b"{trunc", "application/json", code_pb2.NOT_FOUND, "404"),
        (429, b"", None, code_pb2.RESOURCE_EXHAUSTED, "429"),
        (401, b"", None, code_pb2.UNAUTHENTICATED, "401"),
        (403, b"", None, code_pb2.PERMISSION_DENIED, "403"),
        (418, b"", None, code_pb2.UNKNOWN, "418"),
    ],
)
def test_non_google_error_bodies(
    http_status: int, body: bytes, content_type: str | None, code: int, words: str
) -> None:
    status = t.status_from_http(http_status, body, content_type)
    assert status.code == code
    assert words in status.message
    assert not status.details


def test_unknown_detail_types_are_kept() -> None:
    body = json.dumps(
        {
            "error": {
                "code": 400,
                "message": "m",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/example.Unknown", "x": 1}, 7],
            }
        }
    ).encode()
    status = t.status_from_http(400, body, "application/json")
    assert len(status.details) == 2
    kept = struct_pb2.Value()
    assert status.details[0].Unpack(kept)
    assert kept.struct_value["x"] == 1
    assert kept.struct_value["@type"] == "type.googleapis.com/example.Unknown"


def test_code_http_tables_are_consistent() -> None:
    for name, number in code_pb2.Code.items():
        if name == "OK":
            continue
        http = t.http_status_for_code(number)
        assert 400 <= http <= 599, name
    assert t.code_for_http_status(204) == code_pb2.OK


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
response_keys = st.sampled_from(
    ["accessToken", "access_token", "refreshTokenInfo", "refresh_token_info", "other"]
)
info_keys = st.sampled_from(["name", "scopes", "extra"])


@st.composite
def response_documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key in draw(st.lists(response_keys, max_size=4)):
        if "efresh" in key and draw(st.booleans()):
            info: dict[str, Any] = {}
            for info_key in draw(st.lists(info_keys, max_size=3)):
                info[info_key] = draw(
                    st.lists(st.text(max_size=4), max_size=3) | json_values
                    if info_key == "scopes"
                    else st.text(max_size=8) | json_values
                )
            document[key] = info
        else:
            document[key] = draw(st.text(max_size=8) | json_values)
    return document


@settings(max_examples=300, deadline=None, derandomize=True)
@given(document=response_documents(), strict=st.booleans())
def test_fast_decoding_agrees_with_json_format(document: dict[str, Any], strict: bool) -> None:
    """The shortcut for simple messages decodes exactly what json_format decodes."""
    body = json.dumps(document).encode()
    try:
        expected = json_format.Parse(
            body, p.AcquireAccessTokenResponse(), ignore_unknown_fields=not strict
        )
    except json_format.ParseError:
        expected = None
    try:
        ours = t.message_from_json(body, p.AcquireAccessTokenResponse, ignore_unknown=not strict)
    except t.TranscodingError:
        ours = None
    if {"accessToken", "access_token"} <= document.keys() or {
        "refreshTokenInfo",
        "refresh_token_info",
    } <= document.keys():
        # One field under both of its names: we refuse it on purpose (json_format lets the
        # last one win), so that no value is silently dropped.
        assert ours is None
        return
    if any(
        not isinstance(value, dict | None)
        for key, value in document.items()
        if key in ("refreshTokenInfo", "refresh_token_info")
    ):
        # json_format takes some non-objects (such as "") for a message; the mapping does not.
        assert ours is None
        return
    assert ours == expected


# Plain ASCII, other text, and lone surrogates (which protobuf cannot store), often.
any_text = st.text(st.sampled_from("a/:-\u00e9\U0001f600\ud800\udfff"), max_size=4) | st.text(
    st.characters(exclude_categories=()), max_size=6
)
service_answers = st.fixed_dictionaries(
    {
        "accessToken": any_text,
        "refreshTokenInfo": st.fixed_dictionaries(
            {"name": any_text, "scopes": st.lists(any_text, max_size=3)}
        ),
    }
)


def _token_or_error(read: Any) -> Any:
    try:
        token = read()
    except ValueError as exc:
        return type(exc)
    return (token.access_token, token.connector, token.scopes, token.transport)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    document=service_answers | response_documents(),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
    after=st.sampled_from(["", " ", "x", "}"]),
)
# The service's form plus one field again under its other name (which the mapping refuses).
@example(
    document={
        "accessToken": "a",
        "refreshTokenInfo": {"name": "n", "scopes": []},
        "access_token": "b",
    },
    ascii_only=True,
    spaced=False,
    after="",
)
@example(
    document={
        "accessToken": "a",
        "refreshTokenInfo": {"name": "n", "scopes": []},
        "refresh_token_info": {"name": "m", "scopes": []},
    },
    ascii_only=True,
    spaced=False,
    after="",
)
def test_rest_token_reading_agrees_with_the_message_mapping(
    document: dict[str, Any], ascii_only: bool, spaced: bool, after: str
) -> None:
    """The REST client reads the service's own form of an answer straight into the token:
    for any document, that gives exactly what decoding the message would, or the same error."""
    text = json.dumps(document, ensure_ascii=ascii_only, indent=1 if spaced else None) + after
    body = text.encode("utf-8", "surrogatepass")

    def through_the_message() -> AccessToken:
        message = t.message_from_json(body, p.AcquireAccessTokenResponse, ignore_unknown=True)
        return token_from_response(message, NAME, "rest")  # type: ignore[arg-type]

    expected = _token_or_error(through_the_message)
    assert _token_or_error(lambda: token_from_json(body, NAME)) == expected


def test_lone_surrogates_are_refused_naming_the_field() -> None:
    with pytest.raises(t.TranscodingError, match=r"accessToken.*unpaired surrogate"):
        t.message_from_json(
            b'{"accessToken": "\\ud800"}', p.AcquireAccessTokenResponse, ignore_unknown=True
        )


json_texts = st.one_of(
    json_values.map(json.dumps),
    json_values.map(lambda value: json.dumps(value, ensure_ascii=False, indent=1)),
    st.text(alphabet='{}[]",: \t\n\r0123456789.eE+-truefalsnul\\\u00e9\ufeff', max_size=12),
)
framings = st.sampled_from(["", " ", "\n", "\ufeff", "x", "{}"])
encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"])


@settings(max_examples=500, deadline=None, derandomize=True)
@given(text=json_texts, before=framings, after=framings, encoding=encodings, as_str=st.booleans())
def test_json_reading_is_json_loads(
    text: str, before: str, after: str, encoding: str, as_str: bool
) -> None:
    """The shortcut for plain UTF-8 documents reads exactly what json.loads reads, and
    refuses exactly what it refuses, whatever surrounds the document or encodes it."""
    document = before + text + after
    try:
        body: bytes | str = document if as_str else document.encode(encoding)
    except UnicodeEncodeError:
        return
    try:
        expected: Any = json.loads(body)
    except (ValueError, RecursionError):
        with pytest.raises(t.TranscodingError, match="not valid JSON"):
            t.json_loads(body)
        return
    ours = t.json_loads(body)
    assert json.dumps(ours) == json.dumps(expected)  # NaN compares unequal to itself


def test_json_reading_takes_what_json_loads_takes() -> None:
    for body in (bytearray(b'{"a": [1]}'), memoryview(b'{"a": [1]}').tobytes(), ' {"a": [1]} '):
        assert t.json_loads(body) == {"a": [1]}  # type: ignore[arg-type]
