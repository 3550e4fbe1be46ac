"""`hotpath dev` from a clean checkout: ready within 60 s, its printed curl commands work, SIGTERM
leaves no process of its group alive, a second instance fails with one line, data survives a restart;
a service named in `.env` or the environment is used instead of starting an embedded one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.services import free_port

HOTPATH = str(Path(sys.executable).parent / "hotpath")
pytestmark = pytest.mark.slow


def _session_members(sid: int) -> list[int]:
    """PIDs whose session id is `sid` (the dev supervisor is started as a session leader)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields: state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _start_dev(tmp_path: Path, port: int, log_name: str, **extra_env: str) -> tuple[subprocess.Popen, Path, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(HOTPATH_PORT=str(port), HOTPATH_DATA_DIR=str(tmp_path / ".hotpath"), **extra_env)
    out, err = tmp_path / f"{log_name}.out", tmp_path / f"{log_name}.err"
    proc = subprocess.Popen([HOTPATH, "dev"], cwd=tmp_path, env=env, stdout=open(out, "wb"), stderr=open(err, "wb"),
                            start_new_session=True)
    return proc, out, err


def _wait_banner(proc: subprocess.Popen, out: Path, err: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = out.read_text()
        if "Ctrl-C stops everything" in text:
            return text
        assert proc.poll() is None, f"hotpath dev exited early:\n{out.read_text()}\n{err.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"hotpath dev not ready within {timeout}s:\n{err.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> float:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    return time.monotonic() - start


def test_dev_stack_end_to_end(tmp_path):
    port = free_port()
    proc, out, err = _start_dev(tmp_path, port, "first")
    try:
        t0 = time.monotonic()
        banner = _wait_banner(proc, out, err, 60)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 60

        token_line = next(line for line in banner.splitlines() if "export TOKEN=" in line)
        curls = [line.strip() for line in banner.splitlines() if line.strip().startswith("curl ")]
        assert len(curls) == 5
        script = token_line.strip() + "\n"
        for i, c in enumerate(curls):
            script += f"{c} -o /dev/null -w '%{{http_code}}\\n' > {tmp_path}/curl{i}.code || echo fail > {tmp_path}/curl{i}.code\n"
        subprocess.run(["bash", "-c", script], check=True, timeout=60)
        codes = [(tmp_path / f"curl{i}.code").read_text().strip() for i in range(5)]
        assert codes == ["200", "200", "200", "202", "200"], (codes, curls)
        assert any("/members/" in c for c in curls), "one printed command must be a cache lookup"
        assert "/index" in curls[3] and "/search?" in curls[4], curls

        # the indexed message is found by the printed search (the worker embeds with MiniLM, loaded at its start)
        deadline = time.monotonic() + 90
        while True:
            found = subprocess.run(["bash", "-c", f"{token_line.strip()}\n{curls[4]}"], capture_output=True, text=True,
                                   timeout=60)
            if re.search(r'"message_id":\s*"dev-hello-1"', found.stdout):
                break
            assert time.monotonic() < deadline, (found.stdout, err.read_text()[-3000:])
            time.sleep(1)
        # the printed backfill enqueues the demo origin's history
        backfill = next(line.strip() for line in banner.splitlines() if " index backfill --tenant " in line)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
        env["PATH"] = f"{Path(HOTPATH).parent}:{env.get('PATH', '')}"
        ran = subprocess.run(["bash", "-c", backfill], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and re.match(r"(\d+) messages read, \1 enqueued", ran.stdout), (ran.stdout, ran.stderr)

        # an image uploaded to the dev stack's S3 gets its thumbnails with no extra step (dev's scan stands in for
        # the bucket notifications moto does not send)
        import io

        from tests.thumb_worker import images
        from thumb_worker.storage import make_minio

        s3 = make_minio(re.search(r"s3\s+(http://\S+)", banner).group(1), "minioadmin", "minioadmin")
        data = images.photo(640, 480).jpegsave_buffer()
        s3.put_object("uploads", "dev/photo one.jpg", io.BytesIO(data), len(data))
        want = ["dev/photo one.jpg/1024.webp", "dev/photo one.jpg/256.webp", "dev/photo one.jpg/64.webp"]
        deadline = time.monotonic() + 30
        while sorted(o.object_name for o in s3.list_objects("thumbnails", recursive=True)) != want:
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.3)

        # a second instance on the same port: one line about the port, not a traceback
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
        env.update(HOTPATH_PORT=str(port), HOTPATH_DATA_DIR=str(tmp_path / "other"))
        second = subprocess.run([HOTPATH, "dev"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "port" in lines[0] and "in use" in lines[0], second.stderr
        assert "Traceback" not in second.stderr

        # a key written to the embedded Valkey must survive the restart (AOF under .hotpath/valkey)
        redis_url = re.search(r"redis\s+(redis://\S+)", banner).group(1)
        import redis

        r = redis.Redis.from_url(redis_url)
        r.set("hptest:dev-persist", "kept")
        r.close()
        members = _session_members(proc.pid)
        assert len(members) >= 6, members  # supervisor, valkey, s3, milvus, api, 2 workers

        # a dead application child is reported and restarted with backoff
        api_pid = next(p for p in members if _cmdline(p)[-1:] == ["api"])
        os.kill(api_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "api exited with code -9; restarting" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()[-2000:]
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "api was not restarted"
            time.sleep(0.3)
        assert api_pid not in _session_members(proc.pid)
    finally:
        elapsed = _stop(proc)
    assert elapsed < 10, f"stop took {elapsed:.1f}s"
    time.sleep(0.5)
    assert _session_members(proc.pid) == [], "processes of hotpath dev outlived it"

    # Data under .hotpath/ survives a restart: the SQLite origin and Valkey's AOF are reused.
    data = tmp_path / ".hotpath"
    assert (data / "origin.db").exists() and (data / "valkey").is_dir() and (data / "milvus").exists()
    proc2, out2, err2 = _start_dev(tmp_path, port, "second")
    try:
        banner2 = _wait_banner(proc2, out2, err2, 60)
        assert "(0 rows new)" in banner2, "the demo origin should be reused, not refilled"
        redis_url2 = re.search(r"redis\s+(redis://\S+)", banner2).group(1)
        import redis

        r = redis.Redis.from_url(redis_url2)
        assert r.get("hptest:dev-persist") == b"kept"
        r.close()
    finally:
        _stop(proc2)
    assert _session_members(proc2.pid) == []


def test_dev_stops_on_sigint_too(tmp_path):
    port = free_port()
    proc, out, err = _start_dev(tmp_path, port, "int")
    try:
        _wait_banner(proc, out, err, 60)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    time.sleep(0.5)
    assert _session_members(proc.pid) == []
    assert re.search(r"got SIGINT; stopping", err.read_text())


# The machine's Redis on a database no other test uses, so every key dev's processes write there can be seen.
DOTENV_TEST_DB = 9


def test_dev_uses_the_services_named_in_dotenv_and_the_environment(tmp_path, redis_url, milvus_uri):
    """Redis named in `.env`, Milvus in the environment, S3 unset: dev starts only moto (no Valkey, no
    milvus-lite), says where each setting came from, and its processes write only under their prefixes."""
    import redis

    url = urlparse(redis_url)._replace(path=f"/{DOTENV_TEST_DB}").geturl()
    prefix = f"hptest:{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(url)
    before = set(client.scan_iter(count=1000))
    (tmp_path / ".env").write_text(
        f"HOTPATH_REDIS_URL={url}\nHOTPATH_REDIS_PREFIX={prefix}\nHOTPATH_TASKKIT_PREFIX={prefix}:tk:\n")
    try:
        proc, out, err = _start_dev(tmp_path, free_port(), "dotenv", HOTPATH_MILVUS_URI=milvus_uri)
        try:
            banner = _wait_banner(proc, out, err, 60)
            parts = {line.split()[0]: line.strip() for line in banner.splitlines() if line.startswith("  ") and line.split()}
            assert parts["redis"] == f"redis     {url} (HOTPATH_REDIS_URL)", banner
            assert parts["milvus"] == f"milvus    {milvus_uri} (HOTPATH_MILVUS_URI)", banner
            assert "(embedded moto S3 server; in memory)" in parts["s3"], banner
            # the program, or the script a Python interpreter runs (moto_server, milvus-lite, hotpath)
            programs = {Path(a).name for p in _session_members(proc.pid) for a in _cmdline(p)[:2]}
            args = {a for p in _session_members(proc.pid) for a in _cmdline(p)}
            assert "valkey-server" not in programs and "hotpath.milvus_server" not in args, (programs, args)
            assert "moto_server" in programs, programs
            assert not (tmp_path / ".hotpath" / "valkey").exists()

            # one cache lookup, so the api writes a cache entry to the configured Redis
            token = re.search(r"export TOKEN=(\S+)", banner).group(1)
            member_url = re.search(r"(http://\S+/v1/(\w+)/rooms/\S+/members/\S+)", banner)
            tenant = member_url.group(2)
            got = httpx.get(member_url.group(1), headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert got.status_code == 200, got.text
        finally:
            _stop(proc)
        assert _session_members(proc.pid) == []
        written = {k.decode() for k in set(client.scan_iter(count=1000)) - before}
        assert any(k.startswith(f"{prefix}:{tenant}:") and "ratelimit" not in k for k in written), written
        assert any(k.startswith(f"{prefix}:tk:") for k in written), written  # the workers' task-queue keys
        stray = [k for k in written if not (k.startswith(f"{prefix}:") or re.match(rf"arq:[^:]+:{re.escape(prefix)}:", k))]
        assert stray == [], f"hotpath dev wrote keys outside its prefixes: {stray}"
    finally:
        for pattern in (f"{prefix}:*", f"arq:*:{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.unlink(*keys)
        client.close()


def test_dev_refuses_a_short_key_from_dotenv_before_starting_anything(tmp_path):
    (tmp_path / ".env").write_text('HOTPATH_JWT_KEYS={"k1": "too-short"}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(HOTPATH_PORT=str(free_port()), HOTPATH_DATA_DIR=str(tmp_path / ".hotpath"))
    proc = subprocess.run([HOTPATH, "dev"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HOTPATH_JWT_KEYS" in lines[0] and "32 bytes" in lines[0], proc.stderr
    assert not (tmp_path / ".hotpath").exists(), "nothing is started (or created) before the keys are checked"
