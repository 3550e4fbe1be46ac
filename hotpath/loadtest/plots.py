"""The report's figures (matplotlib, Agg): latency percentiles and throughput per operation over time, and the
queue depths, each with the fault windows shaded. Per-second buckets from the runner's request logs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from hotpath.loadtest.faults import Fault, Sample
from hotpath.loadtest.slo import Req, percentile


def _shade(ax, faults: list[Fault], t0: float) -> None:
    for f in faults:
        if f.start is None:
            continue
        ax.axvspan(f.start - t0, (f.end or f.start) - t0, color="tab:red", alpha=0.15)
        ax.text(f.start - t0, 1.0, f.kind.replace("_", " "), transform=ax.get_xaxis_transform(), fontsize=7,
                rotation=90, va="top", ha="right", color="tab:red")


def plot_all(out: Path, reqs: list[Req], faults: list[Fault], samples: list[Sample], t0: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per: dict[str, dict[int, list[Req]]] = defaultdict(lambda: defaultdict(list))
    for r in reqs:
        per[r.op][int(r.t - t0)].append(r)
    ops = sorted(per)
    files = []

    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 2.2 * max(1, len(ops))), sharex=True, squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        secs = sorted(per[op])
        for q, style in ((0.5, "-"), (0.95, "--"), (0.99, ":")):
            ys = [percentile([r.ms for r in per[op][s] if r.ok], q) for s in secs]
            ax.plot(secs, [y if y is not None else float("nan") for y in ys], style, label=f"p{int(q * 100)}")
        ax.set_ylabel(f"{op}\nms")
        ax.set_yscale("log")
        _shade(ax, faults, t0)
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the load started")
    fig.suptitle("latency percentiles per second (successful requests)")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    files.append("latency.png")

    fig, ax = plt.subplots(figsize=(10, 3.5))
    for op in ops:
        secs = sorted(per[op])
        ax.plot(secs, [sum(r.ok for r in per[op][s]) for s in secs], label=f"{op} ok")
        errs = [sum(not r.ok for r in per[op][s]) for s in secs]
        if any(errs):
            ax.plot(secs, errs, "x", markersize=4, label=f"{op} errors")
    _shade(ax, faults, t0)
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("requests/s")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("throughput per operation")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    files.append("throughput.png")

    fig, ax = plt.subplots(figsize=(10, 3.5))
    queues = sorted({q for s in samples for q in s.depth})
    for q in queues:
        xs = [s.t - t0 for s in samples]
        ax.plot(xs, [s.depth.get(q) if s.depth.get(q) is not None else float("nan") for s in samples],
                label=f"{q} depth")
        ax.plot(xs, [s.dead.get(q) if s.dead.get(q) is not None else float("nan") for s in samples], ":",
                label=f"{q} dead letters")
    _shade(ax, faults, t0)
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("jobs")
    ax.legend(fontsize=7)
    ax.set_title("queue depths (gaps: Redis not answering)")
    fig.tight_layout()
    fig.savefig(out / "queues.png", dpi=110)
    plt.close(fig)
    files.append("queues.png")
    return files
