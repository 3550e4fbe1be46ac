"""The cache API end to end in-process: real Redis, the SQL origin on SQLite demo data, real JWTs.

Every route: status, body shape, X-Cache and Age; tenant isolation; bad ids, oversize batches and
bodies answer 4xx with a message (never 500); an event's effect is visible as soon as its POST returns.
"""

from __future__ import annotations

import httpx
import pytest

from cacheman.app import create_app
from cacheman.auth import mint_token
from cacheman.origin.sql import SqlOrigin
from hotpath.settings import ApiSettings
from tests.cacheman.conftest import running

SECRET = "routes-test-secret-0123456789-0123456789"
T, OTHER = "acme", "globex"


def token(tenants=(T,), scope="cache:read cache:write") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=list(tenants), scope=scope, ttl_s=600)}


@pytest.fixture
async def api(redis_url, key_prefix, sqlite_url):
    settings = ApiSettings(
        redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url, jwt_keys={"t1": SECRET},
        rate_limit_per_s=100_000, rate_limit_burst=100_000, max_body_bytes=64 * 1024,
    )
    origin = SqlOrigin(sqlite_url)
    app = create_app(settings, origin=origin)
    async with running(app) as client:
        client.origin = origin
        yield client
    await origin.aclose()


async def test_room_routes_answer_with_x_cache_and_age(api):
    h = token()
    first = await api.get(f"/v1/{T}/rooms/room-01", headers=h)
    second = await api.get(f"/v1/{T}/rooms/room-01", headers=h)
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.headers["age"].isdigit()
    assert second.json()["room_id"] == "room-01" and second.json()["name"] == f"{T}-room-01"
    missing = await api.get(f"/v1/{T}/rooms/room-99", headers=h)
    assert missing.status_code == 404 and missing.json()["error"] == "room_not_found"
    assert missing.headers["x-cache"] == "miss"

    members = await api.get(f"/v1/{T}/rooms/room-01/members", headers=h)
    assert members.status_code == 200 and members.headers["x-cache"] in ("miss", "hit")
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
    assert nope.status_code == 404 and nope.json()["error"] == "not_member" and nope.headers["x-cache"] == "hit"


async def test_user_routes_and_unread(api):
    h = token()
    members = await api.origin.get_members(T, "room-02")
    user = members.members[0].user_id
    rooms = await api.get(f"/v1/{T}/users/{user}/rooms", headers=h)
    assert rooms.status_code == 200 and "x-cache" in rooms.headers and "age" in rooms.headers
    assert rooms.json() == {"user_id": user, "rooms": await api.origin.get_user_rooms(T, user)}
    unread = await api.get(f"/v1/{T}/users/{user}/unread", headers=h)
    assert unread.status_code == 200 and unread.headers["x-cache"] == "miss"
    states = await api.origin.get_read_states(T, user)
    expected = {s.room_id: max(0, s.last_seq - s.last_read_seq) for s in states}
    assert unread.json() == {"total": sum(expected.values()), "rooms": expected}
    again = await api.get(f"/v1/{T}/users/{user}/unread", headers=h)
    assert again.headers["x-cache"] == "hit" and again.json() == unread.json()


async def test_batch_routes(api):
    h = token()
    res = await api.post(f"/v1/{T}/rooms:batchGet", headers=h, json={"room_ids": ["room-01", "room-02", "room-77"]})
    assert res.status_code == 200 and "x-cache" in res.headers
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


ROUTES = [
    ("GET", "/v1/{t}/rooms/room-01", None),
    ("GET", "/v1/{t}/rooms/room-01/members", None),
    ("GET", "/v1/{t}/rooms/room-01/members/user-001", None),
    ("GET", "/v1/{t}/users/user-001/rooms", None),
    ("GET", "/v1/{t}/users/user-001/unread", None),
    ("POST", "/v1/{t}/rooms:batchGet", {"room_ids": ["room-01"]}),
    ("POST", "/v1/{t}/memberships:check", {"checks": [{"room_id": "room-01", "user_id": "user-001"}]}),
    ("POST", "/v1/{t}/events", {"events": [{"id": "e", "type": "room.updated", "room_id": "room-01"}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_a_token_for_one_tenant_never_reads_another(api, method, path, body):
    own = await api.request(method, path.format(t=T), headers=token(), json=body)
    assert own.status_code in (200, 404)
    other = await api.request(method, path.format(t=OTHER), headers=token(), json=body)
    assert other.status_code == 403 and OTHER in other.json()["detail"]["message"]
    anon = await api.request(method, path.format(t=T), json=body)
    assert anon.status_code == 401


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
    assert res.status_code == 413 and "HOTPATH_MAX_BODY_BYTES" in res.json()["detail"]
    res = await api.post(f"/v1/{T}/rooms:batchGet", headers=h, json={"room_ids": [f"r{i}" for i in range(1001)]})
    assert res.status_code == 422 and "at most 1000" in res.text
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
    assert res.status_code == 413


def test_openapi_documents_every_route_with_its_headers():
    app = create_app(ApiSettings(jwt_keys={"t1": SECRET}))
    spec = app.openapi()
    for method, path, _ in ROUTES:
        op = spec["paths"][path.format(t="{tenant}").replace("room-01/members/user-001", "{room_id}/members/{user_id}")
                           .replace("rooms/room-01", "rooms/{room_id}").replace("users/user-001", "users/{user_id}")][method.lower()]
        assert "200" in op["responses"] and "503" in op["responses"]
    get_room = spec["paths"]["/v1/{tenant}/rooms/{room_id}"]["get"]
    assert "X-Cache" in get_room["responses"]["200"]["headers"]
    params = {p["name"]: p for p in get_room["parameters"]}
    assert params["room_id"]["schema"]["pattern"].startswith("^[A-Za-z0-9]")


async def test_the_membership_fast_path_answers_exactly_like_the_route(redis_url, key_prefix):
    """MembershipFastPath skips FastAPI's routing and dependency solving; status, body and headers must be
    those of the FastAPI route for every outcome: hit, not a member, no room, 401, 403, 422, 503."""
    from cacheman.routes import MembershipFastPath
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
        metrics = (await f.get("/metrics")).text
    assert 'hotpath_http_requests_total{method="GET",route="/v1/{tenant}/rooms/{room_id}/members/{user_id}",status="200"}' in metrics
