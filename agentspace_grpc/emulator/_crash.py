"""Crash points: where an emulator process kills itself on purpose, for recovery tests
(``AGENTSPACE_EMULATOR_CRASH_AT``). They wrap the store, so domain code knows nothing of them.

- ``after-upstream-refresh``: SIGKILL when a refresh's outcome is about to be committed: the
  provider has rotated the refresh token and the store has not saved the new one.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Final

from agentspace_grpc.emulator._store import Store

log = logging.getLogger("agentspace_grpc.emulator")


class _KilledBeforeCommit(Store):
    async def commit_refresh(self, *args: Any, **kwargs: Any) -> bool:
        log.warning("crash point after-upstream-refresh: SIGKILL before the commit")
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("the process outlived SIGKILL")  # pragma: no cover


#: Each crash point and the store that carries it out.
CRASH_POINTS: Final[dict[str, type[Store]]] = {"after-upstream-refresh": _KilledBeforeCommit}
