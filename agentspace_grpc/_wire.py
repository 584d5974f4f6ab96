"""The wire layer as a table: one :class:`Row` per RPC, derived from the proto descriptors.

A row holds what both wires need for one RPC: gRPC path, messages, idempotency (the proto's
``idempotency_level``), the ``google.api.http`` rule compiled, and how the client reads an
answer. The client's transports and the emulator's fronts dispatch on :data:`ROWS`: a new RPC in
the proto is a new row, and no transport changes.

The rules supported are the shape the protos use: ``post`` (body ``*``) or ``get`` (no body) on
a path with one ``{field=pattern}`` variable; any other fails at import, naming it. The JSON
mapping is ``json_format``. Google's JSON error envelope <-> ``google.rpc.Status`` is here too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from google.api import annotations_pb2
from google.protobuf import descriptor, json_format, message, message_factory, struct_pb2
from google.protobuf.descriptor_pb2 import MethodOptions
from google.rpc import code_pb2, status_pb2

from agentspace_grpc import _proto
from agentspace_grpc._errors import first_line
from agentspace_grpc._token import (
    answer_from_json,
    token_from_json,
    token_from_response,
    user_token_from_json,
    user_token_from_response,
)

__all__ = [
    "ROWS",
    "MethodNotAllowed",
    "RouteNotFound",
    "Row",
    "TranscodingError",
    "code_for_http_status",
    "compile_row",
    "http_status_for_code",
    "match",
    "message_to_json",
    "status_from_http",
    "status_to_json",
]

#: Google's system query parameters: accepted on every method and ignored.
_SYSTEM_PARAMETERS: Final = frozenset(
    {"$.xgafv", "alt", "$alt", "callback", "$callback", "fields", "$fields", "key"}
    | {"prettyPrint", "$prettyPrint", "quotaUser", "upload_protocol", "uploadType"}
)


class TranscodingError(ValueError):
    """A message or HTTP request that cannot be transcoded; the text names the problem."""


class RouteNotFound(TranscodingError):
    """No HTTP rule matches the path (HTTP 404)."""


class MethodNotAllowed(TranscodingError):
    """A rule matches the path but not the HTTP method (HTTP 405)."""


@dataclass(frozen=True, slots=True, eq=False)
class Row:
    """One RPC as both wires carry it.

    Attributes:
        idempotent: The proto says the method is idempotent or free of side effects: only then
            is a call retried after its request may have reached the service.
        reads_grant: The method reads the end user's stored grant, so a NOT_FOUND from the
            service without another reason means "this user has not authorized".
        field, body: The request field in the path, and True for body ``*``.
        from_message: ``(response, name) -> result`` from a gRPC answer.
        from_json: ``(body, name) -> result`` from a 2xx REST body; ValueError names a bad one.
    """

    name: str
    service: str
    grpc_path: str
    request_class: type[message.Message]
    response_class: type[message.Message]
    idempotent: bool
    reads_grant: bool
    http_method: str
    rule: str
    field: str
    body: bool
    from_message: Callable[[Any, str], Any]
    from_json: Callable[[bytes, str], Any]
    _prefix: str
    _suffix: str
    _path: re.Pattern[str]  # a raw request path; group 1 is the variable
    _value: re.Pattern[str]  # a decoded variable value
    _keys: Mapping[str, str]  # the body's JSON keys (both spellings) -> field names

    def expand(self, value: str) -> str:
        """The path for ``value`` of the path field, percent-encoded as ``http.proto`` says for a
        multi-segment variable (client side)."""
        if self._value.fullmatch(value) and not any(s in (".", "..") for s in value.split("/")):
            return self._prefix + quote(value, safe="/") + self._suffix
        raise TranscodingError(
            f"{self.name}: {self.field}={value!r} does not match the URL pattern "
            f"{self.http_method} {self.rule}"
        )

    def to_http(self, request: message.Message) -> tuple[str, str, bytes | None]:
        """The HTTP method, encoded path and JSON body (None: no body) of a request."""
        path = self.expand(getattr(request, self.field))
        if not self.body:
            return self.http_method, path, None
        document = json_format.MessageToDict(request)
        document.pop(self.request_class.DESCRIPTOR.fields_by_name[self.field].json_name, None)
        return self.http_method, path, _dumps(document)

    def from_http(self, value: str, query: Iterable[str], body: bytes) -> message.Message:
        """The request of an HTTP request :func:`match` gave this row (server side); strict as
        Google's parser: unknown fields, one field twice (both names) and bad text are refused."""
        for key in query:
            if key not in _SYSTEM_PARAMETERS:
                raise TranscodingError(f"unknown query parameter {key!r}")
        request = self.request_class()
        if body.strip():
            if not self.body:
                raise TranscodingError(f"{self.name} takes no request body")
            self._merge(request, body)
        try:
            setattr(request, self.field, value)
        except ValueError as exc:  # text that protobuf cannot store
            raise TranscodingError(f"invalid {self.field}: {exc}") from None
        return request

    def _merge(self, request: message.Message, body: bytes) -> None:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise TranscodingError(f"the body is not valid JSON: {exc}") from None
        if type(data) is not dict:
            raise TranscodingError(f"the body must be a JSON object, not {type(data).__name__}")
        seen: dict[str, str] = {}
        for key in data:
            field = self._keys.get(key)
            if field is None:
                raise TranscodingError(f"unknown field {key!r} in {self.request_class.__name__}")
            if field in seen:
                raise TranscodingError(f"field {field} is given twice: {seen[field]!r}, {key!r}")
            seen[field] = key
        for key, value in data.items():  # one at a time, so that the error names the field
            for text in value if type(value) is list else (value,):
                if type(text) is str and any("\ud800" <= c <= "\udfff" for c in text):
                    raise TranscodingError(
                        f"invalid value for field {key}: the string is not valid Unicode "
                        "(an unpaired surrogate, which UTF-8 cannot encode)"
                    )
            try:
                json_format.ParseDict({key: value}, request)
            except Exception as exc:  # json_format.Parse turns any failure into a ParseError
                problem = first_line(exc)
                raise TranscodingError(f"invalid value for field {key}: {problem}") from None


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(data: Any) -> bytes:
    return _ENCODER.encode(data).encode()


def message_to_json(msg: message.Message) -> bytes:
    """A message in the proto3 JSON mapping, compact (what a REST front answers)."""
    return _dumps(json_format.MessageToDict(msg))


# What the descriptors do not say: answers the client reads into its own result type, and the
# methods that read the end user's stored grant.
_READERS: Final[dict[str, tuple[Callable[[Any, str], Any], Callable[[bytes, str], Any]]]] = {
    "AcquireAccessToken": (lambda r, name: token_from_response(r, name, "grpc"), token_from_json),
    "AcquireUserAuthorization": (
        lambda r, name: user_token_from_response(r, name, "grpc"),
        user_token_from_json,
    ),
}
_READS_GRANT: Final = frozenset(
    {"AcquireAccessToken", "CheckRefreshToken", "AcquireUserAuthorization"}
)

_LITERAL: Final = r"[A-Za-z0-9_.~-]+"
_TEMPLATE: Final = re.compile(
    rf"(?P<prefix>(?:/{_LITERAL})*)/\{{(?P<field>[a-z_][a-z0-9_]*)="
    rf"(?P<pattern>(?:{_LITERAL}|\*)(?:/(?:{_LITERAL}|\*))*)\}}(?P<verb>:{_LITERAL})?"
)


def compile_row(method: descriptor.MethodDescriptor) -> Row:
    """The row of a method; ValueError names a rule of a shape this module does not build."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    kind = rule.WhichOneof("pattern")
    found = _TEMPLATE.fullmatch(getattr(rule, kind)) if kind in ("get", "post") else None
    request = method.input_type
    field = request.fields_by_name.get(found["field"]) if found else None
    if (
        found is None
        or field is None
        or field.type != descriptor.FieldDescriptor.TYPE_STRING
        or field.is_repeated
        or rule.additional_bindings
        or rule.response_body
        or rule.body != ("*" if kind == "post" else "")
        or (kind == "get" and len(request.fields) != 1)
    ):
        raise ValueError(
            f"{method.full_name}: the google.api.http rule "
            f"{{{' '.join(str(rule).split())}}} is not supported: "
            'use post with body "*", or get without a body, on a path with one '
            "{field=pattern} variable of a string field"
        )
    value = "/".join("[^/]+" if s == "*" else re.escape(s) for s in found["pattern"].split("/"))
    suffix = found["verb"] or ""
    request_class = message_factory.GetMessageClass(request)
    response_class = message_factory.GetMessageClass(method.output_type)
    from_message, from_json = _READERS.get(method.name) or (
        lambda answer, name: answer,
        lambda body, name: answer_from_json(body, response_class),
    )
    return Row(
        name=method.name,
        service=method.containing_service.full_name,
        grpc_path=f"/{method.containing_service.full_name}/{method.name}",
        request_class=request_class,
        response_class=response_class,
        idempotent=method.GetOptions().idempotency_level != MethodOptions.IDEMPOTENCY_UNKNOWN,
        reads_grant=method.name in _READS_GRANT,
        http_method=kind.upper(),
        rule=getattr(rule, kind),
        field=field.name,
        body=kind == "post",
        from_message=from_message,
        from_json=from_json,
        _prefix=found["prefix"] + "/",
        _suffix=suffix,
        _path=re.compile(f"{re.escape(found['prefix'])}/({value}){re.escape(suffix)}"),
        _value=re.compile(value),
        _keys={key: f.name for f in request.fields for key in (f.name, f.json_name)},
    )


#: Every RPC of the package, by method name.
ROWS: Final[Mapping[str, Row]] = {
    m.name: compile_row(m)
    for s in (_proto.SERVICE, _proto.AUTHORIZATION_SERVICE)
    for m in s.methods
}


def match(http_method: str, raw_path: str) -> tuple[Row, str]:
    """The row and the decoded path value of an HTTP request (server side)."""
    allowed: set[str] = set()
    for row in ROWS.values():
        found = row._path.fullmatch(raw_path)
        if found is None:
            continue
        if row.http_method == http_method.upper():
            # %2F stays encoded so that it cannot turn into a separator.
            pieces = re.split(r"(%2[Ff])", found[1])
            return row, "".join(p if p.lower() == "%2f" else unquote(p) for p in pieces)
        allowed.add(row.http_method)
    if allowed:
        raise MethodNotAllowed(
            f"{http_method.upper()} is not allowed on {raw_path}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    raise RouteNotFound(f"no method is served at {raw_path}")


# Canonical code -> HTTP status, as google/rpc/code.proto documents each code.
_HTTP_FOR_CODE: Final[dict[int, int]] = {
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

# HTTP status -> canonical code for a body that is not a Google error. After grpc's
# doc/http-grpc-status-mapping.md, but 400/404/409/412/429 keep their API meaning (only a
# Google-style API sends them without a gRPC hop) and 502/503/504 are UNAVAILABLE.
_CODE_FOR_HTTP: Final[dict[int, int]] = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    409: code_pb2.ABORTED,
    412: code_pb2.FAILED_PRECONDITION,
    416: code_pb2.OUT_OF_RANGE,
    429: code_pb2.RESOURCE_EXHAUSTED,
    499: code_pb2.CANCELLED,
    500: code_pb2.INTERNAL,
    501: code_pb2.UNIMPLEMENTED,
    502: code_pb2.UNAVAILABLE,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.UNAVAILABLE,
}


_CODE_NUMBERS: Final[dict[str, int]] = dict(code_pb2.Code.items())
_CODE_NAMES: Final[dict[int, str]] = {number: name for name, number in _CODE_NUMBERS.items()}


def http_status_for_code(code: int) -> int:
    """The HTTP status Google's REST front sends for a canonical code."""
    return _HTTP_FOR_CODE.get(code, 500)


def code_for_http_status(http_status: int) -> int:
    """The canonical code for an HTTP status whose body is not a Google error."""
    default = code_pb2.OK if 200 <= http_status < 300 else code_pb2.UNKNOWN
    return int(_CODE_FOR_HTTP.get(http_status, default))


def status_to_json(status: status_pb2.Status) -> bytes:
    """Google's JSON error envelope for a status (what the REST front sends)."""
    details = []
    for detail in status.details:
        try:
            details.append(json_format.MessageToDict(detail))
        except (TypeError, KeyError, json_format.Error):
            details.append({"@type": detail.type_url})
    error = {
        "code": http_status_for_code(status.code),
        "message": status.message,
        "status": _CODE_NAMES.get(status.code, "UNKNOWN"),
        "details": details,
    }
    return _dumps({"error": error})


_MAX_QUOTED_BODY: Final = 120


def status_from_http(http_status: int, body: bytes, content_type: str | None) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a non-2xx REST answer (or of a malformed 2xx one)."""
    try:
        error = json.loads(body)["error"] if body.strip() else None
    except (ValueError, RecursionError, TypeError, KeyError, IndexError):
        error = None  # not JSON, or JSON without an "error" object
    if not isinstance(error, dict):
        kind = (content_type or "no content type").split(";")[0].strip()
        what = f"a {kind} body of {len(body)} bytes that is not a Google API error"
        return status_pb2.Status(
            code=code_for_http_status(http_status),
            message=f"HTTP {http_status} with {what if body.strip() else 'an empty body'}",
        )
    name = error.get("status")
    code = _CODE_NUMBERS.get(name if isinstance(name, str) else "")
    text = error.get("message")
    if not isinstance(text, str):
        text = f"HTTP {http_status}"
    elif not text.isascii():
        text = text.encode("utf-8", "replace").decode()  # lone surrogates become "?"
    code = code_for_http_status(http_status) if code is None else code
    status = status_pb2.Status(code=code, message=text)
    raw_details = error.get("details")
    for item in raw_details if isinstance(raw_details, list) else ():
        _detail_from_json(item, status.details.add())
    return status


def _detail_from_json(item: Any, packed: Any) -> None:
    """Pack a detail; one that does not parse is kept as a ``google.protobuf.Value``."""
    if isinstance(item, dict) and isinstance(item.get("@type"), str):
        try:
            json_format.ParseDict(item, packed)
            return
        except (json_format.ParseError, TypeError, KeyError, ValueError, OverflowError):
            pass
    kept = struct_pb2.Value()
    try:
        json_format.ParseDict(item, kept)
    except (json_format.ParseError, TypeError, ValueError, OverflowError):  # an int past a double
        kept.string_value = repr(item)[:_MAX_QUOTED_BODY]
    packed.Pack(kept)
