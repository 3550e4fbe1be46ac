"""The cache's Lua scripts (cacheman/lua/*.lua) and `Batch`, the one way to pipeline commands and scripts.

EVALSHA everywhere; NOSCRIPT (a restarted server, a promoted replica, SCRIPT FLUSH) is answered by sending that
call once as EVAL with the source, which also caches the script on that node, so no caller sends a script's
source per call and no SCRIPT EXISTS round trip precedes a pipeline. A Batch is one pipeline per node (one in
single-node mode), run concurrently: a failing node fails only its own commands, and tells the health windows.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from cacheman.redisconn import REDIS_ERRORS, AnyRedis, Topology, is_cluster, publish

if TYPE_CHECKING:
    from cacheman.health import RedisHealth

LUA_DIR = Path(__file__).with_name("lua")


class LuaScript:
    """One Lua script bound to a client: `await script(keys=[…], args=[…])` (keys in one slot)."""

    __slots__ = ("name", "redis", "sha", "source")

    def __init__(self, redis: AnyRedis, source: str, name: str = "") -> None:
        self.redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.name = name

    async def __call__(self, keys: list, args: list) -> Any:
        try:
            return await self.redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.redis.execute_command("EVAL", self.source, len(keys), *keys, *args)


def lua(redis: AnyRedis, name: str) -> LuaScript:
    """cacheman/lua/<name>.lua bound to `redis`."""
    return LuaScript(redis, (LUA_DIR / f"{name}.lua").read_text(), name)


class Scripts:
    """The cache's Lua scripts, bound to one Redis client."""

    NAMES = ("lease_acquire", "lease_release", "fill_string", "fill_hash", "invalidate", "member_event", "seq_max", "read_max")

    def __init__(self, redis: AnyRedis) -> None:
        for name in self.NAMES:
            setattr(self, name, lua(redis, name))

    # Typed attributes for readers and linters (set in __init__).
    lease_acquire: LuaScript
    lease_release: LuaScript
    fill_string: LuaScript
    fill_hash: LuaScript
    invalidate: LuaScript
    member_event: LuaScript
    seq_max: LuaScript
    read_max: LuaScript


class Batch:
    """Commands for one round trip per node, answered in the order queued.

    `batch.on(key).<command>(key, …)` queues exactly one command about `key` on its node's pipeline;
    `batch.script(s, keys, args)` queues one EVALSHA; `batch.publish()` is sent after the commands (in the
    single-node pipeline, after everything queued before it; on a Cluster, once every node answered, so no
    process hears it before the change it announces is applied). A NOSCRIPT call is sent again as EVAL after its
    pipeline: every script here follows the plain commands it depends on (a fill's temporary hash), so that
    order holds.
    """

    def __init__(self, redis: AnyRedis, *, health: RedisHealth | None = None, topology: Topology | None = None) -> None:
        self.redis = redis
        self.cluster = is_cluster(redis)
        self.topology = topology or Topology(redis)
        self.health = health
        self._pipes: dict[str, Any] = {}
        self._order: list[tuple[str, int]] = []  # (node, index in its pipeline) of each queued command
        self._scripts: dict[tuple[str, int], tuple[LuaScript, list, list]] = {}
        self._published: list[tuple[str, bytes]] = []

    def __len__(self) -> int:
        return len(self._order)

    def on(self, key: str) -> Any:
        """The pipeline of `key`'s node; queue ONE command on it."""
        node = self.topology.node_of(key)
        pipe = self._pipes.get(node)
        if pipe is None:
            pipe = self._pipes[node] = self.redis.pipeline(transaction=False)
        self._order.append((node, len(pipe)))
        return pipe

    def script(self, script: LuaScript, keys: list, args: list) -> None:
        pipe = self.on(keys[0])
        self._scripts[self._order[-1]] = (script, keys, args)
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def publish(self, channel: str, message: bytes) -> None:
        self._published.append((channel, message))

    async def execute(self, *, partial: bool = False) -> list[Any]:
        """Each command's reply, in order. `partial`: a failed command's reply is its exception (the keys of a
        node that did not answer); otherwise the first error is raised, after every node was tried."""
        if not self.cluster and self._published:
            pipe = self._pipes.get("") or self._pipes.setdefault("", self.redis.pipeline(transaction=False))
            for channel, message in self._published:
                pipe.publish(channel, message)
        nodes = list(self._pipes)
        outs = dict(zip(nodes, await asyncio.gather(*(self._run(n, self._pipes[n]) for n in nodes)), strict=True))
        results: list[Any] = []
        first: BaseException | None = None
        for node, i in self._order:
            out = outs[node]
            r = out if isinstance(out, BaseException) else out[i]
            if first is None and isinstance(r, BaseException):
                first = r
            results.append(r)
        if first is not None and not partial:
            raise first
        if self.cluster and self._published:
            for channel, message in self._published:
                await publish(self.redis, channel, message)
        return results

    async def _run(self, node: str, pipe: Any) -> list[Any] | BaseException:
        try:
            out = await pipe.execute(raise_on_error=False)
            redo = [i for i, r in enumerate(out) if isinstance(r, NoScriptError) and (node, i) in self._scripts]
            if redo:
                again = self.redis.pipeline(transaction=False)
                for i in redo:
                    script, keys, args = self._scripts[(node, i)]
                    again.execute_command("EVAL", script.source, len(keys), *keys, *args)
                for i, r in zip(redo, await again.execute(raise_on_error=False), strict=True):
                    out[i] = r
        except (*REDIS_ERRORS, OSError) as exc:
            if self.health is not None:
                self.health.node_failed(node, exc)
            return exc
        if self.health is not None:
            self.health.node_ok(node)
        return out
