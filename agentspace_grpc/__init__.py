"""Asyncio client and local emulator for Discovery Engine's DataConnectorService token methods."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
