"""Thumbnail benchmarks: (a) the libvips pipeline vs a Pillow pipeline doing the same work, thumbnails/s and peak
resident memory of the process that decodes, on generated photo-like 24 MP JPEGs, 12 MP PNGs and 48 MP PNGs;
(b) end to end, upload → thumbnails present, p50/p99 at a steady upload rate the worker sustains.

(a) Each pipeline runs in a fresh process per image kind, one source at a time, every configured size (64, 256,
1024, WebP q80) per source: `vips` is the worker's own path (a DecoderPool decoder process: decode once with
shrink-on-load to the largest size, the smaller ones from that decode); `vips-per-size` is shrink-on-load per size
(the alternative the issue asks to measure); `pillow` is `Image.open` + `draft` + EXIF transpose + `thumbnail` per
size from the one decode + WebP save. Peak memory is the decoding process's VmHWM.
(b) moto's S3 server, real Redis, a real `hotpath worker thumb` (concurrency 2, MALLOC_ARENA_MAX=2); each upload is
followed by the storage-event producer function with MinIO's body (what POST /v1/storage-events does); latency is
from the upload's completion (when MinIO would send its event) to the largest thumbnail being readable.

Noise PNGs barely compress (a 48 MP one is ~100 MB), so the bench raises the byte limit (HOTPATH_THUMB_MAX_BYTES)
and the pixel budget to fit, and says so. Sources are cached under /tmp/hotpath-thumb-bench.

Usage: python bench/thumb_bench.py [--part a|b|all] [--sources 6] [--repeats 1] [--scale 1.0] [--uploads 100]
       [--rate R] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
CACHE = Path("/tmp/hotpath-thumb-bench")
SIZES = (64, 256, 1024)
QUALITY = 80
KINDS = {"jpeg24": (6000, 4000, "jpg"), "png12": (4000, 3000, "png"), "png48": (8000, 6000, "png")}
MAX_PIXELS = 60_000_000  # the 48 MP source fits the default 50 MP budget; 60 leaves room for --scale > 1
MAX_BYTES = 400_000_000  # raised from the default 25 MB: noise PNGs do not compress


def hwm_kb(pid: int | str = "self", field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# --- sources ---------------------------------------------------------------------------------------
def photo(width: int, height: int, seed: int):
    """Photo-like: a gradient per channel, soft blobs and gaussian noise (not flat colour, not pure noise)."""
    import pyvips

    xy = pyvips.Image.xyz(width, height)
    gx, gy = xy[0] * (255.0 / width), xy[1] * (255.0 / height)
    blobs = pyvips.Image.gaussnoise(max(2, width // 64), max(2, height // 64), sigma=60, mean=128, seed=seed)
    blobs = blobs.resize(width / blobs.width, vscale=height / blobs.height, kernel="linear")
    noise = pyvips.Image.gaussnoise(width, height, sigma=10, mean=0, seed=seed + 1)
    img = (gx * 0.5 + blobs * 0.5 + noise).bandjoin([gy * 0.5 + blobs * 0.5 + noise, (gx + gy) / 4 + blobs * 0.5 + noise])
    return img.cast("uchar").copy(interpretation="srgb")


def sources(kind: str, n: int, scale: float) -> list[Path]:
    """`n` distinct files of `kind` (made once, then cached); JPEGs carry EXIF orientation 6 (rotate on read)."""
    w, h, ext = KINDS[kind]
    w, h = int(w * scale ** 0.5), int(h * scale ** 0.5)
    CACHE.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        path = CACHE / f"{kind}-{w}x{h}-{i}.{ext}"
        if not path.exists():
            img = photo(w, h, seed=17 * i + 3)
            tmp = path.with_suffix(".tmp." + ext)
            if ext == "jpg":
                img = img.copy()
                img.set_type(__import__("pyvips").GValue.gint_type, "orientation", 6)
                img.jpegsave(str(tmp), Q=90)
            else:
                img.pngsave(str(tmp), compression=6)
            tmp.rename(path)
        out.append(path)
    return out


# --- (a) pipelines, each in its own process --------------------------------------------------------
def child_main(pipeline: str, files: list[str], n: int) -> None:
    """Run `pipeline` on `n` sources (cycling through `files`) after one warm-up; print JSON figures."""
    if pipeline == "pillow":
        from PIL import Image, ImageOps

        def make(path: str) -> int:
            with Image.open(path) as im:
                im.draft("RGB", (max(SIZES), max(SIZES)))  # JPEG: DCT-domain downscale to >= the largest size
                img = ImageOps.exif_transpose(im)
                if img.mode not in ("RGB", "RGBA"):
                    img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            made = 0
            for s in sorted(SIZES, reverse=True):  # each size from the previous (one decode), like the worker
                img = img.copy()
                img.thumbnail((s, s), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                img.save(buf, "WEBP", quality=QUALITY)
                made += 1
            return made
    else:
        import pyvips

        from thumb_worker.spec import ThumbSpec
        from thumb_worker.thumbs import _encode, _srgb, configure_vips

        configure_vips()
        spec = ThumbSpec(sizes=SIZES, quality=QUALITY, max_pixels=MAX_PIXELS)

        def make(path: str) -> int:
            for s in SIZES:
                img = pyvips.Image.thumbnail_source(pyvips.Source.new_from_file(path), s, size="down",
                                                    option_string="fail_on=error")
                _encode(_srgb(img), spec)
            return len(SIZES)

    make(files[0])
    t0 = time.perf_counter()
    thumbs = sum(make(files[i % len(files)]) for i in range(n))
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "sources": n, "thumbs": thumbs, "hwm_kb": hwm_kb()}))


def run_child(pipeline: str, files: list[Path], n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", pipeline, "--files", ",".join(map(str, files)),
                          "--n", str(n)], capture_output=True, text=True, env=dict(os.environ, MALLOC_ARENA_MAX="2"))
    if out.returncode != 0:
        raise RuntimeError(f"{pipeline} child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def run_worker_path(files: list[Path], n: int) -> dict:
    """The worker's own decoder process (DecoderPool, one decoder): decode once, every size from it."""
    from thumb_worker.decoder import DecoderPool
    from thumb_worker.spec import ThumbSpec

    pool = DecoderPool(ThumbSpec(sizes=SIZES, quality=QUALITY, max_pixels=MAX_PIXELS), size=1, time_limit_s=240,
                       env=dict(os.environ, MALLOC_ARENA_MAX="2"))
    await pool.start()
    try:
        await pool.run(str(files[0]))
        t0 = time.perf_counter()
        thumbs = 0
        for i in range(n):
            thumbs += len((await pool.run(str(files[i % len(files)]))).thumbs)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "sources": n, "thumbs": thumbs, "hwm_kb": hwm_kb(pool.pids[0])}
    finally:
        await pool.close()


def part_a(args) -> None:
    print(f"(a) pipelines, sizes {'/'.join(map(str, SIZES))} WebP q{QUALITY}, one source at a time, "
          f"{args.sources} sources per kind after a warm-up, median of {args.repeats}; byte limit raised to "
          f"{MAX_BYTES / 1e6:.0f} MB and pixel budget to {MAX_PIXELS / 1e6:.0f} MP for the noise PNGs")
    for kind in KINDS:
        files = sources(kind, 2, args.scale)
        size_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        runs: dict[str, list[dict]] = {"vips": [], "vips-per-size": [], "pillow": []}
        for _ in range(args.repeats):  # the pipelines alternate, so drift hits all
            runs["vips"].append(asyncio.run(run_worker_path(files, args.sources)))
            runs["vips-per-size"].append(run_child("vips-per-size", files, args.sources))
            runs["pillow"].append(run_child("pillow", files, args.sources))
        med = {p: {"tps": statistics.median(r["thumbs"] / r["seconds"] for r in rs),
                   "ms": statistics.median(1000 * r["seconds"] / r["sources"] for r in rs),
                   "mb": statistics.median(r["hwm_kb"] / 1024 for r in rs)} for p, rs in runs.items()}
        base = med["pillow"]
        print(f"  {kind} ({size_mb:.1f} MB each)")
        for p, m in med.items():
            print(f"    {p:<14} {m['tps']:7.2f} thumbnails/s  {m['ms']:7.0f} ms/source  peak RSS {m['mb']:6.0f} MB"
                  f"   × Pillow: throughput {m['tps'] / base['tps']:.2f}, memory {m['mb'] / base['mb']:.2f}")


# --- (b) end to end --------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


async def part_b(args) -> None:
    from redis.asyncio import Redis

    from taskkit import Producer
    from thumb_worker.intake import EXAMPLE, enqueue_storage_events
    from thumb_worker.storage import make_minio

    port = _free_port()
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, AWS_ACCESS_KEY_ID="minioadmin", AWS_SECRET_ACCESS_KEY="minioadmin"))
    prefix = f"bench:thumb:{uuid.uuid4().hex[:8]}:"
    redis = Redis.from_url(args.redis_url)
    worker = None
    try:
        _wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        s3 = make_minio(endpoint, "minioadmin", "minioadmin")
        up, th = "bench-uploads", "bench-thumbnails"
        for b in (up, th):
            s3.make_bucket(b)
        src = sources("jpeg24", 1, args.scale)[0]
        data = src.read_bytes()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
        env.update(HOTPATH_REDIS_URL=args.redis_url, HOTPATH_TASKKIT_PREFIX=prefix, HOTPATH_S3_ENDPOINT=endpoint,
                   HOTPATH_UPLOADS_BUCKET=up, HOTPATH_THUMBNAILS_BUCKET=th, HOTPATH_THUMB_CONCURRENCY="2",
                   HOTPATH_THUMB_MAX_BYTES=str(MAX_BYTES), HOTPATH_THUMB_METRICS_PORT="0", MALLOC_ARENA_MAX="2",
                   HOTPATH_LOG_LEVEL="WARNING")
        worker = subprocess.Popen([str(BIN / "hotpath"), "worker", "thumb"], env=env, stderr=subprocess.DEVNULL)
        producer = Producer(redis, prefix=prefix)
        last = f"{max(SIZES)}.webp"
        done: dict[str, float] = {}
        pending: dict[str, float] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def poll() -> None:  # one thread stats the largest thumbnail of every pending upload
            while not stop.is_set():
                with lock:
                    keys = list(pending)
                for key in keys:
                    try:
                        s3.stat_object(th, f"{key}/{last}")
                    except Exception:
                        continue
                    with lock:
                        done[key] = time.perf_counter() - pending.pop(key)
                time.sleep(0.01)

        async def upload(key: str) -> None:
            etag = (await asyncio.to_thread(s3.put_object, up, key, io.BytesIO(data), len(data))).etag
            with lock:
                pending[key] = time.perf_counter()
            body = json.loads(json.dumps(EXAMPLE))
            rec = body["Records"][0]
            rec["s3"]["bucket"]["name"] = up
            rec["s3"]["object"].update(key=key, eTag=etag, size=len(data))
            await enqueue_storage_events(producer, body, up)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        # capacity: a burst of 8 once the worker is up (its first job waits for the decoders to start)
        await upload("warm.jpg")
        while "warm.jpg" not in done:
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        for i in range(8):
            await upload(f"burst-{i}.jpg")
        while len(done) < 9:
            await asyncio.sleep(0.02)
        capacity = 8 / (time.perf_counter() - t0)
        rate = args.rate or round(0.6 * capacity, 2)
        print(f"(b) end to end: {len(data) / 1e6:.1f} MB JPEG uploads ({src.stem}) to moto, worker concurrency 2; burst "
              f"capacity {capacity:.2f} sources/s; steady rate {rate} uploads/s × {args.uploads}")
        done.clear()
        start = time.perf_counter()
        for i in range(args.uploads):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            await upload(f"steady-{i:04d}.jpg")
        deadline = time.perf_counter() + 120
        while len(done) < args.uploads and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        lat = sorted(1000 * v for v in done.values())
        q = statistics.quantiles(lat, n=100, method="inclusive")
        pids = [worker.pid] + [int(c) for t in Path(f"/proc/{worker.pid}/task").iterdir()
                               for c in (t / "children").read_text().split()]
        peak = sum(hwm_kb(p) for p in pids) / 1024
        print(f"    upload → thumbnails present: p50 {q[49]:.0f} ms  p99 {q[98]:.0f} ms  max {lat[-1]:.0f} ms  "
              f"({len(lat)}/{args.uploads} done); worker + decoders peak RSS {peak:.0f} MB")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        moto.terminate()
        moto.wait(10)
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")] + [k async for k in redis.scan_iter(match=f"*{prefix}*")]
        if keys:
            await redis.delete(*set(keys))
        await redis.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("a", "b", "all"), default="all")
    ap.add_argument("--sources", type=int, default=6, help="sources per pipeline and kind in (a)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="pixel count factor of the sources (a quick run: 0.05)")
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.0, help="uploads/s in (b); default 0.6 × the measured burst capacity")
    ap.add_argument("--redis-url", default=os.environ.get("HOTPATH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args.files.split(","), args.n)
        return
    if args.part in ("a", "all"):
        part_a(args)
    if args.part in ("b", "all"):
        asyncio.run(part_b(args))


if __name__ == "__main__":
    main()
