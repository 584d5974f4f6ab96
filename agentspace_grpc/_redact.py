"""Taking what a call sent out of the errors it raises: a server can echo a token back.

A server (or a proxy in front of it) may quote the request in its error: the bearer token, the
redirect URI of a store call and the authorization code in it. :func:`redact` removes every form
of them from an error tree before the caller sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

from google.protobuf import json_format, message

from agentspace_grpc._errors import DETAILS_FILE, REDACTED, DataConnectorError

__all__ = ["redact", "sent_secrets"]


def sent_secrets(request: message.Message, authorization: str | None) -> list[str]:
    """What a request carried that a server must not be able to echo into an exception."""
    sent = []
    if authorization:
        sent += [authorization, authorization.partition(" ")[2]]
    # The store calls' redirect URI, and the authorization code in it.
    uri = getattr(request, "full_redirect_uri", "")
    if uri:
        sent.append(uri)
        with contextlib.suppress(ValueError):
            sent += parse_qs(urlsplit(uri).query).get("code", [])
    return sent


# Shorter values are not searched for: no real token or code is that short, and replacing
# them would erase ordinary words of the messages.
_MIN_SECRET: Final = 8


def redact(error: DataConnectorError, sent: Iterable[str | None]) -> None:
    """Take what the request carried out of ``error``, in place, so no echo of it survives.

    Every value in ``sent`` (raw, percent-encoded and form-encoded), and the start of one that
    a length limit cut short at the end of a text, is replaced in each attribute's text
    (message, args, reason, metadata, principal, ...); a ``google.rpc``
    detail holding one is rewritten, any other detail type holding one is dropped. Along the
    ``__cause__`` / ``__context__`` chain, errors of this tree are redacted the same way and
    any other exception (grpc's ``AioRpcError``, a JSON decoder's error keeping the whole body)
    is cut off: its server-supplied text cannot be cleaned, and the message says what it said.
    """
    forms: set[str] = set()
    for value in sent:
        if value and len(value) >= _MIN_SECRET:
            forms.update((value, quote(value, safe=""), quote_plus(value, safe="")))
    secrets = sorted(forms, key=len, reverse=True)  # a URI before the code inside it
    pending: list[DataConnectorError] = [error]
    done: list[DataConnectorError] = []
    while pending:
        current = pending.pop()
        if any(current is seen for seen in done):
            continue
        done.append(current)
        if secrets:
            for name, value in list(vars(current).items()):
                cleaned = _clean(value, secrets)
                setattr(current, name, None if cleaned is _Dropped else cleaned)
            current.args = _clean(current.args, secrets)
        for linked in (current.__cause__, current.__context__):
            if isinstance(linked, DataConnectorError):
                pending.append(linked)
        if not isinstance(current.__cause__, DataConnectorError):
            current.__cause__ = None
        if not isinstance(current.__context__, DataConnectorError):
            current.__context__ = None


_Dropped: Final = object()  # what _clean makes of a detail it must drop


def _clean(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        for secret in secrets:  # a quote cut short at a length limit ends in part of one
            for size in range(len(secret) - 1, _MIN_SECRET - 1, -1):
                if value.endswith(secret[:size]):
                    value = value[:-size] + REDACTED
                    break
        return value
    if isinstance(value, tuple | list):
        cleaned = (_clean(item, secrets) for item in value)
        return type(value)(item for item in cleaned if item is not _Dropped)
    if isinstance(value, Mapping):
        return {_clean(k, secrets): _clean(v, secrets) for k, v in value.items()}
    if isinstance(value, message.Message):
        return _clean_detail(value, secrets)
    return value


def _holds(detail: message.Message, secrets: Sequence[str]) -> bool:
    data = detail.SerializeToString()
    return any(secret.encode() in data for secret in secrets)


def _clean_detail(detail: message.Message, secrets: Sequence[str]) -> object:
    """The detail without the secrets, or ``_Dropped`` when only dropping can remove them."""
    if not _holds(detail, secrets):
        return detail
    if detail.DESCRIPTOR.file is not DETAILS_FILE:
        return _Dropped  # a type whose fields this client does not know
    cleaned = type(detail)()
    json_format.ParseDict(_clean(json_format.MessageToDict(detail), secrets), cleaned)
    return _Dropped if _holds(cleaned, secrets) else cleaned
