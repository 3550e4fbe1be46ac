"""The image pipeline: libvips configured once per process, the header read, and every thumbnail of one
source file, encoded. Runs inside a decoder process (thumb_worker/decoder.py), never on the event loop.

Why decode once: the largest size is made with `thumbnail` (shrink-on-load, EXIF rotation) into memory and
every smaller size from that copy. Measured on this machine (2 cores, sizes 64/256/1024, WebP q80, best of 3):
24 MP JPEG 194 ms once vs 380 ms per size (shrink-on-load per size); 12 MP PNG 251 ms vs 603 ms (PNG has no
shrink-on-load, so per size decodes the whole file three times).
"""

from __future__ import annotations

import time

import pyvips

from thumb_worker.guards import (
    ALLOWED_LOADER_CLASSES,
    SNIFF_BYTES,
    Header,
    Rejected,
    check_header,
    corrupt,
    not_an_image,
    refuse_sniffed,
    sniff,
)
from thumb_worker.spec import Thumb, ThumbResult, ThumbSpec

_configured: dict[str, object] | None = None


def configure_vips(*, cache_max_mem: int = 0) -> dict[str, object]:
    """Configure libvips for this process, once: operation cache off (or bounded to `cache_max_mem` bytes),
    untrusted loaders blocked, every loader blocked but the allowed classes. Returns what was set up.

    Raises RuntimeError when an allowed loader class does not exist in this libvips build (unblocking a
    name that is not there would silently do nothing)."""
    global _configured
    if _configured is not None:
        return _configured
    missing = [c for c in ALLOWED_LOADER_CLASSES if not pyvips.type_from_name(c)]
    if missing:
        raise RuntimeError(f"this libvips {pyvips.version(0)}.{pyvips.version(1)} has no loader class {missing}")
    if cache_max_mem > 0:
        pyvips.cache_set_max_mem(cache_max_mem)
        pyvips.cache_set_max_files(10)
    else:
        pyvips.cache_set_max(0)
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for cls in ALLOWED_LOADER_CLASSES:
        pyvips.operation_block_set(cls, False)
    _configured = {"libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
                   "loaders": list(ALLOWED_LOADER_CLASSES), "cache_max_mem": cache_max_mem}
    return _configured


def _vips_detail(exc: pyvips.Error, path: str) -> str:
    text = str(exc).replace(f'"{path}"', "source").replace(path, "source")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("unable to")]
    return "; ".join(lines[:3])[:300] or text.strip()[:300]


def read_header(path: str) -> Header:
    """Sniff and read the header of the source at `path` without decoding its pixels; refuse a blocked
    format. Raises Rejected."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    kind = sniff(head)
    if kind is not None:
        raise refuse_sniffed(kind)
    try:
        img = pyvips.Image.new_from_file(path, access="sequential")
    except pyvips.Error as exc:
        detail = _vips_detail(exc, path)
        if "not a known file format" in str(exc) or "not in a known format" in str(exc):
            raise not_an_image(detail) from None
        raise corrupt(detail) from None
    fields = set(img.get_fields())
    return Header(
        width=img.width, height=img.height,
        pages=int(img.get("n-pages")) if "n-pages" in fields else 1,
        loader=str(img.get("vips-loader")) if "vips-loader" in fields else "?",
        heif_compression=str(img.get("heif-compression")) if "heif-compression" in fields else "",
    )


def _srgb(img: pyvips.Image) -> pyvips.Image:
    if img.interpretation != "srgb" or img.format != "uchar":
        img = img.colourspace("srgb")
        if img.format != "uchar":
            img = img.cast("uchar")
    return img


def _encode(img: pyvips.Image, spec: ThumbSpec) -> bytes:
    # keep="none": no EXIF, XMP, IPTC or ICC left (the pixels are sRGB, the format's default).
    if spec.format == "webp":
        return img.webpsave_buffer(Q=spec.quality, keep="none")
    if spec.format == "jpeg":
        if img.hasalpha():
            img = img.flatten(background=[255, 255, 255])
        return img.jpegsave_buffer(Q=spec.quality, keep="none", optimize_coding=True)
    return img.heifsave_buffer(compression="av1", Q=spec.quality, keep="none")


def make_thumbnails(path: str, spec: ThumbSpec) -> ThumbResult:
    """Every size of `spec` for the source file at `path`: guards first (format, header, pixel budget), then
    one shrink-on-load decode to the largest size, auto-rotated by EXIF, sRGB, first frame only; each smaller
    size from that decode. Raises Rejected for any source that will never make a thumbnail."""
    configure_vips()
    t0 = time.perf_counter()
    header = read_header(path)
    check_header(header, spec.max_pixels)
    t1 = time.perf_counter()
    sizes = sorted(spec.sizes, reverse=True)
    try:
        # Streamed from the file (never held whole). fail_on=error as option_string: thumbnail's own fail_on
        # argument is ignored (libvips #5195), and so is a `file.jpg[fail_on=error]` filename suffix.
        source = pyvips.Source.new_from_file(path)
        big = pyvips.Image.thumbnail_source(source, sizes[0], size="down", option_string="fail_on=error")
        big = _srgb(big).copy_memory()
    except pyvips.Error as exc:
        raise corrupt(_vips_detail(exc, path)) from None
    t2 = time.perf_counter()
    thumbs = []
    for s in sizes:
        img = big if s >= max(big.width, big.height) else big.thumbnail_image(s, size="down")
        try:
            data = _encode(img, spec)
        except pyvips.Error as exc:
            raise Rejected("encode_failed", f"cannot encode a {spec.format} thumbnail of {img.width}×{img.height}: "
                                            f"{_vips_detail(exc, path)}") from None
        thumbs.append(Thumb(size=s, width=img.width, height=img.height, data=data))
    t3 = time.perf_counter()
    return ThumbResult(header=header, thumbs=tuple(sorted(thumbs, key=lambda t: t.size)), seconds=t3 - t0,
                       timings={"header": t1 - t0, "decode": t2 - t1, "resize_encode": t3 - t2})
