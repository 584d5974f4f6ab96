"""The local emulator of DataConnectorService and AuthorizationService: gRPC and REST on
loopback, for real.

``Emulator`` is imported lazily so that ``agentspace_grpc.emulator._main`` (the command line)
and the pytest plugin stay cheap to import; the emulator itself needs the ``emulator`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentspace_grpc.emulator._consent import EmulatorError
    from agentspace_grpc.emulator._emulator import Emulator

__all__ = ["Emulator", "EmulatorError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from agentspace_grpc.emulator import _emulator

        return getattr(_emulator, name)  # EmulatorError too (imported there)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
