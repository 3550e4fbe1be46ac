"""The decoder processes: the time limit really stops the work (the process and its CPU are gone, not an
abandoned thread still decoding), a crashing decoder costs one job, and the pool recovers from both."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time

import pytest

from taskkit.errors import TransientError
from thumb_worker.decoder import DecoderPool
from thumb_worker.guards import Rejected
from thumb_worker.spec import ThumbSpec

from . import images


@pytest.fixture(scope="module")
def slow_png(tmp_path_factory):
    """A 24 MP interlaced PNG: allowed, but libpng decodes all of it before libvips's first eval tick, which
    is where a kill flag would be looked at; about a second of CPU here."""
    path = tmp_path_factory.mktemp("slow") / "big.png"
    images.photo(6000, 4000).pngsave(str(path), compression=1, interlace=True)
    return str(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1].split()[0] != "Z"


async def test_time_limit_kills_the_decoder_and_frees_its_cpu(slow_png, tmp_path):
    pool = DecoderPool(ThumbSpec(), size=1, time_limit_s=10)
    try:
        full = time.monotonic()
        await pool.run(slow_png)
        full = time.monotonic() - full
        assert full > 0.4, f"the image must be slow enough to show the limit ({full:.2f}s)"
        pool.time_limit_s = 0.1
        [pid] = pool.pids
        cpu_before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        start = time.monotonic()
        with pytest.raises(Rejected) as err:
            await pool.run(slow_png)
        elapsed = time.monotonic() - start
        assert err.value.label == "time_limit"
        assert "longer than 0.1 s (HOTPATH_THUMB_TIME_LIMIT_S)" in str(err.value)
        assert elapsed < min(full, 1.0), (elapsed, full)  # stopped at the limit, not when decoding ended
        assert not alive(pid), "the decoder process must be gone, its CPU and memory freed"
        assert pool.pids == [] and pool.killed == 1
        # the worker process itself did none of the decoding
        assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_before < 0.2
        pool.time_limit_s = 10
        ok = tmp_path / "ok.jpg"
        ok.write_bytes(images.photo(320, 240).jpegsave_buffer())
        r = await pool.run(str(ok))
        assert r.thumbs[-1].width == 320 and len(pool.pids) == 1 and pool.pids != [pid]
    finally:
        await pool.close()


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGSEGV, Rejected), (signal.SIGTERM, TransientError)])
async def test_a_decoder_that_dies_mid_job(slow_png, sig, expected):
    """SIGSEGV (a decoder bug on a hostile file) is that source's fault: dead-letter; SIGTERM (stopped from
    outside) is not: retry. Either way the next job gets a fresh decoder."""
    pool = DecoderPool(ThumbSpec(), size=1, time_limit_s=20)
    try:
        await pool.start()
        [pid] = pool.pids
        job = asyncio.create_task(pool.run(slow_png))
        await asyncio.sleep(0.2)
        os.kill(pid, sig)
        with pytest.raises(expected) as err:
            await job
        if expected is Rejected:
            assert err.value.label == "decoder_crashed" and "SIGSEGV" in str(err.value)
        await pool.run(slow_png)
        assert pool.pids and pool.pids != [pid]
    finally:
        await pool.close()


async def test_concurrent_jobs_use_at_most_size_decoders(tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(images.photo(400 + i, 300).jpegsave_buffer())
        paths.append(str(p))
    pool = DecoderPool(ThumbSpec(sizes=(64,)), size=2, time_limit_s=20)
    try:
        results = await asyncio.gather(*(pool.run(p) for p in paths))
        assert [r.thumbs[0].width for r in results] == [64] * 6
        assert len(pool.pids) == 2
    finally:
        await pool.close()
    assert pool.pids == []
