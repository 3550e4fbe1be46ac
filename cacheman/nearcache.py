"""The optional in-process near cache for membership checks, kept honest by a Redis pub/sub broadcast.

Whichever process applies an event publishes the members keys it touched; every process drops them.
If the broadcast connection drops, the whole near cache is flushed and bypassed until re-subscribed;
each entry also expires after `ttl_s`, which bounds staleness even if a broadcast is silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cacheman import metrics as m

log = logging.getLogger("cacheman.nearcache")


class NearCache:
    """{members key: {user: (role, room exists)}} per process, for at most `ttl_s` per entry."""

    def __init__(self, redis: aioredis.Redis, channel: str, *, ttl_s: float = 1.0, max_entries: int = 100_000) -> None:
        self.redis = redis  # a dedicated client: its connection carries only the subscription
        self.channel = channel
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.generation = 0  # bumped by every invalidation: a read that raced one is not stored
        self.active = False  # serve only while subscribed
        self._data: OrderedDict[str, tuple[float, int, dict[str, tuple[str | None, bool]]]] = OrderedDict()
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, user: str) -> tuple[str | None, bool, int] | None:
        """(role, room exists, stored epoch ms) or None (not cached, expired, or broadcast down)."""
        if not self.active:
            return None
        item = self._data.get(key)
        if item is None:
            return None
        created, stored, users = item
        if time.monotonic() - created > self.ttl_s:
            del self._data[key]
            return None
        got = users.get(user)
        if got is None:
            return None
        return got[0], got[1], stored

    def put(self, key: str, user: str, role: str | None, exists: bool, stored_ms: int, generation: int) -> None:
        """Store what Redis answered, unless an invalidation arrived since the read began."""
        if not self.active or generation != self.generation:
            return
        item = self._data.get(key)
        if item is None or time.monotonic() - item[0] > self.ttl_s:
            if len(self._data) >= self.max_entries:
                self._data.popitem(last=False)
            item = (time.monotonic(), stored_ms, {})
            self._data[key] = item
        item[2][user] = (role, exists)

    def invalidate(self, keys) -> None:
        self.generation += 1
        for k in keys:
            self._data.pop(k, None)

    def flush(self) -> None:
        self.generation += 1
        if self._data:
            m.NEAR_FLUSHES.inc()
        self._data.clear()

    async def start(self, wait_s: float = 2.0) -> None:
        """Subscribe in the background; wait up to `wait_s` for the first subscription."""
        self._task = asyncio.create_task(self._run(), name="nearcache-subscriber")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.active = False
        self._data.clear()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        self.flush()  # anything cached while not subscribed may have missed a broadcast
                        self.active = True
                        self._subscribed.set()
                        backoff = 0.05
                    elif msg["type"] == "message":
                        self._on_message(msg["data"])
            except (RedisError, OSError) as exc:
                self.active = False
                self.flush()
                log.warning("near cache broadcast lost (%s: %s); flushed, re-subscribing", type(exc).__name__, exc)
            finally:
                self.active = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_message(self, data: bytes) -> None:
        try:
            keys = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.flush()  # unreadable broadcast: be safe
            return
        self.invalidate(keys if isinstance(keys, list) else [keys])
