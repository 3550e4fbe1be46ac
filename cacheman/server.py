"""Run the API under uvicorn with graceful shutdown (uvicorn drains in-flight requests on SIGTERM)."""

from __future__ import annotations

import uvicorn

from cacheman.app import create_app


def serve(settings, app=None) -> None:
    """Serve `app` (default: create_app(settings); `hotpath api` passes the composed one, hotpath/api.py)."""
    config = uvicorn.Config(
        app if app is not None else create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=8,
        loop="uvloop",
        http="httptools",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise OSError(98, "address already in use or startup failed")
