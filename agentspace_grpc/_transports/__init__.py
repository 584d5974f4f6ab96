"""The two wires behind one interface: gRPC (``grpc.aio``) and REST (aiohttp + transcoding)."""

from __future__ import annotations

from agentspace_grpc._transports.base import Endpoint, Transport
from agentspace_grpc._transports.grpc import GrpcTransport
from agentspace_grpc._transports.rest import RestTransport

__all__ = ["Endpoint", "GrpcTransport", "RestTransport", "Transport"]
