"""The `hotpath` command: run the API, the workers, the whole dev stack, and the operators' verbs.

Each subcommand loads its own settings class (see hotpath/settings.py); an invalid setting ends the
command with a one-line message naming the variable, never a traceback.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer

from hotpath import index_cli, queue_cli, search_cli, thumbs_cli
from hotpath.settings import SettingsError

app = typer.Typer(
    name="hotpath",
    help="hotpath: the cache API and the index/thumbnail workers of the chat platform. "
    "Configuration comes from HOTPATH_* environment variables (and .env); see the README table.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"hotpath: {msg}", err=True)
    raise typer.Exit(code)


def _settings(cls):
    from hotpath.settings import load

    try:
        return load(cls)
    except SettingsError as exc:
        _fail(str(exc))


def _check_queue_redis(settings) -> None:
    """Refuse, in one line, a queues' Redis that is (or defaults to) a Cluster: ARQ's keys span hash slots. A Redis
    that does not answer within HOTPATH_REDIS_TIMEOUT_S is not refused here (the API answers 503, workers retry)."""
    import asyncio

    from hotpath.settings import QUEUE_REDIS_FIX
    from taskkit.connection import QueueRedisError

    try:
        asyncio.run(settings.queue_redis_config().check())
    except QueueRedisError as exc:
        msg = str(exc)
        _fail(msg if QUEUE_REDIS_FIX in msg else f"{msg}; {QUEUE_REDIS_FIX}")


@app.command()
def api(
    host: str = typer.Option(None, help="Bind address (default: HOTPATH_HOST)."),
    port: int = typer.Option(None, help="Port (default: HOTPATH_PORT)."),
    workers: int = typer.Option(None, min=1, max=64, help="Processes serving the port (default: HOTPATH_API_WORKERS)."),
) -> None:
    """Run the HTTP API (uvicorn): the cache routes, the index intake and the search (hotpath/api.py).

    With --workers N, N processes share the port (uvicorn's supervisor; SIGTERM drains and stops them all)."""
    from hotpath.logs import setup_logging
    from hotpath.settings import ApiSettings

    settings = _settings(ApiSettings)
    if host:
        settings.host = host
    if port:
        settings.port = port
    if workers:
        settings.api_workers = workers
    from hotpath.security import InsecureKeys, check_jwt_keys

    try:
        check_jwt_keys(settings.jwt_keys, allow_dev_key=settings.allow_dev_key)
    except InsecureKeys as exc:
        _fail(str(exc))
    _check_queue_redis(settings)
    setup_logging("api", settings.log_level)
    from hotpath.api import serve

    try:
        serve(settings)
    except ValueError as exc:  # settings that disagree with each other (watermarks)
        _fail(str(exc))
    except RuntimeError as exc:  # --workers N: a process could not start
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc} (set HOTPATH_PORT)")


class WorkerKind(StrEnum):
    index = "index"
    thumb = "thumb"


@app.command()
def worker(kind: WorkerKind = typer.Argument(..., help="Which worker: index (Milvus) or thumb (thumbnails).")) -> None:
    """Run a taskkit/ARQ worker: `index` (Milvus) or `thumb` (thumbnails).

    Same jobs as `arq index_worker.worker.WorkerSettings` / `arq thumb_worker.worker.WorkerSettings`."""
    from hotpath.logs import setup_logging
    from hotpath.settings import IndexWorkerSettings, ThumbWorkerSettings

    cls = IndexWorkerSettings if kind is WorkerKind.index else ThumbWorkerSettings
    settings = _settings(cls)
    _check_queue_redis(settings)
    setup_logging(f"worker-{kind.value}", settings.log_level)
    from hotpath import tracing

    tracing.setup(f"worker-{kind.value}", settings.tracing)  # before any client exists: the instrumentations wrap them
    if kind is WorkerKind.index:
        from index_worker.worker import build_worker_settings
    else:
        import logging
        import os

        from thumb_worker.worker import build_worker_settings

        if "MALLOC_ARENA_MAX" not in os.environ:  # glibc reads it only at process start: say so, do not set it
            logging.getLogger("thumb_worker").warning("MALLOC_ARENA_MAX is not set: start the worker with "
                                                      "MALLOC_ARENA_MAX=2 to bound its memory (README: Thumbnails)")
    from taskkit.fastworker import run_worker

    # taskkit's FastWorker on uvloop (batched job claims and ends on ARQ's keys); `arq ...WorkerSettings`
    # runs ARQ's own Worker on the same class. Both can serve the same queue at once.
    run_worker(build_worker_settings(settings))


@app.command()
def dev(
    port: int = typer.Option(None, help="API port (default: HOTPATH_PORT or 8000)."),
) -> None:
    """Run the whole stack on embedded defaults (Valkey, moto S3, Milvus Lite, SQLite demo origin, API, workers).

    One supervised group of processes; a part whose HOTPATH_* URL is set (environment or .env) is used instead
    of started.
    Ctrl-C or SIGTERM stops everything."""
    from hotpath.settings import DevSettings

    settings = _settings(DevSettings)
    if port:
        settings.port = port
    from hotpath.dev import DevError, run_dev

    try:
        sys.exit(run_dev(settings))
    except DevError as exc:
        _fail(str(exc), 1)


@app.command()
def loadtest(
    profile: str = typer.Option("short", help="short (CI: a few faults, correctness SLOs asserted) or long (all)."),
    out: Path = typer.Option(Path(".hotpath/loadtest"), help="Where report.json, the plots and the logs go."),
) -> None:
    """Load and fault-injection run with SLO checks: the whole stack, a chat-like mix from Locust, faults.

    Profiles and SLOs: hotpath/loadtest/slo.yaml. Exits 1 naming each failed SLO (README: Load and fault tests)."""
    from hotpath.loadtest.runner import run
    from hotpath.loadtest.stack import StackError

    try:
        sys.exit(run(profile, out))
    except StackError as exc:
        _fail(str(exc), 1)


origin_app = typer.Typer(help="The origin database (SQL origins only).", no_args_is_help=True)
app.add_typer(origin_app, name="origin")


@origin_app.command("init")
def origin_init(
    demo: bool = typer.Option(False, help="Also fill the schema with demo data (2 tenants, 20 rooms, 200 users)."),
) -> None:
    """Create the origin schema (DDL in cacheman/origin/schema.sql) at HOTPATH_ORIGIN_URL."""
    import asyncio

    from hotpath.settings import ApiSettings

    settings = _settings(ApiSettings)
    from cacheman.origin.sql import init_schema

    try:
        created = asyncio.run(init_schema(settings.origin_url, demo=demo))
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(created)


@app.command()
def token(
    sub: str = typer.Option("dev-cli", help="Calling service name (`sub` claim)."),
    tenants: str = typer.Option("*", help="Comma-separated tenants, or * for all."),
    scope: str = typer.Option("cache:read cache:write index:write ops", help="Space-separated scopes."),
    ttl: int = typer.Option(86400, help="Lifetime in seconds."),
    kid: str = typer.Option(None, help="Key id from HOTPATH_JWT_KEYS (default: the first)."),
) -> None:
    """Print a bearer token signed with a key from HOTPATH_JWT_KEYS (for development and ops)."""
    from hotpath.settings import ApiSettings

    settings = _settings(ApiSettings)
    from cacheman.auth import mint_token

    kid = kid or next(iter(settings.jwt_keys))
    if kid not in settings.jwt_keys:
        _fail(f"no key with kid {kid!r} in HOTPATH_JWT_KEYS")
    tl = ["*"] if tenants.strip() == "*" else [t.strip() for t in tenants.split(",") if t.strip()]
    typer.echo(mint_token(settings.jwt_keys[kid], kid=kid, sub=sub, tenants=tl, scope=scope, ttl_s=ttl))


@app.command("settings")
def settings_cmd(
    markdown: bool = typer.Option(False, "--markdown", help="Print the README's Markdown table."),
    readme: str = typer.Option(None, "--update-readme", help="Rewrite the table between the settings-table markers of this file."),
) -> None:
    """List every HOTPATH_* setting: name, default, meaning and the processes that read it."""
    from hotpath.settings import describe_settings

    rows = describe_settings()
    if markdown or readme:
        lines = ["| Variable | Default | Meaning | Read by |", "|---|---|---|---|"]
        for r in rows:
            default = "" if r["default"] in (None, "") else f"`{r['default']}`"
            meaning = r["meaning"].replace("|", "\\|")
            lines.append(f"| `{r['name']}` | {default} | {meaning} | {', '.join(r['processes'])} |")
        table = "\n".join(lines)
        if not readme:
            typer.echo(table)
            return
        import re
        from pathlib import Path

        path = Path(readme)
        text, n = re.subn(r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)",
                          lambda m: m.group(1) + table + "\n" + m.group(2), path.read_text(), flags=re.S)
        if n != 1:
            _fail(f"{readme} has no <!-- settings-table:start/end --> markers")
        path.write_text(text)
        typer.echo(f"updated {len(rows)} settings in {readme}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("Variable", "Default", "Meaning")
    for r in rows:
        table.add_row(r["name"], str(r["default"]), r["meaning"])
    Console().print(table)


# The operators' verbs (queue, retry, dlq; hotpath/queue_cli.py), imported unconditionally: a broken
# import must fail the command loudly, not silently drop the verbs.
queue_cli.register(app)
search_cli.register(app)
thumbs_cli.register(app)
index_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
