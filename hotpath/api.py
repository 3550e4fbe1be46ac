"""The API process, composed at the edge: cacheman's cache API, the index intake (`POST /v1/{tenant}/index`), the
search (`GET /v1/{tenant}/search`) and the storage-event intake (`POST /v1/storage-events`, MinIO's webhook), under
one error contract and one /metrics (JWT auth; the webhook's shared token for MinIO).

Why here: cacheman does not learn about indexing, index_worker does not import cacheman; this module passes the
cache API's auth dependency and problem responses into the worker package's route builders and maps the worker
package's errors (SearchUnavailable) to the API's problems. `build_api` is what `hotpath api` serves and what
the tests that walk every route build.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from starlette.responses import Response

from cacheman import problems
from cacheman.app import create_app
from cacheman.auth import require
from cacheman.errors import DependencyUnavailable, Unauthorized
from cacheman.observability import REGISTRY, scrape_registry
from hotpath import tracing
from index_worker import intake, search
from index_worker.config import QUEUE, EmbedderConfig, StoreConfig
from index_worker.search import Searcher, SearchUnavailable
from taskkit.backpressure import Watermarks
from taskkit.exporter import CurrentExporter, HealthExporter
from taskkit.producer import Producer
from thumb_worker import intake as storage_intake
from thumb_worker.producer import QUEUE as THUMB_QUEUE

# Families of the default registry that the API's /metrics shows beside cacheman's own: the producer's
# backpressure rejections (taskkit) and the search's Milvus/embedding latencies (index_worker).
BRIDGED_PREFIXES = ("taskkit_", "hotpath_index_")


class _DefaultRegistryBridge:
    """A collector for cacheman's registry that yields the bridged families of prometheus_client's default one."""

    def collect(self):
        for family in DEFAULT_REGISTRY.collect():
            if family.name.startswith(BRIDGED_PREFIXES):
                yield family


_bridge: _DefaultRegistryBridge | None = None
# The workers' health record ages, seen from the API (taskkit/exporter.py: a dead worker cannot report its own).
_health = CurrentExporter()


def _bridge_metrics() -> None:
    global _bridge
    if _bridge is None:
        _bridge = _DefaultRegistryBridge()
        served = scrape_registry()
        if served is REGISTRY:  # one process (with --workers N the merged files hold the default registry's series)
            REGISTRY.register(_bridge)
        served.register(_health)  # computed at scrape time: in the served registry either way


def index_watermarks(settings: Any) -> Watermarks:
    """The `index` queue's watermarks from the settings, with a message naming both when they disagree."""
    if not settings.index_queue_low < settings.index_queue_high:
        raise ValueError(f"HOTPATH_INDEX_QUEUE_LOW ({settings.index_queue_low}) must be below "
                         f"HOTPATH_INDEX_QUEUE_HIGH ({settings.index_queue_high})")
    return Watermarks(high=settings.index_queue_high, low=settings.index_queue_low)


def thumb_watermarks(settings: Any) -> Watermarks:
    """The `thumb` queue's watermarks from the settings, with a message naming both when they disagree."""
    if not settings.thumb_queue_low < settings.thumb_queue_high:
        raise ValueError(f"HOTPATH_THUMB_QUEUE_LOW ({settings.thumb_queue_low}) must be below "
                         f"HOTPATH_THUMB_QUEUE_HIGH ({settings.thumb_queue_high})")
    return Watermarks(high=settings.thumb_queue_high, low=settings.thumb_queue_low)


def build_api(settings: Any, *, origin: Any = None, redis_client: Any = None, queue_redis: Any = None) -> FastAPI:
    """The whole API. `origin`, `redis_client` (the cache's) and `queue_redis` (the producers') may be passed in
    (tests); otherwise they are opened from the settings in the lifespan. The queues' Redis is
    `settings.queue_redis_config()` (HOTPATH_QUEUE_REDIS_URL, or HOTPATH_REDIS_URL when that is one node; raises
    QueueRedisError when it would be a Cluster)."""
    queue_cfg = settings.queue_redis_config()
    app = create_app(settings, origin=origin, redis_client=redis_client)
    embedder = EmbedderConfig.from_settings(settings)
    store = StoreConfig.from_settings(settings, writer=False)
    watermarks = index_watermarks(settings)
    thumb_wm = thumb_watermarks(settings)
    health = HealthExporter(prefix=settings.taskkit_prefix, queues=(QUEUE, THUMB_QUEUE),
                            watermarks={QUEUE: watermarks, THUMB_QUEUE: thumb_wm})

    async def startup(app: FastAPI) -> None:
        app.state.queue_redis = queue_redis or queue_cfg.client(health_check_interval=15, max_connections=256)
        replicas = {"wait_replicas": queue_cfg.wait_replicas, "wait_timeout_ms": queue_cfg.wait_timeout_ms}
        app.state.index_producer = Producer(app.state.queue_redis, prefix=settings.taskkit_prefix,
                                            watermarks={QUEUE: watermarks}, **replicas)
        app.state.thumb_producer = Producer(app.state.queue_redis, prefix=settings.taskkit_prefix,
                                            watermarks={THUMB_QUEUE: thumb_wm}, **replicas)
        app.state.searcher = Searcher(embedder, store)  # nothing loaded until the first search
        health.start(app.state.queue_redis)
        _health.attach(health)

    async def shutdown(app: FastAPI) -> None:
        _health.detach(health)
        await health.stop()
        await app.state.searcher.close()
        if queue_redis is None:
            await app.state.queue_redis.aclose()

    app.state.on_startup.append(startup)
    app.state.on_shutdown.append(shutdown)

    app.include_router(intake.build_router(
        auth_dependency=require("index:write"), producer=lambda request: request.app.state.index_producer,
        text_max_bytes=settings.index_text_max_bytes, dim=embedder.dim,
        responses=problems.responses(401, 403, 413, 422, 429, 500, 503, s503={
            "description": "the `index` queue's Redis does not answer (`dependency-unavailable`, dependency "
                           "`queue`); nothing was enqueued"}),
    ))
    app.include_router(search.build_router(
        auth_dependency=require("cache:read"), searcher=lambda request: request.app.state.searcher,
        responses=problems.responses(401, 403, 422, 429, 500, 503, s503={
            "description": "Milvus or the embedder does not answer (`dependency-unavailable`, dependency `milvus` "
                           "or `embedder`)"}),
    ))

    app.include_router(storage_intake.build_router(
        auth_dependency=storage_intake.token_auth(settings.storage_webhook_token, error=Unauthorized),
        producer=lambda request: request.app.state.thumb_producer, uploads_bucket=settings.uploads_bucket,
        responses=problems.responses(401, 413, 422, 429, 500, 503, s401={
            "description": "missing or wrong webhook token (`unauthorized`): MinIO's auth_token must equal "
                           "HOTPATH_STORAGE_WEBHOOK_TOKEN"}, s429={
            "description": "the `thumb` queue is over its high watermark (`queue-full`); `retry_after_s` and "
                           "Retry-After; nothing was enqueued (MinIO sends the event again)"}, s503={
            "description": "the `thumb` queue's Redis does not answer (`dependency-unavailable`, dependency "
                           "`queue`); nothing was enqueued"}),
    ))

    async def search_unavailable(request: Request, exc: SearchUnavailable) -> Response:
        problem = DependencyUnavailable(exc.dependency, exc.detail, retry_after_s=exc.retry_after_s)
        return problems.response_of(problem, request.scope)

    app.add_exception_handler(SearchUnavailable, search_unavailable)
    _bridge_metrics()
    tracing.instrument_app(app)  # a no-op unless this process set tracing up (hotpath/tracing.py)
    return app


def app_factory() -> FastAPI:
    """What each process of `hotpath api --workers N` serves: its settings read from the environment it inherited
    (the parent has checked them and the JWT keys once), JSON logs, the composed API with its own near cache."""
    from hotpath.logs import setup_logging
    from hotpath.settings import ApiSettings, load

    settings = load(ApiSettings)
    setup_logging(f"api:{os.getpid()}", settings.log_level)  # which of the processes wrote a line
    tracing.setup("api", settings.tracing)
    return build_api(settings)


def serve(settings: Any) -> None:
    """Run the composed API under uvicorn (cacheman/server.py's flags: graceful drain on SIGTERM), in
    HOTPATH_API_WORKERS processes on one port."""
    from cacheman.server import serve as serve_app

    if settings.api_workers > 1:
        serve_app(settings, factory="hotpath.api:app_factory", workers=settings.api_workers)
    else:
        tracing.setup("api", settings.tracing)  # with N processes each one sets it up in app_factory
        serve_app(settings, app=build_api(settings))
