"""Request ids, per-route Prometheus metrics and one JSON log line per request, as one pure ASGI middleware.

Pure ASGI (not BaseHTTPMiddleware): it adds no extra task or body copy on the hot path. It is also the
boundary for unhandled errors: it logs the traceback with the request id and answers `on_error(scope)`
(the 500 problem), because Starlette's ServerErrorMiddleware runs outside it, after the request id is gone.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("cacheman.access")
error_log = logging.getLogger("cacheman")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

REGISTRY = CollectorRegistry(auto_describe=True)
_merged: CollectorRegistry | None = None


def scrape_registry() -> CollectorRegistry:
    """What /metrics serves: REGISTRY, or, when PROMETHEUS_MULTIPROC_DIR is set (`hotpath api --workers N`,
    cacheman/server.py), every API process's series merged from that directory. The variable is prometheus_client's
    own switch (read at its import), so this follows the same one."""
    global _merged
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    if _merged is None:
        from prometheus_client import multiprocess

        _merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(_merged, path=path)
    return _merged

HTTP_REQUESTS = Counter(
    "hotpath_http_requests_total", "HTTP requests by route and status class", ["route", "method", "status"], registry=REGISTRY
)
HTTP_ERRORS = Counter(
    "hotpath_http_errors_total", "HTTP responses with status >= 500 by route", ["route", "method"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "hotpath_http_request_seconds",
    "HTTP request latency by route",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)

_MAX_RID = 128


def _route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path or "unmatched"


class RequestContextMiddleware:
    """Takes X-Request-ID from the caller (or makes one), echoes it, times and counts the request."""

    def __init__(self, app, quiet_paths: tuple[str, ...] = ("/livez", "/metrics"), on_error=None) -> None:
        self.app = app
        self.quiet = quiet_paths
        self.on_error = on_error  # scope -> ASGI response for an unhandled exception (None: re-raise)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                rid = v.decode("latin-1")[:_MAX_RID]
                break
        if not rid:
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        status = 500
        started = False
        start = time.perf_counter()

        async def send_wrapper(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            error_log.exception("unhandled error in %s %s", scope["method"], scope["path"],
                                extra={"request_id": rid, "route": _route_template(scope)})
            if started or self.on_error is None:
                raise  # too late to answer: the server closes the connection
            await self.on_error(scope)(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = _route_template(scope)
            method = scope["method"]
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_LATENCY.labels(route, method).observe(elapsed)
            if status >= 500:
                HTTP_ERRORS.labels(route, method).inc()
            if scope["path"] not in self.quiet and log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "request_id": rid,
                        "method": method,
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 3),
                    },
                )
            request_id_var.reset(token)
