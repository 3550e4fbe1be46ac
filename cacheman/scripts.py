"""The cache's Lua scripts (cacheman/lua/*.lua), registered once per Redis client, and how to run one in a pipeline.

EVALSHA everywhere: redis-py reloads a script after a server restart (NoScriptError), and a pipeline
loads the ones it is about to run first, so no caller ever sends a script's source per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

LUA_DIR = Path(__file__).with_name("lua")


def call_in_pipeline(pipe: Any, script: Any, keys: list, args: list) -> None:
    """Queue one call of a registered script on a pipeline (the pipeline loads missing scripts before it runs)."""
    pipe.scripts.add(script)
    pipe.evalsha(script.sha, len(keys), *keys, *args)


class Scripts:
    """The cache's Lua scripts, registered once per Redis client (EVALSHA, reloaded after a server restart)."""

    NAMES = ("lease_acquire", "lease_release", "fill_string", "fill_hash", "invalidate", "member_event", "seq_max", "read_max")

    def __init__(self, redis: aioredis.Redis) -> None:
        for name in self.NAMES:
            setattr(self, name, redis.register_script((LUA_DIR / f"{name}.lua").read_text()))

    # Typed attributes for readers and linters (set in __init__).
    lease_acquire: Any
    lease_release: Any
    fill_string: Any
    fill_hash: Any
    invalidate: Any
    member_event: Any
    seq_max: Any
    read_max: Any
