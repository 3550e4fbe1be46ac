"""The printed end of `hotpath loadtest`: the per-operation table, the faults and the SLO verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(v: Any) -> str:
    if isinstance(v, float) and abs(v) <= 1.0:
        return f"{v:.4f}"  # availabilities: 0.9539 must not print as 1.0
    return "-" if v is None else (f"{v:,.1f}" if isinstance(v, float) else str(v))


def render(result: dict[str, Any], out: Path) -> str:
    lines = ["", f"hotpath loadtest — profile {result['profile']}, {result['duration_s']:.0f}s of load", ""]
    lines.append(f"{'operation':<15} {'rate/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'requests':>9}")
    for r in result["ops"]:
        lines.append(f"{r['op']:<15} {_f(r['rate_per_s']):>8} {_f(r['p50_ms']):>8} {_f(r['p95_ms']):>8} "
                     f"{_f(r['p99_ms']):>8} {r['errors']:>7} {r['requests']:>9}")
    lines += ["", "faults:"]
    t0 = result["started"]
    for f in result["faults"]:
        win = (f"{f['start'] - t0:6.1f}s … {f['end'] - t0:6.1f}s" if f["start"] and f["end"] else "not injected")
        lines.append(f"  {f['kind']:<18} {f['part']:<13} {f['how']:<8} {win} {f['error']}")
    lines += ["", "SLOs:"]
    for s in result["slos"]:
        verdict = "pass" if s["passed"] else ("FAIL" if s["asserted"] else "miss (reported, not asserted)")
        lines.append(f"  {verdict:<4} {s['name']:<48} measured {_f(s['measured']):>8}  target {s['target']}")
    lines += ["", f"report: {out / 'report.json'}" + (f"; plots: {', '.join(result.get('plots', []))}"
                                                     if result.get("plots") else ""), ""]
    return "\n".join(lines)
