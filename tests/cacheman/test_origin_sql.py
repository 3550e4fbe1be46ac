"""SQL origin against a real SQLite file and a real PostgreSQL schema: schema, demo data, every read, failures."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from cacheman.errors import OriginUnavailable
from cacheman.origin.base import open_origin
from cacheman.origin.demo import generate
from cacheman.origin.sql import SqlOrigin, init_schema, schema_statements
from tests.services import free_port


@pytest.fixture(params=["sqlite", "postgresql"])
def origin_url(request, tmp_path):
    """A URL of an origin with the demo data, on SQLite (tmp file) and PostgreSQL (a private schema)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/nested/dir/origin.db"
    else:
        pg_url = request.getfixturevalue("pg_url")
        schema = request.getfixturevalue("pg_schema")
        yield f"{pg_url}?schema={schema}"


async def test_init_schema_is_idempotent_and_demo_is_not_duplicated(origin_url):
    first = await init_schema(origin_url, demo=True)
    second = await init_schema(origin_url, demo=True)
    data = generate()
    assert "20 rooms" in first and "200 users" in first and "2 tenants" in first
    assert f"{len(data.room_members)} memberships" in second
    assert "(0 rows new)" in second
    assert "(0 rows new)" not in first
    # Schema only (no demo) on an existing database is a no-op too.
    assert "demo" not in await init_schema(origin_url)
    assert "\n" not in first


async def test_reads_match_demo_rows(origin_url):
    await init_schema(origin_url, demo=True)
    data = generate()  # what the origin must answer, computed independently of the SQL
    origin = open_origin(origin_url, timeout_s=5)
    try:
        assert isinstance(origin, SqlOrigin)
        tenant = "acme"
        room = next(r for r in data.rooms if r["tenant_id"] == tenant and r["last_seq"] > 0)
        rid = room["room_id"]
        got = await origin.get_room(tenant, rid)
        assert got is not None
        assert (got.room_id, got.name, got.topic, got.version, got.last_seq) == (
            rid, room["name"], room["topic"], 1, room["last_seq"])
        assert got.updated_at == room["updated_at"].isoformat().replace("+00:00", "Z")
        assert await origin.get_room(tenant, "no-such-room") is None
        assert await origin.get_room("globex-not-a-tenant", rid) is None

        members = {m["user_id"]: m["role"] for m in data.room_members if m["tenant_id"] == tenant and m["room_id"] == rid}
        got_members = await origin.get_members(tenant, rid)
        assert got_members is not None and got_members.version == 1
        assert {m.user_id: m.role for m in got_members.members} == members
        assert await origin.get_members(tenant, "no-such-room") is None

        some_member = next(iter(members))
        non_member = next(u["user_id"] for u in data.users if u["tenant_id"] == tenant and u["user_id"] not in members)
        assert (await origin.get_member(tenant, rid, some_member)).role == members[some_member]
        assert await origin.get_member(tenant, rid, non_member) is None
        assert await origin.get_member("globex", "no-such-room", some_member) is None

        all_rooms = await origin.get_rooms(tenant, [r["room_id"] for r in data.rooms] + ["zzz"])
        assert set(all_rooms) == {r["room_id"] for r in data.rooms if r["tenant_id"] == tenant}

        user = some_member
        expect_rooms = sorted(m["room_id"] for m in data.room_members if m["tenant_id"] == tenant and m["user_id"] == user)
        assert await origin.get_user_rooms(tenant, user) == expect_rooms
        reads = {(r["room_id"]): r["last_read_seq"] for r in data.read_states if r["tenant_id"] == tenant and r["user_id"] == user}
        last = {r["room_id"]: r["last_seq"] for r in data.rooms if r["tenant_id"] == tenant}
        states = await origin.get_read_states(tenant, user)
        assert [s.room_id for s in states] == expect_rooms
        for s in states:
            assert s.last_seq == last[s.room_id]
            assert s.last_read_seq == reads.get(s.room_id, 0)
        assert await origin.get_user_rooms(tenant, "nobody") == []
        await origin.ping()
    finally:
        await origin.aclose()


async def test_tenants_are_isolated_and_deleted_rooms_vanish(origin_url):
    await init_schema(origin_url)
    origin = SqlOrigin(origin_url, timeout_s=5)
    try:
        async with origin.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO rooms (tenant_id, room_id, name, version, members_version, last_seq) VALUES "
                "('a', 'r1', 'A room', 3, 7, 10), ('b', 'r1', 'B room', 1, 1, 0), ('a', 'gone', 'x', 2, 1, 0)"))
            await conn.execute(text(
                "INSERT INTO room_members (tenant_id, room_id, user_id, role) VALUES "
                "('a', 'r1', 'u1', 'owner'), ('b', 'r1', 'u2', 'member'), ('a', 'gone', 'u1', 'member')"))
            await conn.execute(text(
                "INSERT INTO read_states (tenant_id, room_id, user_id, last_read_seq) VALUES ('a', 'r1', 'u1', 4)"))
            await conn.execute(text("UPDATE rooms SET deleted = TRUE WHERE room_id = 'gone'"))
        assert (await origin.get_room("a", "r1")).name == "A room"
        assert (await origin.get_room("b", "r1")).name == "B room"
        members = await origin.get_members("a", "r1")
        assert members.version == 7 and [m.user_id for m in members.members] == ["u1"]
        assert await origin.get_member("b", "r1", "u1") is None
        assert await origin.get_room("a", "gone") is None
        assert await origin.get_members("a", "gone") is None
        assert await origin.get_member("a", "gone", "u1") is None
        assert await origin.get_user_rooms("a", "u1") == ["r1"]
        states = await origin.get_read_states("a", "u1")
        assert [(s.room_id, s.last_seq, s.last_read_seq) for s in states] == [("r1", 10, 4)]
        # A room with no members answers an empty list, not None.
        async with origin.engine.begin() as conn:
            await conn.execute(text("INSERT INTO rooms (tenant_id, room_id, name) VALUES ('a', 'empty', 'e')"))
        empty = await origin.get_members("a", "empty")
        assert empty is not None and empty.members == []
    finally:
        await origin.aclose()


async def test_unreachable_database_raises_origin_unavailable_quickly():
    port = free_port()  # nothing listens here
    origin = SqlOrigin(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/test", timeout_s=1)
    try:
        start = time.monotonic()
        with pytest.raises(OriginUnavailable) as err:
            await origin.get_member("a", "r", "u")
        assert time.monotonic() - start < 2
        assert err.value.dependency == "origin"
        with pytest.raises(OriginUnavailable):
            await origin.ping()
    finally:
        await origin.aclose()


async def test_statement_timeout_becomes_origin_unavailable(pg_url, pg_schema):
    url = f"{pg_url}?schema={pg_schema}"
    await init_schema(url)
    origin = SqlOrigin(url, timeout_s=0.3)
    try:
        start = time.monotonic()
        with pytest.raises(OriginUnavailable, match=r"HOTPATH_ORIGIN_TIMEOUT_S|statement timeout|canceling"):
            await origin._run("sleep", text("SELECT pg_sleep(5)"), {})
        assert time.monotonic() - start < 1.5
        # The pool recovers: the next call works.
        await origin.ping()
    finally:
        await origin.aclose()


async def test_missing_tables_is_origin_unavailable(tmp_path):
    origin = SqlOrigin(f"sqlite+aiosqlite:///{tmp_path}/empty.db", timeout_s=2)
    try:
        with pytest.raises(OriginUnavailable, match="rooms"):
            await origin.get_room("a", "r1")
    finally:
        await origin.aclose()


async def test_concurrent_reads_share_a_bounded_pool(origin_url):
    await init_schema(origin_url, demo=True)
    origin = SqlOrigin(origin_url, timeout_s=5, pool_size=4, max_overflow=0)
    try:
        results = await asyncio.gather(*[origin.get_member("acme", "room-01", f"user-{i % 100 + 1:03d}") for i in range(200)])
        data = generate()
        members = {m["user_id"] for m in data.room_members if m["tenant_id"] == "acme" and m["room_id"] == "room-01"}
        assert sum(r is not None for r in results) == sum(f"user-{i % 100 + 1:03d}" in members for i in range(200))
        assert origin.engine.pool.size() == 4
    finally:
        await origin.aclose()


def test_schema_option_is_validated():
    with pytest.raises(ValueError, match="PostgreSQL only"):
        SqlOrigin("sqlite+aiosqlite:///x.db?schema=foo")
    with pytest.raises(ValueError, match="must match"):
        SqlOrigin("postgresql+asyncpg://u@h/db?schema=bad;drop")


def test_schema_file_has_every_table():
    ddl = " ".join(schema_statements())
    for table in ("users", "rooms", "room_members", "read_states", "messages"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in ddl
    assert "--" not in ddl


async def test_max_concurrency_caps_the_pool(tmp_path):
    origin = SqlOrigin(f"sqlite+aiosqlite:///{tmp_path}/o.db", max_concurrency=25)
    try:
        assert origin.engine.pool.size() == 10 and origin.engine.pool._max_overflow == 15
    finally:
        await origin.aclose()


async def test_dead_pooled_connections_are_replaced_without_an_error(pg_url, pg_schema):
    # What a database restart does to a warm pool, done to this test's connections only.
    import uuid

    url = f"{pg_url}?schema={pg_schema}"
    await init_schema(url, demo=True)
    tag = f"hptest-{uuid.uuid4().hex[:8]}"
    origin = SqlOrigin(url, timeout_s=5, pool_size=3, max_overflow=0, name=tag)
    killer = SqlOrigin(url, timeout_s=5)
    try:
        await asyncio.gather(*[origin.get_member("acme", "room-01", "user-005") for _ in range(6)])
        async with killer.engine.connect() as conn:
            killed = (await conn.execute(
                text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :a"),
                {"a": f"hotpath {tag}"})).scalar_one()
        assert killed >= 1
        results = [await origin.get_room("acme", "room-01") for _ in range(5)]
        assert all(r is not None for r in results)
    finally:
        await origin.aclose()
        await killer.aclose()
