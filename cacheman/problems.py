"""RFC 9457 problem details: the one renderer of every error body, the app's exception handlers, the OpenAPI schema.

Every error of every route, the pure-ASGI middlewares included, is rendered by `render()`: the fixed
members (`type`, `title`, `status`) of each kind are serialised once and cached, so a cached 404 on the
hot path costs one small orjson call, no more than the flat body it replaces.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from cacheman.errors import (
    DependencyUnavailable,
    HttpError,
    Internal,
    MethodNotAllowed,
    ProblemError,
    QueueFullProblem,
    RouteNotFound,
    ValidationFailed,
)
from cacheman.models import Problem
from cacheman.observability import request_id_var
from taskkit.errors import QueueFull, QueueUnavailable

log = logging.getLogger("cacheman")

MEDIA_TYPE = "application/problem+json"
_CONTENT_TYPE = (b"content-type", MEDIA_TYPE.encode())
_HEADS: dict[tuple[str, str, int], bytes] = {}


def render(type_: str, title: str, status: int, detail: str, instance: str, extensions: dict[str, Any] | None = None) -> bytes:
    """The problem+json body: type, title, status, detail, instance, request_id, then the extensions."""
    key = (type_, title, status)
    head = _HEADS.get(key)
    if head is None:
        head = _HEADS[key] = orjson.dumps({"type": type_, "title": title, "status": status})[:-1] + b","
    fields = {"detail": detail, "instance": instance, "request_id": request_id_var.get()}
    if extensions:
        fields.update(extensions)
    return head + orjson.dumps(fields)[1:]


def instance(scope) -> str:
    """The request path as the client sent it (percent-encoded, so `instance` is a URI reference)."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else scope["path"]


def body_of(exc: ProblemError, scope) -> bytes:
    """The body of a raised error, its `instance` being the request path."""
    return render(exc.type, exc.title, exc.status, exc.detail, instance(scope), exc.extensions)


def response_of(exc: ProblemError, scope, headers: dict[str, str] | None = None) -> Response:
    """A Starlette response for `exc` (its own headers, plus `headers`)."""
    merged = {**exc.headers, **headers} if headers else exc.headers
    return Response(body_of(exc, scope), status_code=exc.status, headers=merged, media_type=MEDIA_TYPE)


async def send_problem(exc: ProblemError, scope, send) -> None:
    """Answer from a pure ASGI middleware (no Starlette response object needed)."""
    body = body_of(exc, scope)
    headers = [_CONTENT_TYPE, (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def internal_error(scope) -> Response:
    """The 500 for an unhandled exception (RequestContextMiddleware calls this after logging the traceback)."""
    rid = request_id_var.get()
    exc = Internal(f"unexpected error; the service log has the details under request id {rid!r}, quote it when reporting")
    return response_of(exc, scope)


def from_http_exception(exc: StarletteHTTPException) -> ProblemError:
    """Starlette's own errors (unmatched route, wrong method, unparseable body) as typed problems."""
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return RouteNotFound("no route has this path; the routes are listed in /openapi.json")
    if exc.status_code == 405:
        allow = headers.get("Allow", "")
        return MethodNotAllowed(f"this path answers only {allow or 'other methods'}", headers=headers)
    if exc.status_code == 400:  # FastAPI's "There was an error parsing the body" (not UTF-8, not a form, ...)
        return ValidationFailed([{"loc": ["body"], "msg": f"the body could not be parsed ({exc.detail}); send UTF-8 JSON",
                                  "type": "json_invalid"}])
    detail = exc.detail if isinstance(exc.detail, str) else None
    return HttpError(exc.status_code, detail, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers (one per source of errors, one renderer) and the Problem schema in /openapi.json."""

    async def problem(request: Request, exc: ProblemError) -> Response:
        return response_of(exc, request.scope)

    async def validation(request: Request, exc: RequestValidationError) -> Response:
        return response_of(ValidationFailed(list(exc.errors())), request.scope)

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return response_of(from_http_exception(exc), request.scope)

    async def queue_full(request: Request, exc: QueueFull) -> Response:
        # Backpressure from taskkit: the producer must slow down, nothing was enqueued.
        return response_of(QueueFullProblem(str(exc), queue=exc.queue, retry_after_s=exc.retry_after), request.scope)

    async def queue_unavailable(request: Request, exc: QueueUnavailable) -> Response:
        # The queue's Redis did not answer the enqueue: nothing was enqueued, a 503 naming the queue.
        return response_of(DependencyUnavailable("queue", f"{exc}; nothing was enqueued, send it again later",
                                                 queue=exc.queue), request.scope)

    async def last_resort(request: Request, exc: Exception) -> Response:
        # Only reached if RequestContextMiddleware itself failed: it answers every other unhandled error.
        return internal_error(request.scope)

    app.add_exception_handler(ProblemError, problem)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_exception_handler(QueueUnavailable, queue_unavailable)
    app.add_exception_handler(Exception, last_resort)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)  # builds and caches app.openapi_schema; completed here once
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            problem_schema = TypeAdapter(Problem).json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem_schema.pop("$defs", {}))
            schemas["Problem"] = problem_schema
        return app.openapi_schema

    app.openapi = openapi


_DESCRIPTIONS = {
    401: "missing, invalid or expired token (`unauthorized`; WWW-Authenticate)",
    403: "the token may not access this tenant (`tenant-forbidden`) or lacks the scope (`scope-missing`)",
    404: "not found",
    413: "request body over HOTPATH_MAX_BODY_BYTES (`payload-too-large`)",
    422: "the request does not match the schema (`validation-failed`, with `errors`)",
    429: "over the tenant's rate limit (`rate-limited`) or a full task queue (`queue-full`); `retry_after_s` and Retry-After",
    500: "unexpected error (`internal`); quote `request_id`",
    503: "a dependency is down and nothing cached can answer (`dependency-unavailable`, naming `dependency`; "
         "`retry_after_s` and Retry-After when the service knows when it will try again)",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def responses(*statuses: int, **overrides: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """OpenAPI `responses` entries declaring the Problem schema (application/problem+json) for `statuses`.

    `overrides` maps "s404" (etc.) to keys merged into that status's entry (a description, headers)."""
    out: dict[int, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, "error"),
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in (429, 503):
            entry["headers"] = dict(_RETRY_AFTER)
        entry |= overrides.get(f"s{status}", {})
        out[status] = entry
    return out
