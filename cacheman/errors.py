"""The typed errors of cacheman: one small hierarchy, each kind with its RFC 9457 `type`, `title` and status.

Raised anywhere (auth, rate limit, cache, routes), rendered in one place (cacheman/problems.py), so a client
parses one shape. Each `detail` says what was wrong and what to do; extensions carry the machine-readable rest.
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any, ClassVar

URN = "urn:hotpath:error:"
_REALM = 'Bearer realm="hotpath"'


class ProblemError(Exception):
    """An error the API answers as problem details. Subclasses set `type`, `title` and `status`."""

    type: ClassVar[str] = URN + "internal"
    title: ClassVar[str] = "Internal server error"
    status: ClassVar[int] = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self._headers = headers or {}
        self._extensions = extensions

    @property
    def headers(self) -> dict[str, str]:
        """Response headers this error adds (WWW-Authenticate, Retry-After, Allow)."""
        return self._headers

    @property
    def extensions(self) -> dict[str, Any]:
        """Problem members beyond type/title/status/detail/instance/request_id."""
        return self._extensions


def _retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', "'")


class Unauthorized(ProblemError):
    """401: no token, or a token that does not verify. The detail says which, WWW-Authenticate too (RFC 6750)."""

    type = URN + "unauthorized"
    title = "Unauthorized"
    status = 401

    def __init__(self, message: str, *, missing: bool = False) -> None:
        challenge = _REALM if missing else f'{_REALM}, error="invalid_token", error_description="{_quote(message)}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(ProblemError):
    """403: a valid token that may not do this."""

    type = URN + "forbidden"
    title = "Forbidden"
    status = 403


class TenantForbidden(Forbidden):
    """403: the token's `tenants` claim does not include the tenant of the path."""

    type = URN + "tenant-forbidden"
    title = "Tenant not allowed for this token"

    def __init__(self, message: str, *, tenant: str) -> None:
        super().__init__(message, tenant=tenant)


class ScopeMissing(Forbidden):
    """403: the token lacks the scope the route needs (WWW-Authenticate insufficient_scope, RFC 6750)."""

    type = URN + "scope-missing"
    title = "Token lacks the required scope"

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{scope}"'},
                         scope=scope)


class NotFound(ProblemError):
    """404 base."""

    type = URN + "not-found"
    title = "Not found"
    status = 404


class RoomNotFound(NotFound):
    """404: the origin has no such room (a cached answer: X-Cache and Age apply)."""

    type = URN + "room-not-found"
    title = "Room not found"


class NotMember(NotFound):
    """404: the room exists and the user is not a member of it (a cached answer: X-Cache and Age apply)."""

    type = URN + "not-member"
    title = "Not a member"


class RouteNotFound(NotFound):
    """404: no route has this path."""

    type = URN + "route-not-found"
    title = "No such route"


class MethodNotAllowed(ProblemError):
    """405: the path exists, the method does not (the Allow header lists the ones that do)."""

    type = URN + "method-not-allowed"
    title = "Method not allowed"
    status = 405


class PayloadTooLarge(ProblemError):
    """413: the request body is over HOTPATH_MAX_BODY_BYTES."""

    type = URN + "payload-too-large"
    title = "Request body too large"
    status = 413


class ValidationFailed(ProblemError):
    """422: the request does not match the schema. `errors` lists {loc, msg, type}; input values are never echoed."""

    type = URN + "validation-failed"
    title = "Request validation failed"
    status = 422
    MAX_ERRORS: ClassVar[int] = 100

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        listed = [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in errors[: self.MAX_ERRORS]]
        first = listed[0] if listed else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"]) or "request"
        more = len(errors) - 1
        detail = f"{where}: {first['msg']}"
        if more > 0:
            shown = f"the first {self.MAX_ERRORS} are" if len(errors) > self.MAX_ERRORS else "all are"
            detail += f" (and {more} more field error(s); {shown} listed in `errors`)"
        super().__init__(detail + ". Fix the request; the schema is in /openapi.json.", errors=listed)


class RateLimited(ProblemError):
    """429: the tenant is over its rate limit; Retry-After (whole seconds, at least 1) and `retry_after_s`."""

    type = URN + "rate-limited"
    title = "Tenant over its rate limit"
    status = 429

    def __init__(self, tenant: str, retry_after_s: float, rate_per_s: float, burst: int) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"tenant {tenant!r} is over its rate limit ({rate_per_s:g} requests/s, burst {burst}); "
            f"retry after {seconds}s (limits: HOTPATH_RATE_LIMIT_PER_S, HOTPATH_RATE_LIMIT_BURST, HOTPATH_RATE_LIMIT_TENANTS)",
            headers=_retry_after_header(retry_after_s), tenant=tenant, retry_after_s=round(retry_after_s, 3),
        )
        self.tenant = tenant
        self.retry_after_s = retry_after_s


class QueueFullProblem(ProblemError):
    """429: a task queue is over its high watermark (taskkit's QueueFull); nothing was enqueued."""

    type = URN + "queue-full"
    title = "Task queue full"
    status = 429

    def __init__(self, message: str, *, queue: str, retry_after_s: float) -> None:
        super().__init__(f"{message}; nothing was enqueued, send it again then", headers=_retry_after_header(retry_after_s),
                         queue=queue, retry_after_s=round(retry_after_s, 3))


class DependencyUnavailable(ProblemError):
    """503: a dependency (redis, origin) cannot answer and nothing cached can. Names `dependency`; when the
    service knows when it will try again (an open breaker), `retry_after_s` and Retry-After say so."""

    type = URN + "dependency-unavailable"
    title = "Dependency unavailable"
    status = 503

    def __init__(self, dependency: str, detail: str, *, retry_after_s: float | None = None, **extensions: Any) -> None:
        super().__init__(detail, dependency=dependency, **extensions)
        self.args = (f"{dependency} unavailable: {detail}",)
        self.dependency = dependency
        self.retry_after_s = retry_after_s

    def retry_hint(self) -> float | None:
        """`retry_after_s` of this error or of the first error it was raised from that knows one."""
        exc: BaseException | None = self
        while exc is not None:
            hint = getattr(exc, "retry_after_s", None)
            if isinstance(exc, DependencyUnavailable) and hint is not None:
                return hint
            exc = exc.__cause__
        return None

    @property
    def headers(self) -> dict[str, str]:
        hint = self.retry_hint()
        return _retry_after_header(hint) if hint is not None else {}

    @property
    def extensions(self) -> dict[str, Any]:
        hint = self.retry_hint()
        return self._extensions if hint is None else {**self._extensions, "retry_after_s": round(hint, 3)}


class OriginUnavailable(DependencyUnavailable):
    """The origin (dbman HTTP or SQL) failed, timed out, or its circuit breaker is open."""

    def __init__(self, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__("origin", detail, retry_after_s=retry_after_s)


class Internal(ProblemError):
    """500: an unexpected error (a bug). The detail gives the request id to quote; the log has the traceback."""


class HttpError(ProblemError):
    """Any other HTTP status the framework raises (RFC 9457 `about:blank`: the status says it all)."""

    type = "about:blank"

    def __init__(self, status: int, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        super().__init__(detail or phrase, headers=headers)
        self.status = status  # type: ignore[misc]  # an instance, not a kind
        self.title = phrase  # type: ignore[misc]
