"""The Lua scripts taskkit runs in Redis, loaded once from taskkit/lua/*.lua and registered per client.

Why Lua: each operation that must see and change several keys at once (enqueue with dedup and
watermark, dead-letter with trimming, requeue) is one atomic step, so two producers or an operator and
a worker can never interleave half-way; and it costs one round trip. Redis has no include, so the
one piece two scripts share (admit.lua, the watermark decision) is put in front of them at load time.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

NAMES = ("enqueue", "enqueue_many", "retry", "deadletter", "requeue_dead", "retry_now", "retry_drop", "aimd")

# script → the shared fragments (taskkit/lua/<fragment>.lua, defining local functions) it starts with
PRELUDES = {"enqueue": ("admit",), "enqueue_many": ("admit",)}


def _read(name: str) -> str:
    return (files("taskkit") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    """Text of taskkit/lua/<name>.lua, preceded by the fragments it uses (PRELUDES)."""
    return "\n".join([*(_read(f) for f in PRELUDES.get(name, ())), _read(name)])


class Scripts:
    """All scripts registered on one redis client (EVALSHA with automatic reload on NOSCRIPT)."""

    def __init__(self, redis: Any) -> None:
        for name in NAMES:
            setattr(self, name, redis.register_script(source(name)))

    enqueue: Any
    enqueue_many: Any
    retry: Any
    deadletter: Any
    requeue_dead: Any
    retry_now: Any
    retry_drop: Any
    aimd: Any

