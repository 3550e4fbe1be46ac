"""The cacheman FastAPI application: health, metrics, and the cache routes (cacheman/routes.py).

`create_app(settings)` is the only constructor; dependencies (Redis, origin) are opened in the
lifespan and kept on `app.state`, so tests can build an app against their own services. Every error
answer is a problem+json body rendered by cacheman/problems.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cacheman import problems
from cacheman.errors import DependencyUnavailable
from cacheman.observability import RequestContextMiddleware, scrape_registry
from cacheman.origin.base import open_origin
from cacheman.redisconn import RedisConfig, connect, open_redis
from cacheman.routes import install as install_routes

log = logging.getLogger("cacheman")


def make_redis(url: str, timeout_s: float) -> aioredis.Redis:
    """A single-node client (the task queue's); the cache's own is built by redisconn.open_redis."""
    if "," in url:
        raise ValueError(f"{url!r} names several Redis nodes: the task queue needs one node (a Cluster cannot hold "
                         "ARQ's keys, which span slots)")
    return open_redis(RedisConfig(url=url, timeout_s=timeout_s))


def origin_options(s) -> dict[str, Any]:
    """The origin adapter's keyword arguments from ApiSettings (HTTP-only ones only for dbman)."""
    opts: dict[str, Any] = {"timeout_s": s.origin_timeout_s, "max_concurrency": s.origin_max_concurrency}
    if s.origin_url.startswith(("http://", "https://")):
        opts |= {"retries": s.origin_retries, "breaker_failures": s.origin_breaker_failures,
                 "breaker_window_s": s.origin_breaker_window_s, "breaker_open_s": s.origin_breaker_open_s}
    return opts


async def _check(name: str, coro, timeout_s: float) -> dict[str, Any]:
    try:
        await asyncio.wait_for(coro, timeout_s)
        return {"status": "ok"}
    except TimeoutError:
        return {"status": "down", "error": f"{name} did not answer within {timeout_s}s"}
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}


def create_app(settings, *, origin=None, redis_client=None) -> FastAPI:
    """Build the API. `origin` / `redis_client` may be passed in (tests); otherwise opened from settings."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.redis = redis_client or open_redis(RedisConfig.from_settings(settings))
        await connect(app.state.redis)
        app.state.origin = origin or open_origin(settings.origin_url, **origin_options(settings))
        startup = getattr(app.state, "on_startup", [])
        for fn in startup:
            await fn(app)
        try:
            yield
        finally:
            for fn in reversed(getattr(app.state, "on_shutdown", [])):
                with contextlib.suppress(Exception):
                    await fn(app)
            if origin is None:
                await app.state.origin.aclose()
            if redis_client is None:
                await app.state.redis.aclose()

    app = FastAPI(
        title="hotpath cacheman",
        version="0.1.0",
        description="Read-through cache for room, member and unread lookups of the chat platform.",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry hooks: hotpath exports Prometheus metrics and JSON logs itself and sets
        # up no OTel SDK, yet with them on every request asks OTel for its providers (~5 µs, a twentieth of a hit).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.on_startup = []
    app.state.on_shutdown = []
    app.add_middleware(RequestContextMiddleware, on_error=problems.internal_error)
    problems.install(app)

    @app.get("/livez", tags=["health"], summary="The process is up.")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Each dependency answers within HOTPATH_READYZ_TIMEOUT_S.",
             responses=problems.responses(500, 503, s503={"description": "a dependency is down: `dependency` names the "
                                                      "first, `dependencies` gives each one's status"}))
    async def readyz(request: Request):
        st = request.app.state
        t = settings.readyz_timeout_s
        redis_res, origin_res = await asyncio.gather(
            _check("redis", st.redis.ping(), t), _check("origin", st.origin.ping(), t)
        )
        deps = {"redis": redis_res, "origin": origin_res}
        down = [name for name, d in deps.items() if d["status"] != "ok"]
        if down:
            raise DependencyUnavailable(down[0], "not ready: " + "; ".join(f"{n}: {deps[n]['error']}" for n in down),
                                        dependencies=deps)
        return JSONResponse({"status": "ready", "dependencies": deps})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text format).", response_class=PlainTextResponse,
             responses=problems.responses(500))
    async def metrics() -> Response:
        return Response(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST)

    install_routes(app, settings)
    return app
