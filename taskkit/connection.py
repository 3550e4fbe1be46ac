"""The task queues' Redis, built in one place: one node (`redis://…`) or the master a Redis Sentinel names, as a
redis-py async client (producers, the ops API, the index worker's version guard) and as ARQ RedisSettings (workers).

Why one node: ARQ's keys of one job (queue, job, in-progress, result) span hash slots and its scripts touch several at
once, so a Redis Cluster cannot hold them; `check()` refuses a Cluster node at start-up. Sentinel gives the queues
failover instead: every client asks the Sentinels for the current master, and asks again after a connection error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
CLUSTER_WHY = "ARQ's keys of one job span hash slots, so the task queues need one Redis node (or a Sentinel-managed one)"


class QueueRedisError(Exception):
    """The queues' Redis cannot be used as configured; the message is one line saying why and what to set."""


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` → ((host, port), …); ValueError naming the bad part."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port[,host:port…]; got {part!r}")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class QueueRedis:
    """Where the task queues live. With `sentinels`, the master named `sentinel_master` is asked of them, and
    `url` gives only the database, credentials and TLS (its host is not used). `wait_replicas` > 0: each enqueue
    waits (Redis WAIT, up to `wait_timeout_ms`) until that many replicas have the job before it is acknowledged."""

    url: str = DEFAULT_URL
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    timeout_s: float = 2.0
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    def __post_init__(self) -> None:
        if "," in self.url:
            raise QueueRedisError(f"the queue Redis URL {self.url!r} names several nodes: {CLUSTER_WHY}")

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """Where it is, for messages (no password)."""
        if self.sentinel:
            return (f"Sentinel master {self.sentinel_master!r} via "
                    + ",".join(f"{h}:{p}" for h, p in self.sentinels))
        u = urlsplit(self.url)
        return f"{u.scheme}://{u.hostname or ''}{':' + str(u.port) if u.port else ''}{u.path}"

    def _master_kwargs(self) -> dict[str, Any]:
        """Database, credentials and TLS of the master's connections (Sentinel mode), from the URL."""
        u = urlsplit(self.url)
        db = u.path.lstrip("/")
        kwargs: dict[str, Any] = {"db": int(db) if db.isdigit() else 0}
        if u.username:
            kwargs["username"] = u.username
        if u.password:
            kwargs["password"] = u.password
        if u.scheme == "rediss":
            kwargs["ssl"] = True
        return kwargs

    def client(self, **kwargs: Any) -> Redis:
        """A redis-py async client of the queues' Redis (Sentinel: of the current master, followed across
        failovers). `kwargs` go to the client (e.g. `health_check_interval`)."""
        timeouts = {"socket_connect_timeout": self.timeout_s, "socket_timeout": self.timeout_s}
        if not self.sentinel:
            return Redis.from_url(self.url, **timeouts, **kwargs)
        sentinel = Sentinel(list(self.sentinels), sentinel_kwargs=dict(timeouts), **timeouts, **self._master_kwargs())
        return sentinel.master_for(self.sentinel_master, **kwargs)

    def arq_settings(self, **overrides: Any) -> RedisSettings:
        """ARQ's RedisSettings (its `sentinel=True` mode for Sentinel; ARQ then sets no socket timeouts on the
        master's connections). `overrides` set RedisSettings fields (e.g. `conn_timeout`)."""
        if self.sentinel:
            kw = self._master_kwargs()
            s = RedisSettings(host=list(self.sentinels), sentinel=True, sentinel_master=self.sentinel_master,
                              database=kw["db"], username=kw.get("username"), password=kw.get("password"),
                              ssl=kw.get("ssl", False))
        else:
            s = RedisSettings.from_dsn(self.url)
        s.conn_timeout = int(max(1, self.timeout_s))
        for k, v in overrides.items():
            setattr(s, k, v)
        return s

    async def check(self, *, timeout_s: float | None = None) -> bool:
        """At start-up: raise QueueRedisError when the queues' Redis is a Cluster node (INFO cluster says
        cluster_enabled:1). True when it answered, False when it did not within the timeout (not an error here:
        producers answer 503 and workers retry until it does)."""
        client = self.client()
        try:
            info = await asyncio.wait_for(client.info("cluster"), timeout_s or self.timeout_s)
        except (RedisError, OSError, TimeoutError):
            return False
        finally:
            await client.aclose()
        if int(info.get("cluster_enabled", 0)):
            raise QueueRedisError(f"the queue Redis {self.describe()} is a Redis Cluster node (cluster_enabled:1): "
                                  f"{CLUSTER_WHY}")
        return True


__all__ = ["CLUSTER_WHY", "DEFAULT_URL", "QueueRedis", "QueueRedisError", "parse_sentinels"]
