"""One error contract: every route × every error status it declares is produced and its body validated against
the Problem schema published in /openapi.json; plus unmatched routes (404/405), a full queue, 500 and 503.

Real Redis and the SQL origin (demo data) for the statuses a request can cause (401 403 404 413 422 429); the
server-side ones (500, 503) are caused by standing in for the app's services with one that raises, since
what is tested here is the rendering boundary (the real 503 paths are tested in test_degraded.py).
"""

from __future__ import annotations

import logging
import math

import jsonschema
import pytest

from cacheman.auth import mint_token
from cacheman.errors import OriginUnavailable
from cacheman.origin.sql import SqlOrigin
from hotpath.api import build_api
from hotpath.settings import ApiSettings
from index_worker.search import SearchUnavailable
from taskkit.errors import QueueUnavailable
from tests.cacheman.conftest import running
from tests.cacheman.test_routes import PUBLIC, WEBHOOKS, example_request, operations

SECRET = "problems-test-secret-0123456789-0123456789"
T, OTHER, TINY = "acme", "globex", "tiny"
PROBLEM = "application/problem+json"
MAX_BODY = 64 * 1024


def token(tenants=(T,), scope="cache:read cache:write index:write") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=list(tenants), scope=scope, ttl_s=600)}


class Raising:
    """Stands in for one of app.state's services: every method call raises `exc` (synchronously, or from
    the awaited coroutine with `awaited=True`)."""

    def __init__(self, exc: BaseException, *, awaited: bool = False) -> None:
        self.exc = exc
        self.awaited = awaited

    def __getattr__(self, name):
        def method(*args, **kwargs):
            if self.awaited:
                async def fail():
                    raise self.exc
                return fail()
            raise self.exc
        return method


@pytest.fixture
async def api(redis_url, key_prefix, sqlite_url):
    # The API as `hotpath api` serves it (hotpath/api.py): the cache routes, the index intake and the search.
    settings = ApiSettings(
        redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url, jwt_keys={"t1": SECRET},
        rate_limit_per_s=100_000, rate_limit_burst=100_000, rate_limit_tenants={TINY: [0.001, 1]}, max_body_bytes=MAX_BODY,
        taskkit_prefix=key_prefix, embedder="hash",
    )
    origin = SqlOrigin(sqlite_url)
    app = build_api(settings, origin=origin)
    async with running(app) as client:
        client.app = app
        yield client
    await origin.aclose()


def validator(spec: dict) -> jsonschema.Draft202012Validator:
    """The published Problem schema (OpenAPI 3.1 = JSON Schema 2020-12), its $refs resolved within the spec."""
    return jsonschema.Draft202012Validator({"$ref": "#/components/schemas/Problem", "components": spec["components"]})


def check_problem(spec: dict, r, status: int, path: str, type_: str | None = None) -> dict:
    """The response is `status` with a problem+json body that the published schema accepts, and says so itself."""
    assert r.status_code == status, (path, r.status_code, r.text)
    assert r.headers["content-type"] == PROBLEM, (path, r.headers["content-type"])
    body = r.json()
    validator(spec).validate(body)
    assert body["status"] == status and body["instance"] == path.split("?")[0], (path, body)
    assert body["request_id"] == r.headers["x-request-id"], (path, body)
    assert body["title"] and body["detail"], (path, body)
    if type_ is not None:
        assert body["type"] == "urn:hotpath:error:" + type_, (path, body)
    if "retry_after_s" in body or status == 429:
        assert r.headers["retry-after"] == str(max(1, math.ceil(body["retry_after_s"]))), (path, body, r.headers)
    return body


def with_param(template: str, name: str, value: str, tenant: str) -> str:
    params = {"tenant": tenant, "room_id": "room-01", "user_id": "user-005", name: value}
    return template.format(**params)


async def produce(api, spec: dict, method: str, template: str, status: int):
    """A request to the operation that must answer `status` (and what the body's type must be)."""
    path, body = example_request(spec, method, template, T)
    if status == 401:
        return path, await api.request(method, path, json=body), "unauthorized"
    if status == 403:
        other, _ = example_request(spec, method, template, OTHER)
        return other, await api.request(method, other, headers=token(), json=body), "tenant-forbidden"
    if status == 404:
        missing = with_param(template, "room_id", "room-404", T)
        return missing, await api.request(method, missing, headers=token(), json=body), "room-not-found"
    if status == 413:
        big = b'{"x": "' + b"x" * MAX_BODY + b'"}'
        return path, await api.request(method, path, headers={**token(), "content-type": "application/json"}, content=big), \
            "payload-too-large"
    if status == 422:
        if body is not None:
            return path, await api.request(method, path, headers=token(), json={}), "validation-failed"
        last = [part[1:-1] for part in template.split("/") if part.startswith("{")][-1]
        if last == "tenant":  # no id of its own to get wrong (the search): a bad query parameter instead
            bad = path + "&limit=0"
            return bad, await api.request(method, bad, headers=token()), "validation-failed"
        bad = with_param(template, last, "bad id", T)
        return bad.replace(" ", "%20"), await api.request(method, bad, headers=token()), "validation-failed"
    if status == 429:
        tiny, _ = example_request(spec, method, template, TINY)
        return tiny, await api.request(method, tiny, headers=token(tenants=("*",)), json=body), "rate-limited"
    state = api.app.state
    saved = state.cache, state.events, state.index_producer, state.searcher
    try:
        if status == 500:
            state.cache = state.events = state.index_producer = state.searcher = Raising(RuntimeError("a bug"))
            kind = "internal"
        elif status == 503:
            cause = OriginUnavailable("all 1 origin instance(s) have an open circuit breaker", retry_after_s=2.2)
            try:
                raise OriginUnavailable("nothing cached to serve instead") from cause  # as the cache wraps it
            except OriginUnavailable as exc:
                state.cache = state.events = Raising(exc)
            state.index_producer = Raising(QueueUnavailable("index", "its Redis did not answer (ConnectionError)"))
            state.searcher = Raising(SearchUnavailable("milvus", "the search failed", retry_after_s=2.2))
            kind = "dependency-unavailable"
        else:
            raise AssertionError(f"{method} {template} declares {status}: teach produce() how to cause it")
        return path, await api.request(method, path, headers=token(), json=body), kind
    finally:
        state.cache, state.events, state.index_producer, state.searcher = saved


async def test_every_route_answers_every_error_it_declares_with_the_published_problem_schema(api):
    spec = (await api.get("/openapi.json")).json()
    # One request of the tiny tenant takes its whole bucket (burst 1, 0.001/s): from now on it is over its limit.
    warm, _ = example_request(spec, "GET", "/v1/{tenant}/users/{user_id}/rooms", TINY)
    assert (await api.get(warm, headers=token(tenants=("*",)))).json() == {"user_id": "user-005", "rooms": []}
    checked = []
    # (the storage webhook has its own walk: tests/thumb_worker/test_intake.py)
    for method, template in [op for op in operations(api.app) if op not in WEBHOOKS]:
        declared = sorted(int(s) for s in spec["paths"][template][method.lower()]["responses"] if int(s) >= 400)
        assert {401, 403, 422, 429, 500, 503} <= set(declared), (method, template, declared)
        for status in declared:
            path, r, kind = await produce(api, spec, method, template, status)
            body = check_problem(spec, r, status, path, kind)
            if status == 404:  # a normal answer, cached like a 200: asked again, it is a hit
                assert r.headers["x-cache"] in ("miss", "hit") and r.headers["age"] == "0"  # (members: filled by the route before)
                again = await api.request(method, path, headers=token())
                assert (again.status_code, again.headers["x-cache"], again.headers["age"]) == (404, "hit", "0")
                assert {**again.json(), "request_id": ""} == {**body, "request_id": ""}
            if status == 422:
                assert body["errors"] and all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
            if status == 503:
                dependency = {"/v1/{tenant}/index": "queue", "/v1/{tenant}/search": "milvus"}.get(template, "origin")
                assert body["dependency"] == dependency, body
                if dependency != "queue":  # the queue's Redis says nothing of when it will be back
                    assert (body["retry_after_s"], r.headers["retry-after"]) == (2.2, "3")
            if status == 500:
                assert body["request_id"] in body["detail"]
            checked.append((method, template, status))
    # 8 cache routes × 6 common statuses, 404 on 3, 413 on the 3 POSTs; the index intake: 6 + 413; the search: 6
    assert len(checked) == 8 * 6 + 3 * 1 + 3 * 1 + 7 + 6


async def test_health_routes_errors_have_the_same_shape(api, monkeypatch):
    spec = (await api.get("/openapi.json")).json()
    public = {path for path in spec["paths"] if not path.startswith("/v1/")}
    assert public == {"/livez", "/readyz", "/metrics"} and public < PUBLIC
    assert [int(s) for s in spec["paths"]["/livez"]["get"]["responses"]] == [200]  # it cannot fail
    saved = api.app.state.redis
    api.app.state.redis = Raising(ConnectionError("redis is gone"), awaited=True)
    try:
        body = check_problem(spec, await api.get("/readyz"), 503, "/readyz", "dependency-unavailable")
        assert body["dependency"] == "redis" and body["dependencies"]["redis"]["status"] == "down"
        assert "retry_after_s" not in body  # nothing knows when Redis will be back
        api.app.state.redis = Raising(RuntimeError("a bug"))
        check_problem(spec, await api.get("/readyz"), 500, "/readyz", "internal")
    finally:
        api.app.state.redis = saved

    def broken(registry):
        raise RuntimeError("a bug in a collector")

    monkeypatch.setattr("cacheman.app.generate_latest", broken)
    check_problem(spec, await api.get("/metrics"), 500, "/metrics", "internal")


async def test_unmatched_routes_and_methods_are_problems_too(api):
    spec = (await api.get("/openapi.json")).json()
    body = check_problem(spec, await api.get("/v2/nothing/here"), 404, "/v2/nothing/here", "route-not-found")
    assert "/openapi.json" in body["detail"]
    r = await api.delete(f"/v1/{T}/rooms/room-01", headers=token())
    check_problem(spec, r, 405, f"/v1/{T}/rooms/room-01", "method-not-allowed")
    assert r.headers["allow"] == "GET" and "GET" in r.json()["detail"]
    r = await api.get(f"/v1/{T}/events", headers=token())
    assert check_problem(spec, r, 405, f"/v1/{T}/events", "method-not-allowed") and r.headers["allow"] == "POST"


async def test_422_lists_field_errors_without_echoing_the_input(api):
    spec = (await api.get("/openapi.json")).json()
    checks = [{"room_id": "r", "user_id": f"secret-user-{i}"} for i in range(1001)]
    r = await api.post(f"/v1/{T}/memberships:check", headers=token(), json={"checks": checks})
    body = check_problem(spec, r, 422, f"/v1/{T}/memberships:check", "validation-failed")
    assert body["errors"] == [{"loc": ["body", "checks"], "type": "too_long",
                               "msg": "List should have at most 1000 items after validation, not 1001"}]
    assert "secret-user" not in r.text
    assert body["detail"].startswith("body.checks: List should have at most 1000 items")
    r = await api.post(f"/v1/{T}/events", headers={**token(), "content-type": "application/json"}, content=b"{not json")
    body = check_problem(spec, r, 422, f"/v1/{T}/events", "validation-failed")
    assert body["errors"][0]["type"] == "json_invalid" and "not json" not in r.text
    # A body that is not even UTF-8 (FastAPI's own 400) is a 422 like any other malformed body.
    r = await api.post(f"/v1/{T}/rooms:batchGet", headers={**token(), "content-type": "application/json"}, content=b"\xff\x39")
    body = check_problem(spec, r, 422, f"/v1/{T}/rooms:batchGet", "validation-failed")
    assert body["errors"] == [{"loc": ["body"], "type": "json_invalid",
                               "msg": "the body could not be parsed (There was an error parsing the body); send UTF-8 JSON"}]
    # Many bad items: each is listed (up to 100), and the detail says how many there were.
    r = await api.post(f"/v1/{T}/rooms:batchGet", headers=token(), json={"room_ids": [f"bad id {i}" for i in range(150)]})
    body = check_problem(spec, r, 422, f"/v1/{T}/rooms:batchGet", "validation-failed")
    assert len(body["errors"]) == 100 and "and 149 more" in body["detail"] and "bad id" not in r.text


async def test_a_full_queue_is_429_with_retry_after_s_like_the_rate_limit(api):
    from taskkit.errors import QueueFull

    @api.app.post("/_test/enqueue")
    async def enqueue():
        raise QueueFull("hotpath:index", 0.4, depth=1000, oldest_age_s=4.0)

    api.app.openapi_schema = None
    spec = (await api.get("/openapi.json")).json()
    r = await api.post("/_test/enqueue")
    body = check_problem(spec, r, 429, "/_test/enqueue", "queue-full")
    assert (body["queue"], body["retry_after_s"], r.headers["retry-after"]) == ("hotpath:index", 0.4, "1")
    await api.get(f"/v1/{TINY}/users/u1/rooms", headers=token(tenants=("*",)))  # takes the tiny bucket's one token
    r = await api.get(f"/v1/{TINY}/users/u1/rooms", headers=token(tenants=("*",)))
    limited = check_problem(spec, r, 429, f"/v1/{TINY}/users/u1/rooms", "rate-limited")
    assert set(limited) - set(body) == {"tenant"} and set(body) - set(limited) == {"queue"}  # one field name: retry_after_s


async def test_an_unhandled_error_is_a_500_problem_carrying_the_request_id_and_is_logged(api, caplog):
    caplog.set_level(logging.INFO)
    spec = (await api.get("/openapi.json")).json()
    api.app.state.cache = Raising(RuntimeError("a bug"))
    for path in (f"/v1/{T}/rooms/room-01", f"/v1/{T}/rooms/room-01/members/user-005"):  # a route, and the fast path
        r = await api.get(path, headers={**token(), "X-Request-ID": "rid-500"})
        body = check_problem(spec, r, 500, path, "internal")
        assert body["request_id"] == "rid-500" and "rid-500" in body["detail"] and "a bug" not in r.text
        errors = [rec for rec in caplog.records if rec.name == "cacheman" and getattr(rec, "request_id", None) == "rid-500"]
        assert errors and errors[-1].exc_info[0] is RuntimeError  # the traceback is in the log, under the request id
        access = [rec for rec in caplog.records if rec.name == "cacheman.access" and rec.request_id == "rid-500"]
        assert access[-1].status == 500 and access[-1].path == path
        caplog.clear()
