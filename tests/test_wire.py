"""The wire table: rows from the descriptors, HTTP rules, request and answer JSON, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentspace_grpc import AuthorizationRequired, UndecodableAnswer, _token
from agentspace_grpc import _proto as p
from agentspace_grpc import _wire as w
from agentspace_grpc._token import (
    AccessToken,
    token_from_json,
    token_from_response,
    user_token_from_json,
    user_token_from_response,
)

NAME = "projects/p1/locations/global/collections/default_collection/dataConnector"
PATTERN = "projects/*/locations/*/collections/*/dataConnector"
ACQUIRE = w.ROWS["AcquireAccessToken"]
STORE = w.ROWS["AcquireAndStoreRefreshToken"]
CHECK = w.ROWS["CheckRefreshToken"]
ACQUIRE_USER = w.ROWS["AcquireUserAuthorization"]
STORE_USER = w.ROWS["StoreUserAuthorization"]
AUTHORIZATION = "projects/p1/locations/global/authorizations/a1"


# ---- the table ------------------------------------------------------------------------------


def test_one_row_per_rpc_from_the_descriptors() -> None:
    assert {
        name: (row.grpc_path, row.http_method, row.idempotent) for name, row in w.ROWS.items()
    } == {
        "AcquireAccessToken": (
            "/google.cloud.discoveryengine.v1alpha.DataConnectorService/AcquireAccessToken",
            "POST",
            False,
        ),
        "AcquireAndStoreRefreshToken": (
            "/google.cloud.discoveryengine.v1alpha.DataConnectorService/"
            "AcquireAndStoreRefreshToken",
            "POST",
            False,
        ),
        "CheckRefreshToken": (
            "/google.cloud.discoveryengine.v1alpha.DataConnectorService/CheckRefreshToken",
            "GET",
            True,
        ),
        "AcquireUserAuthorization": (
            "/google.cloud.discoveryengine.v1alpha.AuthorizationService/AcquireUserAuthorization",
            "POST",
            False,
        ),
        "StoreUserAuthorization": (
            "/google.cloud.discoveryengine.v1alpha.AuthorizationService/StoreUserAuthorization",
            "POST",
            False,
        ),
    }
    assert (ACQUIRE.request_class, ACQUIRE.response_class) == (
        p.AcquireAccessTokenRequest,
        p.AcquireAccessTokenResponse,
    )
    assert [row.reads_grant for row in (ACQUIRE, STORE, CHECK, ACQUIRE_USER, STORE_USER)] == [
        True,
        False,
        True,
        True,
        False,
    ]


def _method_with(rule: http_pb2.HttpRule, *, page: bool = False) -> Any:
    """A method descriptor with this HTTP rule, in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, http_pb2, annotations_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    proto = descriptor_pb2.FileDescriptorProto(
        name="shapes.proto",
        package="shapes",
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    request = proto.message_type.add(name="Request")
    request.field.add(name="name", json_name="name", number=1, type=9, label=1)
    if page:
        request.field.add(name="page", json_name="page", number=2, type=5, label=1)
    method = proto.service.add(name="Shapes").method.add(
        name="Call", input_type=".shapes.Request", output_type=".shapes.Request"
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool.Add(proto)
    return pool.FindMethodByName("shapes.Shapes.Call")


@pytest.mark.parametrize(
    ("rule", "page"),
    [
        (http_pb2.HttpRule(get="/v1/{name=things/*}", body="*"), False),  # a GET body
        (http_pb2.HttpRule(post="/v1/{name=things/*}"), False),  # a POST without body "*"
        (http_pb2.HttpRule(post="/v1/{name=things/*}", body="name"), False),  # a sub-field body
        (http_pb2.HttpRule(get="/v1/{name=things/*}"), True),  # a field left for the query
        (http_pb2.HttpRule(put="/v1/{name=things/*}", body="*"), False),
        (http_pb2.HttpRule(post="/v1/{name=things/**}:go", body="*"), False),
        (http_pb2.HttpRule(post="/v1/{name}:go", body="*"), False),
        (http_pb2.HttpRule(post="/v1/{page=things/*}:go", body="*"), True),  # not a string
        (http_pb2.HttpRule(post="/v1/{missing=things/*}:go", body="*"), False),
        (http_pb2.HttpRule(post="/v1/things:go", body="*"), False),
        (
            http_pb2.HttpRule(
                post="/v1/{name=things/*}:go",
                body="*",
                additional_bindings=[http_pb2.HttpRule(post="/v2/{name=things/*}:go", body="*")],
            ),
            False,
        ),
        (http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="HEAD", path="/v1/x")), False),
    ],
)
def test_other_rule_shapes_are_refused_naming_the_rule(rule: http_pb2.HttpRule, page: bool) -> None:
    with pytest.raises(
        ValueError, match=r"shapes\.Shapes\.Call: the google\.api\.http rule"
    ) as caught:
        w.compile_row(_method_with(rule, page=page))
    assert " ".join(str(rule).split()) in str(caught.value)


def test_the_shapes_the_protos_use_compile() -> None:
    row = w.compile_row(_method_with(http_pb2.HttpRule(post="/v1/{name=things/*}:go", body="*")))
    assert row.to_http(row.request_class(name="things/a b")) == (
        "POST",
        "/v1/things/a%20b:go",
        b"{}",
    )
    assert w.compile_row(_method_with(http_pb2.HttpRule(get="/v1/{name=things/*}"))).expand(
        "things/x"
    ) == ("/v1/things/x")


# ---- client side: requests ------------------------------------------------------------------


def test_acquire_access_token_request() -> None:
    request = p.AcquireAccessTokenRequest(name=NAME, scope="read:jira", action="search")
    method, path, body = ACQUIRE.to_http(request)
    assert (method, path) == ("POST", f"/v1alpha/{NAME}:acquireAccessToken")
    assert json.loads(body or b"") == {"scope": "read:jira", "action": "search"}


def test_empty_acquire_body_is_an_empty_object() -> None:
    assert ACQUIRE.to_http(p.AcquireAccessTokenRequest(name=NAME))[2] == b"{}"


def test_store_request_uses_camel_case() -> None:
    request = p.AcquireAndStoreRefreshTokenRequest(
        name=NAME, scopes=["a", "b"], full_redirect_uri="https://x/cb?code=1&state=2"
    )
    _, path, body = STORE.to_http(request)
    assert path.endswith(":acquireAndStoreRefreshToken")
    assert json.loads(body or b"") == {
        "scopes": ["a", "b"],
        "fullRedirectUri": "https://x/cb?code=1&state=2",
    }


def test_authorization_requests_follow_the_reference() -> None:
    """acquireUserAuthorization: a POST with an empty body; storeUserAuthorization: a POST of
    ``{"fullRedirectUri": ...}``; the name in the path either way."""
    assert ACQUIRE_USER.to_http(p.AcquireUserAuthorizationRequest(name=AUTHORIZATION)) == (
        "POST",
        f"/v1alpha/{AUTHORIZATION}:acquireUserAuthorization",
        b"{}",
    )
    store = p.StoreUserAuthorizationRequest(name=AUTHORIZATION, full_redirect_uri="https://r/?c=1")
    assert STORE_USER.to_http(store) == (
        "POST",
        f"/v1alpha/{AUTHORIZATION}:storeUserAuthorization",
        b'{"fullRedirectUri":"https://r/?c=1"}',
    )
    with pytest.raises(w.TranscodingError, match="authorizations"):
        ACQUIRE_USER.expand(NAME)


def test_check_refresh_token_is_a_get_without_body() -> None:
    assert CHECK.to_http(p.CheckRefreshTokenRequest(name=NAME)) == (
        "GET",
        f"/v1alpha/{NAME}:checkRefreshToken",
        None,
    )


def test_path_values_are_percent_encoded() -> None:
    name = "projects/my proj?x#y%/locations/é/collections/a:b/dataConnector"
    path = ACQUIRE.expand(name)
    assert path == (
        "/v1alpha/projects/my%20proj%3Fx%23y%25/locations/%C3%A9/collections/a%3Ab/"
        "dataConnector:acquireAccessToken"
    )
    assert w.match("POST", path) == (ACQUIRE, name)


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
def test_bad_name_is_rejected_naming_the_pattern(name: str) -> None:
    with pytest.raises(w.TranscodingError) as caught:
        ACQUIRE.to_http(p.AcquireAccessTokenRequest(name=name))
    assert PATTERN in str(caught.value)
    assert "AcquireAccessToken" in str(caught.value)


# ---- server side: requests ------------------------------------------------------------------


def test_server_match_and_decode_accepts_both_spellings() -> None:
    row, value = w.match("POST", f"/v1alpha/{NAME}:acquireAndStoreRefreshToken")
    for body in (
        b'{"fullRedirectUri": "u", "scopes": ["s"], "instanceUri": "i"}',
        b'{"full_redirect_uri": "u", "scopes": ["s"], "instance_uri": "i"}',
    ):
        assert row.from_http(value, (), body) == p.AcquireAndStoreRefreshTokenRequest(
            name=NAME, scopes=["s"], full_redirect_uri="u", instance_uri="i"
        )


def test_server_decode_of_empty_body() -> None:
    for body in (b"", b"{}", b"  ", b'{"scope": null}'):
        assert ACQUIRE.from_http(NAME, (), body) == p.AcquireAccessTokenRequest(name=NAME)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"scope": "s", "colour": "red"}', ["unknown field", "colour"]),
        (b'{"scope": 3}', ["scope"]),
        (b'{"scope": ["x"]}', ["scope"]),
        (b'{"scope": "\\ud800"}', ["scope", "Unicode"]),
        (b'{"action": "a", "action": "b", "scope": "a", "scope": 7}', ["scope"]),
        (b"[1, 2]", ["JSON object"]),
        (b'"scope"', ["JSON object"]),
        (b"{not json", ["not valid JSON"]),
        (b"[" * 100_000 + b"]" * 100_000, ["not valid JSON"]),
    ],
)
def test_server_decode_rejects_bad_bodies(body: bytes, words: list[str]) -> None:
    with pytest.raises(w.TranscodingError) as caught:
        ACQUIRE.from_http(NAME, (), body)
    for word in words:
        assert word in str(caught.value)


def test_one_field_under_both_names_is_refused() -> None:
    body = b'{"fullRedirectUri": "u", "full_redirect_uri": "v"}'
    with pytest.raises(w.TranscodingError, match=r"fullRedirectUri.*full_redirect_uri"):
        STORE.from_http(NAME, (), body)


def test_a_bodiless_rule_refuses_a_body() -> None:
    with pytest.raises(w.TranscodingError, match="takes no request body"):
        CHECK.from_http(NAME, (), b"{}")


def test_server_accepts_system_parameters_and_rejects_other_query_parameters() -> None:
    assert ACQUIRE.from_http(NAME, ("alt", "$.xgafv", "prettyPrint", "key"), b"{}")
    for row in (ACQUIRE, CHECK):
        with pytest.raises(w.TranscodingError, match="unknown query parameter 'scope'"):
            row.from_http(NAME, ("scope",), b"")


def test_server_route_errors() -> None:
    with pytest.raises(w.MethodNotAllowed, match="POST"):
        w.match("GET", f"/v1alpha/{NAME}:acquireAccessToken")
    with pytest.raises(w.RouteNotFound):
        w.match("POST", f"/v1alpha/{NAME}:deleteEverything")
    with pytest.raises(w.RouteNotFound):
        w.match("POST", "/v1alpha/projects/p:acquireAccessToken")
    # an encoded slash received from the wire stays encoded: it cannot become a separator
    path = "/v1alpha/projects/a%2Fb/locations/l/collections/c/dataConnector:checkRefreshToken"
    assert w.match("GET", path) == (CHECK, "projects/a%2Fb/locations/l/collections/c/dataConnector")


# ---- answers ---------------------------------------------------------------------------------


def test_answers_are_read_with_unknown_fields_ignored() -> None:
    body = b'{"refreshTokenInfo": {"name": "n", "scopes": ["a"], "future": 1}, "other": {}}'
    assert CHECK.from_json(body, NAME) == p.CheckRefreshTokenResponse(
        refresh_token_info=p.RefreshTokenInfo(name="n", scopes=["a"])
    )
    store = b'{"additionalOauthResponses": [{"key": "n", "intValue": "12"}]}'
    (item,) = STORE.from_json(store, NAME).additional_oauth_responses
    assert (item.key, item.int_value) == ("n", 12)
    assert json.loads(w.message_to_json(STORE.from_json(store, NAME))) == json.loads(store)


@pytest.mark.parametrize(
    "body",
    [b'{"refreshTokenInfo": []}', b'{"refreshTokenInfo": "x"}', b"[]", b'"x"', b"{", b'{"x": 1'],
)
def test_answers_that_are_not_the_message_are_refused(body: bytes) -> None:
    """json_format takes any iterable where a message is due; the mapping wants an object."""
    with pytest.raises(ValueError, match="JSON"):
        CHECK.from_json(body, NAME)
    with pytest.raises(ValueError, match="JSON"):
        token_from_json(body, NAME)


def test_an_answer_without_a_token_is_undecodable_on_both_wires() -> None:
    with pytest.raises(UndecodableAnswer, match="without an access token"):
        token_from_json(
            b'{"accessToken": "", "refreshTokenInfo": {"name": "n", "scopes": []}}', NAME
        )
    with pytest.raises(UndecodableAnswer, match="without an access token"):
        ACQUIRE.from_message(p.AcquireAccessTokenResponse(), NAME)
    token = ACQUIRE.from_message(p.AcquireAccessTokenResponse(access_token="t"), NAME)
    assert (token.access_token, token.connector, token.transport) == ("t", NAME, "grpc")


def test_an_authorization_answer_is_a_token_a_consent_uri_or_undecodable_on_both_wires() -> None:
    info = {"refreshTokenInfo": {"scopes": ["s1", "s2"]}}
    fast = ACQUIRE_USER.from_json(json.dumps({"accessToken": "t", **info}).encode(), AUTHORIZATION)
    answer = p.AcquireUserAuthorizationResponse(access_token="t")
    answer.refresh_token_info.scopes[:] = ["s1", "s2"]
    slow = ACQUIRE_USER.from_message(answer, AUTHORIZATION)
    for token, wire in ((fast, "rest"), (slow, "grpc")):
        assert (token.access_token, token.resource, token.connector) == ("t", *[AUTHORIZATION] * 2)
        assert (token.scopes, token.transport) == (("s1", "s2"), wire)

    uri = "https://consent.example/authorize?state=s"
    readers = (
        (lambda: ACQUIRE_USER.from_json(b'{"authorizationUri": "%s"}' % uri.encode(), "a"), 200),
        (
            lambda: user_token_from_response(
                p.AcquireUserAuthorizationResponse(authorization_uri=uri), "a", "grpc"
            ),
            None,
        ),
    )
    for read, http_status in readers:
        with pytest.raises(AuthorizationRequired) as caught:
            read()
        error = caught.value
        assert (error.authorization_uri, error.resource, error.connector) == (uri, "a", "a")
        assert (error.http_status, error.reason) == (http_status, None)
        assert "store_user_authorization()" in error.message
        assert "store_user_authorization()" in str(error)

    for body in (
        b"{}",
        b'{"accessToken": "", "authorizationUri": ""}',
        b'{"refreshTokenInfo": {}}',
    ):
        with pytest.raises(UndecodableAnswer, match="neither an access token nor"):
            ACQUIRE_USER.from_json(body, AUTHORIZATION)
    with pytest.raises(UndecodableAnswer, match="neither an access token nor"):
        ACQUIRE_USER.from_message(p.AcquireUserAuthorizationResponse(), AUTHORIZATION)


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
    body = w.status_to_json(status)
    document = json.loads(body)
    assert document["error"]["code"] == 404
    assert document["error"]["status"] == "NOT_FOUND"
    assert document["error"]["details"][0]["@type"].endswith("google.rpc.ErrorInfo")
    assert document["error"]["details"][0]["reason"] == "REFRESH_TOKEN_NOT_FOUND"
    assert w.status_from_http(404, body, "application/json; charset=UTF-8") == status


def test_json_status_wins_over_http_status() -> None:
    body = b'{"error": {"code": 400, "message": "m", "status": "FAILED_PRECONDITION"}}'
    status = w.status_from_http(400, body, "application/json")
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
    status = w.status_from_http(http_status, body, content_type)
    assert status.code == code
    assert words in status.message
    assert not status.details


def test_a_detail_with_an_integer_too_large_for_a_double_is_kept_as_text() -> None:
    big = 10**400  # valid JSON that no double holds
    value = {"@type": "type.googleapis.com/google.protobuf.Value", "value": big}
    error = {"code": 400, "message": "m", "status": "INVALID_ARGUMENT", "details": [value, big]}
    status = w.status_from_http(400, json.dumps({"error": error}).encode(), None)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert len(status.details) == 2
    for detail in status.details:
        kept = struct_pb2.Value()
        assert detail.Unpack(kept)
        assert kept.string_value.startswith(("{'@type'", "1000"))


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
    status = w.status_from_http(400, body, "application/json")
    assert len(status.details) == 2
    kept = struct_pb2.Value()
    assert status.details[0].Unpack(kept)
    assert kept.struct_value["x"] == 1
    assert kept.struct_value["@type"] == "type.googleapis.com/example.Unknown"


def test_code_http_tables_are_consistent() -> None:
    for name, number in code_pb2.Code.items():
        if name == "OK":
            continue
        http = w.http_status_for_code(number)
        assert 400 <= http <= 599, name
    assert w.code_for_http_status(204) == code_pb2.OK


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
response_keys = st.sampled_from(
    [
        "accessToken",
        "access_token",
        "refreshTokenInfo",
        "refresh_token_info",
        "authorizationUri",
        "other",
    ]
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
) | st.fixed_dictionaries(  # an authorization's answer (no name in the info)
    {
        "accessToken": any_text,
        "refreshTokenInfo": st.fixed_dictionaries({"scopes": st.lists(any_text, max_size=3)}),
    }
)


def _token_or_error(read: Any) -> Any:
    try:
        token = read()
    except (ValueError, UndecodableAnswer) as exc:
        return type(exc)
    except AuthorizationRequired as exc:
        return (type(exc), exc.authorization_uri, exc.http_status, exc.resource)
    return (token.access_token, token.resource, token.scopes, token.transport)


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
@pytest.mark.parametrize(
    ("read", "response_class", "from_message"),
    [
        (token_from_json, p.AcquireAccessTokenResponse, token_from_response),
        (user_token_from_json, p.AcquireUserAuthorizationResponse, user_token_from_response),
    ],
)
def test_rest_token_reading_agrees_with_json_format(
    document: dict[str, Any],
    ascii_only: bool,
    spaced: bool,
    after: str,
    read: Any,
    response_class: Any,
    from_message: Any,
) -> None:
    """The REST client reads the service's own form of an answer straight into the token:
    for any document, that gives exactly what json_format's message would, or the same error."""
    text = json.dumps(document, ensure_ascii=ascii_only, indent=1 if spaced else None) + after
    body = text.encode("utf-8", "surrogatepass")

    def through_the_message() -> AccessToken:
        message = _token.answer_from_json(body, response_class)
        return from_message(message, NAME, "rest")

    expected = _token_or_error(through_the_message)
    assert _token_or_error(lambda: read(body, NAME)) == expected


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
        with pytest.raises(ValueError, match="not valid JSON"):
            _token.json_loads(body)
        return
    ours = _token.json_loads(body)
    assert json.dumps(ours) == json.dumps(expected)  # NaN compares unequal to itself


def test_json_reading_takes_what_json_loads_takes() -> None:
    for body in (bytearray(b'{"a": [1]}'), memoryview(b'{"a": [1]}').tobytes(), ' {"a": [1]} '):
        assert _token.json_loads(body) == {"a": [1]}  # type: ignore[arg-type]
