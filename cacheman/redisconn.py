"""The cache's Redis connection, single node or Cluster: built in one place from RedisConfig, plus what differs.

What differs on a Cluster, and only here: which node a key lives on (`Topology`, for per-node health), how a
PUBLISH is sent (RedisCluster has no `publish()`), and where the near cache subscribes (`NodeSubscriber`:
RedisCluster has no `pubsub()`; a classic PUBLISH reaches every node, so one plain connection to any node hears
it, and the next subscription after a failure goes to the next node).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

if TYPE_CHECKING:
    from hotpath.settings import ApiSettings

log = logging.getLogger("cacheman.redisconn")

AnyRedis = aioredis.Redis | RedisCluster
# What a Redis call can raise when Redis cannot answer: redis-py's cluster errors about the slot map
# (SlotNotCoveredError, "cannot be connected") are not RedisErrors.
REDIS_ERRORS = (RedisError, RedisClusterException)
SINGLE_NODE = ""  # the node name of every key in single-node mode: one health window
UNKNOWN_NODE = "?"  # a Cluster whose slot map is not loaded yet


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """How the cache reaches Redis; each field's meaning is its `HOTPATH_*` setting's description."""

    url: str = "redis://127.0.0.1:6379/0"  # HOTPATH_REDIS_URL (Cluster: seed nodes, comma-separated)
    cluster: bool = False  # HOTPATH_REDIS_CLUSTER
    timeout_s: float = 2.0  # HOTPATH_REDIS_TIMEOUT_S
    max_connections: int = 256  # per node

    @classmethod
    def from_settings(cls, s: ApiSettings) -> RedisConfig:
        return cls(url=s.redis_url, cluster=s.redis_cluster, timeout_s=s.redis_timeout_s)


def seed_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`redis://[user:pw@]h1:p1,h2:p2` or `redis://h1:p1,redis://h2:p2` → ([(host, port)…], connection kwargs of
    the first URL: credentials and TLS). A database number other than 0 is refused (a Cluster has only db 0)."""
    parts = [p.strip() for p in url.split(",") if p.strip()]
    first = urlsplit(parts[0])
    if first.path not in ("", "/", "/0"):
        raise ValueError(f"HOTPATH_REDIS_URL {parts[0]!r}: a Redis Cluster has only database 0; drop {first.path!r}")
    kwargs: dict[str, Any] = {"ssl": first.scheme == "rediss"}
    if first.username:
        kwargs["username"] = first.username
    if first.password:
        kwargs["password"] = first.password
    nodes = []
    for part in parts:
        u = urlsplit(part if "://" in part else f"{first.scheme}://{part}")
        if not u.hostname:
            raise ValueError(f"HOTPATH_REDIS_URL: {part!r} names no host")
        nodes.append((u.hostname, u.port or 6379))
    return nodes, kwargs


class _Closable:
    """RedisCluster (redis-py 5.3) closes every node's connections when one node fails, including connections other
    tasks are writing to; such a write then fails with AttributeError (its writer is gone). Raise the
    ConnectionError it is instead, which redis-py retries on a fresh connection (and never becomes a 500)."""

    async def _send_packed_command(self, command) -> None:
        if self._writer is None:
            raise RedisConnectionError(f"connection to {self.host}:{self.port} was closed while in use")
        await super()._send_packed_command(command)


class ClusterConnection(_Closable, Connection):
    pass


class SSLClusterConnection(_Closable, SSLConnection):
    pass


def open_redis(cfg: RedisConfig) -> AnyRedis:
    """The cache's client. Cluster: redis-py's RedisCluster over the seed nodes, with few internal retries —
    our per-node health window (health.py) decides when to try a failing node again, and a request must not
    spend several timeouts inside redis-py first. One retry stays, so a command whose connection redis-py
    itself closed while re-reading the slot map (it drops every node's connections then) is sent again."""
    common = {"socket_connect_timeout": cfg.timeout_s, "socket_timeout": cfg.timeout_s, "max_connections": cfg.max_connections}
    if not cfg.cluster:
        if "," in cfg.url:
            raise ValueError("HOTPATH_REDIS_URL names several nodes but HOTPATH_REDIS_CLUSTER is not true; "
                             "set HOTPATH_REDIS_CLUSTER=true for a Redis Cluster, or give one URL")
        return aioredis.Redis.from_url(cfg.url, health_check_interval=15, **common)
    nodes, kwargs = seed_nodes(cfg.url)
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in nodes],
        require_full_coverage=False,  # a master down must not stop the client from using the other slots
        cluster_error_retry_attempts=2,
        retry=Retry(NoBackoff(), 0),
        **common,
        **kwargs,
    )
    # The nodes found by every (re)load of the slot map are built from these kwargs (RedisCluster hard-codes the
    # connection class in its constructor).
    client.get_connection_kwargs()["connection_class"] = SSLClusterConnection if kwargs["ssl"] else ClusterConnection
    return client


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


async def connect(redis: AnyRedis) -> None:
    """Load a Cluster's slot map now (so per-node health knows the nodes from the first request); a Cluster that
    does not answer yet is not an error here: the first command tries again, and requests bypass meanwhile."""
    if is_cluster(redis):
        try:
            await redis.initialize()
        except (*REDIS_ERRORS, OSError) as exc:
            log.warning("redis cluster not reachable at start-up (%s: %s); the cache bypasses it until it is",
                        type(exc).__name__, exc)


class Topology:
    """Which node a key lives on, by name (host:port); one name for every key of a single node."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis if is_cluster(redis) else None

    def node_of(self, key: str) -> str:
        if self.redis is None:
            return SINGLE_NODE
        try:
            return self.redis.get_node_from_key(key).name
        except REDIS_ERRORS:  # slot map not loaded yet (SlotNotCoveredError)
            return UNKNOWN_NODE


async def publish(redis: AnyRedis, channel: str, message: bytes) -> None:
    """PUBLISH on any node that answers (a classic PUBLISH is forwarded to every node of a Cluster)."""
    if not is_cluster(redis):
        await redis.publish(channel, message)
        return
    nodes = redis.get_primaries() or redis.get_nodes()
    if not nodes:  # slot map not loaded: let redis-py load it and pick its default node
        await redis.execute_command("PUBLISH", channel, message)
        return
    error: Exception | None = None
    for node in random.sample(nodes, len(nodes)):
        try:
            await redis.execute_command("PUBLISH", channel, message, target_nodes=node)
            return
        except REDIS_ERRORS as exc:
            error = exc
    raise error  # type: ignore[misc]


def subscriber(redis: AnyRedis, cfg: RedisConfig, *, client_name: str) -> Any:
    """What the near cache calls `pubsub()` on: a client of its own (its connection carries only the
    subscription) — on a Cluster, a NodeSubscriber."""
    if is_cluster(redis):
        return NodeSubscriber(redis, cfg, client_name=client_name)
    return aioredis.Redis.from_url(cfg.url, socket_connect_timeout=cfg.timeout_s, health_check_interval=5,
                                   client_name=client_name)


class NodeSubscriber:
    """`pubsub()` on one node of a Cluster at a time (the near cache's broadcast connection); each new
    subscription after a failure goes to the next node of the current node list, starting at a random one."""

    def __init__(self, cluster: RedisCluster, cfg: RedisConfig, *, client_name: str) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.client_name = client_name
        self._credentials = seed_nodes(cfg.url)[1]
        self._clients: list[aioredis.Redis] = []
        self._closing: set[asyncio.Task] = set()  # old clients being closed (a task nobody references may be collected)
        self._turn = random.randrange(1 << 16)
        self.node_name = ""  # where the current subscription is (tests, logs)

    def _next_node(self) -> tuple[str, int]:
        nodes = sorted(self.cluster.get_nodes(), key=lambda n: n.name)
        if not nodes:  # slot map not loaded yet: a seed node
            nodes = list(self.cluster.nodes_manager.startup_nodes.values())
        self._turn += 1
        node = nodes[self._turn % len(nodes)]
        return node.host, int(node.port)

    def pubsub(self) -> Any:
        """A PubSub on the next node (the previous node's client is closed in the background)."""
        host, port = self._next_node()
        client = aioredis.Redis(host=host, port=port, socket_connect_timeout=self.cfg.timeout_s, health_check_interval=5,
                                client_name=self.client_name, **self._credentials)
        for old in self._clients:
            task = asyncio.ensure_future(old.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closed)
        self._clients = [client]
        self.node_name = f"{host}:{port}"
        return client.pubsub()

    def _closed(self, task: asyncio.Task) -> None:
        self._closing.discard(task)
        if not task.cancelled():
            task.exception()  # a failed close of a dead node's client is expected: retrieved, not logged

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()
        self._clients = []
