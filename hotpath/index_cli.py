"""`hotpath index backfill`: enqueue the SQL origin's message history for the search index, with a progress bar;
resumable (a checkpoint in Redis), waiting on a full `index` queue. The work itself is index_worker/backfill.py."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import typer

from index_worker.intake import ID_PATTERN, MAX_EVENTS

index_app = typer.Typer(help="The message index: load the origin's history into it.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `index` group to the hotpath CLI."""
    app.add_typer(index_app, name="index")


def _summary(stats, seconds: float) -> str:
    if stats.already_done:
        room, message = stats.resumed_from
        return (f"already done: an earlier backfill finished ({stats.resumed_enqueued} enqueued, last message "
                f"{message!r} of room {room!r}); --restart runs it again (indexed messages are skipped)")
    parts = [f"{stats.read} messages read", f"{stats.enqueued} enqueued", f"{stats.known} already indexed or deleted"]
    if stats.duplicates:
        parts.append(f"{stats.duplicates} already queued")
    if stats.room_deleted:
        parts.append(f"{stats.room_deleted} in deleted rooms")
    if stats.invalid:
        why = "; ".join(f"{n}× {reason}" for reason, n in sorted(stats.reasons.items(), key=lambda kv: -kv[1])[:3])
        parts.append(f"{stats.invalid} skipped as invalid ({why})")
    resumed = ""
    if stats.resumed_from:
        resumed = f" (resumed after message {stats.resumed_from[1]!r} of room {stats.resumed_from[0]!r})"
    waited = f", waited {stats.waited_s:.0f}s on a full queue ({stats.waits}×)" if stats.waits else ""
    return ", ".join(parts) + f"{waited} in {seconds:.1f}s{resumed}"


@index_app.command("backfill")
def backfill_cmd(
    tenant: str = typer.Option(..., "--tenant", help="The tenant whose messages are enqueued."),
    room: str = typer.Option(None, "--room", help="Only this room's messages."),
    restart: bool = typer.Option(False, "--restart", help="Forget the checkpoint of an earlier run and start over "
                                 "(messages already indexed or deleted are still skipped)."),
    batch: int = typer.Option(MAX_EVENTS, "--batch", min=1, max=MAX_EVENTS, help="Events per enqueue (at most "
                              "HOTPATH_INDEX_QUEUE_HIGH − HOTPATH_INDEX_QUEUE_LOW)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar; only the summary line."),
) -> None:
    """Enqueue every message of the SQL origin's `messages` table (HOTPATH_ORIGIN_URL) of a tenant as version-0
    upserts: any real event beats them, and a message already indexed or deleted is skipped. A rerun resumes
    after the last page enqueued; a full `index` queue makes it wait, not fail."""
    from hotpath.cli import _check_queue_redis, _fail, _settings
    from hotpath.settings import IndexBackfillSettings

    for name, value in (("--tenant", tenant), ("--room", room)):
        if value is not None and not re.fullmatch(ID_PATTERN, value):
            _fail(f"{name} {value!r} is not an id (pattern {ID_PATTERN})")
    settings = _settings(IndexBackfillSettings)
    _check_queue_redis(settings)  # a Cluster is refused in one line
    if not settings.index_queue_low < settings.index_queue_high:
        _fail(f"HOTPATH_INDEX_QUEUE_LOW ({settings.index_queue_low}) must be below HOTPATH_INDEX_QUEUE_HIGH "
              f"({settings.index_queue_high})")
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    from index_worker.backfill import SqlOriginRequired, messages_engine

    try:
        engine = messages_engine(settings.origin_url)
    except SqlOriginRequired as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    started = time.monotonic()
    try:
        stats = asyncio.run(_run(settings, engine, tenant, room, restart, batch, quiet))
    except KeyboardInterrupt:
        typer.echo("interrupted: a rerun resumes after the last page enqueued", err=True)
        raise typer.Exit(130) from None
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        hint = " (run `hotpath origin init`)" if "messages" in first and ("no such table" in first or "does not exist" in first) else ""
        _fail(f"the origin database failed: {first}{hint}; check HOTPATH_ORIGIN_URL", 1)
    except (RedisError, OSError) as exc:
        _fail(f"the queue's Redis did not answer ({type(exc).__name__}: {exc}); check HOTPATH_QUEUE_REDIS_URL (default: HOTPATH_REDIS_URL)", 1)
    typer.echo(_summary(stats, time.monotonic() - started))


async def _run(settings, engine, tenant: str, room: str | None, restart: bool, batch: int, quiet: bool):

    from index_worker.backfill import backfill
    from index_worker.config import QUEUE
    from index_worker.guard import VersionGuard
    from taskkit.backpressure import Watermarks
    from taskkit.producer import Producer

    queue_redis = settings.queue_redis_config()
    redis = queue_redis.client()
    producer = Producer(redis, prefix=settings.taskkit_prefix,
                        watermarks={QUEUE: Watermarks(high=settings.index_queue_high, low=settings.index_queue_low)},
                        wait_replicas=queue_redis.wait_replicas, wait_timeout_ms=queue_redis.wait_timeout_ms)
    guard = VersionGuard(redis, settings.taskkit_prefix + "ix:")  # the worker's guard prefix (WorkerConfig)
    kw = dict(room=room, restart=restart, batch=batch, text_max_bytes=settings.index_text_max_bytes)
    try:
        if quiet or not sys.stderr.isatty():
            return await backfill(engine, producer, guard, tenant, **kw)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[line]}"), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("reading", total=None, line="")

            def show(s) -> None:
                what = f"queue full, waiting {s.retry_after_s:.0f}s" if s.waiting else "enqueuing"
                bar.update(task, description=what, total=s.total or None, completed=s.read,
                           line=f"{s.enqueued} enqueued · {s.known} known · {s.duplicates} queued · {s.invalid} invalid")

            stats = await backfill(engine, producer, guard, tenant, progress=show, **kw)
            bar.update(task, description="done", total=max(stats.total, stats.read), completed=stats.read)
            return stats
    finally:
        await redis.aclose()
        await engine.dispose()
