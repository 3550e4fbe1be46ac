"""A fast deterministic embedder for tests and benchmarks: feature hashing of word tokens into `dim` signed
buckets, L2-normalised. Texts sharing words get a positive cosine; no model, no I/O."""

from __future__ import annotations

import hashlib
import math
import re

_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Feature-hashing embedder (the "hashing trick"): each token adds ±1 to one of `dim` buckets."""

    def __init__(self, dim: int = 384, *, name: str = "hash", version: str = "1") -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = dim
        self.name = name
        self.version = version

    def embed_one(self, text: str) -> list[float]:
        """The vector of one text (synchronous; cheap enough to run on the event loop)."""
        vec = [0.0] * self.dim
        tokens = _TOKEN.findall(text.lower()) or [""]  # an empty text still gets a unit vector
        for token in tokens:
            h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big")
            vec[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in vec))
        if norm == 0.0:  # tokens cancelled out exactly: fall back to the first token's bucket
            h = int.from_bytes(hashlib.blake2b(tokens[0].encode(), digest_size=8).digest(), "big")
            vec[h % self.dim] = 1.0
            norm = 1.0
        return [x / norm for x in vec]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit vector per text."""
        return [self.embed_one(t) for t in texts]
