"""`hotpath loadtest`: start the stack, drive the mix, inject the faults, check the SLOs, write the report.

The load comes from other processes — Locust (reads, index requests, uploads) and the change-event writer — so
the runner's clock, fault injection and sampling never compete with the load's event loop, and a hung part
never stops the runner. Every phase is bounded in time; the exit code is 0 only when every asserted SLO holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hotpath.loadtest import report
from hotpath.loadtest.faults import FaultInjector, Sampler, parse_faults
from hotpath.loadtest.slo import evaluate, load_config, read_requests, summary
from hotpath.loadtest.stack import LoadStack, StackError
from hotpath.loadtest.universe import make_universe
from hotpath.loadtest.verify import drain, verify_all

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def resolve_pg(environ) -> str:
    """HOTPATH_TEST_PG_URL, else PostgreSQL at 127.0.0.1:5432 database `test` (the test suite's rule)."""
    import socket

    if environ.get("HOTPATH_TEST_PG_URL"):
        return environ["HOTPATH_TEST_PG_URL"]
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return DEFAULT_PG
    except OSError:
        raise StackError("PostgreSQL is not reachable at 127.0.0.1:5432 (database test) and HOTPATH_TEST_PG_URL "
                         "is unset; the two dbman doubles read one PostgreSQL") from None


def _images(d: Path) -> None:
    """Sources the uploads draw from: two real images and one that is not an image (dead-lettered with a reason)."""
    import pyvips

    d.mkdir(parents=True, exist_ok=True)
    base = pyvips.Image.gaussnoise(320, 240, mean=128, sigma=40).cast("uchar")
    (d / "photo.jpg").write_bytes(base.bandjoin([base, base]).jpegsave_buffer(Q=80))
    (d / "square.png").write_bytes(pyvips.Image.gaussnoise(200, 200).cast("uchar").pngsave_buffer())
    (d / "bad-not-an-image.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG " * 20)


def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def run(profile_name: str, out: Path, *, config_path: Path | None = None, quiet: bool = False) -> int:
    cfg = load_config(config_path) if config_path else load_config()
    if profile_name not in cfg["profiles"]:
        raise StackError(f"unknown profile {profile_name!r}; known: {', '.join(cfg['profiles'])}")
    prof = cfg["profiles"][profile_name]
    faults = parse_faults(prof.get("faults", []))
    out = out.resolve()
    if out.exists():
        for sub in ("requests", "journal", "data"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    pg_url = resolve_pg(os.environ)
    uni = make_universe(**prof["universe"])
    uni.save(out / "universe.json")
    _images(out / "images")
    say = (lambda _m: None) if quiet else (lambda m: print(f"loadtest: {m}", file=sys.stderr, flush=True))

    stack = LoadStack(out / "data", pg_url, uni, app_env={k: str(v) for k, v in prof.get("env", {}).items()})
    t_start = time.time()
    try:
        say(f"starting the stack (data and logs in {out / 'data'})")
        stack.start()
        say(f"stack up in {time.time() - t_start:.0f}s: {stack.describe()}")
        load = prof["load"]
        duration = float(prof["duration_s"])
        lcfg = {"out": str(out), "universe": str(out / "universe.json"), "token": stack.token(),
                "webhook_token": stack.webhook_token, "s3": stack.urls["s3"], "images": str(out / "images"),
                "bucket": stack.app_env.get("HOTPATH_UPLOADS_BUCKET", "uploads"), "duration_s": duration,
                **{k: v for k, v in load.items() if k != "changes_rps"}}
        wcfg = {"out": str(out), "universe": str(out / "universe.json"), "token": stack.token(),
                "api": stack.api_url, "pg_dsn": pg_url.replace("postgresql+asyncpg://", "postgresql://"),
                "schema": stack.schema, "rate": load["changes_rps"], "duration_s": duration, "relay_s": 60}
        (out / "writer.json").write_text(json.dumps(wcfg))
        sampler = Sampler(stack)
        sampler.start()
        logs = stack.logs
        locust_cmd = [_bin("locust"), "-f", str(Path(__file__).with_name("scenario.py")), "--headless",
                      "--host", stack.api_url, "--csv", str(out / "locust"), "--csv-full-history",
                      "--loglevel", "WARNING", "--stop-timeout", "5", "--exit-code-on-error", "0", "--only-summary"]
        t0 = time.time()
        with open(logs / "locust.log", "ab") as llog, open(logs / "writer.log", "ab") as wlog:
            loc = subprocess.Popen(locust_cmd, env=dict(os.environ, LT_CONFIG=json.dumps(lcfg)), stdout=llog,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            wri = subprocess.Popen([sys.executable, "-m", "hotpath.loadtest.writer", str(out / "writer.json")],
                                   stdout=wlog, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            injector = FaultInjector(stack, faults, t0)
            say(f"load for {duration:.0f}s with {len(faults)} faults: "
                + ", ".join(f"{f.kind}@{f.at_s:g}s" for f in faults))
            deadline = t0 + duration + 90  # the writer relays its last events for up to a minute
            while (loc.poll() is None or wri.poll() is None) and time.time() < deadline:
                injector.step()
                time.sleep(0.05)
            for p in (loc, wri):
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            injector.finish()
        t_load_end = min(time.time(), t0 + duration)
        say("load done; waiting for the queues to drain")
        drained = asyncio.run(drain(stack, float(prof.get("drain_s", 60))))
        sampler.halt.set()
        sampler.join(5)
        say(f"drain: {drained}; checking for lost work")
        lost = asyncio.run(verify_all(stack, out))
        reqs = [r for r in read_requests(out) if r.t >= t0]
        slos = evaluate(cfg, prof, reqs, faults, sampler.samples, lost)
        rows = summary(reqs, t_load_end - t0)  # rates over the stated load time (the writer's relay may go on)
        result: dict[str, Any] = {
            "profile": profile_name, "started": t0, "duration_s": round(t_load_end - t0, 1),
            "exit": {"locust": loc.returncode, "writer": wri.returncode}, "stack": stack.describe(),
            "load": load, "faults": [f.as_dict() for f in faults], "drain": drained, "ops": rows,
            "lost_work": lost, "slos": slos,
            "queue_samples": [{"t": round(s.t - t0, 2), "depth": s.depth, "retry": s.retry, "dead": s.dead,
                               "ready": s.ready} for s in sampler.samples],
        }
        try:
            from hotpath.loadtest.plots import plot_all

            result["plots"] = plot_all(out, reqs, faults, sampler.samples, t0)
        except Exception as exc:  # a plot is no verdict: say so in the report instead of failing the run
            result["plots_error"] = f"{type(exc).__name__}: {exc}"
        (out / "report.json").write_text(json.dumps(result, indent=1, default=str))
        print(report.render(result, out))
        failed = [s["name"] for s in slos if s["asserted"] and not s["passed"]]
        if loc.returncode not in (0, None) or wri.returncode not in (0, None):
            failed.append(f"load processes exited {loc.returncode}/{wri.returncode} (see {logs})")
        if failed:
            print(f"loadtest: FAILED: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    finally:
        stack.close()
