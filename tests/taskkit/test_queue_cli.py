"""The ops CLI (hotpath/queue_cli.py, over taskkit's ops API) on a populated queue: every verb with --json
parsed, filters, --dry-run, refusal without --yes, and the audit log. Runs `hotpath` in-process (typer's
CliRunner) against the test Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from hotpath.cli import app
from taskkit import Inspector, PermanentError, Producer, RetryPolicy, TransientError, task, worker_settings
from taskkit.keys import Keys
from taskkit.worker import redis_settings_from_url
from tests.taskkit.harness import running_worker, wait_until

Q = "cliq"


@task(queue=Q, retry=RetryPolicy(max_attempts=3))
async def cli_broken(ctx, doc: int) -> None:
    raise PermanentError(f"bad doc {doc}")


@task(queue=Q, retry=RetryPolicy(max_attempts=3))
async def cli_other(ctx, doc: int) -> None:
    raise ValueError(f"unparseable {doc}")


@task(queue=Q, retry=RetryPolicy(max_attempts=5, cap_s=7200))
async def cli_flaky(ctx, doc: int) -> None:
    raise TransientError(f"hiccup {doc}", retry_after=3600)


@pytest.fixture
def populated(redis_url, tk_prefix, monkeypatch):
    """3 dead jobs (2 cli_broken, 1 cli_other) and 2 jobs waiting an hour for their retry."""

    async def go():
        redis = Redis.from_url(redis_url)
        try:
            prod = Producer(redis, prefix=tk_prefix)
            ins = Inspector(redis, prefix=tk_prefix)
            for d in (1, 2):
                await prod.enqueue(cli_broken, d)
            await prod.enqueue(cli_other, 3)
            flaky = [(await prod.enqueue(cli_flaky, d)).job_id for d in (4, 5)]
            cls = worker_settings(Q, [cli_broken, cli_other, cli_flaky],
                                  redis_settings=redis_settings_from_url(redis_url), prefix=tk_prefix)
            async with running_worker(cls):
                await wait_until(lambda: ins.count("dead"), within=10)
                await wait_until(lambda: _count(ins, 3, 2), within=10)
                # and ARQ has written each attempt's end (no in-progress key left) before the worker stops
                await wait_until(lambda: _no_in_progress(redis, tk_prefix), within=10)
            return flaky
        finally:
            await redis.aclose()

    flaky = asyncio.run(go())
    monkeypatch.setenv("HOTPATH_REDIS_URL", redis_url)
    monkeypatch.setenv("HOTPATH_TASKKIT_PREFIX", tk_prefix)
    monkeypatch.setenv("HOTPATH_OPS_USER", "carol")
    return {"flaky": flaky}


async def _no_in_progress(redis, prefix: str) -> bool:
    return not [k async for k in redis.scan_iter(match=f"arq:in-progress:{prefix}*", count=1000)]


async def _count(ins, dead, retry):
    return await ins.count("dead") == dead and await ins.count("retry") == retry


def cli(*args: str, ok: bool = True):
    r = CliRunner().invoke(app, list(args))
    if ok:
        assert r.exit_code == 0, (args, r.output, r.exception)
    return r


def js(*args: str):
    return json.loads(cli(*args, "--json").stdout)


def _state(redis_url, tk_prefix, fn):
    async def go():
        redis = Redis.from_url(redis_url)
        try:
            return await fn(redis, Inspector(redis, prefix=tk_prefix), Keys(tk_prefix))
        finally:
            await redis.aclose()

    return asyncio.run(go())


def test_read_verbs(populated):
    stats = js("queue", "stats")
    s = next(x for x in stats if x["queue"] == Q)
    assert s["dead"] == 3 and s["retrying"] == 2 and s["scheduled"] == 2 and s["died"] == 3

    retry = js("retry", "ls")
    assert sorted(r["job_id"] for r in retry) == sorted(populated["flaky"])
    assert all(r["error_type"] == "TransientError" and r["next_run_ms"] > time.time() * 1000 + 3000_000
               for r in retry)
    assert len(js("retry", "ls", "--error", "hiccup 4")) == 1
    shown = js("retry", "show", populated["flaky"][0])
    assert shown["attempts"] == 1 and "Traceback" in shown["traceback"] and shown["kind"] == "retry"

    dead = js("dlq", "ls")
    assert len(dead) == 3
    assert len(js("dlq", "ls", "--task", "cli_broken")) == 2
    assert [d["args"] for d in js("dlq", "ls", "--error", "VALUEERROR")] == [[3]]  # error type, any case
    assert len(js("dlq", "ls", "--error", "bad doc 2")) == 1  # message text
    assert js("dlq", "ls", "--older-than", "1h") == []
    assert len(js("dlq", "ls", "--newer-than", "1h", "--queue", Q)) == 3
    assert len(js("dlq", "ls", "--limit", "2")) == 2
    one = js("dlq", "show", dead[0]["job_id"])
    assert one["message"] and "Traceback" in one["traceback"] and one["first_failed_ms"] and one["died_ms"]

    # people get tables
    table = cli("retry", "ls").stdout
    assert "retry queue" in table and table.count("cli_flaky") == 2 and "TransientError" in table
    assert Q in cli("queue", "stats").stdout
    assert "traceback" in cli("dlq", "show", dead[0]["job_id"]).stdout
    missing = cli("dlq", "show", "no-such-job", ok=False)
    assert missing.exit_code == 1 and "no job" in missing.output


def test_destructive_verbs_refuse_without_yes(populated, redis_url, tk_prefix):
    some = populated["flaky"][0]
    for args in (("dlq", "purge", "--all"), ("dlq", "requeue", "--all"), ("retry", "drop", some),
                 ("retry", "requeue", some), ("dlq", "purge", "--all", "--json")):
        r = cli(*args, ok=False)
        assert r.exit_code != 0 and "--yes" in r.output, (args, r.output)
    r = cli("dlq", "purge", ok=False)  # no ids, no filter, no --all
    assert r.exit_code != 0 and "--all" in r.output
    assert _state(redis_url, tk_prefix, lambda r, ins, k: _count(ins, 3, 2))


def test_dry_run_changes_nothing(populated, redis_url, tk_prefix):
    res = js("dlq", "purge", "--all", "--dry-run")
    assert res["dry_run"] and res["count"] == 3 and len(res["job_ids"]) == 3
    assert js("retry", "drop", "--error", "hiccup", "--dry-run")["count"] == 2
    assert "would purge 3" in cli("dlq", "purge", "--all", "--dry-run").stdout
    assert _state(redis_url, tk_prefix, lambda r, ins, k: _count(ins, 3, 2))
    assert js("queue", "audit") == []  # previews are not audited


def test_changing_verbs_and_audit(populated, redis_url, tk_prefix):
    a, b = populated["flaky"]
    res = js("retry", "requeue", a, "--yes")
    assert res["count"] == 1 and res["job_ids"] == [a]

    async def run_now(redis, ins, k):
        return await redis.zscore(k.arq_queue(Q), a) <= time.time() * 1000

    assert _state(redis_url, tk_prefix, run_now)

    res = js("retry", "drop", b, "--yes")
    assert res["count"] == 1

    async def dropped(redis, ins, k):
        return (await redis.exists(k.job(b)) == 0 and await redis.zscore(k.arq_queue(Q), b) is None
                and await ins.count("retry") == 1)

    assert _state(redis_url, tk_prefix, dropped)

    other = js("dlq", "ls", "--task", "cli_other")[0]["job_id"]
    res = js("dlq", "requeue", "--task", "cli_other", "--yes")
    assert res["count"] == 1 and res["job_ids"] == [other]

    async def requeued(redis, ins, k):
        return (await redis.exists(k.job(other)) == 1 and await redis.zscore(k.arq_queue(Q), other) is not None
                and await ins.count("dead") == 2)

    assert _state(redis_url, tk_prefix, requeued)

    res = js("dlq", "purge", "--task", "cli_broken", "--yes")
    assert res["count"] == 2
    assert js("dlq", "ls") == []

    audit = js("queue", "audit")
    assert [(e["action"], e["count"], e["who"]) for e in audit] == [
        ("dead.purge", 2, "carol"), ("dead.requeue", 1, "carol"), ("retry.drop", 1, "carol"),
        ("retry.requeue", 1, "carol")]
    assert audit[0]["filter"] == {"task": "cli_broken"} and audit[2]["job_ids"] == [b]
    assert all(e["at_ms"] > (time.time() - 60) * 1000 for e in audit)
    assert "dead.purge" in cli("queue", "audit").stdout


def test_a_broken_ops_import_fails_the_command_loudly():
    # The verbs used to be mounted under `try: import ... except ImportError: return`: a bug in their import
    # silently removed `hotpath queue|retry|dlq`. Now the import error reaches the user.
    code = "import sys; sys.modules['taskkit.ops'] = None; import hotpath.cli"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "import of taskkit.ops halted" in proc.stderr, proc.stderr[-2000:]
    assert {"queue", "retry", "dlq"} <= {c.name for c in app.registered_groups}  # mounted when it imports


def test_taskkit_imports_nothing_from_the_edge():
    # taskkit is a library: no module of it may import hotpath (settings, CLI) or a package built on it.
    code = ("import importlib, pkgutil, sys, taskkit\n"
            "for m in pkgutil.iter_modules(taskkit.__path__): importlib.import_module('taskkit.' + m.name)\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & "
            "{'hotpath', 'cacheman', 'index_worker', 'thumb_worker'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
