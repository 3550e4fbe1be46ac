"""HTTP origin against real dbman doubles (subprocesses, real HTTP, SQLite-backed): contract, retries,
backoff, breaker, timeouts, the concurrency limit, and one instance killed mid-load with zero failed calls."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cacheman.errors import OriginUnavailable
from cacheman.observability import REGISTRY
from cacheman.origin.base import open_origin
from cacheman.origin.demo import generate
from cacheman.origin.http import HttpOrigin
from cacheman.origin.sql import SqlOrigin, init_schema
from tests.services import free_port, wait_port


class Double:
    """`python -m cacheman.origin.double` in its own process."""

    def __init__(self, origin_url: str, port: int | None = None) -> None:
        self.origin_url = origin_url
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Double:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cacheman.origin.double", "--origin-url", self.origin_url, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, timeout=30, proc=self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stats(self) -> dict:
        return httpx.get(self.url + "/_stats", timeout=5).json()

    def control(self, **body) -> None:
        httpx.post(self.url + "/_control", json=body, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(self.url + "/_control", json={}, timeout=5).raise_for_status()
        httpx.post(self.url + "/_stats/reset", timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def origin_db(tmp_path_factory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('origin')}/origin.db"
    asyncio.run(init_schema(url, demo=True))
    return url


@pytest.fixture(scope="module")
def double(origin_db) -> Iterator[Double]:
    d = Double(origin_db).start()
    yield d
    d.kill()


@pytest.fixture
def fresh(double) -> Double:
    double.reset()
    return double


async def test_contract_answers_match_the_sql_origin(origin_db, fresh):
    sql = SqlOrigin(origin_db)
    http = open_origin(fresh.url, timeout_s=5)
    assert isinstance(http, HttpOrigin)
    data = generate()
    members = [m for m in data.room_members if m["tenant_id"] == "acme" and m["room_id"] == "room-03"]
    try:
        for tenant in ("acme", "globex"):
            for rid in ("room-01", "room-07", "missing"):
                assert await http.get_room(tenant, rid) == await sql.get_room(tenant, rid)
                assert await http.get_members(tenant, rid) == await sql.get_members(tenant, rid)
            for uid in ("user-001", "user-050", "nobody"):
                assert await http.get_user_rooms(tenant, uid) == await sql.get_user_rooms(tenant, uid)
                assert await http.get_read_states(tenant, uid) == await sql.get_read_states(tenant, uid)
        ids = [f"room-{i:02d}" for i in range(1, 11)] + ["nope"]
        assert await http.get_rooms("acme", ids) == await sql.get_rooms("acme", ids)
        m = members[0]
        assert (await http.get_member("acme", "room-03", m["user_id"])).role == m["role"]
        assert await http.get_member("acme", "room-03", "nobody") is None
        # Ids with characters that need percent-encoding travel intact ("/" is excluded by the contract).
        assert await http.get_room("acme", "a b?c#d%") is None
        await http.ping()
        stats = fresh.stats()
        assert stats["by_op"]["get_room"] == 7 and stats["by_op"]["get_member"] == 2
    finally:
        await http.aclose()
        await sql.aclose()


async def test_transient_failures_are_retried_with_backoff(fresh):
    fresh.control(fail_status=503, fail_next=2)
    origin = HttpOrigin([fresh.url], retries=2, backoff_s=0.1, backoff_max_s=1.0, breaker_failures=10)
    try:
        start = time.monotonic()
        room = await origin.get_room("acme", "room-01")
        elapsed = time.monotonic() - start
        assert room is not None and room.room_id == "room-01"
        stats = fresh.stats()
        assert stats["calls"] == 3 and stats["by_op"]["injected_failures"] == 2
        # Two waits: 0.1 + U(0, 0.1) then 0.2 + U(0, 0.1).
        assert 0.3 <= elapsed < 1.5
    finally:
        await origin.aclose()


async def test_retries_exhausted_is_origin_unavailable(fresh):
    fresh.control(fail_status=500, fail_next=5)
    origin = HttpOrigin([fresh.url], retries=1, backoff_s=0.01, breaker_failures=10)
    try:
        with pytest.raises(OriginUnavailable, match="HOTPATH_ORIGIN_RETRIES") as err:
            await origin.get_member("acme", "room-01", "user-001")
        assert "answered 500" in str(err.value)
        assert fresh.stats()["calls"] == 2
    finally:
        await origin.aclose()


async def test_client_errors_are_not_retried_and_do_not_trip_the_breaker(fresh):
    fresh.control(fail_status=400)
    origin = HttpOrigin([fresh.url], retries=3, backoff_s=0.01, breaker_failures=1)
    try:
        with pytest.raises(OriginUnavailable, match="rejected the request with 400"):
            await origin.get_room("acme", "room-01")
        assert fresh.stats()["calls"] == 1
        assert origin.breaker_states() == {fresh.url: "closed"}
    finally:
        await origin.aclose()


async def test_404_without_the_contract_body_is_a_failure_not_not_found(fresh):
    origin = HttpOrigin([fresh.url + "/wrong-prefix"], retries=0, breaker_failures=10)
    try:
        with pytest.raises(OriginUnavailable, match="404"):
            await origin.get_room("acme", "room-01")
    finally:
        await origin.aclose()


async def test_breaker_opens_fails_fast_then_half_open_probe_closes_it(fresh):
    fresh.control(fail_status=503)
    origin = HttpOrigin([fresh.url], retries=0, breaker_failures=3, breaker_window_s=10, breaker_open_s=0.5)
    try:
        assert origin.retry_after_s is None  # closed: no "try again at" to announce
        for _ in range(3):
            with pytest.raises(OriginUnavailable):
                await origin.get_room("acme", "room-01")
        assert origin.breaker_states() == {fresh.url: "open"}
        assert REGISTRY.get_sample_value("hotpath_origin_breaker_state", {"instance": fresh.url}) == 2
        assert 0 < origin.retry_after_s <= 0.5
        calls = fresh.stats()["calls"]
        start = time.monotonic()
        with pytest.raises(OriginUnavailable, match="open circuit breaker") as fast:
            await origin.get_room("acme", "room-01")
        assert time.monotonic() - start < 0.05
        assert 0 < fast.value.retry_after_s <= 0.5  # the 503's Retry-After
        assert fresh.stats()["calls"] == calls  # failed fast, never reached the origin
        fresh.control()  # heal the origin
        await asyncio.sleep(0.6)
        assert origin.breaker_states() == {fresh.url: "half_open"}
        assert origin.retry_after_s is None
        assert (await origin.get_room("acme", "room-01")) is not None  # the probe
        assert origin.breaker_states() == {fresh.url: "closed"}
        assert REGISTRY.get_sample_value("hotpath_origin_breaker_state", {"instance": fresh.url}) == 0
    finally:
        await origin.aclose()


async def test_read_timeout(fresh):
    fresh.control(delay_ms=1000)
    origin = HttpOrigin([fresh.url], timeout_s=0.2, retries=1, backoff_s=0.01, breaker_failures=10)
    try:
        start = time.monotonic()
        with pytest.raises(OriginUnavailable, match="Timeout"):
            await origin.get_room("acme", "room-01")
        assert time.monotonic() - start < 0.8
        assert REGISTRY.get_sample_value(
            "hotpath_origin_seconds_count", {"instance": fresh.url, "op": "get_room", "outcome": "timeout"}) >= 2
    finally:
        await origin.aclose()


async def test_concurrency_limit_bounds_calls_in_flight(fresh):
    fresh.control(delay_ms=200)
    origin = HttpOrigin([fresh.url], max_concurrency=2, timeout_s=5)
    try:
        start = time.monotonic()
        rooms = await asyncio.gather(*[origin.get_room("acme", "room-01") for _ in range(6)])
        elapsed = time.monotonic() - start
        assert all(r is not None for r in rooms)
        assert elapsed >= 0.6  # 6 calls, 2 at a time, 200 ms each: three waves
    finally:
        await origin.aclose()


async def test_double_can_hold_calls_until_released(fresh):
    fresh.control(block=True)
    origin = HttpOrigin([fresh.url], timeout_s=5)
    try:
        task = asyncio.create_task(origin.get_room("acme", "room-01"))
        for _ in range(50):
            if fresh.stats()["calls"] == 1:
                break
            await asyncio.sleep(0.02)
        assert fresh.stats()["calls"] == 1 and not task.done()
        (await asyncio.to_thread(httpx.post, fresh.url + "/_release", timeout=5)).raise_for_status()
        assert (await asyncio.wait_for(task, 5)).room_id == "room-01"
    finally:
        await origin.aclose()


async def test_ping_needs_one_healthy_instance(fresh):
    dead = f"http://127.0.0.1:{free_port()}"
    origin = HttpOrigin(f"{dead},{fresh.url}", timeout_s=1)
    all_dead = HttpOrigin([dead], timeout_s=1)
    try:
        await origin.ping()
        with pytest.raises(OriginUnavailable, match="no dbman instance is healthy"):
            await all_dead.ping()
    finally:
        await origin.aclose()
        await all_dead.aclose()


async def test_one_instance_killed_mid_load_is_invisible(origin_db):
    a, b = Double(origin_db).start(), Double(origin_db).start()
    origin = HttpOrigin(
        [a.url, b.url], timeout_s=2, retries=2, backoff_s=0.01, breaker_failures=3, breaker_open_s=1.0
    )
    data = generate()
    pairs = [(m["tenant_id"], m["room_id"], m["user_id"], m["role"]) for m in data.room_members][:200]
    ok = 0
    failures: list[BaseException] = []
    wrong = 0
    stop = asyncio.Event()

    async def worker(k: int) -> None:
        nonlocal ok, wrong
        i = k
        while not stop.is_set():
            tenant, room, user, role = pairs[i % len(pairs)]
            i += 7
            try:
                member = await origin.get_member(tenant, room, user)
            except Exception as exc:
                failures.append(exc)
                continue
            if member is None or member.role != role:
                wrong += 1
            ok += 1

    try:
        workers = [asyncio.create_task(worker(k)) for k in range(24)]
        await asyncio.sleep(1.0)
        before_kill = dict(a=a.stats()["calls"], b=b.stats()["calls"])
        assert before_kill["a"] > 20 and before_kill["b"] > 20  # reads are spread over both
        b.kill()
        ok_at_kill = ok
        await asyncio.sleep(1.5)
        assert origin.breaker_states()[b.url] in ("open", "half_open")
        stop.set()
        await asyncio.gather(*workers)
        assert failures == [], failures[:3]
        assert wrong == 0
        assert ok - ok_at_kill > 100  # the load went on, served by the survivor
        a_calls = a.stats()["calls"]
        assert a_calls > before_kill["a"] + 100

        # The killed instance comes back on its port: after open_s a probe closes its breaker again.
        b = Double(origin_db, port=b.port).start()
        await asyncio.sleep(1.1)
        for i in range(40):
            tenant, room, user, role = pairs[i]
            assert (await origin.get_member(tenant, room, user)).role == role
        assert origin.breaker_states()[b.url] == "closed"
        assert b.stats()["calls"] > 5
    finally:
        stop.set()
        await origin.aclose()
        a.kill()
        b.kill()


def test_openapi_file_and_double_serve_the_same_contract():
    import yaml

    from cacheman.origin.double import create_double

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "origin-openapi.yaml").read_text())
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    app = create_double(origin=None)
    served = {
        (m, r.path) for r in app.routes for m in getattr(r, "methods", ()) or ()
        if not r.path.startswith(("/_", "/docs", "/openapi", "/redoc")) and m != "HEAD"
    }
    assert served == documented


async def test_double_error_shapes(fresh):
    async with httpx.AsyncClient(base_url=fresh.url) as c:
        r = await c.post("/v1/acme/rooms:batchGet", json={"room_ids": ["r"] * 1001})
        assert r.status_code == 422 and r.json()["error"] == "bad_request"
        r = await c.get("/v1/acme/rooms/nope")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
