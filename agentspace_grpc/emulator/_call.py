"""The seam between a wire and what answers it: one :class:`Call`, one :class:`Handler`.

The emulator's gRPC front (:mod:`._grpc`) and REST front (:mod:`._rest`) decode a request on
its row of :mod:`agentspace_grpc._wire` and hand a :class:`Call` to a handler; the handler
answers the row's response message or raises :class:`ServiceError`, which the front sends as a
``google.rpc.Status`` in the shape of its wire. The emulator's ``Service`` is one handler; test
and benchmark servers plug their own into the same fronts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from google.protobuf import message

from agentspace_grpc._wire import Row
from agentspace_grpc.emulator._errors import invalid_argument


@dataclass(frozen=True, slots=True, repr=False)
class Call:
    """One call as a front received it.

    Attributes:
        row: The RPC.
        wire: The front that received it.
        headers: The gRPC metadata or the HTTP headers; look names up in lowercase.
    """

    row: Row
    wire: Literal["grpc", "rest"]
    headers: Mapping[str, str]
    _request: message.Message | None
    _problem: str = ""  # why the request did not decode

    def __repr__(self) -> str:  # the headers and the request may hold secrets
        return f"Call({self.row.name}, {self.wire})"

    @property
    def request(self) -> message.Message:
        """The request message; INVALID_ARGUMENT if the bytes or the JSON did not decode.

        Decoding fails late, when a handler asks, so that a handler checks the caller first
        (an unauthenticated caller learns nothing about its request) on both wires alike.
        """
        if self._request is None:
            raise invalid_argument(self._problem)
        return self._request

    @property
    def authorization(self) -> str | None:
        """The ``authorization`` header or metadata value, if any."""
        return self.headers.get("authorization")


class Handler(Protocol):
    """Answers the calls of every row (an unknown RPC: ServiceError UNIMPLEMENTED).

    An answer is read-only once returned: a handler may return the same message again (a
    cache hit), and a front may reuse what it made of it.
    """

    async def handle(self, call: Call) -> message.Message:
        """The response message, or raises :class:`ServiceError`."""
        ...
