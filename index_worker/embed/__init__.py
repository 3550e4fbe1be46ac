"""The embedding interface of the index worker: one protocol, three implementations, chosen by a setting.

Why a factory over a registry: the three kinds are known and few; `make_embedder(kind, **opts)` keeps the
edge (settings) the only place that decides, and imports torch only when `minilm` is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from taskkit.errors import PermanentError

KINDS = ("minilm", "http", "hash")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors of `dim` floats; `name`/`version` are stored with each indexed row."""

    name: str
    version: str
    dim: int

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


def model_tag(embedder: Embedder) -> str:
    """The `model` value stored with a row: `name@version` (what a re-index after a model change plans on)."""
    return f"{embedder.name}@{embedder.version}"


PRECOMPUTED_MODEL = "precomputed"


def make_embedder(kind: str, **opts) -> Embedder:
    """The embedder of `kind` (minilm | http | hash); `opts` go to its constructor."""
    if kind == "hash":
        from index_worker.embed.hashing import HashEmbedder

        return HashEmbedder(**opts)
    if kind == "minilm":
        from index_worker.embed.minilm import MiniLMEmbedder

        return MiniLMEmbedder(**opts)
    if kind == "http":
        from index_worker.embed.http import HttpEmbedder

        return HttpEmbedder(**opts)
    raise ValueError(f"unknown embedder kind {kind!r}: choose one of {', '.join(KINDS)} (HOTPATH_EMBEDDER)")


def vector_problem(vector: object, dim: int) -> str | None:
    """Why `vector` cannot be indexed with dimension `dim`, or None when it can (a list of `dim` finite numbers)."""
    if not isinstance(vector, list | tuple):
        return f"vector must be a list of {dim} numbers, got {type(vector).__name__}"
    if len(vector) != dim:
        return f"vector has {len(vector)} dimensions, the index has {dim}"
    if set(map(type, vector)) <= {float, int} and math.isfinite(sum(vector)):
        return None  # the common case, checked in C (a per-element loop costs ~0.3 ms a row at 384-d)
    for x in vector:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            return f"vector must hold {dim} finite numbers, found {x!r}"
    return None


@dataclass(frozen=True)
class Split:
    """A batch split into rows with a precomputed vector and rows that need the embedder."""

    vectors: list[list[float] | None]  # per input: the precomputed vector, or None
    to_embed: list[int]  # indexes of the inputs without a vector


def split_precomputed(vectors: Sequence[Sequence[float] | None], dim: int) -> Split:
    """Split by whether a vector came with the event; a precomputed vector of the wrong shape is a
    PermanentError naming the index of the bad input (validate before calling, so only it is dead-lettered)."""
    out: list[list[float] | None] = []
    to_embed: list[int] = []
    for i, vec in enumerate(vectors):
        if vec is None:
            out.append(None)
            to_embed.append(i)
            continue
        problem = vector_problem(vec, dim)
        if problem:
            raise PermanentError(f"event #{i}: {problem}")
        out.append([float(x) for x in vec])
    return Split(out, to_embed)


async def embed_missing(
    embedder: Embedder, texts: Sequence[str], vectors: Sequence[Sequence[float] | None], *, batch_size: int = 64
) -> tuple[list[list[float]], list[str]]:
    """Vectors for every input (precomputed ones kept, the rest embedded in batches of `batch_size`) and the
    model tag of each (PRECOMPUTED_MODEL or the embedder's `name@version`)."""
    if len(texts) != len(vectors):
        raise ValueError("texts and vectors must have the same length")
    split = split_precomputed(vectors, embedder.dim)
    result = list(split.vectors)
    models = [PRECOMPUTED_MODEL if v is not None else model_tag(embedder) for v in result]
    for start in range(0, len(split.to_embed), batch_size):
        idx = split.to_embed[start : start + batch_size]
        embedded = await embedder.embed([texts[i] for i in idx])
        if len(embedded) != len(idx):
            raise PermanentError(f"embedder {embedder.name} returned {len(embedded)} vectors for {len(idx)} texts")
        for i, vec in zip(idx, embedded, strict=True):
            result[i] = vec
    return [v for v in result if v is not None], models
