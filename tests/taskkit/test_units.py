"""Pure rules, no Redis: backoff arithmetic, classification, watermark hysteresis, bisection, key layout."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskkit.backpressure import Watermarks, admit, retry_after
from taskkit.batch import bisect_call
from taskkit.errors import PermanentError, RateLimited, TransientError
from taskkit.keys import Keys
from taskkit.retry import RetryPolicy, Verdict, classify, default_classify, retry_after_hint


# --- backoff --------------------------------------------------------------------------------------
def test_ceiling_doubles_until_cap():
    p = RetryPolicy(base_s=1, cap_s=30)
    assert [p.ceiling(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert p.ceiling(10_000) == 30  # no overflow


def test_full_jitter_spans_zero_to_ceiling():
    p = RetryPolicy(base_s=0.5, cap_s=100)
    assert p.delay(4, rng=lambda: 0.0) == 0.0
    assert p.delay(4, rng=lambda: 0.5) == pytest.approx(2.0)
    assert p.delay(4, rng=lambda: 0.999999) == pytest.approx(4.0, rel=1e-5)


@given(attempt=st.integers(1, 60), u=st.floats(0, 1, exclude_max=True))
def test_full_jitter_never_exceeds_cap(attempt, u):
    p = RetryPolicy(base_s=1, cap_s=300)
    d = p.delay(attempt, rng=lambda: u)
    assert 0 <= d <= min(300, 2 ** (attempt - 1))


def test_equal_and_no_jitter():
    p = RetryPolicy(base_s=1, cap_s=100, jitter="equal")
    assert p.delay(3, rng=lambda: 0.0) == 2.0 and p.delay(3, rng=lambda: 0.999) == pytest.approx(3.998)
    assert RetryPolicy(base_s=0.2, jitter="none").delay(3) == pytest.approx(0.8)


def test_retry_after_hint_is_a_lower_bound_and_capped():
    p = RetryPolicy(base_s=1, cap_s=10, max_hint_s=3600)
    assert p.delay(1, hint=30, rng=lambda: 0.5) == 30
    assert p.delay(5, hint=0.1, rng=lambda: 0.99) == pytest.approx(9.9)  # backoff larger than hint
    assert p.delay(1, hint=10 * 86400, rng=lambda: 0.0) == 3600


def test_exhausted_and_validation():
    p = RetryPolicy(max_attempts=3)
    assert [p.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert RetryPolicy(max_attempts=1).exhausted(1)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# --- classification -------------------------------------------------------------------------------
def test_default_classification():
    assert default_classify(TransientError("x", retry_after=5)) == Verdict("transient", 5)
    assert default_classify(RateLimited("slow")) == Verdict("transient", None)
    assert default_classify(PermanentError("bad")).kind == "permanent"
    for exc in (ValueError(), TypeError(), KeyError("k"), UnicodeDecodeError("utf-8", b"", 0, 1, "x")):
        assert default_classify(exc).kind == "permanent", exc
    for exc in (TimeoutError(), ConnectionError(), OSError(), RuntimeError("unknown")):
        assert default_classify(exc).kind == "transient", exc


def test_task_classifier_and_hints():
    class MilvusError(Exception):
        def __init__(self, code):
            self.code = code

    def milvus(exc):
        if isinstance(exc, MilvusError):
            return "transient" if exc.code in (8, 503) else "permanent"
        return None

    assert classify(MilvusError(503), milvus).kind == "transient"
    assert classify(MilvusError(1100), milvus).kind == "permanent"
    assert classify(ValueError(), milvus).kind == "permanent"  # None → default rules
    # the task's own typed errors win over its classifier
    assert classify(TransientError("t"), lambda e: "permanent").kind == "transient"
    assert classify(PermanentError("p"), lambda e: "transient").kind == "permanent"
    with pytest.raises(TypeError):
        classify(RuntimeError(), lambda e: "maybe")

    class HttpError(Exception):
        def __init__(self, headers):
            self.response = type("R", (), {"headers": headers})()

    assert retry_after_hint(HttpError({"Retry-After": "7"})) == 7.0
    assert retry_after_hint(HttpError({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert classify(HttpError({"Retry-After": "7"}), lambda e: "transient") == Verdict("transient", 7.0)


# --- watermarks ----------------------------------------------------------------------------------
def test_watermark_hysteresis():
    wm = Watermarks(high=10, low=5)
    closed = False
    seen = []
    for depth in [0, 5, 9, 10, 9, 6, 5, 6, 9, 10, 11]:
        accept, closed = admit(closed, depth, 0, wm)
        seen.append(accept)
    #            0     5     9     10     9      6      5     6     9     10     11
    assert seen == [True, True, True, False, False, False, True, True, True, False, False]


def test_watermark_age_limit():
    wm = Watermarks(high=100, low=10, max_age_s=30)
    assert admit(False, 1, 31, wm) == (False, True)
    assert admit(True, 1, 29, wm) == (True, False)
    assert admit(True, 50, 0, wm) == (False, True)  # age fine but depth above low: still closed


def test_retry_after_estimate():
    wm = Watermarks(high=100, low=50, min_retry_after_s=1, max_retry_after_s=60)
    assert retry_after(100, wm, drain_rate=10) == 5.0
    assert retry_after(100, wm, drain_rate=0) == 1.0  # no workers measured: the minimum
    assert retry_after(100_000, wm, drain_rate=1) == 60.0
    with pytest.raises(ValueError):
        Watermarks(high=5, low=5)


# --- bisection ------------------------------------------------------------------------------------
def _downstream(poison: set[int], calls: list[int]):
    async def call(items):
        calls.append(len(items))
        if poison & set(items):
            raise PermanentError("poison in batch")
        return [i * 10 for i in items]

    return call


def _is_permanent(exc):
    return not classify(exc).transient


def test_bisection_isolates_two_poison_in_64_within_25_calls():
    calls: list[int] = []
    out = asyncio.run(bisect_call(list(range(64)), _downstream({7, 40}, calls), _is_permanent))
    failed = [i for i, o in enumerate(out) if not o.ok]
    assert failed == [7, 40]
    assert [o.value for o in out if o.ok] == [i * 10 for i in range(64) if i not in (7, 40)]
    assert len(calls) <= 25


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 200), data=st.data())
def test_bisection_bound_holds(n, data):
    poison = data.draw(st.sets(st.integers(0, n - 1), max_size=min(n, 6)))
    calls: list[int] = []
    out = asyncio.run(bisect_call(list(range(n)), _downstream(poison, calls), _is_permanent))
    assert {i for i, o in enumerate(out) if not o.ok} == poison
    k = len(poison)
    assert len(calls) <= 1 + 2 * k * math.ceil(math.log2(n)) if n > 1 else len(calls) == 1


def test_transient_batch_error_is_not_bisected():
    calls: list[int] = []

    async def call(items):
        calls.append(len(items))
        raise TransientError("milvus busy")

    out = asyncio.run(bisect_call(list(range(16)), call, _is_permanent))
    assert calls == [16] and all(isinstance(o.error, TransientError) for o in out)


def test_per_item_errors_stay_per_item():
    async def call(items):
        return [ValueError("bad") if i == 3 else i for i in items]

    out = asyncio.run(bisect_call([1, 2, 3, 4], call, _is_permanent))
    assert [o.ok for o in out] == [True, True, False, True]


# --- keys ----------------------------------------------------------------------------------------
def test_key_layout_is_under_prefix():
    k = Keys("hp:tk:")
    assert k.arq_queue("index") == "hp:tk:q:index"
    jid = k.new_job_id("index")
    assert jid.startswith("hp:tk:index:") and k.job(jid) == "arq:job:" + jid
    assert k.idempotent_job_id("index", "m1:3") == "hp:tk:index:k:m1:3"
    long = k.idempotent_job_id("index", "x" * 500)
    assert len(long) < 80 and long.startswith("hp:tk:index:k:h:")
    for name in (k.queues, k.retry_index("i"), k.retry_record("i", jid), k.dlq_index("i"), k.dlq_record("i", jid),
                 k.idempotency("i", "a"), k.backpressure("i"), k.stats("i"), k.workers("i"), k.health("i", "w"),
                 k.aimd("milvus"), k.audit):
        assert name.startswith("hp:tk:")
    assert k.queue_of_arq(k.arq_queue("thumb")) == "thumb"
