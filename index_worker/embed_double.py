"""A test double of an OpenAI-compatible embedding service: deterministic hashing vectors, and failures on
request (the next N calls answer 503 or 429), so the HTTP embedder's retries are tested against a real server.

Run: `python -m index_worker.embed_double --port 8088 --dim 384`, or `serve_in_thread()` from a test.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from index_worker.embed.hashing import HashEmbedder


def make_app(dim: int = 384) -> FastAPI:
    """The double: POST /v1/embeddings, POST /control {fail, status, retry_after, dim}, GET /stats."""
    app = FastAPI(title="embedding service double")
    state = {"fail": 0, "status": 503, "retry_after": None, "requests": 0, "texts": 0, "dim": dim}

    @app.post("/control")
    async def control(body: dict) -> dict:
        for key in ("fail", "status", "retry_after", "dim"):
            if key in body:
                state[key] = body[key]
        return state

    @app.get("/stats")
    async def stats() -> dict:
        return state

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        state["requests"] += 1
        if state["fail"] > 0:
            state["fail"] -= 1
            headers = {"retry-after": str(state["retry_after"])} if state["retry_after"] is not None else {}
            return JSONResponse({"error": {"message": "induced failure"}}, state["status"], headers=headers)
        try:
            body = await request.json()
            texts = body["input"]
            model = body["model"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": {"message": "body must be {model, input}"}}, 400)
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return JSONResponse({"error": {"message": "input must be a string or a list of strings"}}, 400)
        state["texts"] += len(texts)
        embedder = HashEmbedder(state["dim"])
        data = [{"object": "embedding", "index": i, "embedding": embedder.embed_one(t)} for i, t in enumerate(texts)]
        return {"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    return app


@contextlib.contextmanager
def serve_in_thread(port: int, dim: int = 384) -> Iterator[str]:
    """Run the double with uvicorn in a background thread on 127.0.0.1:`port`; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(make_app(dim), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"embedding double did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    uvicorn.run(make_app(args.dim), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
