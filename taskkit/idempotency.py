"""Idempotency keys: enqueue with a key already seen is a no-op that says so.

Three states are covered, by two mechanisms. Queued or retrying: the job id is derived from the key
(`<prefix><queue>:k:<key>`), so the ARQ job key itself is the marker and lives exactly as long as the
job (its TTL is raised on every retry). Recently done: a marker `idem:<queue>:<key>` set at enqueue and
refreshed when the job succeeds, for `window_s` (a setting of its own, not ARQ's keep_result). The
worker reads the key back from the job id, so an explicit `_idempotency_key=` works the same way.
A dead-lettered job's marker is deleted, so a producer may submit the same work again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from taskkit.keys import Keys

DEFAULT_WINDOW_S = 3600.0

KeyFunc = Callable[..., "str | None"]


@dataclass(frozen=True)
class Enqueued:
    """What enqueue did. `created` False means an equal job was already there (`state` says which)."""

    job_id: str
    queue: str
    created: bool
    state: Literal["created", "queued", "recent"]

    @property
    def duplicate(self) -> bool:
        return not self.created


def key_for(func: KeyFunc | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The idempotency key a task declares for these arguments (None: no dedup)."""
    if func is None:
        return None
    key = func(*args, **kwargs)
    return None if key is None else str(key)


async def mark_done(redis: Any, keys: Keys, queue: str, token: str, job_id: str, window_s: float) -> None:
    """Start the "recently done" window of an idempotency token now that its job succeeded."""
    await redis.set(keys.idempotency(queue, token), job_id, px=max(1, int(window_s * 1000)))
