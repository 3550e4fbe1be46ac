"""The stored form of a failed job, shared by the retry queue and the dead-letter queue.

A record is a Redis hash of plain strings (plus `raw`, the pickled ARQ job, in the dead-letter queue),
so operators can read it with redis-cli and any language can parse it.
"""

from __future__ import annotations

import traceback as tb
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

MAX_TRACEBACK = 16_000
MAX_MESSAGE = 2_000


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def payload_json(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """JSON of a job's arguments for people and scripts; non-JSON values shown by repr."""
    return orjson.dumps({"args": list(args), "kwargs": kwargs}, default=repr,
                        option=orjson.OPT_NON_STR_KEYS).decode()


def failure_fields(exc: BaseException, kind: str) -> dict[str, str]:
    """Error type, verdict kind, message and traceback of a failure, truncated to sane sizes."""
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "error_type": type(exc).__name__,
        "error_kind": kind,
        "message": str(exc)[:MAX_MESSAGE],
        "traceback": text[-MAX_TRACEBACK:],
    }


@dataclass
class JobRecord:
    """One job in the retry queue (`kind="retry"`) or the dead-letter queue (`kind="dead"`)."""

    kind: str
    job_id: str
    queue: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    error_type: str = ""
    error_kind: str = ""
    message: str = ""
    traceback: str = ""
    reason: str = ""
    enqueued_ms: int = 0
    first_failed_ms: int = 0
    last_failed_ms: int = 0
    next_run_ms: int | None = None
    died_ms: int | None = None

    @classmethod
    def from_hash(cls, kind: str, h: dict[bytes, bytes]) -> JobRecord:
        d = {_text(k): v for k, v in h.items()}

        def i(name: str) -> int:
            try:
                return int(float(_text(d.get(name, b"0"))))
            except ValueError:
                return 0

        try:
            payload = orjson.loads(d.get("payload", b"{}"))
        except orjson.JSONDecodeError:
            payload = {}
        return cls(
            kind=kind,
            job_id=_text(d.get("job_id", b"")),
            queue=_text(d.get("queue", b"")),
            task=_text(d.get("task", b"")),
            args=payload.get("args", []),
            kwargs=payload.get("kwargs", {}),
            attempts=i("attempts"),
            error_type=_text(d.get("error_type", b"")),
            error_kind=_text(d.get("error_kind", b"")),
            message=_text(d.get("message", b"")),
            traceback=_text(d.get("traceback", b"")),
            reason=_text(d.get("reason", b"")),
            enqueued_ms=i("enqueued_ms"),
            first_failed_ms=i("first_failed_ms"),
            last_failed_ms=i("last_failed_ms"),
            next_run_ms=i("next_run_ms") if "next_run_ms" in d else None,
            died_ms=i("died_ms") if "died_ms" in d else None,
        )

    @property
    def failed_ms(self) -> int:
        """When it last failed (what the age filters compare against)."""
        return self.died_ms or self.last_failed_ms

    def to_dict(self, *, with_traceback: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_traceback:
            d.pop("traceback")
        return d
