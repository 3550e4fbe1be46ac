"""`hotpath search`: the message index searched from the command line, as `GET /v1/{tenant}/search` does it
(index_worker/search.py's Searcher: the query embedded with the index's embedder, one tenant only)."""

from __future__ import annotations

import asyncio
import json
import re

import typer

from index_worker.intake import ID_PATTERN


def register(app: typer.Typer) -> None:
    """Add the `search` command to the hotpath CLI."""

    @app.command()
    def search(
        text: str = typer.Argument(..., help="What to search for."),
        tenant: str = typer.Option(..., "--tenant", help="The tenant whose messages are searched."),
        room: str = typer.Option(None, "--room", help="Only this room's messages."),
        limit: int = typer.Option(10, "--limit", min=1, max=100, help="How many messages (1 to 100)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (the API's SearchOut) instead of a table."),
    ) -> None:
        """Search a tenant's indexed messages (Milvus at HOTPATH_MILVUS_URI, the embedder of HOTPATH_EMBEDDER)."""
        from hotpath.cli import _fail, _settings
        from hotpath.settings import SearchSettings
        from index_worker.config import EmbedderConfig, StoreConfig
        from index_worker.search import Searcher, SearchHit, SearchOut, SearchUnavailable

        for name, value in (("--tenant", tenant), ("--room", room)):
            if value is not None and not re.fullmatch(ID_PATTERN, value):
                _fail(f"{name} {value!r} is not an id (pattern {ID_PATTERN})")
        if not text.strip():
            _fail("give a text to search for")
        settings = _settings(SearchSettings)
        searcher = Searcher(EmbedderConfig.from_settings(settings), StoreConfig.from_settings(settings, writer=False))

        async def run():
            try:
                return await searcher.search(tenant, text, room_id=room, limit=limit)
            finally:
                await searcher.close()

        try:
            hits = asyncio.run(run())
        except SearchUnavailable as exc:
            hint = "HOTPATH_MILVUS_URI" if exc.dependency == "milvus" else "HOTPATH_EMBEDDER / HOTPATH_EMBEDDER_URL"
            _fail(f"{exc.dependency} unavailable: {exc.detail} (check {hint})", 1)
        out = SearchOut(hits=[SearchHit.of(h) for h in hits])
        if as_json:
            typer.echo(json.dumps(out.model_dump(), ensure_ascii=False))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("score", "room", "sender", "time", "message", "text", title=f"{tenant}: {text!r}")
        for h in out.hits:
            table.add_row(f"{h.score:.3f}", h.room_id, h.sender, h.created_at, h.message_id,
                          h.text if len(h.text) <= 80 else h.text[:79] + "…")
        Console().print(table)
        if not out.hits:
            typer.echo("no messages found", err=True)
