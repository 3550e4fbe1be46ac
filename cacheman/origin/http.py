"""The HTTP origin: dbman over the contract in docs/origin-contract.md, across one or more instances.

Every read is idempotent, so a failed attempt is retried (tenacity: exponential backoff with jitter) on
the next instance whose circuit breaker allows it: an instance that dies mid-load costs one retry per
in-flight call and then, with its breaker open, nothing at all. A semaphore bounds the calls in flight
so a slow origin sees a fixed load instead of a pile-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from cacheman.errors import OriginUnavailable
from cacheman.keys import MAX_BATCH
from cacheman.origin.base import Member, Members, ReadState, Room
from cacheman.origin.breaker import ORIGIN_SECONDS, CircuitBreaker

log = logging.getLogger("cacheman.origin.http")


class _Transient(Exception):
    """One attempt failed in a way another attempt (or instance) may not: retry it."""


@dataclass
class Instance:
    """One dbman base URL with its own breaker."""

    base_url: str
    breaker: CircuitBreaker


def _seg(s: str) -> str:
    return quote(s, safe="")


class HttpOrigin:
    """Origin over HTTP with per-instance breakers, retries with backoff, and a concurrency limit."""

    def __init__(
        self,
        urls: list[str] | str,
        *,
        timeout_s: float = 2.0,
        connect_timeout_s: float | None = None,
        retries: int = 2,
        backoff_s: float = 0.05,
        backoff_max_s: float = 1.0,
        max_concurrency: int = 64,
        breaker_failures: int = 5,
        breaker_window_s: float = 10.0,
        breaker_open_s: float = 5.0,
        headers: dict[str, str] | None = None,
        name: str = "http",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if isinstance(urls, str):
            urls = [u.strip() for u in urls.split(",") if u.strip()]
        if not urls:
            raise ValueError("HOTPATH_ORIGIN_URL lists no http(s) instance")
        self.name = name
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_concurrency = max_concurrency
        self.instances = [
            Instance(
                u.rstrip("/"),
                CircuitBreaker(
                    u.rstrip("/"), failure_threshold=breaker_failures, window_s=breaker_window_s, open_s=breaker_open_s
                ),
            )
            for u in urls
        ]
        self._rr = 0
        self._sem = asyncio.Semaphore(max_concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s or min(timeout_s, 1.0)),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            headers={"accept": "application/json", **(headers or {})},
            transport=transport,
        )

    # -- instance choice -------------------------------------------------------------------------

    def breaker_states(self) -> dict[str, str]:
        """Breaker state per instance base URL (also exported as hotpath_origin_breaker_state)."""
        return {i.base_url: i.breaker.state for i in self.instances}

    @property
    def retry_after_s(self) -> float | None:
        """Seconds until the first instance's breaker lets a probe through, when every instance's breaker is
        open; None when some instance would take a call now (or its probe is under way)."""
        waits = [i.breaker.retry_after_s for i in self.instances]
        return None if any(w is None for w in waits) else min(waits)

    def _pick(self, tried: set[int]) -> int:
        """Next instance, round-robin, whose breaker allows a call; untried ones first."""
        n = len(self.instances)
        start = self._rr
        self._rr = (self._rr + 1) % n
        for pass_tried in (False, True):
            for k in range(n):
                idx = (start + k) % n
                if (idx in tried) != pass_tried:
                    continue
                if self.instances[idx].breaker.allow():
                    return idx
        wait = self.retry_after_s
        when = "a probe is under way" if wait is None else f"next probe in {wait:.1f}s"
        raise OriginUnavailable(
            f"all {n} origin instance(s) have an open circuit breaker ({when}); check dbman at HOTPATH_ORIGIN_URL",
            retry_after_s=wait,
        )

    # -- one call --------------------------------------------------------------------------------

    async def _call(self, op: str, method: str, path: str, body: dict | None = None):
        """The decoded JSON of a 200, or None for the contract's 404 not_found; retries transient failures."""
        tried: set[int] = set()
        last: list[str] = []

        async def attempt():
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._sem.acquire()
            except TimeoutError:
                raise OriginUnavailable(
                    f"{op}: {self.max_concurrency} origin calls already in flight for {self.timeout_s}s "
                    "(HOTPATH_ORIGIN_MAX_CONCURRENCY)"
                ) from None
            try:
                idx = self._pick(tried)
                tried.add(idx)
                return await self._attempt(self.instances[idx], op, method, path, body, last)
            finally:
                self._sem.release()

        try:
            async for state in AsyncRetrying(
                stop=stop_after_attempt(self.retries + 1),
                wait=wait_exponential_jitter(multiplier=self.backoff_s, max=self.backoff_max_s, jitter=self.backoff_s),
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with state:
                    return await attempt()
        except _Transient:
            raise OriginUnavailable(
                f"{op} failed after {self.retries + 1} attempt(s): {'; '.join(last[-3:])} "
                "(dbman at HOTPATH_ORIGIN_URL; retries: HOTPATH_ORIGIN_RETRIES)",
                retry_after_s=self.retry_after_s,
            ) from None

    async def _attempt(self, inst: Instance, op: str, method: str, path: str, body, errors: list[str]):
        start = time.perf_counter()
        outcome = "error"
        try:
            try:
                if body is None:
                    resp = await self._client.request(method, inst.base_url + path)
                else:
                    resp = await self._client.request(
                        method, inst.base_url + path, content=orjson.dumps(body),
                        headers={"content-type": "application/json"},
                    )
            except httpx.TimeoutException as exc:
                outcome = "timeout"
                self._failed(inst, f"{inst.base_url}: {type(exc).__name__} after {self.timeout_s}s", errors)
                raise _Transient() from exc
            except httpx.TransportError as exc:
                self._failed(inst, f"{inst.base_url}: {type(exc).__name__}: {exc}"[:200], errors)
                raise _Transient() from exc
            status = resp.status_code
            if status == 200:
                inst.breaker.record_success()
                outcome = "ok"
                return orjson.loads(resp.content)
            if status == 404 and _error_code(resp) == "not_found":
                inst.breaker.record_success()
                outcome = "ok"
                return None
            if status == 429:
                # Alive but shedding load: retry elsewhere without holding it against the instance.
                errors.append(f"{inst.base_url} answered 429")
                raise _Transient()
            if status >= 500 or status == 404:
                # 5xx: the instance is failing. 404 without the contract's body: a wrong base URL or a proxy.
                self._failed(inst, f"{inst.base_url} answered {status}: {_message(resp)}", errors)
                raise _Transient()
            inst.breaker.record_success()
            raise OriginUnavailable(
                f"{op}: dbman at {inst.base_url} rejected the request with {status}: {_message(resp)}"
            )
        finally:
            ORIGIN_SECONDS.labels(inst.base_url, op, outcome).observe(time.perf_counter() - start)

    def _failed(self, inst: Instance, error: str, errors: list[str]) -> None:
        errors.append(error)
        before = inst.breaker.state
        inst.breaker.record_failure()
        if inst.breaker.state != before:
            log.warning("origin instance breaker %s", inst.breaker.state, extra={"instance": inst.base_url, "error": error})

    # -- the Origin protocol -----------------------------------------------------------------------

    async def get_room(self, tenant: str, room_id: str) -> Room | None:
        data = await self._call("get_room", "GET", f"/v1/{_seg(tenant)}/rooms/{_seg(room_id)}")
        return None if data is None else Room.model_validate(data)

    async def get_rooms(self, tenant: str, room_ids: list[str]) -> dict[str, Room]:
        ids = list(dict.fromkeys(room_ids))
        out: dict[str, Room] = {}
        for i in range(0, len(ids), MAX_BATCH):  # the contract's batch limit is the API's
            data = await self._call(
                "get_rooms", "POST", f"/v1/{_seg(tenant)}/rooms:batchGet", {"room_ids": ids[i : i + MAX_BATCH]}
            )
            for rid, room in (data or {}).get("rooms", {}).items():
                out[rid] = Room.model_validate(room)
        return out

    async def get_members(self, tenant: str, room_id: str) -> Members | None:
        data = await self._call("get_members", "GET", f"/v1/{_seg(tenant)}/rooms/{_seg(room_id)}/members")
        return None if data is None else Members.model_validate(data)

    async def get_member(self, tenant: str, room_id: str, user_id: str) -> Member | None:
        """dbman's own membership check: the member with its role, or None (not a member, or no such room).
        Not used by the cache (it reads whole member sets); the benchmark's pre-cache baseline calls it."""
        data = await self._call(
            "get_member", "GET", f"/v1/{_seg(tenant)}/rooms/{_seg(room_id)}/members/{_seg(user_id)}"
        )
        return None if data is None else Member.model_validate(data)

    async def get_user_rooms(self, tenant: str, user_id: str) -> list[str]:
        data = await self._call("get_user_rooms", "GET", f"/v1/{_seg(tenant)}/users/{_seg(user_id)}/rooms")
        return list((data or {}).get("room_ids", []))

    async def get_read_states(self, tenant: str, user_id: str) -> list[ReadState]:
        data = await self._call("get_read_states", "GET", f"/v1/{_seg(tenant)}/users/{_seg(user_id)}/read-states")
        return [ReadState.model_validate(r) for r in (data or {}).get("read_states", [])]

    async def ping(self) -> None:
        """OK when at least one instance answers /healthz; else OriginUnavailable naming each failure."""
        async def one(inst: Instance) -> str | None:
            try:
                resp = await self._client.get(inst.base_url + "/healthz")
            except httpx.HTTPError as exc:
                return f"{inst.base_url}: {type(exc).__name__}"
            return None if resp.status_code == 200 else f"{inst.base_url}: {resp.status_code}"

        errors = await asyncio.gather(*(one(i) for i in self.instances))
        if all(errors):
            raise OriginUnavailable("no dbman instance is healthy: " + "; ".join(e for e in errors if e))

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpOrigin({[i.base_url for i in self.instances]!r})"


def _error_code(resp: httpx.Response) -> str | None:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def _message(resp: httpx.Response) -> str:
    try:
        body = orjson.loads(resp.content)
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])[:200]
    except orjson.JSONDecodeError:
        pass
    return resp.text[:200]
