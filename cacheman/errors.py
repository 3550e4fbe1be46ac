"""The typed errors of cacheman; each message says what failed and what to do."""

from __future__ import annotations


class CachemanError(Exception):
    """Base of cacheman's errors."""


class DependencyUnavailable(CachemanError):
    """A dependency (redis, origin) cannot answer; the API turns it into 503 naming `dependency`."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} unavailable: {detail}")
        self.dependency = dependency
        self.detail = detail


class OriginUnavailable(DependencyUnavailable):
    """The origin (dbman HTTP or SQL) failed, timed out, or its circuit breaker is open."""

    def __init__(self, detail: str) -> None:
        super().__init__("origin", detail)
