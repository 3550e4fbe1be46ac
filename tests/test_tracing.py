"""Tracing (issue 11 point 5): the span tree of one indexed message — the API's server span continuing the caller's
traceparent, the producer's span, the job's span in the worker (its parent read from the job), the batch span
linking to it, the Milvus call — and retries as sibling spans of one trace; with tracing off nothing is installed.

The traced scenarios run in a child process with an in-memory exporter: OpenTelemetry's global provider can be set
once per process, and this pytest process must stay untraced for every other test. The child prints its spans as
JSON; the assertions are made here. Real Redis and Milvus Lite, the worker in-process (taskkit's FastWorker, and
ARQ's own Worker for the retries)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotpath import logs, tracing
from taskkit import RetryPolicy, task
from taskkit.errors import PermanentError, TransientError
from taskkit.tracing import TRACE_KWARG

ROOT = Path(__file__).resolve().parent.parent
SECRET = "tracing-tests-secret-0123456789-0123456789"
DIM = 32
TENANT = "acme"
# The caller's context: the API must continue this trace, as a child of this span.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
RETRY_QUEUE = "trace-retry"
CHILD_TIMEOUT_S = 180


# --- tracing off: nothing installed ----------------------------------------------------------------------------


def test_the_mode_resolves_from_the_setting_and_the_standard_variables():
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert tracing.resolve_mode("auto", {}) == "off"
    assert tracing.resolve_mode("auto", endpoint) == "otlp"
    assert tracing.resolve_mode("auto", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == "otlp"
    assert tracing.resolve_mode("off", endpoint) == "off"
    assert tracing.resolve_mode("console", {}) == "console"
    assert tracing.resolve_mode("otlp", {**endpoint, "OTEL_SDK_DISABLED": "true"}) == "off"
    with pytest.raises(ValueError, match="HOTPATH_TRACING='jaeger'"):
        tracing.resolve_mode("jaeger", {})


def test_off_installs_nothing_and_the_membership_fast_path_runs_no_tracing_code(redis_url, key_prefix):
    """With tracing off: no provider, no middleware, no wrapped client, no log hook, no trace context in a job, and
    a membership hit (MembershipFastPath) calls no function of OpenTelemetry's (API, SDK, instrumentations) nor of
    hotpath's or taskkit's tracing modules (FastAPI's own OTel hooks are off: cacheman/app.py)."""
    import redis.asyncio
    from opentelemetry import trace
    from opentelemetry.trace import ProxyTracerProvider

    from cacheman.auth import mint_token
    from hotpath.api import build_api
    from tests.cacheman.cache_fakes import FakeOrigin
    from tests.cacheman.conftest import running

    assert tracing.setup("api", "auto", environ={}) is None
    assert tracing.current() is None and logs.trace_fields is None
    assert isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
    assert not hasattr(redis.asyncio.Redis.execute_command, "__wrapped__")  # RedisInstrumentor wraps with wrapt

    settings = _api_settings(redis_url, key_prefix, "http://127.0.0.1:1", "unused")
    origin = FakeOrigin()
    origin.add_room("t1", "r1", members={"u1": "member"})
    app = build_api(settings, origin=origin)
    auth = {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=[TENANT],
                                                    scope="cache:read index:write", ttl_s=600)}

    async def scenario() -> tuple[list[str], Any]:
        async with running(app) as client:
            path = "/v1/t1/rooms/r1/members/u1"
            auth_t1 = {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=["t1"],
                                                               scope="cache:read", ttl_s=600)}
            first = await client.get(path, headers=auth_t1)  # the miss fills the cache
            assert first.status_code == 200, first.text
            called: list[str] = []

            def profile(frame, event, arg):
                if event == "call":
                    called.append(frame.f_code.co_filename)

            sys.setprofile(profile)
            try:
                hit = await client.get(path, headers=auth_t1)
            finally:
                sys.setprofile(None)
            assert hit.status_code == 200 and hit.headers["x-cache"] == "hit", hit.headers
            stack = app.middleware_stack
            kinds = []
            while stack is not None:
                kinds.append(type(stack).__module__)
                stack = getattr(stack, "app", None)
            res = await client.post(f"/v1/{TENANT}/index", headers=auth, json={"events": [_upsert("m1")]})
            assert res.status_code == 202, res.text
            return called, kinds

    called, kinds = asyncio.run(scenario())
    assert any("cacheman/routes.py" in f for f in called), "the profiler saw the fast path"
    assert not [k for k in kinds if k.startswith("opentelemetry")], kinds
    otel = sorted({f for f in called if "opentelemetry" in f or f.endswith(("hotpath/tracing.py", "taskkit/tracing.py"))})
    assert otel == [], otel
    job = asyncio.run(_only_job(redis_url, key_prefix, "index"))
    assert TRACE_KWARG not in job["kwargs"], job


# --- traced scenarios, in a child process --------------------------------------------------------------------------


def test_span_tree_of_one_indexed_message(redis_url, key_prefix, milvus_uri):
    out = _child("index", redis_url=redis_url, prefix=key_prefix, milvus_uri=milvus_uri)
    spans = {s["span_id"]: s for s in out["spans"]}

    def one(pred, what):
        found = [s for s in out["spans"] if pred(s)]
        assert len(found) == 1, (what, [(s["name"], s["kind"]) for s in out["spans"]])
        return found[0]

    server = one(lambda s: s["kind"] == "SERVER" and "/index" in s["name"], "the API's server span")
    assert (server["trace_id"], server["parent_id"]) == (CALLER_TRACE, CALLER_SPAN)  # the caller's traceparent
    assert server["attributes"].get("http.response.status_code", server["attributes"].get("http.status_code")) == 202
    send = one(lambda s: s["name"] == "send index_event", "the producer's span")
    assert (send["kind"], send["trace_id"], send["parent_id"]) == ("PRODUCER", CALLER_TRACE, server["span_id"])
    assert send["attributes"]["messaging.destination.name"] == "index"
    assert send["attributes"]["taskkit.accepted"] == 1
    script = [s for s in out["spans"] if s["parent_id"] == send["span_id"] and s["kind"] == "CLIENT"]
    assert [s["attributes"].get("db.system") or s["attributes"].get("db.system.name") for s in script] == ["redis"]

    # The job as ARQ stores it: a plain round trip of its kwargs, which carry the producer's span.
    assert out["job"]["kwargs"] == {TRACE_KWARG: {"traceparent": f"00-{CALLER_TRACE}-{send['span_id']}-01"}}
    assert out["job"]["args"][0]["message_id"] == "m1"

    job = one(lambda s: s["name"] == "process index_event", "the worker's job span")
    assert (job["kind"], job["trace_id"], job["parent_id"]) == ("CONSUMER", CALLER_TRACE, send["span_id"])
    assert job["attributes"]["taskkit.outcome"] == "done" and job["attributes"]["taskkit.attempt"] == 1
    assert job["attributes"]["messaging.message.id"] == out["job"]["id"]

    batch = one(lambda s: s["name"] == "batch index", "the batch span")
    assert (batch["trace_id"], batch["parent_id"]) == (CALLER_TRACE, job["span_id"])
    assert batch["links"] == [{"trace_id": CALLER_TRACE, "span_id": job["span_id"]}]
    assert batch["attributes"]["taskkit.batch.jobs"] == 1

    upsert = one(lambda s: s["name"] == "milvus upsert", "the Milvus upsert span")
    assert (upsert["kind"], upsert["trace_id"], upsert["parent_id"]) == ("CLIENT", CALLER_TRACE, batch["span_id"])
    assert upsert["attributes"]["db.collection.name"] == out["collection"]
    grpc = [s["name"] for s in out["spans"] if s["parent_id"] == upsert["span_id"]]  # pymilvus's gRPC calls
    assert grpc[-1] == "/milvus.proto.milvus.MilvusService/Upsert", grpc  # (after a DescribeCollection, once)
    assert all(n.startswith("/milvus.proto.milvus.MilvusService/") for n in grpc), grpc

    # Every span of the trace hangs off the caller's span; none is left without its parent.
    in_trace = [s for s in out["spans"] if s["trace_id"] == CALLER_TRACE]
    assert all(s["parent_id"] == CALLER_SPAN or s["parent_id"] in spans for s in in_trace)
    # The API's access line carries the trace id and the server span's id.
    access = [ln for ln in out["log"] if ln.get("logger") == "cacheman.access" and "/index" in str(ln.get("path"))]
    assert [(ln["trace_id"], ln["span_id"]) for ln in access] == [(CALLER_TRACE, server["span_id"])], access


@pytest.mark.parametrize("fast", [True, False], ids=["fastworker", "arq-worker"])
def test_retries_are_spans_of_the_jobs_trace(redis_url, key_prefix, fast):
    out = _child("retry", redis_url=redis_url, prefix=key_prefix, fast=fast)
    sends = [s for s in out["spans"] if s["name"] == "send flaky"]
    send = next(s for s in sends if s["attributes"]["messaging.message.id"] == out["ok_id"])
    attempts = sorted((s for s in out["spans"] if s["name"] == "process flaky"
                       and s["attributes"]["messaging.message.id"] == out["ok_id"]),
                      key=lambda s: s["attributes"]["taskkit.attempt"])
    assert [(s["attributes"]["taskkit.attempt"], s["attributes"]["taskkit.outcome"]) for s in attempts] == [
        (1, "retry"), (2, "done")]
    assert {(s["trace_id"], s["parent_id"]) for s in attempts} == {(send["trace_id"], send["span_id"])}
    first = attempts[0]
    assert first["status"] == "ERROR" and "TransientError: the first attempt fails" in first["status_description"]
    assert [e["name"] for e in first["events"]] == ["exception"]
    assert first["attributes"]["taskkit.retry_in_s"] >= 0
    # The dead job: its one attempt failed, in its own trace.
    doomed_send = next(s for s in sends if s["attributes"]["messaging.message.id"] == out["doomed_id"])
    [dead] = [s for s in out["spans"] if s["name"] == "process flaky"
              and s["attributes"]["messaging.message.id"] == out["doomed_id"]]
    assert (dead["trace_id"], dead["parent_id"]) == (doomed_send["trace_id"], doomed_send["span_id"])
    assert doomed_send["trace_id"] != send["trace_id"]
    assert (dead["attributes"]["taskkit.outcome"], dead["status"]) == ("failed", "ERROR")
    assert out["seen_kwargs"] == [{}, {}, {}]  # the task never sees the trace context
    assert out["dead_record_kwargs"] == {}  # nor does the dead-letter record (retry records are built alike)


# --- the child ------------------------------------------------------------------------------------------------


def _child(scenario: str, **cfg: Any) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTPATH_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    code = "import sys, tests.test_tracing as t; t.child_main(sys.argv[1], sys.argv[2])"
    proc = subprocess.run([sys.executable, "-c", code, scenario, json.dumps(cfg)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["log"] = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    return out


def child_main(scenario: str, cfg_json: str) -> None:
    import faulthandler

    import uvloop

    faulthandler.dump_traceback_later(CHILD_TIMEOUT_S - 20, exit=True)  # a hang shows its stacks, not just a timeout

    from hotpath.logs import setup_logging

    setup_logging("test", "INFO")
    cfg = json.loads(cfg_json)
    out = uvloop.run(_watched(_SCENARIOS[scenario](cfg), CHILD_TIMEOUT_S - 30))
    print(json.dumps(out, default=str), flush=True)
    sys.stderr.flush()
    # No interpreter teardown: a grpc channel's __del__ (pymilvus's, collected at exit) has been seen to block there.
    os._exit(0)


async def _watched(main: Any, after_s: float) -> Any:
    """Run `main`; if it is still running after `after_s`, print every task's stack (an idle loop hangs silently)."""
    import io

    def dump() -> None:
        for t in asyncio.all_tasks():
            buf = io.StringIO()
            t.print_stack(file=buf)
            sys.stderr.write(f"task {t.get_name()}:\n{buf.getvalue()}")

    handle = asyncio.get_running_loop().call_later(after_s, dump)
    try:
        return await main
    finally:
        handle.cancel()


def _setup_memory() -> Any:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    assert tracing.setup("test", exporter=exporter) is not None
    return exporter


def _spans(exporter: Any) -> list[dict[str, Any]]:
    tracing.shutdown()
    return [{
        "name": s.name, "kind": s.kind.name, "trace_id": format(s.context.trace_id, "032x"),
        "span_id": format(s.context.span_id, "016x"),
        "parent_id": format(s.parent.span_id, "016x") if s.parent is not None else None,
        "links": [{"trace_id": format(ln.context.trace_id, "032x"), "span_id": format(ln.context.span_id, "016x")}
                  for ln in s.links],
        "attributes": dict(s.attributes or {}), "status": s.status.status_code.name,
        "status_description": s.status.description or "", "events": [{"name": e.name} for e in s.events],
    } for s in exporter.get_finished_spans()]


async def _scenario_index(cfg: dict[str, Any]) -> dict[str, Any]:
    exporter = _setup_memory()
    from cacheman.auth import mint_token
    from hotpath.api import build_api
    from hotpath.settings import IndexWorkerSettings
    from index_worker.worker import build_worker_settings
    from tests.cacheman.cache_fakes import FakeOrigin
    from tests.cacheman.conftest import running
    from tests.index_worker.harness import collection_name, queue_idle, store_for, until
    from tests.taskkit.harness import running_worker

    collection = collection_name()
    redis_url, prefix, milvus_uri = cfg["redis_url"], cfg["prefix"], cfg["milvus_uri"]
    auth = {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=[TENANT],
                                                    scope="cache:read index:write", ttl_s=600)}
    app = build_api(_api_settings(redis_url, prefix, milvus_uri, collection), origin=FakeOrigin())
    async with running(app) as client:
        res = await client.post(f"/v1/{TENANT}/index", headers={**auth, "traceparent": TRACEPARENT},
                                json={"events": [_upsert("m1")]})
        assert res.status_code == 202, res.text
    job = await _only_job(redis_url, prefix, "index")

    worker = IndexWorkerSettings(
        redis_url=redis_url, taskkit_prefix=prefix, milvus_uri=milvus_uri, milvus_collection=collection,
        milvus_timeout_s=5, embedder="hash", embedder_dim=DIM, index_text_max_bytes=2000, index_metrics_port=0,
        index_linger_s=0.05, index_lease_ttl_s=60, index_task_timeout_s=20)
    cls = build_worker_settings(worker)
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    store = store_for(milvus_uri, collection)
    try:
        async with running_worker(cls, fast=True):
            await until(lambda: queue_idle(redis, prefix), 60, "index queue drained")
            await until(lambda: store.count(TENANT), 30, "the message indexed")
    finally:
        await redis.aclose()
        await store.drop_collection()
        await store.close()
    return {"spans": _spans(exporter), "job": job, "collection": collection}


_seen: list[dict[str, Any]] = []


@task(queue=RETRY_QUEUE, retry=RetryPolicy(max_attempts=3, base_s=0.05, cap_s=0.1))
async def flaky(ctx: dict[str, Any], x: int, **kwargs: Any) -> int:
    """x == 0: a permanent error; else fails its first attempt with a transient error, then returns `x`. Records
    the kwargs it was given."""
    _seen.append(dict(kwargs))
    if x == 0:
        raise PermanentError("zero is refused")
    if ctx["job_try"] == 1:
        raise TransientError("the first attempt fails")
    return x


async def _scenario_retry(cfg: dict[str, Any]) -> dict[str, Any]:
    exporter = _setup_memory()
    from opentelemetry import trace
    from redis.asyncio import Redis

    from taskkit import Inspector, Producer
    from taskkit.worker import redis_settings_from_url, worker_settings
    from tests.index_worker.harness import until
    from tests.taskkit.harness import running_worker

    redis_url, prefix = cfg["redis_url"], cfg["prefix"]
    redis = Redis.from_url(redis_url)
    cls = worker_settings(RETRY_QUEUE, [flaky], redis_settings=redis_settings_from_url(redis_url), prefix=prefix,
                          poll_delay_s=0.02)
    try:
        producer = Producer(redis, prefix=prefix)
        with trace.get_tracer("test").start_as_current_span("request"):
            ok = await producer.enqueue(flaky, 7)
        with trace.get_tracer("test").start_as_current_span("request"):
            doomed = await producer.enqueue(flaky, 0)
        inspector = Inspector(redis, prefix=prefix)
        async with running_worker(cls, fast=cfg["fast"]):

            async def all_done():  # flaky(7): a retry, then done (its retry record cleared); flaky(0): dead
                return (len(_seen) == 3 and await inspector.count("retry") == 0
                        and await inspector.count("dead") == 1)

            await until(all_done, 30, "both jobs done or dead")
            dead = await inspector.list("dead")
    finally:
        await redis.aclose()
    return {"spans": _spans(exporter), "seen_kwargs": _seen, "dead_record_kwargs": dead[0].kwargs,
            "ok_id": ok.job_id, "doomed_id": doomed.job_id}


_SCENARIOS = {"index": _scenario_index, "retry": _scenario_retry}


# --- shared ---------------------------------------------------------------------------------------------------


def _api_settings(redis_url: str, prefix: str, milvus_uri: str, collection: str) -> Any:
    from hotpath.settings import ApiSettings

    return ApiSettings(redis_url=redis_url, redis_prefix=prefix.rstrip(":"), taskkit_prefix=prefix,
                       jwt_keys={"t1": SECRET}, rate_limit_per_s=100_000, rate_limit_burst=100_000,
                       milvus_uri=milvus_uri, milvus_collection=collection, embedder="hash", embedder_dim=DIM,
                       index_text_max_bytes=2000)


def _upsert(mid: str) -> dict[str, Any]:
    return {"op": "upsert", "room_id": "r1", "message_id": mid, "version": 1, "text": "the deploy is done",
            "sender": "u1", "created_at": "2026-11-26T12:00:00Z"}


async def _only_job(redis_url: str, prefix: str, queue: str) -> dict[str, Any]:
    """The one queued job of `queue`, as ARQ deserializes it: id, args, kwargs."""
    from arq.jobs import deserialize_job
    from redis.asyncio import Redis

    from taskkit import Keys

    keys = Keys(prefix)
    redis = Redis.from_url(redis_url)
    try:
        ids = await redis.zrange(keys.arq_queue(queue), 0, -1)
        assert len(ids) == 1, ids
        job_id = ids[0].decode()
        raw = await redis.get(keys.job(job_id))
    finally:
        await redis.aclose()
    job = deserialize_job(raw)
    return {"id": job_id, "args": list(job.args), "kwargs": dict(job.kwargs)}
