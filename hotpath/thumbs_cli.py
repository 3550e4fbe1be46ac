"""`hotpath thumbs backfill`: enqueue thumbnail jobs for the uploads whose thumbnails are missing or stale (events
missed while nothing listened), with a progress bar; `--watch N` repeats the scan every N seconds (`hotpath dev`
runs that, since moto sends no bucket notifications). The scan itself is thumb_worker/backfill.py."""

from __future__ import annotations

import asyncio
import sys
import time

import typer

thumbs_app = typer.Typer(help="Thumbnails: find and enqueue the uploads whose thumbnails are missing or stale.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `thumbs` group to the hotpath CLI."""
    app.add_typer(thumbs_app, name="thumbs")


def _summary(stats, seconds: float) -> str:
    waited = f", waited {stats.waited_s:.0f}s on a full queue ({stats.waits}×)" if stats.waits else ""
    return (f"{stats.listed} sources listed: {stats.enqueued} enqueued, {stats.duplicates} already queued, "
            f"{stats.current} current{waited} in {seconds:.1f}s")


@thumbs_app.command("backfill")
def backfill_cmd(
    bucket: str = typer.Option(None, "--bucket", help="The bucket to scan (default and only choice: HOTPATH_UPLOADS_BUCKET)."),
    prefix: str = typer.Option("", "--prefix", help="Only keys starting with this."),
    watch: float = typer.Option(0.0, "--watch", min=0, help="Scan again every this many seconds, until stopped "
                                "(what `hotpath dev` runs); only new object versions are checked after the first scan."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar; one line per scan that enqueued something."),
) -> None:
    """Enqueue a `thumbnail` job for every source whose thumbnails are missing, or made from another ETag or with
    other settings (HOTPATH_THUMB_SIZES / _FORMAT / _QUALITY). A full `thumb` queue makes it wait, not fail."""
    from hotpath.cli import _check_queue_redis, _fail, _settings
    from hotpath.settings import ThumbBackfillSettings

    settings = _settings(ThumbBackfillSettings)
    _check_queue_redis(settings)  # a Cluster is refused in one line
    if bucket is not None and bucket != settings.uploads_bucket:
        _fail(f"the thumbnail worker makes thumbnails of HOTPATH_UPLOADS_BUCKET ({settings.uploads_bucket!r}) only; "
              f"set HOTPATH_UPLOADS_BUCKET={bucket} for this command and the worker, or omit --bucket")
    from redis.exceptions import RedisError

    from taskkit.errors import TransientError

    try:
        asyncio.run(_run(settings, prefix, watch, quiet))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except TransientError as exc:
        _fail(f"object storage: {exc} (check HOTPATH_S3_ENDPOINT and the S3 keys)", 1)
    except (RedisError, OSError) as exc:
        _fail(f"the queue's Redis did not answer ({type(exc).__name__}: {exc}); check HOTPATH_QUEUE_REDIS_URL (default: HOTPATH_REDIS_URL)", 1)
    except RuntimeError as exc:  # a bucket that does not exist
        _fail(str(exc), 1)


async def _run(settings, prefix: str, watch: float, quiet: bool) -> None:
    from redis.exceptions import RedisError

    from taskkit.backpressure import Watermarks
    from taskkit.errors import TransientError
    from taskkit.producer import Producer
    from thumb_worker.backfill import backfill
    from thumb_worker.config import ThumbConfig
    from thumb_worker.decoder import DecoderPool
    from thumb_worker.job import ThumbJobs
    from thumb_worker.producer import QUEUE
    from thumb_worker.storage import DEFAULT_CONNECT_TIMEOUT_S, minio_from_settings

    cfg = ThumbConfig.from_settings(settings)
    if not settings.thumb_queue_low < settings.thumb_queue_high:
        raise RuntimeError(f"HOTPATH_THUMB_QUEUE_LOW ({settings.thumb_queue_low}) must be below "
                           f"HOTPATH_THUMB_QUEUE_HIGH ({settings.thumb_queue_high})")
    client = minio_from_settings(settings, connect_timeout_s=min(DEFAULT_CONNECT_TIMEOUT_S, cfg.s3_timeout_s),
                                 read_timeout_s=cfg.s3_timeout_s)
    # Only `current` and `sources` are used: the decoder pool is never started (no libvips in this process).
    jobs = ThumbJobs(client, DecoderPool(cfg.spec, size=1, time_limit_s=cfg.time_limit_s), cfg)
    queue_redis = settings.queue_redis_config()
    redis = queue_redis.client()
    producer = Producer(redis, prefix=settings.taskkit_prefix,
                        watermarks={QUEUE: Watermarks(high=settings.thumb_queue_high, low=settings.thumb_queue_low)},
                        wait_replicas=queue_redis.wait_replicas, wait_timeout_ms=queue_redis.wait_timeout_ms)
    try:
        await jobs.check()
        if not watch:
            await _once(jobs, producer, prefix, quiet)
            return
        seen: set[tuple[str, str]] = set()
        while True:
            started = time.monotonic()
            try:
                stats = await backfill(jobs, producer, prefix=prefix, seen=seen)
            except (TransientError, RedisError, OSError) as exc:  # S3 or Redis away for a moment: the next scan tries again
                _say(f"scan failed ({type(exc).__name__}: {exc}); trying again in {watch:g}s")
            else:
                if stats.enqueued or stats.waits:
                    _say(_summary(stats, time.monotonic() - started))
            await asyncio.sleep(watch)
    finally:
        await redis.aclose()


async def _once(jobs, producer, prefix: str, quiet: bool) -> None:
    from thumb_worker.backfill import backfill

    started = time.monotonic()
    if quiet or not sys.stderr.isatty():
        stats = await backfill(jobs, producer, prefix=prefix)
    else:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.fields[line]}"), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("scanning", total=None, line="")

            def show(s) -> None:
                what = "queue full, waiting" if s.waiting else "scanning"
                bar.update(task, description=what, completed=s.listed,
                           line=f"{s.listed} listed · {s.enqueued} enqueued · {s.duplicates} queued · {s.current} current")

            stats = await backfill(jobs, producer, prefix=prefix, progress=show)
            bar.update(task, description="done", total=stats.listed, completed=stats.listed)
    typer.echo(_summary(stats, time.monotonic() - started))


def _say(msg: str) -> None:
    print(f"hotpath thumbs: {msg}", file=sys.stderr, flush=True)
