"""The cache API under /v1/{tenant}: lookups, bulk lookups and change events; wired by create_app.

Every cache response carries `X-Cache: hit|miss|stale|bypass` and `Age` (seconds since the entry was
filled), the cached 404s included. Bodies are built with orjson from plain dicts; models.py documents
them in /openapi.json; every error body is a problem rendered by cacheman/problems.py.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import Response
from starlette.middleware import Middleware

from cacheman import problems
from cacheman.auth import authorize, bearer_token, require
from cacheman.cache import CacheConfig, CacheService, Result
from cacheman.errors import NotMember, PayloadTooLarge, ProblemError, RoomNotFound, ValidationFailed
from cacheman.events import EventApplier
from cacheman.keys import ID_MAX_LEN, ID_PATTERN, ID_RE, MAX_BATCH, Keys
from cacheman.models import (
    EventsIn,
    EventsOut,
    MembershipOut,
    MembershipsCheckIn,
    MembershipsCheckOut,
    MembersOut,
    RoomOut,
    RoomsBatchIn,
    RoomsBatchOut,
    UnreadOut,
    UserRoomsOut,
)
from cacheman.nearcache import NearCache
from cacheman.observability import flush_access_log
from cacheman.redisconn import RedisConfig, subscriber
from cacheman.stream import StreamConsumer

MEMBERSHIP_PATH = "/v1/{tenant}/rooms/{room_id}/members/{user_id}"
_ID_DOC = f"Pattern `{ID_PATTERN}` (1 to {ID_MAX_LEN} characters)."
Tenant = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LEN, description="Tenant id. " + _ID_DOC)]
RoomId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LEN, description="Room id. " + _ID_DOC)]
UserId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LEN, description="User id. " + _ID_DOC)]

READ_SCOPE = "cache:read"
READ = [Depends(require(READ_SCOPE))]
WRITE = [Depends(require("cache:write"))]
_CACHE_HEADERS = {
    "X-Cache": {"description": "hit | miss | stale (origin down, expired copy) | bypass (Redis down, origin answered)", "schema": {"type": "string"}},
    "Age": {"description": "Seconds since the answer was loaded from the origin", "schema": {"type": "integer"}},
}
_ERRORS = problems.responses(401, 403, 422, 429, 500, 503)
_NOT_FOUND = problems.responses(404, s404={"headers": _CACHE_HEADERS, "description": (
    "`room-not-found`, or `not-member` for the membership check: a normal answer, cached briefly (X-Cache, Age)")})
_TOO_LARGE = problems.responses(413)


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": f"{name.split('_')[0].title()} id. " + _ID_DOC,
            "schema": {"type": "string", "pattern": ID_PATTERN, "maxLength": ID_MAX_LEN, "title": name.replace("_", " ").title()}}


def _ids(**ids: str) -> tuple[str, ...]:
    """The ids, or the 422 FastAPI itself would answer for a pattern mismatch."""
    bad = [name for name, value in ids.items() if not ID_RE.fullmatch(value)]
    if bad:
        raise ValidationFailed([
            {"type": "string_pattern_mismatch", "loc": ("path", name), "msg": f"String should match pattern '{ID_PATTERN}'"}
            for name in bad
        ])
    return tuple(ids.values())


_JSON = (b"content-type", b"application/json")
_PROBLEM = (b"content-type", problems.MEDIA_TYPE.encode())


_X_CACHE: dict[str, tuple[bytes, bytes]] = {}


class CachedResponse(Response):
    """A cache answer with X-Cache and Age. Its raw headers are built directly: Starlette's header
    initialisation is most of the cost of a small response, on the hottest paths (hits, cached 404s)."""

    def __init__(self, body: bytes, status: str, age: int, code: int = 200, content_type=_JSON) -> None:
        self.status_code = code
        self.body = body
        self.background = None
        x_cache = _X_CACHE.get(status)
        if x_cache is None:
            x_cache = _X_CACHE[status] = (b"x-cache", str(status).encode())
        self.raw_headers = [(b"content-length", b"%d" % len(body)), content_type, x_cache, (b"age", b"%d" % age)]


def _json(body, status: str, age: int) -> Response:
    return CachedResponse(orjson.dumps(body), status, age)


def _not_found(kind: type[ProblemError], detail: str, path: str, res: Result) -> Response:
    """A cached 404 (room-not-found, not-member): the problem body, with X-Cache and Age like any answer."""
    return CachedResponse(problems.render(kind.type, kind.title, 404, detail, path), res.status, res.age_s, 404, _PROBLEM)


def _ok(model):
    return {"model": model, "description": "OK", "headers": _CACHE_HEADERS}


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`, before the app reads it (Content-Length, or counted when chunked)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
                break
        if length is not None:
            if length > self.max_bytes:
                await self._reject(scope, send, length)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[dict] = []
        size = 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._reject(scope, send, size)
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, send, size: int) -> None:
        await problems.send_problem(PayloadTooLarge(
            f"request body is at least {size} bytes; the limit is {self.max_bytes} (HOTPATH_MAX_BODY_BYTES). "
            f"Send at most {MAX_BATCH} items per batch."), scope, send)


async def membership_response(cache: CacheService, tenant: str, room_id: str, user_id: str, scope) -> Response:
    """200 {room_id, user_id, role}, or 404 not-member / room-not-found (`instance`: the path of `scope`);
    X-Cache and Age either way."""
    res, exists = await cache.member_role(tenant, room_id, user_id)
    if res.value is None:
        path = problems.instance(scope)
        if not exists:
            return _not_found(RoomNotFound, f"room {room_id!r} not found", path, res)
        return _not_found(NotMember, f"user {user_id!r} is not a member of room {room_id!r}", path, res)
    return _json({"room_id": room_id, "user_id": user_id, "role": res.value}, res.status, res.age_s)


class MembershipFastPath:
    """Pure ASGI: answers GET /v1/{tenant}/rooms/{room_id}/members/{user_id} without FastAPI's routing and
    dependency solving, which are most of the CPU of a cache hit. Same auth checks as the route's dependency
    (cacheman.auth.authorize: 401/403/429, the token read from the raw header as HTTPBearer reads it, no
    Request object), same problem rendering (503), same response as the route; an unexpected exception goes
    up to RequestContextMiddleware (500); anything else, including an id that does not match the pattern
    (→ the route's 422), goes through the normal stack."""

    def __init__(self, app, route=None) -> None:
        self.app = app
        self.route = route  # for the per-route metrics of RequestContextMiddleware

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        parts = scope["path"].split("/")
        if len(parts) != 7 or parts[1] != "v1" or parts[3] != "rooms" or parts[5] != "members":
            await self.app(scope, receive, send)
            return
        tenant, room_id, user_id = parts[2], parts[4], parts[6]
        full = ID_RE.fullmatch
        if not (full(tenant) and full(room_id) and full(user_id)):
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"tenant": tenant, "room_id": room_id, "user_id": user_id}
        if self.route is not None:
            scope["route"] = self.route
        authorization = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                authorization = v.decode("latin-1")
                break
        app = scope["app"]
        try:
            await authorize(app, READ_SCOPE, bearer_token(authorization), authorization, tenant)
            response = await membership_response(app.state.cache, tenant, room_id, user_id, scope)
        except ProblemError as exc:
            response = problems.response_of(exc, scope)
        await response(scope, receive, send)


def _cache(request: Request) -> CacheService:
    return request.app.state.cache


async def _startup(app: FastAPI) -> None:
    s = app.state.settings
    cfg = CacheConfig.from_settings(s)
    keys = Keys(cfg.prefix)
    near = None
    if s.near_cache_enabled:  # its own connection, to one node (on a Cluster, any node: redisconn.NodeSubscriber)
        sub_client = subscriber(app.state.redis, RedisConfig.from_settings(s), client_name=f"hp-nearcache-{os.getpid()}")
        near = NearCache(sub_client, keys.nearcache_channel(), ttl_s=s.near_cache_ttl_s, max_entries=s.near_cache_max_entries)
        app.state.near_client = sub_client
        await near.start()
    app.state.near = near
    app.state.cache = CacheService(app.state.redis, app.state.origin, cfg, near=near)
    app.state.events = EventApplier(app.state.redis, keys, floor_px=cfg.floor_px, seq_px=cfg.floor_px,
                                    scripts=app.state.cache.scripts, near=near)
    app.state.stream_consumer = None
    if s.events_stream_enabled:
        consumer = StreamConsumer(
            app.state.redis, app.state.events, stream=s.events_stream, group=s.events_stream_group,
            consumer=s.events_stream_consumer, claim_idle_ms=s.events_stream_claim_idle_ms,
            block_ms=max(10, min(500, int(s.redis_timeout_s * 500))),  # a blocked read must end before the socket timeout
        )
        consumer.start()
        app.state.stream_consumer = consumer
    freeze_startup_heap()


def freeze_startup_heap() -> None:
    """Move what import and start-up made (modules, the app, its schemas: ~120k objects) out of the collector's
    view (gc.freeze), so the full collections that requests trigger scan only what they made: unfrozen, one took
    100-160 ms under load, a pause every request in flight waited for; frozen, 1-3 ms (bench/RESULTS.md, issue 10)."""
    gc.collect()
    gc.freeze()


async def _shutdown(app: FastAPI) -> None:
    flush_access_log()
    if getattr(app.state, "stream_consumer", None) is not None:
        await app.state.stream_consumer.stop()
    if getattr(app.state, "near", None) is not None:
        await app.state.near.stop()
        with contextlib.suppress(Exception):
            await app.state.near_client.aclose()


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1/{tenant}", tags=["cache"], responses=_ERRORS)

    @router.get("/rooms/{room_id}", dependencies=READ, response_model=RoomOut, responses={200: _ok(RoomOut), **_NOT_FOUND},
                summary="Room metadata.")
    async def get_room(tenant: Tenant, room_id: RoomId, request: Request) -> Response:
        res = await _cache(request).room(tenant, room_id)
        if res.value is None:
            return _not_found(RoomNotFound, f"room {room_id!r} not found", problems.instance(request.scope), res)
        return _json(res.value, res.status, res.age_s)

    @router.get("/rooms/{room_id}/members", dependencies=READ, response_model=MembersOut,
                responses={200: _ok(MembersOut), **_NOT_FOUND}, summary="Members of a room, with role, and the members version.")
    async def get_members(tenant: Tenant, room_id: RoomId, request: Request) -> Response:
        res = await _cache(request).members(tenant, room_id)
        if res.value is None:
            return _not_found(RoomNotFound, f"room {room_id!r} not found", problems.instance(request.scope), res)
        return _json(res.value, res.status, res.age_s)

    @router.get("/rooms/{room_id}/members/{user_id}", dependencies=READ, response_model=MembershipOut,
                responses={200: _ok(MembershipOut), **_NOT_FOUND},
                openapi_extra={"parameters": [_path_param("tenant"), _path_param("room_id"), _path_param("user_id")]},
                summary="Membership check: 200 with the role, 404 when not a member (or no such room).")
    async def get_membership(request: Request) -> Response:
        # The hottest call: normally answered by MembershipFastPath before routing; this is its documented
        # form and the fallback. Ids are checked with one precompiled regex (same 422 as FastAPI's).
        p = request.path_params
        tenant, room_id, user_id = _ids(tenant=p["tenant"], room_id=p["room_id"], user_id=p["user_id"])
        return await membership_response(_cache(request), tenant, room_id, user_id, request.scope)

    @router.get("/users/{user_id}/rooms", dependencies=READ, response_model=UserRoomsOut, responses={200: _ok(UserRoomsOut)},
                summary="Rooms of a user (sorted ids).")
    async def get_user_rooms(tenant: Tenant, user_id: UserId, request: Request) -> Response:
        res = await _cache(request).user_rooms(tenant, user_id)
        return _json({"user_id": user_id, "rooms": res.value}, res.status, res.age_s)

    @router.get("/users/{user_id}/unread", dependencies=READ, response_model=UnreadOut, responses={200: _ok(UnreadOut)},
                summary="Unread counts per room: max(0, room last_seq − user's last_read_seq), and their total.")
    async def get_unread(tenant: Tenant, user_id: UserId, request: Request) -> Response:
        res = await _cache(request).unread(tenant, user_id)
        return _json(res.value, res.status, res.age_s)

    @router.post("/rooms:batchGet", dependencies=READ, response_model=RoomsBatchOut,
                 responses={200: _ok(RoomsBatchOut), **_TOO_LARGE},
                 summary=f"Many rooms at once (up to {MAX_BATCH}); one origin call for all misses.")
    async def rooms_batch(tenant: Tenant, body: RoomsBatchIn, request: Request) -> Response:
        found, missing, status, age = await _cache(request).rooms_batch(tenant, body.room_ids)
        return _json({"rooms": found, "missing": missing}, status, age)

    @router.post("/memberships:check", dependencies=READ, response_model=MembershipsCheckOut,
                 responses={200: _ok(MembershipsCheckOut), **_TOO_LARGE},
                 summary=f"Many membership checks at once (up to {MAX_BATCH} (room, user) pairs); one round trip per batch on hits.")
    async def memberships_check(tenant: Tenant, body: MembershipsCheckIn, request: Request) -> Response:
        rows, status, age = await _cache(request).memberships_batch(tenant, [(c.room_id, c.user_id) for c in body.checks])
        results = [{"room_id": r, "user_id": u, "member": role is not None, "role": role, "room_exists": ex} for r, u, role, ex in rows]
        return _json({"results": results}, status, age)

    @router.post("/events", dependencies=WRITE, response_model=EventsOut, tags=["events"], responses=_TOO_LARGE,
                 summary=f"Apply a batch of change events (up to {MAX_BATCH}); idempotent and order-insensitive. See docs/events.md.")
    async def post_events(tenant: Tenant, body: EventsIn, request: Request) -> EventsOut:
        results = await request.app.state.events.apply(tenant, body.events, source="http")
        applied = sum(1 for r in results if r.result == "applied")
        return Response(orjson.dumps({
            "results": [{"id": r.id, "type": r.type, "result": r.result} for r in results],
            "applied": applied, "ignored": len(results) - applied,
        }), media_type="application/json")

    return router


def install(app: FastAPI, settings) -> None:
    """Called by create_app: routes, the body limit, and the services built in the lifespan."""
    app.user_middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes))
    app.state.on_startup.append(_startup)
    app.state.on_shutdown.append(_shutdown)
    router = build_router()
    app.include_router(router)
    route = next(r for r in router.routes if r.path == MEMBERSHIP_PATH)  # (app.routes holds the router lazily)
    app.user_middleware.append(Middleware(MembershipFastPath, route=route))
