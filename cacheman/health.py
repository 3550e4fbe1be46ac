"""Redis health judged per node: a small breaker window per node (one for a single node), keyed by node name.

Why per node: on a Cluster a dead master takes down only its own slots; its keys bypass (origin behind the
bypass limit) while keys on the other masters keep hitting. Why a window: a hung node then costs one timeout
per window, not one per request; after it one caller probes (half-open) while the others keep bypassing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError

from cacheman.redisconn import SINGLE_NODE

log = logging.getLogger("cacheman.health")


def _single(key: str) -> str:
    return SINGLE_NODE


def lost_connection(exc: BaseException) -> bool:
    """An open connection dropped (not a node refusing or timing out): a killed node's in-flight commands, and
    the commands RedisCluster cut itself when it closes every node's connections to reload the slot map after
    one node failed. That request bypasses; a window opens only when the node is found unreachable (connect
    refused or timed out) or slow, so one dead master does not close the healthy masters' windows too."""
    return isinstance(exc, RedisConnectionError) and "connecting to" not in str(exc)


class RedisHealth:
    """`usable(key)` is False for `retry_s` after a failure of the key's node; `on_change(nodes down)` follows it."""

    def __init__(self, retry_s: float, node_of: Callable[[str], str] = _single, *, what: str = "the cache",
                 on_change: Callable[[int], None] | None = None, quiet: bool = False) -> None:
        self.retry_s = retry_s
        self.node_of = node_of
        self.what = what
        self.quiet = quiet  # the owner logs itself
        self.on_change = on_change
        self._down: dict[str, float] = {}  # node → monotonic time its window ends
        self._next_prune = 0.0

    @property
    def down(self) -> list[str]:
        """Nodes inside a window now (or probing)."""
        return sorted(self._down)

    def usable(self, key: str) -> bool:
        if not self._down:  # the common case: nothing to look up
            return True
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + self.retry_s
            self._forget_unrouted(now)
        return self.node_usable(self.node_of(key))

    def node_usable(self, node: str) -> bool:
        until = self._down.get(node)
        if until is None:
            return True
        now = time.monotonic()
        if now < until:
            return False
        self._down[node] = now + self.retry_s  # this caller is the probe; the others wait another window
        return True

    def failed(self, key: str, exc: BaseException) -> None:
        self.node_failed(self.node_of(key), exc)

    def node_failed(self, node: str, exc: BaseException) -> None:
        if lost_connection(exc):
            log.debug("redis node %s: a connection dropped (%s); no window", node, exc)
            return
        if node not in self._down:
            where = f" node {node}" if node else ""
            if not self.quiet:
                    log.warning("redis%s unavailable, %s bypasses it for %.1fs: %s: %s", where, self.what, self.retry_s,
                            type(exc).__name__, str(exc)[:300])
            self._down[node] = time.monotonic() + self.retry_s
            self._changed()
        else:
            self._down[node] = time.monotonic() + self.retry_s

    def ok(self, key: str) -> None:
        if self._down:
            self.node_ok(self.node_of(key))

    def node_ok(self, node: str) -> None:
        if self._down.pop(node, None) is not None:
            if not self.quiet:
                    log.info("redis%s answers again; %s uses it", f" node {node}" if node else "", self.what)
            self._changed()

    def reset(self) -> None:
        """Forget every window (tests)."""
        self._down.clear()
        self._changed()

    def _forget_unrouted(self, now: float) -> None:
        """A node nobody probed for many windows holds no slot any more (its replica took over): forget it."""
        stale = [n for n, until in self._down.items() if now - until > 10 * self.retry_s]
        for n in stale:
            del self._down[n]
        if stale:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self._down))
