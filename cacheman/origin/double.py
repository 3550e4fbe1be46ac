"""The dbman test double: the HTTP origin contract (docs/origin-contract.md) served from a SQL origin.

Run: `python -m cacheman.origin.double --origin-url sqlite+aiosqlite:///x.db --port 9001 [--init-demo]`.
It counts every call (GET /_stats) so tests and benchmarks can count origin calls, and can be told to
fail or to hold requests (POST /_control, POST /_release) so tests can stage outages and races.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import Counter

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cacheman.errors import OriginUnavailable
from cacheman.keys import MAX_BATCH


class BatchRooms(BaseModel):
    room_ids: list[str] = Field(max_length=MAX_BATCH)


class Control(BaseModel):
    """Faults to inject into the data endpoints (never into /_stats, /_control, /_release)."""

    fail_status: int | None = Field(None, ge=400, le=599, description="Answer every data call with this status.")
    fail_next: int = Field(0, ge=0, description="Answer only the next N data calls with fail_status (default 503).")
    delay_ms: int = Field(0, ge=0, le=60_000, description="Sleep this long before answering each data call.")
    block: bool = Field(False, description="Hold data calls until POST /_release (or block_timeout_s).")
    block_timeout_s: float = Field(30.0, gt=0, le=600)


class ORJSON(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content)


class _Faults:
    def __init__(self) -> None:
        self.control = Control()
        self.gate = asyncio.Event()
        self.gate.set()


def _not_found(what: str) -> JSONResponse:
    return ORJSON({"error": "not_found", "message": f"{what} not found"}, status_code=404)


def create_double(origin, *, name: str = "dbman-double") -> FastAPI:
    """The contract on top of any Origin (normally a SqlOrigin), with call counting and fault injection."""
    calls: Counter[str] = Counter()
    faults = _Faults()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await origin.aclose()

    app = FastAPI(title=name, version="1", default_response_class=ORJSON, lifespan=lifespan)
    app.state.calls = calls
    app.state.faults = faults

    async def data_call_gate() -> JSONResponse | None:
        """Count a data call and apply the injected faults; a response means "answer this instead"."""
        calls["total"] += 1
        c = faults.control
        if c.block:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(c.block_timeout_s):
                    await faults.gate.wait()
        if c.delay_ms:
            await asyncio.sleep(c.delay_ms / 1000)
        if c.fail_next > 0 or (c.fail_status and not c.fail_next):
            status = c.fail_status or 503
            if c.fail_next > 0:
                c.fail_next -= 1
                if c.fail_next == 0:
                    c.fail_status = None
            calls["injected_failures"] += 1
            return ORJSON({"error": "injected", "message": f"{name}: injected failure"}, status_code=status)
        return None

    class CountAndInject:
        """Pure ASGI (no BaseHTTPMiddleware task/copy): the double must not be slower than a real dbman."""

        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                path = scope["path"]
                if path == "/healthz":
                    calls["healthz"] += 1
                elif not path.startswith("/_"):
                    response = await data_call_gate()
                    if response is not None:
                        await response(scope, receive, send)
                        return
            await self.inner(scope, receive, send)

    app.add_middleware(CountAndInject)

    @app.exception_handler(RequestValidationError)
    async def _bad(request: Request, exc: RequestValidationError):
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return ORJSON({"error": "bad_request", "message": errs}, status_code=422)

    @app.exception_handler(OriginUnavailable)
    async def _down(request: Request, exc: OriginUnavailable):
        return ORJSON({"error": "unavailable", "message": str(exc)}, status_code=503)

    def op(key: str) -> None:
        calls[key] += 1

    @app.get("/healthz")
    async def healthz():
        await origin.ping()
        return {"status": "ok"}

    @app.get("/v1/{tenant}/rooms/{room_id}")
    async def get_room(tenant: str, room_id: str):
        op("get_room")
        room = await origin.get_room(tenant, room_id)
        return _not_found(f"room {room_id!r}") if room is None else room.model_dump()

    @app.post("/v1/{tenant}/rooms:batchGet")
    async def batch_get(tenant: str, body: BatchRooms):
        op("get_rooms")
        rooms = await origin.get_rooms(tenant, body.room_ids)
        return {"rooms": {rid: r.model_dump() for rid, r in rooms.items()}}

    @app.get("/v1/{tenant}/rooms/{room_id}/members")
    async def get_members(tenant: str, room_id: str):
        op("get_members")
        members = await origin.get_members(tenant, room_id)
        return _not_found(f"room {room_id!r}") if members is None else members.model_dump()

    @app.get("/v1/{tenant}/rooms/{room_id}/members/{user_id}")
    async def get_member(tenant: str, room_id: str, user_id: str):
        op("get_member")
        member = await origin.get_member(tenant, room_id, user_id)
        return _not_found(f"member {user_id!r} of room {room_id!r}") if member is None else member.model_dump()

    @app.get("/v1/{tenant}/users/{user_id}/rooms")
    async def user_rooms(tenant: str, user_id: str):
        op("get_user_rooms")
        return {"room_ids": await origin.get_user_rooms(tenant, user_id)}

    @app.get("/v1/{tenant}/users/{user_id}/read-states")
    async def read_states(tenant: str, user_id: str):
        op("get_read_states")
        return {"read_states": [s.model_dump() for s in await origin.get_read_states(tenant, user_id)]}

    @app.get("/_stats", tags=["test"])
    async def stats():
        """Calls since start (or the last reset): `total` data calls, per operation, `healthz`, injected failures."""
        return {"name": name, "calls": calls.get("total", 0), "by_op": dict(calls), "control": faults.control.model_dump()}

    @app.post("/_stats/reset", tags=["test"])
    async def reset_stats():
        calls.clear()
        return {"ok": True}

    @app.post("/_control", tags=["test"])
    async def control(body: Control):
        faults.control = body
        if body.block:
            faults.gate.clear()
        else:
            faults.gate.set()
        return body.model_dump()

    @app.post("/_release", tags=["test"])
    async def release():
        """Let held calls through and stop holding new ones."""
        faults.control.block = False
        faults.gate.set()
        return {"ok": True}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cacheman.origin.double", description=__doc__.splitlines()[0])
    parser.add_argument("--origin-url", required=True, help="SQL origin: postgresql+asyncpg://… (?schema=…) or sqlite+aiosqlite:///…")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default=None, help="Name reported by /_stats (default: dbman-double-<port>).")
    parser.add_argument("--init-demo", action="store_true", help="Create the schema and the demo data first.")
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=2.0)
    args = parser.parse_args(argv)

    import uvicorn

    from cacheman.origin.sql import SqlOrigin, init_schema

    if args.init_demo:
        print(asyncio.run(init_schema(args.origin_url, demo=True)), flush=True)
    origin = SqlOrigin(args.origin_url, timeout_s=args.timeout_s, pool_size=args.pool_size)
    app = create_double(origin, name=args.name or f"dbman-double-{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
