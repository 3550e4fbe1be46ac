"""The operators' verbs: `hotpath queue stats|audit`, `hotpath retry ls|show|requeue|drop`,
`hotpath dlq ls|show|requeue|purge`.

A thin shell over taskkit's ops API (taskkit/ops.py): it reads the queues' Redis and key prefix from
OpsSettings, calls `Inspector` (which does all the Redis work) and formats (Rich tables for people,
`--json` for scripts). It lives at the edge, not in taskkit, because it reads hotpath's settings and
taskkit is a library. Verbs that change state ask for confirmation unless `--yes`, refuse outright when
they cannot ask (`--json` or no terminal), and need a filter, job ids or `--all`, so an empty command
line never empties a queue.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from hotpath.settings import QUEUE_REDIS_FIX, OpsSettings, SettingsError, load
from taskkit.connection import QueueRedisError
from taskkit.errors import TaskkitError
from taskkit.ops import ActionResult, Filter, Inspector

queue_app = typer.Typer(help="Queue depth, rates and the audit log of operator actions.", no_args_is_help=True)
retry_app = typer.Typer(help="Jobs waiting for their next attempt.", no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter queue: exhausted and permanent failures.", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(app: typer.Typer) -> None:
    """Mount `queue`, `retry` and `dlq` on the `hotpath` command."""
    app.add_typer(queue_app, name="queue")
    app.add_typer(retry_app, name="retry")
    app.add_typer(dlq_app, name="dlq")


# --- plumbing -----------------------------------------------------------------------------------
def parse_age(text: str | None) -> float | None:
    """'90', '90s', '15m', '2h', '7d', '1w' → seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise typer.BadParameter(f"expected a duration like 90s, 15m, 2h or 7d; got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"hotpath: {msg}", err=True)
    raise typer.Exit(code)


def _run(fn: Callable[[Inspector], Awaitable[Any]]) -> Any:
    try:
        settings = load(OpsSettings)
    except SettingsError as exc:
        _fail(str(exc))
    user = settings.ops_user or _os_user()
    try:
        queue_redis = settings.queue_redis_config()
    except QueueRedisError as exc:
        _fail(str(exc))

    async def go() -> Any:
        await queue_redis.check()  # a Cluster node is refused: the queues never live there
        async with Inspector.connect(queue_redis, prefix=settings.taskkit_prefix, user=user) as ins:
            return await fn(ins)

    try:
        return asyncio.run(go())
    except QueueRedisError as exc:
        _fail(f"{exc}; {QUEUE_REDIS_FIX}")
    except TaskkitError as exc:  # JobNotFound, JobConflict, ...
        _fail(str(exc), 1)
    except (OSError, RedisError) as exc:
        _fail(f"cannot reach the queues' Redis at {queue_redis.describe()}: {exc} (set HOTPATH_QUEUE_REDIS_URL, or "
              "HOTPATH_REDIS_URL which it defaults to)", 1)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _console() -> Console:
    """A terminal gets its own width; a pipe gets wide lines instead of folded cells."""
    c = Console()
    return c if c.is_terminal else Console(width=220)


def _json(obj: Any) -> None:
    typer.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2, default=str).decode())


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ms: int | None) -> str:
    if not ms:
        return "-"
    s = time.time() - ms / 1000
    sign = "" if s >= 0 else "in "
    s = abs(s)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{sign}{s / n:.1f}{unit}" + (" ago" if not sign else "")
    return f"{sign}{s:.0f}s" + (" ago" if not sign else "")


def _filter(queue: str | None, task: str | None, error: str | None, older_than: str | None,
            newer_than: str | None, job_ids: list[str] | None = None) -> Filter:
    return Filter(queue=queue, task=task, error=error, older_than_s=parse_age(older_than),
                  newer_than_s=parse_age(newer_than), job_ids=tuple(job_ids or ()))


def _confirm_or_refuse(verb: str, n: int, yes: bool, as_json: bool) -> None:
    if yes:
        return
    if as_json or not sys.stdin.isatty():
        _fail(f"refusing to {verb} {n} job(s) without confirmation: pass --yes (or --dry-run to preview)")
    if not typer.confirm(f"{verb} {n} job(s)?", default=False):
        _fail("aborted, nothing changed", 1)


def _need_selection(flt: Filter, all_: bool) -> None:
    if not all_ and not flt.describe():
        _fail("give job ids or a filter (--queue/--task/--error/--older-than/--newer-than), or --all")


def _records_table(title: str, recs: list, *, dead: bool) -> None:
    t = Table(title=title, show_lines=False)
    for col in ("job id", "queue", "task", "tries", "error", "message", "failed", "died" if dead else "next run"):
        t.add_column(col, overflow="fold")
    for r in recs:
        t.add_row(r.job_id, r.queue, r.task, str(r.attempts), r.error_type, r.message[:60],
                  _ago(r.last_failed_ms), _ago(r.died_ms) if dead else _ago(r.next_run_ms))
    _console().print(t)


def _show_record(rec, as_json: bool) -> None:
    if as_json:
        _json(rec.to_dict())
        return
    c = _console()
    for k, v in rec.to_dict(with_traceback=False).items():
        if k.endswith("_ms") and v:
            v = f"{_when(v)} ({_ago(v)})"
        c.print(f"[bold]{k}[/bold]: {v}")
    c.print("[bold]traceback[/bold]:")
    c.print(rec.traceback, markup=False, highlight=False)


def _action_out(res: ActionResult, as_json: bool) -> None:
    if as_json:
        _json(asdict(res))
        return
    verb = f"would {res.action}" if res.dry_run else res.action + ("d" if res.action.endswith("e") else "ped")
    typer.echo(f"{verb} {res.count} job(s)")
    for s in res.skipped:
        typer.echo(f"  skipped {s['job_id']}: {s['why']}")


def _act(kind: str, action: str, flt: Filter, *, all_: bool, dry_run: bool, yes: bool, as_json: bool) -> None:
    _need_selection(flt, all_)

    async def preview(ins: Inspector) -> int:
        return await ins.count(kind, flt)  # type: ignore[arg-type]

    if not dry_run:
        n = _run(preview)
        if n == 0:
            _action_out(ActionResult(action=action, kind=kind, count=0), as_json)
            return
        _confirm_or_refuse(f"{action} {'dead-lettered' if kind == 'dead' else 'retrying'}", n, yes, as_json)

    async def go(ins: Inspector) -> ActionResult:
        if action == "requeue":
            return await ins.requeue(kind, flt, dry_run=dry_run)  # type: ignore[arg-type]
        if action == "drop":
            return await ins.drop(flt, dry_run=dry_run)
        return await ins.purge(flt, dry_run=dry_run)

    _action_out(_run(go), as_json)


# Options shared by the verbs (typer needs them spelled out per command).
_Q = typer.Option(None, "--queue", "-q", help="Only this queue.")
_T = typer.Option(None, "--task", "-t", help="Only this task name.")
_E = typer.Option(None, "--error", "-e", help="Error type or message contains this text (case-insensitive).")
_OLD = typer.Option(None, "--older-than", help="Last failure at least this long ago (90s, 15m, 2h, 7d).")
_NEW = typer.Option(None, "--newer-than", help="Last failure at most this long ago.")
_JSON = typer.Option(False, "--json", help="JSON output for scripts.")
_DRY = typer.Option(False, "--dry-run", help="Only show how many jobs would be affected.")
_YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
_ALL = typer.Option(False, "--all", help="Every job (when no ids or filter are given).")
_LIMIT = typer.Option(100, "--limit", "-n", help="Show at most this many.")
_IDS = typer.Argument(None, help="Job ids (default: every job matching the filters).")


# --- queue ----------------------------------------------------------------------------------------
@queue_app.command("stats")
def queue_stats(queue: str = _Q, as_json: bool = _JSON) -> None:
    """Depth, oldest-job age, retrying, dead, workers and counters of each queue."""
    stats = _run(lambda ins: ins.stats(queue))
    if as_json:
        _json([asdict(s) for s in stats])
        return
    t = Table(title="queues")
    cols = ("queue", "ready", "scheduled", "oldest age", "retrying", "dead", "workers", "in flight", "jobs/s",
            "backpressure", "enqueued", "rejected", "completed", "retried", "died")
    for c in cols:
        t.add_column(c, justify="left" if c in ("queue", "backpressure") else "right")
    for s in stats:
        t.add_row(s.queue, str(s.ready), str(s.scheduled), f"{s.oldest_age_s:.1f}s", str(s.retrying), str(s.dead),
                  str(s.workers), str(s.in_flight), f"{s.rate_per_s:.1f}", s.backpressure, str(s.enqueued),
                  str(s.rejected), str(s.completed), str(s.retried), str(s.died))
    _console().print(t)


@queue_app.command("audit")
def queue_audit(limit: int = typer.Option(50, "--limit", "-n", help="Show at most this many."),
                as_json: bool = _JSON) -> None:
    """The audit log of requeue/drop/purge: who, when, what, how many (newest first)."""
    rows = _run(lambda ins: ins.audit(limit))
    if as_json:
        _json(rows)
        return
    t = Table(title="audit log")
    for c in ("when", "who", "action", "filter", "count"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(_when(r["at_ms"]), r["who"], r["action"], orjson.dumps(r["filter"]).decode(), str(r["count"]))
    _console().print(t)


def _ls(which: str, title: str, flt, limit: int, as_json: bool) -> None:
    recs = _run(lambda ins: ins.list(which, flt, limit))
    if as_json:
        _json([r.to_dict(with_traceback=False) for r in recs])
    else:
        _records_table(title, recs, dead=which == "dead")


# --- retry ----------------------------------------------------------------------------------------
@retry_app.command("ls")
def retry_ls(queue: str = _Q, task: str = _T, error: str = _E, older_than: str = _OLD, newer_than: str = _NEW,
             limit: int = _LIMIT, as_json: bool = _JSON) -> None:
    """List jobs waiting for their next attempt (soonest first)."""
    _ls("retry", "retry queue", _filter(queue, task, error, older_than, newer_than), limit, as_json)


@retry_app.command("show")
def retry_show(job_id: str, queue: str = _Q, as_json: bool = _JSON) -> None:
    """One waiting job: payload, attempts, last error with traceback, next run."""
    _show_record(_run(lambda ins: ins.show("retry", job_id, queue)), as_json)


@retry_app.command("requeue")
def retry_requeue(job_ids: list[str] = _IDS, queue: str = _Q, task: str = _T, error: str = _E,
                  older_than: str = _OLD, newer_than: str = _NEW, all_: bool = _ALL, dry_run: bool = _DRY,
                  yes: bool = _YES, as_json: bool = _JSON) -> None:
    """Run waiting jobs now instead of at their scheduled time (attempt count kept)."""
    _act("retry", "requeue", _filter(queue, task, error, older_than, newer_than, job_ids),
         all_=all_, dry_run=dry_run, yes=yes, as_json=as_json)


@retry_app.command("drop")
def retry_drop(job_ids: list[str] = _IDS, queue: str = _Q, task: str = _T, error: str = _E,
               older_than: str = _OLD, newer_than: str = _NEW, all_: bool = _ALL, dry_run: bool = _DRY,
               yes: bool = _YES, as_json: bool = _JSON) -> None:
    """Delete waiting jobs: they will not run again."""
    _act("retry", "drop", _filter(queue, task, error, older_than, newer_than, job_ids),
         all_=all_, dry_run=dry_run, yes=yes, as_json=as_json)


# --- dlq ------------------------------------------------------------------------------------------
@dlq_app.command("ls")
def dlq_ls(queue: str = _Q, task: str = _T, error: str = _E, older_than: str = _OLD, newer_than: str = _NEW,
           limit: int = _LIMIT, as_json: bool = _JSON) -> None:
    """List dead-lettered jobs (oldest death first)."""
    _ls("dead", "dead-letter queue", _filter(queue, task, error, older_than, newer_than), limit, as_json)


@dlq_app.command("show")
def dlq_show(job_id: str, queue: str = _Q, as_json: bool = _JSON) -> None:
    """One dead job: payload, error type, message, traceback, attempts, first and last failure."""
    _show_record(_run(lambda ins: ins.show("dead", job_id, queue)), as_json)


@dlq_app.command("requeue")
def dlq_requeue(job_ids: list[str] = _IDS, queue: str = _Q, task: str = _T, error: str = _E,
                older_than: str = _OLD, newer_than: str = _NEW, all_: bool = _ALL, dry_run: bool = _DRY,
                yes: bool = _YES, as_json: bool = _JSON) -> None:
    """Put dead jobs back on their queue with a fresh attempt count."""
    _act("dead", "requeue", _filter(queue, task, error, older_than, newer_than, job_ids),
         all_=all_, dry_run=dry_run, yes=yes, as_json=as_json)


@dlq_app.command("purge")
def dlq_purge(job_ids: list[str] = _IDS, queue: str = _Q, task: str = _T, error: str = _E,
              older_than: str = _OLD, newer_than: str = _NEW, all_: bool = _ALL, dry_run: bool = _DRY,
              yes: bool = _YES, as_json: bool = _JSON) -> None:
    """Delete dead jobs for good."""
    _act("dead", "purge", _filter(queue, task, error, older_than, newer_than, job_ids),
         all_=all_, dry_run=dry_run, yes=yes, as_json=as_json)
