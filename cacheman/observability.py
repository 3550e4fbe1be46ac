"""Request ids, per-route Prometheus metrics and one JSON log line per request, as one pure ASGI middleware.

Pure ASGI (not BaseHTTPMiddleware): it adds no extra task or body copy on the hot path. It is also the
boundary for unhandled errors: it logs the traceback with the request id and answers `on_error(scope)`
(the 500 problem), because Starlette's ServerErrorMiddleware runs outside it, after the request id is gone.
Why no LogRecord per request: when the one handler of `cacheman.access` takes prebuilt lines (`emit_fields`,
hotpath.logs.JsonLinesHandler), the line goes to its buffer directly; any other set-up gets ordinary records.
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("cacheman.access")
error_log = logging.getLogger("cacheman")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

REGISTRY = CollectorRegistry(auto_describe=True)


class LabelledCounter(Counter):
    """A Counter whose labels() finds an existing child with one dict lookup: prometheus_client's takes a lock and
    converts every value on every call. Keys equal to the str-converted values (str, StrEnum) hit; others fall back."""

    def labels(self, *values, **kwargs):
        try:
            return self._metrics[values]
        except (KeyError, AttributeError, TypeError):  # new child, kwargs, a child or unlabelled metric, unhashable
            return super().labels(*values, **kwargs)


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
_INFO = logging.INFO
# (route, method, status) -> (requests counter, latency histogram, errors counter | None): labels() takes a lock and
# validates its arguments on every call, so each request's series are looked up once per process.
_SERIES: dict[tuple[str, str, int], tuple] = {}
_MAX_SERIES = 10_000  # the method comes from the client


def _series(route: str, method: str, status: int) -> tuple:
    key = (route, method, status)
    series = _SERIES.get(key)
    if series is None:
        if len(_SERIES) >= _MAX_SERIES:
            _SERIES.clear()
        series = _SERIES[key] = (HTTP_REQUESTS.labels(route, method, str(status)), HTTP_LATENCY.labels(route, method),
                                 HTTP_ERRORS.labels(route, method) if status >= 500 else None)
    return series


def access_sink():
    """The handler that alone receives `cacheman.access`'s INFO records, when it takes prebuilt lines
    (`emit_fields`) and no filter looks at them; None: log through logging (several handlers, caplog, none)."""
    found = None
    logger = log
    while logger is not None:
        if logger.filters:
            return None
        for h in logger.handlers:
            if found is not None or h.filters or h.level > _INFO or not hasattr(h, "emit_fields"):
                return None
            found = h
        if not logger.propagate:
            break
        logger = logger.parent
    return found


def flush_access_log() -> None:
    """Write out buffered access lines now (the API's shutdown; also done by logging.shutdown at exit)."""
    sink = access_sink()
    if sink is not None:
        sink.flush()


def _route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path or "unmatched"


class RequestContextMiddleware:
    """Takes X-Request-ID from the caller (or makes one), echoes it, times and counts the request."""

    def __init__(self, app, quiet_paths: tuple[str, ...] = ("/livez", "/metrics"), on_error=None) -> None:
        self.app = app
        self.quiet = frozenset(quiet_paths)
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
            rid = os.urandom(16).hex()
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
                message["headers"] = [*message.get("headers", ()), rid_header]
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
            requests, latency, errors = _series(route, method, status)
            requests.inc()
            latency.observe(elapsed)
            if errors is not None:
                errors.inc()
            path = scope["path"]
            if path not in self.quiet and log.isEnabledFor(_INFO):
                fields = {"request_id": rid, "method": method, "path": path, "route": route, "status": status,
                          "ms": round(elapsed * 1000, 3)}
                sink = access_sink()
                if sink is not None:
                    sink.emit_fields("cacheman.access", "request", fields)
                else:
                    log.info("request", extra=fields)
            request_id_var.reset(token)
