"""The reopen gate of the Milvus store: after a connection loss, one lone probe before any other call.

Why: Milvus Lite (3.2.2) opens a collection on its first request after a restart, without a lock, so concurrent
first requests each open (and replay) it; the last one opened wins and the writes the others took are
acknowledged yet lost (tests/index_worker/test_milvus_restart.py). A probe that runs alone opens it once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from index_worker import metrics
from index_worker.milvus_errors import MilvusOverloaded, MilvusPermanent, MilvusTransient

# No Milvus (Lite: Python start-up, then the collection's WAL replay) stops and answers again faster: a call after
# a longer silence may meet a restarted server that no failed call told us about, so it goes through the gate.
RESTART_MIN_S = 1.0


class ReopenGate:
    """Losses seen (failed calls) vs the losses seen when the last probe started, and when Milvus last answered:
    while the losses differ or the silence exceeds RESTART_MIN_S, callers wait for one probe."""

    def __init__(self, restart_min_s: float = RESTART_MIN_S) -> None:
        self.restart_min_s = restart_min_s
        self._losses = 0
        self._losses_probed = 0
        self._last_answer = time.monotonic()
        self._probes_done = 0
        self._probe_error: MilvusTransient | None = None
        self._lock = asyncio.Lock()

    def lost(self) -> None:
        """A call failed in a way that may mean another server process answers next (unavailable, timeout)."""
        self._losses += 1

    def answered(self) -> None:
        """A call ended (answered or failed): a restart after this is a silence or a failure."""
        self._last_answer = time.monotonic()

    def needed(self) -> bool:
        return self._losses != self._losses_probed or time.monotonic() - self._last_answer > self.restart_min_s

    async def wait(self, method: str, probe: Callable[[], Awaitable[Any]]) -> None:
        """Run `probe` alone if needed; callers queued behind a failed probe fail like it without probing again.
        Raises MilvusTransient(not_sent=True): the caller's request never left, its leases may be released."""
        arrived = self._probes_done
        async with self._lock:
            if not self.needed():
                return  # another caller's probe reopened it, or a call was answered meanwhile
            if self._probes_done != arrived and self._probe_error is not None:  # it failed while we waited
                raise MilvusTransient(f"Milvus {method} not sent: {self._probe_error}", code=self._probe_error.code,
                                      not_sent=True)
            losses, self._probe_error = self._losses, None
            try:
                await probe()
            except MilvusTransient as exc:
                self._probe_error = exc
                raise MilvusTransient(f"Milvus {method} not sent: the connection was lost and reopening the "
                                      f"collection failed: {exc}", code=exc.code, not_sent=True) from exc
            except (MilvusPermanent, MilvusOverloaded):
                pass  # Milvus answered (no such collection, busy): the call itself says what is wrong
            finally:
                self._probes_done += 1
            self._losses_probed = losses
            self.answered()
            metrics.MILVUS_REOPENS.inc()
