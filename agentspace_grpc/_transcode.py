"""gRPC transcoding: protobuf messages <-> HTTP/JSON, derived from ``google.api.http``.

Pure functions and immutable objects, no I/O, shared by the client's REST transport and the
emulator's REST front:

- :func:`compile_service` reads each method's HTTP rule from the compiled descriptors once and
  returns :class:`Routes`; :meth:`Route.to_http` turns a request message into an
  :class:`HttpRequest` (client), :meth:`Routes.match` and :meth:`Route.from_http` turn an HTTP
  request back into the message (server).
- :func:`message_to_json` / :func:`message_from_json`: the proto3 JSON mapping (camelCase
  names, int64 as strings, defaults omitted), by a walk over cached descriptor tables rather
  than ``json_format`` (about 20x cheaper per response).
- :func:`status_to_json` / :func:`status_from_http`: Google's JSON error envelope <->
  ``google.rpc.Status``, with the HTTP <-> canonical code tables.

Path variables are percent-encoded as the transcoding spec in ``google/api/http.proto`` says:
all but ``[-_.~0-9a-zA-Z]`` for a single-segment variable, and ``/`` kept as well for a
multi-segment one.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote, unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf import any_pb2, descriptor, json_format, message, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentspace_grpc import _proto

__all__ = [
    "ROUTES",
    "HttpRequest",
    "MethodNotAllowed",
    "Route",
    "RouteNotFound",
    "Routes",
    "TranscodingError",
    "code_for_http_status",
    "compile_service",
    "http_status_for_code",
    "json_loads",
    "message_from_json",
    "message_to_json",
    "status_from_http",
    "status_to_json",
]

# Importing error_details_pb2 registers the google.rpc detail types in the default pool, so
# ``details`` of both wires can be unpacked; keep the name referenced.
_DETAIL_TYPES: Final = error_details_pb2.DESCRIPTOR


class TranscodingError(ValueError):
    """A message or HTTP request that cannot be transcoded; the text names the problem."""


class RouteNotFound(TranscodingError):
    """No HTTP rule matches the path (HTTP 404)."""


class MethodNotAllowed(TranscodingError):
    """A rule matches the path but not the HTTP method (HTTP 405)."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request derived from a message: ``path`` is percent-encoded already."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: bytes | None


# --------------------------------------------------------------------------------------
# Path templates
# --------------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[^/{}*:=]+")


@dataclass(frozen=True, slots=True)
class _Variable:
    field_path: str
    pattern: str  # e.g. "projects/*/locations/*", or "*"
    regex: re.Pattern[str]  # full match of the decoded value
    multi_segment: bool


def _segments_regex(segments: Sequence[str]) -> str:
    parts = []
    for segment in segments:
        if segment == "*":
            parts.append("[^/]+")
        elif segment == "**":
            parts.append(".+")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


class PathTemplate:
    """A compiled ``google.api.http`` path template, such as ``/v1/{name=shelves/*}:get``."""

    __slots__ = ("_pieces", "_regex", "template", "variables")

    def __init__(self, template: str) -> None:
        self.template = template
        if not template.startswith("/"):
            raise ValueError(f"path template {template!r} does not start with '/'")
        body, verb = template, ""
        # The custom verb is a ':' after the last '}' or '/'.
        tail = max(template.rfind("}"), template.rfind("/"))
        colon = template.find(":", tail + 1)
        if colon != -1:
            body, verb = template[:colon], template[colon:]
        self.variables: tuple[_Variable, ...]
        pieces: list[str | _Variable] = []
        regex_parts: list[str] = []
        variables: list[_Variable] = []
        position = 1
        text = body
        while position <= len(text):
            if text.startswith("{", position):
                end = text.find("}", position)
                if end == -1:
                    raise ValueError(f"unclosed '{{' in path template {template!r}")
                inner = text[position + 1 : end]
                field_path, _, pattern = inner.partition("=")
                if not _IDENT.fullmatch(field_path):
                    raise ValueError(f"bad field path {field_path!r} in {template!r}")
                pattern = pattern or "*"
                segments = pattern.split("/")
                for segment in segments:
                    if segment not in ("*", "**") and not _LITERAL.fullmatch(segment):
                        raise ValueError(f"bad segment {segment!r} in {template!r}")
                value_regex = _segments_regex(segments)
                variable = _Variable(
                    field_path=field_path,
                    pattern=pattern,
                    regex=re.compile(value_regex),
                    multi_segment=len(segments) > 1 or "**" in segments,
                )
                variables.append(variable)
                pieces.append(variable)
                # Matched against the raw (encoded) path: a segment is anything but '/'.
                regex_parts.append(f"(?P<v{len(variables) - 1}>{value_regex})")
                position = end + 1
            else:
                end = text.find("/", position)
                end = len(text) if end == -1 else end
                segment = text[position:end]
                if segment in ("*", "**"):
                    regex_parts.append(_segments_regex([segment]))
                    pieces.append(segment)
                elif _LITERAL.fullmatch(segment):
                    regex_parts.append(re.escape(segment))
                    pieces.append(segment)
                else:
                    raise ValueError(f"bad segment {segment!r} in {template!r}")
                position = end
            if position < len(text):
                if text[position] != "/":
                    raise ValueError(f"expected '/' at {position} in {template!r}")
                regex_parts.append("/")
                pieces.append("/")
            position += 1
        if verb:
            if not _LITERAL.fullmatch(verb[1:]):
                raise ValueError(f"bad custom verb {verb!r} in {template!r}")
            regex_parts.append(re.escape(verb))
            pieces.append(verb)
        self.variables = tuple(variables)
        self._pieces = tuple(pieces)
        self._regex = re.compile("/" + "".join(regex_parts))

    def expand(self, values: Sequence[str]) -> str | None:
        """The encoded path for these variable values, or None if one does not match."""
        out = ["/"]
        index = 0
        for piece in self._pieces:
            if isinstance(piece, _Variable):
                value = values[index]
                index += 1
                if not piece.regex.fullmatch(value):
                    return None
                if piece.multi_segment:
                    if any(s in (".", "..") for s in value.split("/")):
                        return None
                    out.append(quote(value, safe="/"))
                else:
                    if value in (".", ".."):
                        return None
                    out.append(quote(value, safe=""))
            elif piece in ("*", "**"):
                raise TranscodingError(
                    f"path template {self.template} has an unnamed wildcard: cannot build a URL"
                )
            else:
                out.append(piece)
        return "".join(out)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Variable values (decoded) if the raw path matches, else None."""
        found = self._regex.fullmatch(raw_path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for i, variable in enumerate(self.variables):
            raw = found.group(f"v{i}")
            if variable.multi_segment:
                # %2F stays encoded so that it cannot turn into a separator.
                values[variable.field_path] = _decode_multi(raw)
            else:
                values[variable.field_path] = unquote(raw)
        return values

    def __repr__(self) -> str:
        return f"PathTemplate({self.template!r})"


def _decode_multi(raw: str) -> str:
    pieces = re.split(r"(%2[Ff])", raw)
    return "".join(p if p.lower() == "%2f" else unquote(p) for p in pieces)


# --------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Binding:
    verb: str
    template: PathTemplate
    body: str


_VERBS: Final = ("get", "put", "post", "delete", "patch")


def _bindings(rule: http_pb2.HttpRule) -> Iterator[_Binding]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return
    if kind == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, template = kind.upper(), getattr(rule, kind)
    yield _Binding(verb, PathTemplate(template), rule.body)
    for extra in rule.additional_bindings:
        yield from _bindings(extra)


class Route:
    """One RPC's HTTP bindings, compiled once from its ``google.api.http`` annotation."""

    __slots__ = (
        "_path_fields",
        "bindings",
        "grpc_path",
        "method",
        "name",
        "request_class",
        "response_class",
    )

    def __init__(
        self,
        method: descriptor.MethodDescriptor,
        request_class: type[message.Message],
        response_class: type[message.Message],
    ) -> None:
        self.method = method
        self.name = method.name
        self.grpc_path = f"/{method.containing_service.full_name}/{method.name}"
        self.request_class = request_class
        self.response_class = response_class
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        self.bindings: tuple[_Binding, ...] = tuple(_bindings(rule))
        if not self.bindings:
            raise ValueError(f"method {method.full_name} has no google.api.http rule")
        for binding in self.bindings:
            for variable in binding.template.variables:
                _field_chain(method.input_type, variable.field_path)  # validates the path
            if binding.body not in ("", "*"):
                _field_chain(method.input_type, binding.body)
        self._path_fields = [
            tuple(v.field_path for v in b.template.variables) for b in self.bindings
        ]

    # ---- client side -----------------------------------------------------------------

    def to_http(self, request: message.Message) -> HttpRequest:
        """The HTTP request for ``request``; the first binding its path fields match wins."""
        for binding, fields in zip(self.bindings, self._path_fields, strict=True):
            values = [_get_path(request, f) for f in fields]
            path = binding.template.expand(values)
            if path is None:
                continue
            return self._build(binding, request, frozenset(fields), path)
        tried = ", ".join(f"{b.verb} {b.template.template}" for b in self.bindings)
        described = ", ".join(
            f"{f}={_get_path(request, f)!r}" for fields in self._path_fields for f in fields
        )
        raise TranscodingError(
            f"{self.name}: {described or 'the request'} matches none of the URL patterns "
            f"tried ({tried})"
        )

    def _build(
        self,
        binding: _Binding,
        request: message.Message,
        path_fields: frozenset[str],
        path: str,
    ) -> HttpRequest:
        if binding.body == "*":
            data = _encode_message(request, exclude=path_fields)
            return HttpRequest(binding.verb, path, (), _dumps(data))
        body: bytes | None = None
        exclude = set(path_fields)
        if binding.body:
            sub = _get_field(request, binding.body)
            encoded = _encode_value(_field_chain(_descriptor(request), binding.body)[-1], sub)
            body = _dumps(encoded)
            exclude.add(binding.body)
        query = tuple(_query_pairs(request, "", "", frozenset(exclude)))
        return HttpRequest(binding.verb, path, query, body)

    # ---- server side -----------------------------------------------------------------

    def from_http(
        self,
        params: Mapping[str, str],
        query: Sequence[tuple[str, str]],
        body: bytes,
        *,
        binding: int = 0,
    ) -> message.Message:
        """The request message for an HTTP request that matched ``binding`` (strict)."""
        rule = self.bindings[binding]
        request = self.request_class()
        if rule.body == "*":
            if body.strip():
                _merge_json(request, json_loads(body), ignore_unknown=False)
        elif rule.body:
            if body.strip():
                parent, field = _parent_and_field(request, rule.body)
                _assign(parent, field, json_loads(body), rule.body, ignore_unknown=False)
        elif body.strip():
            raise TranscodingError(f"{self.name} takes no request body")
        if rule.body != "*":
            _apply_query(request, query, skip=(rule.body,) if rule.body else ())
        else:
            _check_system_query(query)
        for field_path, value in params.items():
            _set_field(request, field_path, value)
        return request

    def __repr__(self) -> str:
        return f"Route({self.name})"


class Routes(Mapping[str, Route]):
    """The compiled routes of a service, by method name, with server-side matching."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = {r.name: r for r in routes}

    def __getitem__(self, name: str) -> Route:
        return self._routes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def match(self, http_method: str, raw_path: str) -> tuple[Route, dict[str, str], int]:
        """The route, decoded path variables and binding index for an HTTP request."""
        allowed: list[str] = []
        verb = http_method.upper()
        for route in self._routes.values():
            for index, binding in enumerate(route.bindings):
                params = binding.template.match(raw_path)
                if params is None:
                    continue
                if binding.verb == verb:
                    return route, params, index
                allowed.append(binding.verb)
        if allowed:
            raise MethodNotAllowed(
                f"{verb} is not allowed on {raw_path}; allowed: {', '.join(sorted(set(allowed)))}"
            )
        raise RouteNotFound(f"no method is served at {raw_path}")


def compile_service(
    service: descriptor.ServiceDescriptor,
    classes: Mapping[str, type[message.Message]] | None = None,
) -> Routes:
    """Compile every method's HTTP rule; ``classes`` maps message full names to classes."""
    from google.protobuf import message_factory

    def lookup(desc: descriptor.Descriptor) -> type[message.Message]:
        if classes and desc.full_name in classes:
            return classes[desc.full_name]
        return message_factory.GetMessageClass(desc)

    return Routes(Route(m, lookup(m.input_type), lookup(m.output_type)) for m in service.methods)


# --------------------------------------------------------------------------------------
# Field paths
# --------------------------------------------------------------------------------------


def _field_chain(desc: descriptor.Descriptor, path: str) -> list[descriptor.FieldDescriptor]:
    chain: list[descriptor.FieldDescriptor] = []
    current: descriptor.Descriptor | None = desc
    for part in path.split("."):
        if current is None:
            raise ValueError(f"field path {path!r} goes through a non-message field")
        field = current.fields_by_name.get(part)
        if field is None:
            raise ValueError(f"{current.full_name} has no field {part!r} (in {path!r})")
        if field.is_repeated and "." in path:
            raise ValueError(f"field path {path!r} goes through a repeated field")
        chain.append(field)
        current = field.message_type
    return chain


def _get_field(msg: message.Message, path: str) -> Any:
    current: Any = msg
    for part in path.split("."):
        current = getattr(current, part)
    return current


def _get_path(msg: message.Message, path: str) -> str:
    value = _get_field(msg, path)
    return str(value)


def _parent_and_field(
    msg: message.Message, path: str
) -> tuple[message.Message, descriptor.FieldDescriptor]:
    *parents, leaf = path.split(".")
    target: message.Message = msg
    for part in parents:
        target = getattr(target, part)
    return target, _descriptor(target).fields_by_name[leaf]


def _set_field(msg: message.Message, path: str, value: str) -> None:
    """Set a path variable's (decoded) value on the request."""
    target, field = _parent_and_field(msg, path)
    setattr(target, field.name, _decode_scalar(field, value, path, from_query=True))


# --------------------------------------------------------------------------------------
# JSON mapping
# --------------------------------------------------------------------------------------

_FD = descriptor.FieldDescriptor
_INT64_TYPES: Final = frozenset(
    {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}
)
_INT32_TYPES: Final = frozenset(
    {_FD.TYPE_INT32, _FD.TYPE_UINT32, _FD.TYPE_SINT32, _FD.TYPE_FIXED32, _FD.TYPE_SFIXED32}
)
_UNSIGNED: Final = frozenset({_FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64})
_FLOAT_TYPES: Final = frozenset({_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE})
_WKT_PREFIX: Final = "google.protobuf."
_INTEGER_TEXT: Final = re.compile(r"-?[0-9]+")


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(data: Any) -> bytes:
    return _ENCODER.encode(data).encode()


_RAW_DECODE: Final = json.JSONDecoder().raw_decode


def json_loads(body: bytes | str) -> Any:
    """``json.loads``, with its errors raised as :class:`TranscodingError`.

    The common case, a UTF-8 document with nothing around it, skips json.loads's encoding
    detection and its two whitespace scans (half its time on a token answer). Anything else
    (whitespace, a BOM, UTF-16, an error) goes through json.loads itself, so the result and
    the errors are json.loads's.
    """
    try:
        text = body.decode() if isinstance(body, bytes) else body
        value, end = _RAW_DECODE(text)
        if end == len(text):
            return value
    except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TranscodingError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise TranscodingError("the body is not valid JSON: it is nested too deeply") from None


def _text(value: str, path: str) -> str:
    """``value`` if protobuf can store it: a lone surrogate (a JSON ``\\udXXX`` escape without
    its pair) has no UTF-8 encoding."""
    if not (value.isascii() or _encodable(value)):
        raise TranscodingError(
            f"invalid value for field {path}: the string is not valid Unicode "
            "(an unpaired surrogate, which UTF-8 cannot encode)"
        )
    return value


def message_to_json(msg: message.Message) -> bytes:
    """Encode a message with the proto3 JSON mapping (defaults omitted)."""
    return _dumps(_encode_message(msg))


def _descriptor(msg: message.Message) -> descriptor.Descriptor:
    return cast(descriptor.Descriptor, msg.DESCRIPTOR)


def _message_type(field: descriptor.FieldDescriptor) -> descriptor.Descriptor:
    desc = field.message_type
    assert desc is not None, f"{field.full_name} is not a message field"
    return desc


def _enum_type(field: descriptor.FieldDescriptor) -> descriptor.EnumDescriptor:
    desc = field.enum_type
    assert desc is not None, f"{field.full_name} is not an enum field"
    return desc


def _is_map(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.message_type is not None and field.message_type.GetOptions().map_entry)


def _encode_message(msg: message.Message, exclude: frozenset[str] = frozenset()) -> Any:
    if msg.DESCRIPTOR.full_name.startswith(_WKT_PREFIX):
        return json_format.MessageToDict(msg)
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.name in exclude:
            continue
        out[field.json_name] = _encode_value(field, value)
    return out


def _encode_value(field: descriptor.FieldDescriptor, value: Any) -> Any:
    if _is_map(field):
        value_field = _message_type(field).fields_by_name["value"]
        return {str(k): _encode_single(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_encode_single(field, v) for v in value]
    return _encode_single(field, value)


def _encode_single(field: descriptor.FieldDescriptor, value: Any) -> Any:
    kind = field.type
    if kind == _FD.TYPE_STRING or kind == _FD.TYPE_BOOL or kind in _INT32_TYPES:
        return value
    if kind == _FD.TYPE_MESSAGE or kind == _FD.TYPE_GROUP:
        return _encode_message(value)
    if kind in _INT64_TYPES:
        return str(value)
    if kind == _FD.TYPE_ENUM:
        enum_value = _enum_type(field).values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if kind == _FD.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if kind in _FLOAT_TYPES:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    raise TranscodingError(f"cannot encode field {field.full_name} of type {kind}")


_FieldTable = dict[str, descriptor.FieldDescriptor]
_TABLES: dict[str, _FieldTable] = {}


def _field_table(desc: descriptor.Descriptor) -> _FieldTable:
    table = _TABLES.get(desc.full_name)
    if table is None:
        table = {}
        for field in desc.fields:
            table[field.name] = field
            table[field.json_name] = field
        _TABLES[desc.full_name] = table
    return table


def message_from_json(
    data: bytes | str, cls: type[message.Message], *, ignore_unknown: bool
) -> message.Message:
    """Decode a JSON document into ``cls``; unknown fields are ignored or rejected."""
    decoded = json_loads(data)
    plan = _fast_plan(_descriptor_of_class(cls))
    if plan is not None and type(decoded) is dict:
        kwargs = _fast_kwargs(plan, decoded, ignore_unknown)
        if kwargs is not None:
            return cls(**kwargs)
    msg = cls()
    _merge_json(msg, decoded, ignore_unknown=ignore_unknown)
    return msg


# The fast path: messages made only of strings, booleans, 32-bit integers, repeated strings
# and such messages (every response of our service) decode into constructor keyword arguments
# in one pass, with exact type checks. Anything else (a null, a number where a string is
# due, a string protobuf cannot store, both spellings of one field, an unknown field in
# strict mode) returns None and the general walk above decodes it and names the problem.
_STR, _BOOL, _INT32, _MSG = range(4)
_FastPlan = dict[str, tuple[str, int, bool, Any]]
_NOT_FAST: Final = object()
_FAST_PLANS: dict[str, Any] = {}  # by message full name


def _descriptor_of_class(cls: type[message.Message]) -> descriptor.Descriptor:
    return cast(descriptor.Descriptor, cls.DESCRIPTOR)


def _fast_plan(desc: descriptor.Descriptor) -> _FastPlan | None:
    plan = _FAST_PLANS.get(desc.full_name)
    if plan is None:
        plan = _FAST_PLANS[desc.full_name] = _build_fast_plan(desc) or _NOT_FAST
    return None if plan is _NOT_FAST else cast(_FastPlan, plan)


def _build_fast_plan(desc: descriptor.Descriptor) -> _FastPlan | None:
    if desc.full_name.startswith(_WKT_PREFIX) or desc.oneofs:
        return None
    plan: _FastPlan = {}
    for field in desc.fields:
        sub: Any = None
        if field.type == _FD.TYPE_STRING:
            kind = _STR
        elif field.type == _FD.TYPE_BOOL and not field.is_repeated:
            kind = _BOOL
        elif field.type in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32) and not (
            field.is_repeated
        ):
            kind = _INT32
        elif field.type == _FD.TYPE_MESSAGE and not _is_map(field):
            sub = _fast_plan(_message_type(field))
            if sub is None:
                return None
            kind = _MSG
        else:
            return None
        entry = (field.name, kind, field.is_repeated, sub)
        plan[field.name] = entry
        plan[field.json_name] = entry
    return plan


def _fast_kwargs(plan: _FastPlan, data: dict[str, Any], ignore_unknown: bool) -> Any:
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        entry = plan.get(key)
        if entry is None:
            if ignore_unknown:
                continue
            return None
        name, kind, repeated, sub = entry
        if name in kwargs:
            return None
        if repeated:
            if type(value) is not list:
                return None
            if kind == _STR:
                for item in value:
                    if type(item) is not str or not (item.isascii() or _encodable(item)):
                        return None
            else:
                items = []
                for item in value:
                    if type(item) is not dict:
                        return None
                    converted = _fast_kwargs(sub, item, ignore_unknown)
                    if converted is None:
                        return None
                    items.append(converted)
                value = items
        elif kind == _STR:
            if type(value) is not str or not (value.isascii() or _encodable(value)):
                return None
        elif kind == _MSG:
            if type(value) is not dict:
                return None
            value = _fast_kwargs(sub, value, ignore_unknown)
            if value is None:
                return None
        elif kind == _BOOL:
            if type(value) is not bool:
                return None
        elif type(value) is not int or not -(2**31) <= value < 2**31:
            return None
        kwargs[name] = value
    return kwargs


def _encodable(text: str) -> bool:
    """False for a string with a lone surrogate, which protobuf cannot store."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _merge_json(msg: message.Message, data: Any, *, ignore_unknown: bool, path: str = "") -> None:
    desc = _descriptor(msg)
    if desc.full_name.startswith(_WKT_PREFIX):
        try:
            json_format.ParseDict(data, msg, ignore_unknown_fields=ignore_unknown)
        except json_format.ParseError as exc:
            raise TranscodingError(f"invalid value for {path or desc.name}: {exc}") from None
        return
    if not isinstance(data, dict):
        where = f"field {path}" if path else "the body"
        raise TranscodingError(f"{where} must be a JSON object, not {_json_kind(data)}")
    table = _field_table(desc)
    seen: set[str] = set()
    for key, value in data.items():
        field = table.get(key)
        name = f"{path}.{key}" if path else key
        if field is None:
            if ignore_unknown:
                continue
            raise TranscodingError(f"unknown field {name!r} in {desc.full_name}")
        if field.name in seen:
            raise TranscodingError(f"field {name!r} is given twice")
        seen.add(field.name)
        if value is None:
            continue  # JSON null means the default
        if field.containing_oneof is not None:
            other = msg.WhichOneof(field.containing_oneof.name)
            if other is not None and other != field.name:
                raise TranscodingError(
                    f"fields {other!r} and {field.name!r} of oneof "
                    f"{field.containing_oneof.name!r} are both set"
                )
        _assign(msg, field, value, name, ignore_unknown)


def _assign(
    msg: message.Message,
    field: descriptor.FieldDescriptor,
    value: Any,
    path: str,
    ignore_unknown: bool,
) -> None:
    if _is_map(field):
        if not isinstance(value, dict):
            raise TranscodingError(f"field {path} must be a JSON object")
        key_field = _message_type(field).fields_by_name["key"]
        value_field = _message_type(field).fields_by_name["value"]
        target = getattr(msg, field.name)
        for k, v in value.items():
            key = _decode_scalar(key_field, k, path, from_query=True)
            if value_field.type == _FD.TYPE_MESSAGE:
                _merge_json(target[key], v, ignore_unknown=ignore_unknown, path=f"{path}[{k}]")
            else:
                target[key] = _decode_scalar(value_field, v, f"{path}[{k}]")
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise TranscodingError(f"field {path} must be a JSON array, not {_json_kind(value)}")
        container = getattr(msg, field.name)
        for i, item in enumerate(value):
            if field.type == _FD.TYPE_MESSAGE:
                _merge_json(
                    container.add(), item, ignore_unknown=ignore_unknown, path=f"{path}[{i}]"
                )
            else:
                container.append(_decode_scalar(field, item, f"{path}[{i}]"))
        return
    if field.type == _FD.TYPE_MESSAGE:
        sub = getattr(msg, field.name)
        sub.SetInParent()
        _merge_json(sub, value, ignore_unknown=ignore_unknown, path=path)
        return
    setattr(msg, field.name, _decode_scalar(field, value, path))


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number"


def _decode_scalar(
    field: descriptor.FieldDescriptor, value: Any, path: str, *, from_query: bool = False
) -> Any:
    kind = field.type
    if kind == _FD.TYPE_STRING:
        if isinstance(value, str):
            return _text(value, path)
    elif kind == _FD.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        if from_query and value in ("true", "false"):
            return value == "true"
    elif kind in _INT32_TYPES or kind in _INT64_TYPES:
        number = _as_int(value)
        if number is not None:
            bits = 64 if kind in _INT64_TYPES else 32
            low, high = (
                (0, 2**bits - 1) if kind in _UNSIGNED else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            )
            if low <= number <= high:
                return number
            raise TranscodingError(f"field {path}: {number} is out of range")
    elif kind in _FLOAT_TYPES:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
            if value in special:
                return special[value]
            try:
                return float(value)
            except ValueError:
                pass
    elif kind == _FD.TYPE_ENUM:
        if isinstance(value, str):
            enum_value = _enum_type(field).values_by_name.get(value)
            if enum_value is not None:
                return enum_value.number
            if from_query and _INTEGER_TEXT.fullmatch(value):
                return int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == _FD.TYPE_BYTES and isinstance(value, str):
        try:
            padded = value + "=" * (-len(value) % 4)
            return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
        except (ValueError, TypeError):
            pass
    raise TranscodingError(
        f"invalid value for field {path}: expected {_expected(field)}, got {_json_kind(value)}"
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        return int(value)
    return None


def _expected(field: descriptor.FieldDescriptor) -> str:
    kind = field.type
    if kind in _INT64_TYPES:
        return "an integer (or a string of digits)"
    if kind in _INT32_TYPES:
        return "an integer"
    if kind in _FLOAT_TYPES:
        return "a number"
    if kind == _FD.TYPE_ENUM:
        return f"one of {', '.join(v.name for v in _enum_type(field).values)}"
    if kind == _FD.TYPE_BYTES:
        return "base64 text"
    if kind == _FD.TYPE_BOOL:
        return "true or false"
    return "a string"


# --------------------------------------------------------------------------------------
# Query parameters
# --------------------------------------------------------------------------------------

# Google's system parameters: accepted on any method and ignored by the transcoder.
_SYSTEM_PARAMETERS: Final = frozenset(
    {
        "$.xgafv",
        "alt",
        "$alt",
        "callback",
        "$callback",
        "fields",
        "$fields",
        "key",
        "prettyPrint",
        "$prettyPrint",
        "quotaUser",
        "upload_protocol",
        "uploadType",
    }
)


def _query_pairs(
    msg: message.Message, prefix: str, proto_prefix: str, exclude: frozenset[str]
) -> Iterator[tuple[str, str]]:
    """Query parameters (JSON names, dotted for nested fields) for the fields left over."""
    for field, value in msg.ListFields():
        dotted = f"{proto_prefix}{field.name}"
        if dotted in exclude:
            continue
        key = f"{prefix}{field.json_name}"
        if _is_map(field):
            raise TranscodingError(f"map field {dotted} cannot travel as a query parameter")
        if field.type == _FD.TYPE_MESSAGE:
            if field.is_repeated:
                raise TranscodingError(
                    f"repeated message field {dotted} cannot travel as a query parameter"
                )
            if _message_type(field).full_name.startswith(_WKT_PREFIX):
                yield key, json.dumps(json_format.MessageToDict(value)).strip('"')
                continue
            yield from _query_pairs(value, f"{key}.", f"{dotted}.", exclude)
            continue
        values = value if field.is_repeated else [value]
        for item in values:
            encoded = _encode_single(field, item)
            if isinstance(encoded, bool):
                encoded = "true" if encoded else "false"
            yield key, str(encoded)


def _check_system_query(query: Sequence[tuple[str, str]]) -> None:
    for key, _ in query:
        if key not in _SYSTEM_PARAMETERS:
            raise TranscodingError(f"unknown query parameter {key!r}")


def _apply_query(
    msg: message.Message, query: Sequence[tuple[str, str]], skip: tuple[str, ...]
) -> None:
    for key, value in query:
        if key in _SYSTEM_PARAMETERS:
            continue
        target: message.Message = msg
        parts = key.split(".")
        dotted: list[str] = []
        for i, part in enumerate(parts):
            field = _field_table(_descriptor(target)).get(part)
            if field is None:
                raise TranscodingError(f"unknown query parameter {key!r}")
            dotted.append(field.name)
            if ".".join(dotted) in skip:
                raise TranscodingError(f"query parameter {key!r} belongs in the body")
            last = i == len(parts) - 1
            if field.type == _FD.TYPE_MESSAGE:
                if last or field.is_repeated or _is_map(field):
                    raise TranscodingError(f"query parameter {key!r} names a message field")
                target = getattr(target, field.name)
                continue
            if not last:
                raise TranscodingError(f"unknown query parameter {key!r}")
            decoded = _decode_scalar(field, value, key, from_query=True)
            if field.is_repeated:
                getattr(target, field.name).append(decoded)
            else:
                setattr(target, field.name, decoded)


# --------------------------------------------------------------------------------------
# Errors: google.rpc.Status <-> Google's JSON error envelope
# --------------------------------------------------------------------------------------

# Canonical code -> HTTP status, as google/rpc/code.proto documents each code.
_HTTP_FOR_CODE: Final[dict[int, int]] = {
    code_pb2.OK: 200,
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

# HTTP status -> canonical code, for answers that are not a Google error (a proxy's page, an
# empty body). After grpc's doc/http-grpc-status-mapping.md, except that 400/404/409/412/429,
# which only a Google-style API sends without a gRPC hop, keep their API meaning, and gateway
# failures (502/503/504) are UNAVAILABLE: the request may be retried.
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
    if http_status in _CODE_FOR_HTTP:
        return _CODE_FOR_HTTP[http_status]
    if 200 <= http_status < 300:
        return int(code_pb2.OK)
    return int(code_pb2.UNKNOWN)


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
    error = None
    if body.strip():
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            document = None
        if isinstance(document, dict) and isinstance(document.get("error"), dict):
            error = document["error"]
    if error is None:
        kind = (content_type or "no content type").split(";")[0].strip()
        if not body.strip():
            what = "an empty body"
        else:
            what = f"a {kind} body of {len(body)} bytes that is not a Google API error"
        return status_pb2.Status(
            code=code_for_http_status(http_status),
            message=f"HTTP {http_status} with {what}",
        )
    name = error.get("status")
    if isinstance(name, str) and name in _CODE_NUMBERS:
        code = _CODE_NUMBERS[name]
    else:
        code = code_for_http_status(http_status)
    text = error.get("message")
    if not isinstance(text, str):
        text = f"HTTP {http_status}"
    elif not text.isascii():
        text = text.encode("utf-8", "replace").decode()  # lone surrogates become "?"
    status = status_pb2.Status(code=code, message=text)
    raw_details = error.get("details")
    if isinstance(raw_details, list):
        for item in raw_details:
            status.details.append(_detail_from_json(item))
    return status


def _detail_from_json(item: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    if isinstance(item, dict) and isinstance(item.get("@type"), str):
        try:
            json_format.ParseDict(item, packed)
            return packed
        except (json_format.ParseError, TypeError, KeyError, ValueError):
            pass
    kept = struct_pb2.Value()
    try:
        json_format.ParseDict(item, kept)
    except (json_format.ParseError, TypeError, ValueError):
        kept.string_value = repr(item)[:_MAX_QUOTED_BODY]
    packed.Pack(kept)
    return packed


#: The compiled routes of DataConnectorService.
ROUTES: Final = compile_service(_proto.SERVICE)
