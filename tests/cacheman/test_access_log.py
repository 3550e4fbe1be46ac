"""The batched access log (hotpath/logs.py JsonLinesHandler, cacheman/observability.py): one JSON line per request,
each with its request id, route, status and duration, none lost (the buffer is written at shutdown), whole lines
in chunks of at most PIPE_BUF bytes, in order with ordinary records, and whole lines from several processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys

from cacheman.app import create_app
from cacheman.auth import mint_token
from cacheman.observability import access_sink
from hotpath import logs
from hotpath.logs import CHUNK_BYTES, JsonFormatter, JsonLinesHandler
from hotpath.settings import ApiSettings
from tests.cacheman.conftest import running

SECRET = "access-log-secret-0123456789-0123456789"
T = "acme"


def token(tenants=(T,)) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(SECRET, kid="k", sub="chat", tenants=list(tenants),
                                                    scope="cache:read", ttl_s=600)}


class Chunks(io.StringIO):
    """A stream without a file descriptor: each write() the handler makes is one chunk, kept for inspection."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []

    def write(self, s: str) -> int:
        self.chunks.append(s)
        return super().write(s)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@contextlib.contextmanager
def json_logging():
    """The root logger as `hotpath api` sets it up (one JsonLinesHandler, INFO), on a Chunks stream. Entered inside
    the test (pytest adds its capture handlers to the root logger for the test's call), then put back."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    client_log = logging.getLogger("httpx")  # the test's client logs each request at INFO: not the app's lines
    client_level = client_log.level
    client_log.setLevel(logging.WARNING)
    stream = Chunks()
    handler = JsonLinesHandler("api", stream, flush_interval_s=3600)  # only size, ordinary records and shutdown flush
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield handler, stream
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
        client_log.setLevel(client_level)


async def test_n_requests_give_n_lines_and_the_rest_is_written_at_shutdown(redis_url, key_prefix, sqlite_url):
    with json_logging() as (handler, stream):
        await n_requests(handler, stream, redis_url, key_prefix, sqlite_url)


async def n_requests(handler, stream, redis_url, key_prefix, sqlite_url):
    assert access_sink() is handler  # the batched path is the one taken
    settings = ApiSettings(redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url,
                           jwt_keys={"k": SECRET}, rate_limit_per_s=100_000, rate_limit_burst=100_000)
    app = create_app(settings)
    sent: list[tuple[str, str, int]] = []  # (request id, path, status) as the client saw them
    async with running(app) as client:
        start = len(stream.lines())  # start-up records, if any (none of them access lines)
        paths = [f"/v1/{T}/rooms/room-02/members/user-001",  # the fast path (hit after the first)
                 f"/v1/{T}/rooms/room-02/members/nobody",  # a cached 404
                 f"/v1/{T}/rooms/room-02",  # a FastAPI route
                 "/readyz", "/nope"]  # an unmatched path
        for i in range(300):
            path = paths[i % len(paths)]
            headers = token() if i % 7 else {}  # every 7th without a token: 401 on the cache routes
            if i % 3 == 0:
                headers["X-Request-ID"] = f"rid-{i}"
            r = await client.get(path, headers=headers)
            sent.append((r.headers["x-request-id"], path, r.status_code))
        await client.get("/livez")  # a quiet path: no line
        before_shutdown = sum(1 for x in stream.lines() if x["logger"] == "cacheman.access")
    lines = [x for x in stream.lines()[start:] if x["logger"] == "cacheman.access"]
    assert before_shutdown < len(sent)  # some lines were still buffered: the shutdown wrote them
    assert len(lines) == len(sent) == 300
    assert [(x["request_id"], x["path"], x["status"]) for x in lines] == sent
    routes = {x["path"]: x["route"] for x in lines}
    assert routes == {paths[0]: "/v1/{tenant}/rooms/{room_id}/members/{user_id}",
                      paths[1]: "/v1/{tenant}/rooms/{room_id}/members/{user_id}",
                      paths[2]: "/v1/{tenant}/rooms/{room_id}", "/readyz": "/readyz", "/nope": "unmatched"}
    assert {x["status"] for x in lines} == {200, 401, 404}
    for x in lines:
        assert list(x) == ["ts", "level", "proc", "logger", "msg", "request_id", "method", "path", "route", "status", "ms"]
        assert (x["level"], x["proc"], x["msg"], x["method"]) == ("INFO", "api", "request", "GET")
        assert isinstance(x["ms"], float) and 0 <= x["ms"] < 10_000
        assert x["ts"].endswith("Z") and len(x["ts"]) == len("2026-12-01T22:43:42.401Z")
    assert all(chunk.endswith("\n") and len(chunk.encode()) <= CHUNK_BYTES for chunk in stream.chunks)


def test_a_prebuilt_line_is_the_line_the_formatter_writes_for_the_same_record(monkeypatch):
    fmt = JsonFormatter("api")
    fields = {"request_id": "r\"1", "method": "GET", "path": "/v1/a/ü", "route": "unmatched", "status": 404, "ms": 0.125}
    record = logging.LogRecord("cacheman.access", logging.INFO, __file__, 1, "request", None, None)
    record.__dict__.update(fields)
    assert fmt.line("cacheman.access", "INFO", "request", fields, record.created).decode() == fmt.format(record) + "\n"
    record2 = logging.LogRecord("x", logging.WARNING, __file__, 1, "plain", None, None)
    assert fmt.line("x", "WARNING", "plain", {}, record2.created).decode() == fmt.format(record2) + "\n"
    # With tracing on (hotpath/tracing.py sets the hook) both carry the current span's ids, after the fields.
    monkeypatch.setattr(logs, "trace_fields", lambda: {"trace_id": "ab" * 16, "span_id": "cd" * 8})
    line = fmt.line("cacheman.access", "INFO", "request", fields, record.created).decode()
    assert line == fmt.format(record) + "\n" and list(json.loads(line))[-2:] == ["trace_id", "span_id"]


def test_ordinary_records_come_after_the_buffered_lines_and_are_written_at_once():
    with json_logging() as (handler, stream):
        ordinary_records(handler, stream)


def ordinary_records(handler, stream):
    handler.emit_fields("cacheman.access", "request", {"n": 1})  # outside an event loop: written at once
    assert [x.get("n") for x in stream.lines()] == [1]

    async def in_a_loop():
        for n in range(2, 5):
            handler.emit_fields("cacheman.access", "request", {"n": n})
        assert len(stream.lines()) == 1  # buffered
        logging.getLogger("cacheman").warning("something", extra={"n": 5})
        assert [x.get("n") for x in stream.lines()] == [1, 2, 3, 4, 5]

    asyncio.run(in_a_loop())


def test_lines_are_flushed_after_the_interval_and_chunks_stay_whole():
    with json_logging() as (handler, stream):
        handler.flush_interval_s = 0.02
        flushed_by_time(handler, stream)


def flushed_by_time(handler, stream):
    async def burst():
        for n in range(200):  # ~60 bytes a line: several chunks by size, the tail by the timer
            handler.emit_fields("cacheman.access", "request", {"n": n, "pad": "x" * 20})
        await asyncio.sleep(0.1)
        return len(stream.lines())

    assert asyncio.run(burst()) == 200
    assert len(stream.chunks) > 1
    assert all(chunk.endswith("\n") and len(chunk.encode()) <= CHUNK_BYTES for chunk in stream.chunks)


WRITER = r"""
import asyncio, sys
from hotpath.logs import JsonLinesHandler
h = JsonLinesHandler(sys.argv[1], sys.stderr)
async def main():
    for n in range(int(sys.argv[2])):
        h.emit_fields("cacheman.access", "request", {"n": n, "pad": "y" * (n % 300)})
        if n % 50 == 0:
            await asyncio.sleep(0)
asyncio.run(main())
"""


def test_two_processes_on_one_pipe_never_interleave_inside_a_line():
    """What `hotpath api --workers 2` does with stderr: each process writes whole-line chunks of <= PIPE_BUF bytes,
    which a pipe never splits; the buffer left at exit is written by logging.shutdown."""
    r, w = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, f"p{k}", "3000"], stderr=w, env=env) for k in range(2)]
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        data = reader.read()
    assert [p.wait(30) for p in procs] == [0, 0]
    lines = [json.loads(line) for line in data.splitlines()]  # a torn line would not parse
    for k in range(2):
        assert [x["n"] for x in lines if x["proc"] == f"p{k}"] == list(range(3000))


async def test_the_start_up_heap_is_frozen_out_of_the_collectors_view(redis_url, key_prefix, sqlite_url):
    """routes._startup ends with gc.freeze(): full collections during requests then scan only what requests made."""
    import gc

    settings = ApiSettings(redis_url=redis_url, redis_prefix=key_prefix.rstrip(":"), origin_url=sqlite_url,
                           jwt_keys={"k": SECRET})
    app = create_app(settings)
    gc.unfreeze()
    async with running(app):
        assert gc.get_freeze_count() > 10_000  # the modules, the app, its schemas
