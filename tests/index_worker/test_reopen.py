"""The reopen gate alone (no Milvus): one probe for many callers after a loss, queued callers fail like a failed
probe without probing again, and a silence longer than a restart opens the gate too."""

from __future__ import annotations

import asyncio

import pytest

from index_worker.milvus_errors import MilvusPermanent, MilvusTransient
from index_worker.reopen import ReopenGate


class Probe:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls = 0
        self.fail = fail

    async def __call__(self) -> None:
        self.calls += 1
        await asyncio.sleep(0.05)  # the others queue meanwhile
        if self.fail is not None:
            raise self.fail


async def test_after_a_loss_one_probe_runs_alone_for_every_caller():
    gate, probe = ReopenGate(), Probe()
    assert not gate.needed()
    gate.lost()
    assert gate.needed()
    await asyncio.gather(*(gate.wait("upsert", probe) for _ in range(5)))
    assert probe.calls == 1 and not gate.needed()


async def test_callers_queued_behind_a_failed_probe_fail_like_it_and_are_marked_not_sent():
    gate = ReopenGate()
    probe = Probe(MilvusTransient("Milvus describe_collection failed (code 2)", code=2))
    gate.lost()
    results = await asyncio.gather(*(gate.wait("upsert", probe) for _ in range(4)), return_exceptions=True)
    assert probe.calls == 1
    assert all(isinstance(r, MilvusTransient) and r.not_sent and "upsert not sent" in str(r) for r in results)
    assert gate.needed()  # still closed: the next caller probes again
    probe.fail = None
    await gate.wait("upsert", probe)
    assert probe.calls == 2 and not gate.needed()


async def test_a_loss_during_the_probe_keeps_the_gate_closed():
    gate = ReopenGate()

    async def probe() -> None:
        gate.lost()  # the server went away again while we probed

    gate.lost()
    await gate.wait("upsert", probe)
    assert gate.needed()


async def test_a_permanent_answer_opens_the_gate_and_a_silence_closes_it():
    gate = ReopenGate(restart_min_s=0.05)
    gate.lost()
    await gate.wait("upsert", Probe(MilvusPermanent("no such collection", code=100)))
    assert not gate.needed()  # Milvus answered: the call itself will say what is wrong
    await asyncio.sleep(0.08)
    assert gate.needed()  # silent for longer than a restart takes
    gate.answered()
    assert not gate.needed()


@pytest.mark.parametrize("code", [2, "DEADLINE_EXCEEDED"])
def test_not_sent_survives_as_an_attribute(code):
    exc = MilvusTransient("x", code=code, not_sent=True)
    assert exc.not_sent and exc.code == code
