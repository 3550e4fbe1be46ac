"""The SQL origin: the Origin protocol on PostgreSQL (asyncpg) or SQLite (aiosqlite), and `init_schema`.

Each call is one hand-written statement (primary-key or index probe) run through SQLAlchemy's asyncio
engine, so the statement cache is reused and no ORM work sits on the hot path. Every call is bounded by
`timeout_s` (client side, and `statement_timeout` on PostgreSQL) and any database failure becomes
`OriginUnavailable`, which the cache turns into stale-if-error or a 503.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cacheman.errors import OriginUnavailable
from cacheman.origin.base import Member, Members, ReadState, Room
from cacheman.origin.breaker import ORIGIN_SECONDS

log = logging.getLogger("cacheman.origin.sql")

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
TABLES = ("users", "rooms", "room_members", "read_states", "messages")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_BATCH = 500  # ids per IN (...) statement; far below SQLite's and PostgreSQL's parameter limits

_Q_ROOM = text(
    "SELECT room_id, name, topic, version, last_seq, updated_at FROM rooms "
    "WHERE tenant_id = :t AND room_id = :r AND NOT deleted"
)
_Q_ROOMS = text(
    "SELECT room_id, name, topic, version, last_seq, updated_at FROM rooms "
    "WHERE tenant_id = :t AND room_id IN :ids AND NOT deleted"
).bindparams(bindparam("ids", expanding=True))
_Q_MEMBERS = text(
    "SELECT r.members_version, m.user_id, m.role FROM rooms r "
    "LEFT JOIN room_members m ON m.tenant_id = r.tenant_id AND m.room_id = r.room_id "
    "WHERE r.tenant_id = :t AND r.room_id = :r AND NOT r.deleted ORDER BY m.user_id"
)
_Q_MEMBER = text(
    "SELECT m.role FROM room_members m JOIN rooms r ON r.tenant_id = m.tenant_id AND r.room_id = m.room_id "
    "WHERE m.tenant_id = :t AND m.room_id = :r AND m.user_id = :u AND NOT r.deleted"
)
_Q_USER_ROOMS = text(
    "SELECT m.room_id FROM room_members m JOIN rooms r ON r.tenant_id = m.tenant_id AND r.room_id = m.room_id "
    "WHERE m.tenant_id = :t AND m.user_id = :u AND NOT r.deleted ORDER BY m.room_id"
)
_Q_READ_STATES = text(
    "SELECT m.room_id, r.last_seq, COALESCE(rs.last_read_seq, 0) FROM room_members m "
    "JOIN rooms r ON r.tenant_id = m.tenant_id AND r.room_id = m.room_id "
    "LEFT JOIN read_states rs ON rs.tenant_id = m.tenant_id AND rs.room_id = m.room_id AND rs.user_id = m.user_id "
    "WHERE m.tenant_id = :t AND m.user_id = :u AND NOT r.deleted ORDER BY m.room_id"
)


def _iso(value: Any) -> str:
    """Timestamps come back as datetime (PostgreSQL) or text (SQLite); answer ISO 8601 UTC either way."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _room(row) -> Room:
    return Room(room_id=row[0], name=row[1], topic=row[2], version=row[3], last_seq=row[4], updated_at=_iso(row[5]))


def _split_url(url: str | URL, schema: str | None) -> tuple[URL, str | None]:
    """Take `?schema=` off the URL (the drivers do not know it); an explicit `schema` argument wins."""
    u = make_url(url) if isinstance(url, str) else url
    q_schema = u.query.get("schema")
    if isinstance(q_schema, tuple):
        q_schema = q_schema[-1]
    u = u.difference_update_query(["schema"])
    schema = schema or q_schema or None
    if schema is not None:
        if not u.drivername.startswith("postgresql"):
            raise ValueError(f"HOTPATH_ORIGIN_URL: `schema={schema}` applies to PostgreSQL only; remove it for {u.drivername}")
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"HOTPATH_ORIGIN_URL: schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
    return u, schema


def _make_engine(
    u: URL, schema: str | None, *, timeout_s: float, pool_size: int, max_overflow: int, app_name: str = "hotpath"
) -> AsyncEngine:
    if u.drivername == "postgresql+asyncpg":
        server_settings = {"statement_timeout": str(max(1, int(timeout_s * 1000))), "application_name": app_name[:63]}
        if schema:
            server_settings["search_path"] = schema
        return create_async_engine(
            u,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=timeout_s,
            pool_recycle=1800,
            connect_args={"timeout": timeout_s, "command_timeout": timeout_s, "server_settings": server_settings},
        )
    if u.drivername == "sqlite+aiosqlite":
        db = u.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return create_async_engine(
            u, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=timeout_s, connect_args={"timeout": timeout_s}
        )
    raise ValueError(
        f"HOTPATH_ORIGIN_URL: unsupported SQL driver {u.drivername!r}; use postgresql+asyncpg:// or sqlite+aiosqlite://"
    )


def schema_statements() -> list[str]:
    """The DDL of schema.sql, one statement per item (comments removed)."""
    body = "\n".join(line for line in SCHEMA_FILE.read_text().splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", body, flags=re.M) if s.strip()]


async def _count_rows(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {t: (await conn.execute(text(f"SELECT COUNT(*) FROM {t}"))).scalar_one() for t in TABLES}


async def init_schema(url: str, demo: bool = False, *, schema: str | None = None) -> str:
    """Create the origin tables (idempotent) and optionally the demo data; return a one-line summary.

    PostgreSQL: tables go into `schema` (or `?schema=` on the URL), created when missing.
    SQLite: the parent directory of the file is created; the file is switched to WAL so readers do not
    block the event writers.
    """
    u, schema = _split_url(url, schema)
    engine = _make_engine(u, schema, timeout_s=60.0, pool_size=1, max_overflow=0)
    where = u.render_as_string(hide_password=True) + (f" (schema {schema})" if schema else "")
    try:
        async with engine.begin() as conn:
            if schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            if u.drivername.startswith("sqlite"):
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            for stmt in schema_statements():
                await conn.exec_driver_sql(stmt)
        if demo:
            from cacheman.origin.demo import generate

            data = generate()
            before = await _count_rows(engine)
            async with engine.begin() as conn:
                for table, rows in data.tables().items():
                    if not rows:
                        continue
                    cols = list(rows[0])
                    stmt = text(
                        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)}) "
                        "ON CONFLICT DO NOTHING"
                    ).bindparams(
                        *[bindparam(c, type_=DateTime(timezone=True)) for c in cols if c.endswith("_at")]
                    )
                    await conn.execute(stmt, rows)
            counts = await _count_rows(engine)
            inserted = sum(counts.values()) - sum(before.values())
            async with engine.connect() as conn:
                tenants = (await conn.execute(text("SELECT COUNT(DISTINCT tenant_id) FROM rooms"))).scalar_one()
    except (SQLAlchemyError, OSError) as exc:
        raise ValueError(f"cannot initialise the origin at {where}: {type(exc).__name__}: {exc} (check HOTPATH_ORIGIN_URL)") from exc
    finally:
        await engine.dispose()
    summary = f"origin schema ready at {where}: tables {', '.join(TABLES)}"
    if demo:
        summary += (
            f"; demo data: {tenants} tenants, {counts['rooms']} rooms, {counts['users']} users, "
            f"{counts['room_members']} memberships, {counts['messages']} messages, {counts['read_states']} read states "
            f"({inserted} rows new)"
        )
    return summary


class SqlOrigin:
    """The Origin protocol over SQL, plus `get_member` (dbman's own membership check, which the test double
    serves for the benchmark's pre-cache baseline; the cache itself reads whole member sets)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        schema: str | None = None,
        pool_size: int = 10,
        max_overflow: int = 10,
        max_concurrency: int | None = None,
        name: str | None = None,
    ) -> None:
        """`max_concurrency` (HOTPATH_ORIGIN_MAX_CONCURRENCY), when given, caps connections: a pool of
        up to 10 kept open plus overflow connections up to the cap."""
        if max_concurrency is not None:
            pool_size = min(max_concurrency, 10)
            max_overflow = max(0, max_concurrency - pool_size)
        u, self.schema = _split_url(url, schema)
        self.url = u.render_as_string(hide_password=True)
        self.name = name or f"sql:{u.get_backend_name()}"
        self.timeout_s = timeout_s
        self.engine = _make_engine(
            u, self.schema, timeout_s=timeout_s, pool_size=pool_size, max_overflow=max_overflow,
            app_name=f"hotpath {name}" if name else "hotpath",
        )

    async def _run(self, op: str, stmt, params: dict) -> list:
        """Run one read. Waiting for a pooled connection is bounded by the pool timeout, the statement by
        `timeout_s` (PostgreSQL cancels it server-side first, which keeps the connection usable)."""
        start = time.perf_counter()
        outcome = "error"
        try:
            for attempt in (1, 2):
                try:
                    async with self.engine.connect() as conn:
                        async with asyncio.timeout(self.timeout_s + 0.25):
                            rows = (await conn.execute(stmt, params)).all()
                    outcome = "ok"
                    return rows
                except DBAPIError as exc:
                    # A pooled connection died (the database restarted): SQLAlchemy has invalidated the
                    # pool; reads are idempotent, so one retry on a fresh connection hides the restart.
                    if attempt == 1 and exc.connection_invalidated:
                        continue
                    raise
            raise AssertionError("unreachable")
        except PoolTimeout as exc:
            outcome = "timeout"
            raise OriginUnavailable(
                f"{self.name} {op}: no free database connection within {self.timeout_s}s "
                "(raise HOTPATH_ORIGIN_MAX_CONCURRENCY or the database's capacity)"
            ) from exc
        except TimeoutError as exc:
            outcome = "timeout"
            raise OriginUnavailable(
                f"{self.name} {op} did not answer within {self.timeout_s}s (HOTPATH_ORIGIN_TIMEOUT_S)"
            ) from exc
        except (SQLAlchemyError, OSError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            raise OriginUnavailable(f"{self.name} {op} failed: {type(exc).__name__}: {detail}") from exc
        finally:
            ORIGIN_SECONDS.labels(self.name, op, outcome).observe(time.perf_counter() - start)

    async def get_room(self, tenant: str, room_id: str) -> Room | None:
        rows = await self._run("get_room", _Q_ROOM, {"t": tenant, "r": room_id})
        return _room(rows[0]) if rows else None

    async def get_rooms(self, tenant: str, room_ids: list[str]) -> dict[str, Room]:
        ids = list(dict.fromkeys(room_ids))
        out: dict[str, Room] = {}
        for i in range(0, len(ids), _BATCH):
            for row in await self._run("get_rooms", _Q_ROOMS, {"t": tenant, "ids": ids[i : i + _BATCH]}):
                out[row[0]] = _room(row)
        return out

    async def get_members(self, tenant: str, room_id: str) -> Members | None:
        rows = await self._run("get_members", _Q_MEMBERS, {"t": tenant, "r": room_id})
        if not rows:
            return None
        members = [Member(user_id=r[1], role=r[2]) for r in rows if r[1] is not None]
        return Members(room_id=room_id, version=rows[0][0], members=members)

    async def get_member(self, tenant: str, room_id: str, user_id: str) -> Member | None:
        """dbman's membership check: the member with its role, or None (not a member, or no such room)."""
        rows = await self._run("get_member", _Q_MEMBER, {"t": tenant, "r": room_id, "u": user_id})
        return Member(user_id=user_id, role=rows[0][0]) if rows else None

    async def get_user_rooms(self, tenant: str, user_id: str) -> list[str]:
        return [r[0] for r in await self._run("get_user_rooms", _Q_USER_ROOMS, {"t": tenant, "u": user_id})]

    async def get_read_states(self, tenant: str, user_id: str) -> list[ReadState]:
        rows = await self._run("get_read_states", _Q_READ_STATES, {"t": tenant, "u": user_id})
        return [ReadState(room_id=r[0], last_seq=r[1], last_read_seq=r[2]) for r in rows]

    async def ping(self) -> None:
        await self._run("ping", text("SELECT 1"), {})

    async def aclose(self) -> None:
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"SqlOrigin({self.url!r}, schema={self.schema!r})"
