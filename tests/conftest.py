"""Shared fixtures: servers bind port 0 on 127.0.0.1."""

from __future__ import annotations
