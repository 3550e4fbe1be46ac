"""Retry policy: how many attempts, how long to wait between them, and which errors are worth retrying.

Backoff is exponential with *full jitter* (delay = uniform(0, min(cap, base·2^(n-1)))), the AWS
Architecture Blog rule: it spreads a thundering herd best for the same mean wait. A `Retry-After`
hint from the error is a lower bound (the downstream knows better than our formula).
Pure functions only: no I/O, so every rule here has a plain unit test.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from taskkit.errors import PermanentError, TransientError

Jitter = Literal["full", "equal", "none"]

TRANSIENT = "transient"
PERMANENT = "permanent"


@dataclass(frozen=True)
class RetryPolicy:
    """How a task is retried.

    Defaults: 5 attempts in all, base 1 s, cap 300 s, full jitter, hints honoured up to 7 days.
    `max_attempts` counts the first run, so `max_attempts=1` means never retry.
    """

    max_attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: Jitter = "full"
    max_hint_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (1 means: never retry)")
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("base_s and cap_s must be >= 0")

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the delay after failed attempt number `attempt` (1-based): min(cap, base·2^(n-1))."""
        exp = min(max(attempt - 1, 0), 62)  # no float overflow for absurd attempt counts
        return min(self.cap_s, self.base_s * (2.0**exp))

    def delay(self, attempt: int, *, hint: float | None = None, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the next attempt after failed attempt `attempt`.

        `rng` returns a float in [0, 1) (injectable for tests). A hint (Retry-After) is a lower bound,
        itself capped at `max_hint_s`.
        """
        top = self.ceiling(attempt)
        if self.jitter == "full":
            d = top * rng()
        elif self.jitter == "equal":
            d = top / 2 + (top / 2) * rng()
        else:
            d = top
        if hint is not None and hint > 0:
            d = max(d, min(hint, self.max_hint_s))
        return d

    def exhausted(self, attempt: int) -> bool:
        """True when attempt number `attempt` (1-based) was the last one allowed."""
        return attempt >= self.max_attempts


@dataclass(frozen=True)
class Verdict:
    """What to do with a failure: `kind` is "transient" or "permanent"; `retry_after` an optional hint (s)."""

    kind: Literal["transient", "permanent"]
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        return self.kind == TRANSIENT


Classifier = Callable[[BaseException], "Verdict | str | None"]

# Errors of the programmer or the input: retrying the same job cannot help.
PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    PermanentError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
    UnicodeError,
)


def retry_after_hint(exc: BaseException) -> float | None:
    """A Retry-After hint carried by an error: a `retry_after` attribute, or an HTTP response header."""
    hint = getattr(exc, "retry_after", None)
    if hint is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            try:
                hint = headers.get("Retry-After")
            except (AttributeError, TypeError):
                hint = None
    try:
        return float(hint) if hint is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP-date Retry-After: ignore, the backoff applies


def default_classify(exc: BaseException) -> Verdict:
    """TransientError and timeouts/connection errors → transient; PermanentError and programming errors
    (ValueError, TypeError, KeyError, …) → permanent; anything else → transient (bounded by max_attempts)."""
    hint = retry_after_hint(exc)
    if isinstance(exc, TransientError):
        return Verdict(TRANSIENT, hint)
    if isinstance(exc, PERMANENT_TYPES):
        return Verdict(PERMANENT)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError | OSError):
        return Verdict(TRANSIENT, hint)
    return Verdict(TRANSIENT, hint)


def classify(exc: BaseException, classifier: Classifier | None = None) -> Verdict:
    """Run a task's classifier, falling back to `default_classify` when it returns None.

    A classifier may return a Verdict, the strings "transient"/"permanent", or None ("no opinion").
    TransientError/PermanentError raised by the task always win over the classifier.
    """
    if isinstance(exc, TransientError):
        return Verdict(TRANSIENT, retry_after_hint(exc))
    if isinstance(exc, PermanentError):
        return Verdict(PERMANENT)
    if classifier is not None:
        v = classifier(exc)
        if isinstance(v, Verdict):
            if v.retry_after is None and v.transient:
                return Verdict(TRANSIENT, retry_after_hint(exc))
            return v
        if v in (TRANSIENT, PERMANENT):
            return Verdict(v, retry_after_hint(exc) if v == TRANSIENT else None)  # type: ignore[arg-type]
        if v is not None:
            raise TypeError(f"classifier returned {v!r}; expected a Verdict, 'transient', 'permanent' or None")
    return default_classify(exc)


def error_class(exc: BaseException) -> str:
    """The label used for metrics and filters: the exception's class name."""
    return type(exc).__name__
