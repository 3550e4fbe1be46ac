"""The cache API end to end in-process: real Redis, the SQL origin on SQLite demo data, real JWTs.

Every route: status, body shape, X-Cache and Age; tenant isolation; bad ids, oversize batches and
bodies answer 4xx with a message (never 500); an event's effect is visible as soon as its POST returns.
"""

from __future__ import annotations

import math
import time

import httpx
import pytest
from fastapi.routing import APIRoute

from cacheman.app import create_app
from cacheman.auth import mint_token
from cacheman.origin.sql import SqlOrigin
from hotpath.api import build_api
from hotpath.settings import ApiSettings
from tests.cacheman.conftest import running

SECRET = "routes-test-secret-0123456789-0123456789"
T, OTHER = "acme", "globex"
PROBLEM = "application/problem+json"


def token(tenants=(T,), scope="cache:read cache:write index:write") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=list(tenants), scope=scope, ttl_s=600)}


@pytest.fixture
async def api(redis_url, key_prefix, sqlite_url, milvus_uri):
    # The API as `hotpath api` serves it (hotpath/api.py): the cache routes, the index intake and the search
    # (hashing embedder; the collection is this test's own, made on its first search).
    settings = ApiSettings(
        redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url, jwt_keys={"t1": SECRET},
        rate_limit_per_s=100_000, rate_limit_burst=100_000, max_body_bytes=64 * 1024, taskkit_prefix=key_prefix,
        milvus_uri=milvus_uri, milvus_collection="r_" + key_prefix.split(":")[1], embedder="hash",
    )
    origin = SqlOrigin(sqlite_url)
    app = build_api(settings, origin=origin)
    async with running(app) as client:
        client.origin = origin
        yield client
        if app.state.searcher.store is not None:
            await app.state.searcher.store.drop_collection()
    await origin.aclose()


async def test_room_routes_answer_with_x_cache_and_age(api):
    h = token()
    filled = time.monotonic()
    first = await api.get(f"/v1/{T}/rooms/room-01", headers=h)
    second = await api.get(f"/v1/{T}/rooms/room-01", headers=h)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.headers["age"] == "0"  # just loaded from the origin
    assert 0 <= int(second.headers["age"]) <= math.ceil(time.monotonic() - filled)
    assert second.json()["room_id"] == "room-01" and second.json()["name"] == f"{T}-room-01"
    missing = await api.get(f"/v1/{T}/rooms/room-99", headers=h)
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert missing.json() == {"type": "urn:hotpath:error:room-not-found", "title": "Room not found", "status": 404,
                              "detail": "room 'room-99' not found", "instance": f"/v1/{T}/rooms/room-99",
                              "request_id": missing.headers["x-request-id"]}
    assert (missing.headers["x-cache"], missing.headers["age"]) == ("miss", "0")
    again = await api.get(f"/v1/{T}/rooms/room-99", headers=h)
    assert again.status_code == 404 and again.headers["x-cache"] == "hit"  # the negative answer is cached

    members = await api.get(f"/v1/{T}/rooms/room-01/members", headers=h)
    assert members.status_code == 200 and (members.headers["x-cache"], members.headers["age"]) == ("miss", "0")
    body = members.json()
    expected = await api.origin.get_members(T, "room-01")
    assert body["version"] == expected.version
    assert body["members"] == [{"user_id": m.user_id, "role": m.role} for m in expected.members]

    member = expected.members[0]
    hit = await api.get(f"/v1/{T}/rooms/room-01/members/{member.user_id}", headers=h)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "hit"
    assert hit.json() == {"room_id": "room-01", "user_id": member.user_id, "role": member.role}
    outsider = next(f"user-{i:03d}" for i in range(1, 101) if f"user-{i:03d}" not in {m.user_id for m in expected.members})
    nope = await api.get(f"/v1/{T}/rooms/room-01/members/{outsider}", headers=h)
    assert nope.status_code == 404 and nope.headers["x-cache"] == "hit" and nope.headers["content-type"] == PROBLEM
    assert nope.json() == {"type": "urn:hotpath:error:not-member", "title": "Not a member", "status": 404,
                           "detail": f"user {outsider!r} is not a member of room 'room-01'",
                           "instance": f"/v1/{T}/rooms/room-01/members/{outsider}", "request_id": nope.headers["x-request-id"]}


async def test_user_routes_and_unread(api):
    h = token()
    members = await api.origin.get_members(T, "room-02")
    user = members.members[0].user_id
    rooms = await api.get(f"/v1/{T}/users/{user}/rooms", headers=h)
    assert rooms.status_code == 200 and (rooms.headers["x-cache"], rooms.headers["age"]) == ("miss", "0")
    assert rooms.json() == {"user_id": user, "rooms": await api.origin.get_user_rooms(T, user)}
    unread = await api.get(f"/v1/{T}/users/{user}/unread", headers=h)
    assert unread.status_code == 200 and (unread.headers["x-cache"], unread.headers["age"]) == ("miss", "0")
    states = await api.origin.get_read_states(T, user)
    expected = {s.room_id: max(0, s.last_seq - s.last_read_seq) for s in states}
    assert unread.json() == {"total": sum(expected.values()), "rooms": expected}
    again = await api.get(f"/v1/{T}/users/{user}/unread", headers=h)
    assert again.headers["x-cache"] == "hit" and again.json() == unread.json()


async def test_batch_routes(api):
    h = token()
    res = await api.post(f"/v1/{T}/rooms:batchGet", headers=h, json={"room_ids": ["room-01", "room-02", "room-77"]})
    assert res.status_code == 200 and (res.headers["x-cache"], res.headers["age"]) == ("miss", "0")
    assert sorted(res.json()["rooms"]) == ["room-01", "room-02"] and res.json()["missing"] == ["room-77"]
    members = (await api.origin.get_members(T, "room-03")).members
    checks = [{"room_id": "room-03", "user_id": m.user_id} for m in members] + [{"room_id": "room-03", "user_id": "nobody"}]
    res = await api.post(f"/v1/{T}/memberships:check", headers=h, json={"checks": checks})
    assert res.status_code == 200
    results = res.json()["results"]
    assert [r["member"] for r in results] == [True] * len(members) + [False]
    assert results[0]["role"] == members[0].role and results[-1]["room_exists"] is True


async def test_an_applied_event_is_visible_as_soon_as_its_post_returns(api):
    h = token()
    members = (await api.origin.get_members(T, "room-04")).members
    user = members[-1].user_id
    assert (await api.get(f"/v1/{T}/rooms/room-04/members/{user}", headers=h)).status_code == 200
    body = {"events": [
        {"id": "evt-1", "type": "member.removed", "room_id": "room-04", "user_id": user, "at": "2026-11-26T12:00:00Z"},
        {"id": "evt-2", "type": "message.created", "room_id": "room-04", "seq": 10_000},
    ]}
    res = await api.post(f"/v1/{T}/events", headers=h, json=body)
    assert res.status_code == 200
    assert res.json() == {"results": [{"id": "evt-1", "type": "member.removed", "result": "applied"},
                                      {"id": "evt-2", "type": "message.created", "result": "applied"}],
                          "applied": 2, "ignored": 0}
    # The SQL origin was not changed here, so the refill shows the origin's truth again: what matters is that
    # the cached "member" answer was dropped the moment the POST returned.
    after = await api.get(f"/v1/{T}/rooms/room-04/members/{user}", headers=h)
    assert after.headers["x-cache"] == "miss"
    room = await api.get(f"/v1/{T}/rooms/room-04", headers=h)
    assert room.json()["last_seq"] == 10_000
    again = await api.post(f"/v1/{T}/events", headers=h, json=body)
    assert again.json()["results"][1]["result"] == "ignored"


async def test_cache_metrics_are_exported(api):
    h = token()
    await api.get(f"/v1/{T}/rooms/room-05", headers=h)
    await api.get(f"/v1/{T}/rooms/room-05", headers=h)
    await api.post(f"/v1/{T}/events", headers=h, json={"events": [{"id": "e", "type": "room.updated", "room_id": "room-05"}]})
    text = (await api.get("/metrics")).text
    for name in ("hotpath_cache_hits_total", "hotpath_cache_misses_total", "hotpath_cache_stale_total",
                 "hotpath_cache_bypass_total", "hotpath_cache_fills_total", "hotpath_cache_lease_waits_total",
                 "hotpath_cache_invalidations_total", "hotpath_cache_events_total"):
        assert name in text, name
    assert 'hotpath_cache_events_total{result="applied",source="http",type="room.updated"}' in text


# Routes anyone may call: health, metrics, the API's own documentation. Every other route of the app must
# refuse a missing token (401) and a token for another tenant (403), and answer its own tenant.
PUBLIC = {"/livez", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# Path parameter values naming demo data that exists (user-005 owns acme's room-01), so every route's
# own-tenant answer is a 200, the one right answer.
PARAMS = {"room_id": "room-01", "user_id": "user-005"}


def all_routes(routes) -> list:
    """The app's route table, flattened: FastAPI (0.16x) keeps an included router as one lazy entry."""
    out = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        out += [c.original_route for c in contexts()] if contexts is not None else [route]
    return out


def operations(app) -> list[tuple[str, str]]:
    """(method, path template) of every route in the app's own route table, the public ones excepted."""
    ops = []
    for route in all_routes(app.routes):
        if route.path in PUBLIC:
            continue
        assert isinstance(route, APIRoute), f"{route.path}: not a FastAPI route; list it in PUBLIC or extend this test"
        ops += [(method, route.path) for method in sorted(route.methods)]
    return ops


def example_request(spec: dict, method: str, template: str, tenant: str) -> tuple[str, dict | None]:
    """A valid request for an operation: ids from PARAMS, required query parameters and the body from their
    published examples."""
    params = {"tenant": tenant, **PARAMS}
    names = [part[1:-1] for part in template.split("/") if part.startswith("{")]
    assert set(names) <= set(params), f"{template}: add a value for {set(names) - set(params)} to PARAMS"
    query = [p for p in spec["paths"][template][method.lower()].get("parameters", []) if p["in"] == "query" and p["required"]]
    for p in query:
        assert p["schema"].get("examples"), f"{template}: give query parameter {p['name']!r} an example"
    suffix = "?" + "&".join(f"{p['name']}={p['schema']['examples'][0]}" for p in query) if query else ""
    body = None
    request_body = spec["paths"][template][method.lower()].get("requestBody")
    if request_body is not None:
        ref = request_body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        examples = spec["components"]["schemas"][ref].get("examples")
        assert examples, f"{template}: give {ref} an example (json_schema_extra) so the route can be walked"
        body = examples[0]
    return template.format(**params) + suffix, body


def app_for_walk():
    return build_api(ApiSettings(jwt_keys={"t1": SECRET}))


# Every route answers 200, but the intakes, which answer 202 (enqueued, not yet done).
ACCEPTED = {("POST", "/v1/{tenant}/index"), ("POST", "/v1/storage-events")}


def success_status(spec: dict, method: str, template: str) -> int:
    """The 2xx an operation must declare, and answer."""
    ok = 202 if (method, template) in ACCEPTED else 200
    assert [s for s in spec["paths"][template][method.lower()]["responses"] if s.startswith("2")] == [str(ok)]
    return ok


# Routes outside /v1/{tenant} that are not public: webhooks authenticated by their own shared token instead of a
# tenant's JWT (MinIO's storage events: tests/thumb_worker/test_intake.py), refusing a request without it.
WEBHOOKS = {("POST", "/v1/storage-events")}


@pytest.mark.parametrize(("method", "template"), [op for op in operations(app_for_walk()) if op not in WEBHOOKS])
async def test_a_token_for_one_tenant_never_reads_another(api, method, template):
    assert "{tenant}" in template, f"{template}: a non-public route outside /v1/{{tenant}}: decide how it is isolated"
    spec = (await api.get("/openapi.json")).json()
    path, body = example_request(spec, method, template, T)
    own = await api.request(method, path, headers=token(), json=body)
    assert own.status_code == success_status(spec, method, template), own.text
    other_path, _ = example_request(spec, method, template, OTHER)
    other = await api.request(method, other_path, headers=token(), json=body)
    assert other.status_code == 403 and other.headers["content-type"] == PROBLEM
    assert (other.json()["type"], other.json()["tenant"]) == ("urn:hotpath:error:tenant-forbidden", OTHER)
    assert OTHER in other.json()["detail"] and "x-cache" not in other.headers
    anon = await api.request(method, path, json=body)
    assert anon.status_code == 401 and anon.json()["type"] == "urn:hotpath:error:unauthorized"
    assert anon.headers["www-authenticate"] == 'Bearer realm="hotpath"'


def test_the_route_walk_sees_every_cache_route():
    """The walk above is only as good as the route table it reads: it must see the eight cache routes, the index
    intake and the search (and the storage webhook, outside it)."""
    assert len(operations(app_for_walk())) == 8 + 2 + len(WEBHOOKS)


@pytest.mark.parametrize(("method", "template"), sorted(WEBHOOKS))
async def test_a_webhook_refuses_a_request_without_its_token(api, method, template):
    res = await api.request(method, template, json={})
    assert res.status_code == 401 and res.json()["type"] == "urn:hotpath:error:unauthorized"
    tenant_token = await api.request(method, template, headers=token(tenants=("*",)), json={})
    assert tenant_token.status_code == 401  # a tenant JWT is not the webhook's token


async def test_events_need_the_write_scope(api):
    res = await api.post(f"/v1/{T}/events", headers=token(scope="cache:read"),
                         json={"events": [{"id": "e", "type": "room.updated", "room_id": "r"}]})
    assert res.status_code == 403


@pytest.mark.parametrize("path", [
    "/v1/{t}/rooms/bad%20id", "/v1/{t}/rooms/" + "x" * 65, "/v1/{t}/rooms/-leading-dash",
    "/v1/{t}/rooms/r1/members/u%7Bbrace%7D", "/v1/{t}/users/%F0%9F%98%80/unread", "/v1/{t}/rooms/r1/members/u1%0A",
    "/v1/{t}/rooms/r1%0A/members/u1", "/v1/{t}/rooms/r1/members/" + "u" * 65, "/v1/{t}/rooms/r1%0A",
])
async def test_invalid_ids_are_422_with_the_pattern(api, path):
    res = await api.get(path.format(t=T), headers=token())
    assert res.status_code == 422
    assert "pattern" in res.text or "at most" in res.text


async def test_bodies_over_the_limit_are_413_and_bad_batches_422_with_a_message(api):
    h = token()
    big = {"checks": [{"room_id": "r", "user_id": f"u{i:063d}"} for i in range(1000)]}  # ~90 KB > the 64 KiB limit
    res = await api.post(f"/v1/{T}/memberships:check", headers=h, json=big)
    assert res.status_code == 413 and res.headers["content-type"] == PROBLEM
    assert res.json()["type"] == "urn:hotpath:error:payload-too-large" and "HOTPATH_MAX_BODY_BYTES" in res.json()["detail"]
    assert res.json()["request_id"] == res.headers["x-request-id"]
    res = await api.post(f"/v1/{T}/rooms:batchGet", headers=h, json={"room_ids": [f"r{i}" for i in range(1001)]})
    assert res.status_code == 422 and "at most 1000" in res.text
    assert res.json()["errors"] == [{"loc": ["body", "room_ids"], "type": "too_long",
                                     "msg": "List should have at most 1000 items after validation, not 1001"}]
    assert "r1000" not in res.text and len(res.content) < 1000  # the 1,001 ids are not echoed back
    res = await api.post(f"/v1/{T}/events", headers=h, json={"events": []})
    assert res.status_code == 422 and "at least 1" in res.text
    res = await api.post(f"/v1/{T}/events", headers=h, json={"events": [{"id": "e", "type": "read.updated", "room_id": "r"}]})
    assert res.status_code == 422 and "needs user_id and seq" in res.text
    res = await api.post(f"/v1/{T}/events", headers=h, content=b"{not json")
    assert res.status_code == 422


async def test_batch_of_1001_ids_is_rejected_with_a_message(redis_url, key_prefix, sqlite_url):
    settings = ApiSettings(redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url,
                           jwt_keys={"t1": SECRET}, rate_limit_per_s=100_000, rate_limit_burst=100_000)
    app = create_app(settings, origin=SqlOrigin(sqlite_url))
    async with running(app) as api:
        res = await api.post(f"/v1/{T}/memberships:check", headers=token(),
                             json={"checks": [{"room_id": "r", "user_id": f"u{i}"} for i in range(1001)]})
        assert res.status_code == 422 and "at most 1000" in res.text
        ok = await api.post(f"/v1/{T}/memberships:check", headers=token(),
                            json={"checks": [{"room_id": "room-01", "user_id": f"user-{i:03d}"} for i in range(1, 101)]})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 100
        await app.state.origin.aclose()


async def test_chunked_body_over_the_limit_is_413(api):
    async def chunks():
        for _ in range(100):
            yield b"x" * 1024

    res = await api.post(f"/v1/{T}/events", headers=token(), content=chunks())
    assert res.status_code == 413 and res.json()["type"] == "urn:hotpath:error:payload-too-large"


def test_openapi_documents_every_route_with_its_headers_and_problem_responses():
    app = app_for_walk()
    spec = app.openapi()
    for method, template in operations(app):
        op = spec["paths"][template][method.lower()]
        expected = {str(success_status(spec, method, template)), "401", "403", "422", "429", "500", "503"} | (
            {"413"} if method == "POST" else set())
        if (method, template) in WEBHOOKS:
            expected.discard("403")  # one shared token: no tenant or scope to be refused
        if template.startswith("/v1/{tenant}/rooms/{room_id}"):
            expected.add("404")
        assert set(op["responses"]) == expected, (method, template)
        for status in expected - {str(success_status(spec, method, template))}:
            assert op["responses"][status]["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's default 422 body is not what we send
    assert set(spec["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status", "detail", "instance", "request_id"}
    get_room = spec["paths"]["/v1/{tenant}/rooms/{room_id}"]["get"]
    assert "X-Cache" in get_room["responses"]["200"]["headers"] and "X-Cache" in get_room["responses"]["404"]["headers"]
    params = {p["name"]: p for p in get_room["parameters"]}
    assert params["room_id"]["schema"]["pattern"].startswith("^[A-Za-z0-9]")


async def test_the_membership_fast_path_answers_exactly_like_the_route(redis_url, key_prefix):
    """MembershipFastPath skips FastAPI's routing and dependency solving; status, body and headers must be
    those of the FastAPI route for every outcome: hit, not a member, no room, 401, 403, 422, 503."""
    from cacheman.observability import HTTP_REQUESTS
    from cacheman.routes import MEMBERSHIP_PATH, MembershipFastPath
    from tests.cacheman.cache_fakes import FakeOrigin

    origin = FakeOrigin()
    origin.add_room(T, "room-06", members={"user-001": "owner", "user-002": "member"})

    def build(prefix: str):
        settings = ApiSettings(redis_url=redis_url, redis_prefix=prefix, jwt_keys={"t1": SECRET},
                               rate_limit_per_s=100_000, rate_limit_burst=100_000)
        return create_app(settings, origin=origin)

    fast, slow = build(key_prefix + "fast"), build(key_prefix + "slow")
    slow.user_middleware[:] = [mw for mw in slow.user_middleware if mw.cls is not MembershipFastPath]
    assert any(mw.cls is MembershipFastPath for mw in fast.user_middleware)
    cases = [
        (f"/v1/{T}/rooms/room-06/members/user-001", token()),
        (f"/v1/{T}/rooms/room-06/members/nobody", token()),
        (f"/v1/{T}/rooms/room-404/members/nobody", token()),
        (f"/v1/{T}/rooms/room-06/members/user-001", {}),
        (f"/v1/{T}/rooms/room-06/members/user-001", {"Authorization": "Bearer not-a-jwt"}),
        (f"/v1/{T}/rooms/room-06/members/user-001", {"Authorization": "Basic abc"}),
        (f"/v1/{OTHER}/rooms/room-06/members/user-001", token()),
        (f"/v1/{T}/rooms/room-06/members/user-001", token(scope="index:write")),
        (f"/v1/{T}/rooms/room-06/members/bad%20id", token()),
    ]
    drop = {"x-request-id", "date", "age", "content-length"}

    def same(a: httpx.Response, b: httpx.Response, what: str) -> None:
        body_a, body_b = a.json(), b.json()
        if isinstance(body_a, dict):
            body_a.pop("request_id", None)
            body_b.pop("request_id", None)
        assert (a.status_code, body_a) == (b.status_code, body_b), what
        assert {k: v for k, v in a.headers.items() if k not in drop} == {k: v for k, v in b.headers.items() if k not in drop}, what

    async with running(fast) as f, running(slow) as s:
        for path, headers in cases * 2:  # the second round answers from the cache
            same(await f.get(path, headers=headers), await s.get(path, headers=headers), path)
        origin.down = True  # a miss now has no origin and nothing cached: 503 naming the origin
        path = f"/v1/{T}/rooms/room-07/members/x"
        a, b = await f.get(path, headers=token()), await s.get(path, headers=token())
        assert a.status_code == 503 and a.json()["dependency"] == "origin"
        same(a, b, path)
        # The fast path labels its requests with the route template (not "unmatched"); counted on the fast app alone.
        counter = HTTP_REQUESTS.labels(MEMBERSHIP_PATH, "GET", "200")
        before = counter._value.get()
        for _ in range(3):
            assert (await f.get(f"/v1/{T}/rooms/room-06/members/user-001", headers=token())).status_code == 200
        assert counter._value.get() - before == 3
