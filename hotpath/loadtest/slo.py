"""The load test's profiles and SLOs (hotpath/loadtest/slo.yaml), and their verdicts on one run's data.

Each SLO gives one entry per thing it measures (per operation, per fault): name, target, measured, passed,
and whether it fails the run (correctness always; latency only where the profile asserts it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hotpath.loadtest.faults import Fault, Sample, recovery_s

CONFIG = Path(__file__).with_name("slo.yaml")


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Req:
    t: float
    op: str
    ms: float
    ok: bool
    status: int


def read_requests(out: Path) -> list[Req]:
    reqs = []
    for p in sorted((out / "requests").glob("*.csv")):
        for line in p.read_text().splitlines():
            parts = line.split(",")
            if len(parts) != 5:
                continue  # a line cut by a killed process
            try:
                reqs.append(Req(float(parts[0]), parts[1], float(parts[2]), parts[3] == "1", int(parts[4])))
            except ValueError:
                continue
    reqs.sort(key=lambda r: r.t)
    return reqs


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(len(v) - 1, int(k) + 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def in_windows(t: float, faults: list[Fault], grace_s: float) -> bool:
    return any(f.start is not None and f.start <= t <= (f.end or f.start) + grace_s for f in faults)


def evaluate(cfg: dict[str, Any], profile: dict[str, Any], reqs: list[Req], faults: list[Fault],
             samples: list[Sample], lost: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    assert_latency = bool(profile.get("assert_latency"))

    def entry(name, asserted, target, measured, passed, **extra):
        fails_run = asserted == "correctness" or assert_latency
        results.append({"name": name, "kind": asserted, "target": target, "measured": measured,
                        "passed": bool(passed), "asserted": fails_run, **extra})

    for slo in cfg["slos"]:
        name, kind = slo["name"], slo["asserted"]
        if "p95_ms_max" in slo:
            grace = 2.0
            vals = [r.ms for r in reqs if r.op == slo["op"] and r.ok and not in_windows(r.t, faults, grace)]
            p95 = percentile(vals, 0.95)
            entry(name, kind, f"p95 ≤ {slo['p95_ms_max']} ms", None if p95 is None else round(p95, 2),
                  p95 is not None and p95 <= slo["p95_ms_max"], samples=len(vals))
        elif name.startswith("availability"):
            for f in faults:
                rule = slo.get("per_fault", {}).get(f.kind, slo["default"])
                if f.start is None:
                    entry(f"{name}[{f.kind}]", kind, f"≥ {rule['min']}", None, False, detail="fault never injected")
                    continue
                end = (f.end or f.start) + float(slo.get("grace_s", 0))
                win = [r for r in reqs if r.op in rule["ops"] and f.start <= r.t <= end]
                avail = sum(r.ok for r in win) / len(win) if win else None
                entry(f"{name}[{f.kind}]", kind, f"≥ {rule['min']} over {', '.join(rule['ops'])}",
                      None if avail is None else round(avail, 4), avail is not None and avail >= rule["min"],
                      requests=len(win), window=[round(f.start, 3), round(end, 3)])
        elif "check" in slo:
            got = lost.get(slo["check"], {})
            n = got.get("lost")
            entry(name, kind, "0 lost", n, n == 0, detail=got)
        elif "watermarks" in slo:
            for f in faults:
                rec = recovery_s(f, samples, slo["watermarks"])
                entry(f"{name}[{f.kind}]", kind, f"≤ {slo['max_s']} s to queues under {slo['watermarks']} and "
                      "/readyz 200", None if rec is None else round(rec, 2), rec is not None and rec <= slo["max_s"])
    return results


def summary(reqs: list[Req], duration_s: float) -> list[dict[str, Any]]:
    """Per operation: rate, p50/p95/p99 of the successful requests, errors."""
    ops: dict[str, list[Req]] = {}
    for r in reqs:
        ops.setdefault(r.op, []).append(r)
    rows = []
    for op, rs in sorted(ops.items()):
        ok_ms = [r.ms for r in rs if r.ok]
        rows.append({"op": op, "requests": len(rs), "rate_per_s": round(len(rs) / max(duration_s, 1e-9), 2),
                     "p50_ms": _r(percentile(ok_ms, 0.5)), "p95_ms": _r(percentile(ok_ms, 0.95)),
                     "p99_ms": _r(percentile(ok_ms, 0.99)), "errors": sum(not r.ok for r in rs)})
    return rows


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
