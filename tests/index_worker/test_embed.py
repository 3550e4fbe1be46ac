"""Embedders: hashing (pure), the HTTP client against the shipped double (real uvicorn server), precomputed
vectors bypassing the embedder, and the offline MiniLM model."""

from __future__ import annotations

import math

import httpx
import pytest

from index_worker.embed import (
    PRECOMPUTED_MODEL,
    Embedder,
    embed_missing,
    make_embedder,
    model_tag,
    split_precomputed,
)
from index_worker.embed.hashing import HashEmbedder
from index_worker.embed.http import HttpEmbedder
from index_worker.embed_double import serve_in_thread
from taskkit.errors import PermanentError, RateLimited, TransientError
from tests.services import free_port


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_hash_embedder_is_deterministic_normalised_and_similarity_preserving():
    e = HashEmbedder(64)
    assert isinstance(e, Embedder) and model_tag(e) == "hash@1"
    a, a2, b, c, empty = await e.embed(["the cat sat", "the cat sat", "the cat sat down", "stock prices fall", ""])
    assert a == a2 and len(a) == 64
    for v in (a, b, c, empty):
        assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-9)
    assert cosine(a, b) > cosine(a, c)


def test_factory_chooses_by_kind_and_names_the_setting():
    assert isinstance(make_embedder("hash", dim=8), HashEmbedder)
    assert isinstance(make_embedder("http", url="http://x", model="m", dim=8), HttpEmbedder)
    with pytest.raises(ValueError, match="HOTPATH_EMBEDDER"):
        make_embedder("word2vec")


async def test_precomputed_vectors_bypass_the_embedder():
    calls: list[list[str]] = []

    class Counting(HashEmbedder):
        async def embed(self, texts):
            calls.append(list(texts))
            return await super().embed(texts)

    e = Counting(4)
    pre = [1.0, 0.0, 0.0, 0.0]
    vectors, models = await embed_missing(e, ["a", "b", "c"], [None, pre, None], batch_size=1)
    assert calls == [["a"], ["c"]]  # only the texts without a vector, in batches of 1
    assert vectors[1] == pre and vectors[0] == e.embed_one("a") and vectors[2] == e.embed_one("c")
    assert models == ["hash@1", PRECOMPUTED_MODEL, "hash@1"]
    split = split_precomputed([None, pre], 4)
    assert split.to_embed == [0] and split.vectors == [None, pre]
    with pytest.raises(PermanentError, match="event #1: vector has 3 dimensions, the index has 4"):
        split_precomputed([None, [1.0, 2.0, 3.0]], 4)


@pytest.fixture(scope="module")
def double_url():
    with serve_in_thread(free_port(), dim=16) as url:
        yield url


async def control(url: str, **body) -> dict:
    async with httpx.AsyncClient() as c:
        r = await c.post(url + "/control", json=body)
        r.raise_for_status()
        return r.json()


async def test_http_embedder_against_the_double(double_url):
    await control(double_url, fail=0, dim=16)
    e = HttpEmbedder(double_url, model="mini", dim=16, batch_size=2)
    try:
        before = (await control(double_url))["requests"]
        out = await e.embed(["one", "two", "three"])
        assert out == [HashEmbedder(16).embed_one(t) for t in ("one", "two", "three")]
        assert (await control(double_url))["requests"] - before == 2  # batches of 2
    finally:
        await e.aclose()


async def test_http_embedder_retries_503_then_succeeds(double_url):
    await control(double_url, fail=2, status=503, retry_after=None, dim=16)
    e = HttpEmbedder(double_url, model="mini", dim=16, backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=4)
    try:
        before = (await control(double_url))["requests"]
        assert len((await e.embed(["hi"]))[0]) == 16
        assert (await control(double_url))["requests"] - before == 3
    finally:
        await e.aclose()


async def test_http_embedder_gives_up_as_transient_and_429_as_rate_limited(double_url):
    e = HttpEmbedder(double_url, model="mini", dim=16, backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=3)
    try:
        await control(double_url, fail=5, status=503, retry_after=None, dim=16)
        with pytest.raises(TransientError, match=r"HTTP 503.*after 3 attempts") as info:
            await e.embed(["hi"])
        assert not isinstance(info.value, RateLimited)
        await control(double_url, fail=5, status=429, retry_after=0, dim=16)
        with pytest.raises(RateLimited, match="HTTP 429"):
            await e.embed(["hi"])
    finally:
        await control(double_url, fail=0)
        await e.aclose()


async def test_http_embedder_400_is_permanent_without_retry(double_url):
    await control(double_url, fail=1, status=400, dim=16)
    e = HttpEmbedder(double_url, model="mini", dim=16, backoff_initial_s=0.01)
    try:
        before = (await control(double_url))["requests"]
        with pytest.raises(PermanentError, match="HTTP 400"):
            await e.embed(["hi"])
        assert (await control(double_url))["requests"] - before == 1
    finally:
        await control(double_url, fail=0)
        await e.aclose()


async def test_http_embedder_wrong_dimension_is_permanent(double_url):
    await control(double_url, fail=0, dim=16)
    e = HttpEmbedder(double_url, model="mini", dim=384)
    try:
        with pytest.raises(PermanentError, match=r"returns 16-d vectors, the index expects 384.*HOTPATH_EMBEDDER_DIM"):
            await e.embed(["hi"])
    finally:
        await e.aclose()


async def test_http_embedder_unreachable_service_is_transient():
    e = HttpEmbedder(f"http://127.0.0.1:{free_port()}", model="m", dim=4, max_attempts=2, backoff_initial_s=0.01)
    try:
        with pytest.raises(TransientError, match="ConnectError"):
            await e.embed(["hi"])
    finally:
        await e.aclose()


async def test_minilm_loads_offline_and_embeds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    e = make_embedder("minilm", batch_size=8)
    assert e.dim == 384 and e.name.endswith("all-MiniLM-L6-v2") and e.version
    cat, kitten, stocks = await e.embed(
        ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Quarterly stock prices fell sharply."]
    )
    assert len(cat) == 384 and math.isclose(sum(x * x for x in cat), 1.0, rel_tol=1e-4)
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2
    from index_worker.embed import minilm

    assert len(minilm._models) == 1  # loaded once per process
    await make_embedder("minilm").embed(["again"])
    assert len(minilm._models) == 1
