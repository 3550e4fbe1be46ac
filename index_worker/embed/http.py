"""An OpenAI-compatible `/v1/embeddings` client (httpx) with timeouts and bounded retries.

Why retries here and in taskkit both: a 429/503 blip of the embedding service is retried a few times within
the job (tenacity, exponential backoff with jitter, honouring Retry-After) so a batch is not re-queued for a
one-second hiccup; once the attempts are spent the job's own retry policy takes over (TransientError).
"""

from __future__ import annotations

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from taskkit.errors import PermanentError, RateLimited, TransientError

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


class HttpEmbedder:
    """Embeds through an external OpenAI-compatible service: POST {url}/v1/embeddings {model, input}."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        dim: int,
        version: str = "remote",
        api_key: str | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 30.0,
        max_attempts: int = 4,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        batch_size: int = 128,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/embeddings") else base + "/v1/embeddings"
        self.name = model
        self.version = version
        self.dim = dim
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.batch_size = batch_size
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._client = client or httpx.AsyncClient(timeout=timeout, headers=headers)
        self._own_client = client is None

    async def aclose(self) -> None:
        """Close the HTTP client (if this embedder made it)."""
        if self._own_client:
            await self._client.aclose()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, `batch_size` texts per request."""
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(await self._embed_batch(texts[start : start + self.batch_size]))
        return out

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        wait = wait_exponential_jitter(
            multiplier=self.backoff_initial_s, max=self.backoff_max_s, jitter=self.backoff_initial_s
        )

        def wait_for(state) -> float:
            exc = state.outcome.exception()
            hinted = getattr(exc, "retry_after", None)
            return min(hinted, self.backoff_max_s) if hinted is not None else wait(state)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_attempts),
                wait=wait_for,
                retry=retry_if_exception_type(_Retryable),
                reraise=True,
            ):
                with attempt:
                    return await self._request(texts)
        except _Retryable as exc:
            message = f"embedding service {self.endpoint}: {exc} (after {self.max_attempts} attempts)"
            if exc.status == 429:
                raise RateLimited(message, retry_after=exc.retry_after) from exc
            raise TransientError(message, retry_after=exc.retry_after) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(self, texts: list[str]) -> list[list[float]]:
        try:
            response = await self._client.post(self.endpoint, json={"model": self.name, "input": texts})
        except httpx.TransportError as exc:  # connect/read timeouts, refused, reset
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {response.status_code}", response.status_code, _retry_after(response))
        if response.status_code >= 400:
            raise PermanentError(
                f"embedding service {self.endpoint} refused the request: HTTP {response.status_code} "
                f"{response.text[:300]!r} (check HOTPATH_EMBEDDER_URL / HOTPATH_EMBEDDER_MODEL)"
            )
        return self._parse(response, len(texts))

    def _parse(self, response: httpx.Response, n: int) -> list[list[float]]:
        try:
            data = sorted(response.json()["data"], key=lambda d: d["index"])
            vectors = [d["embedding"] for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Retryable(f"unreadable response body ({type(exc).__name__}: {exc})") from exc
        if len(vectors) != n:
            raise PermanentError(f"embedding service {self.endpoint} returned {len(vectors)} vectors for {n} texts")
        for vec in vectors:
            if not isinstance(vec, list) or len(vec) != self.dim:
                got = len(vec) if isinstance(vec, list) else type(vec).__name__
                raise PermanentError(
                    f"embedding service {self.endpoint} model {self.name!r} returns {got}-d vectors, the index "
                    f"expects {self.dim} (HOTPATH_EMBEDDER_DIM must match the model)"
                )
        return vectors
