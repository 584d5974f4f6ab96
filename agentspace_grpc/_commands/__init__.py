"""The token subcommands of ``agentspace-grpc``: ``acquire``, ``store``, ``check``,
``status`` and ``demo``.

Each module has a ``register(subparsers)`` that adds its subcommand; the client, grpc and the
emulator are imported only when a subcommand runs, so ``--help`` and the other subcommands
stay cheap.
"""

from __future__ import annotations
