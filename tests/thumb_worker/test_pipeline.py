"""The image pipeline in real decoder processes, on images generated here: sizes, EXIF rotation, stripped
metadata, alpha, first frame of an animation, each allowed input and output format, and each hostile input
refused with its reason before any decoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pyvips

from thumb_worker.decoder import DecoderPool
from thumb_worker.guards import Rejected
from thumb_worker.spec import ThumbSpec

from . import images

METADATA = ("exif-data", "orientation", "icc-profile-data", "xmp-data", "iptc-data")


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def load(data: bytes) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(data, "")


def is_red(img: pyvips.Image, x: int, y: int) -> bool:
    r, g, b = img(x, y)[:3]
    return r > 200 and g < 60 and b < 60


async def test_12mp_jpeg_with_orientation_6_is_rotated_sized_and_stripped(pool, tmp_path):
    src = images.marked(4000, 3000)  # red top-left quarter
    path = write(tmp_path, "o6.jpg", images.jpeg_with_orientation(src, 6))
    assert pyvips.Image.new_from_file(path).get("orientation") == 6
    r = await pool.run(path)
    assert (r.header.width, r.header.height, r.header.pages, r.header.loader) == (4000, 3000, 1, "jpegload")
    assert [(t.size, t.width, t.height) for t in r.thumbs] == [(64, 48, 64), (256, 192, 256), (1024, 768, 1024)]
    for t in r.thumbs:
        img = load(t.data)
        assert img.get("vips-loader") == "webpload_buffer"
        assert (img.width, img.height) == (t.width, t.height)
        left = [f for f in img.get_fields() if f in METADATA or f.startswith("exif-")]
        assert left == [], f"{t.size}: metadata left: {left}"
        # orientation 6 = rotate 90° clockwise to display: the red top-left corner lands top-right
        assert is_red(img, img.width - 1 - img.width // 16, img.height // 16), t.size
        assert not is_red(img, img.width // 16, img.height // 16), t.size
        assert img.interpretation == "srgb" and img.format == "uchar"


async def test_png_with_alpha_keeps_its_alpha(pool, tmp_path):
    path = write(tmp_path, "a.png", images.photo(1200, 800, alpha=True).pngsave_buffer())
    r = await pool.run(path)
    img = load(r.thumbs[-1].data)
    assert (img.width, img.height, img.bands) == (1024, 683, 4)
    alpha = img[3]
    assert alpha.min() < 30 and alpha.max() > 220  # the gradient alpha survived, not flattened


async def test_animated_gif_gives_its_first_frame(pool, tmp_path):
    path = write(tmp_path, "anim.gif", images.animated_gif(300, 200, 5))
    r = await pool.run(path)
    assert r.header.pages == 5
    assert [(t.width, t.height) for t in r.thumbs] == [(64, 43), (256, 171), (300, 200)]  # 1024: not upscaled
    for t in r.thumbs:
        img = load(t.data)
        assert (img.width, img.height) == (t.width, t.height)  # one frame, not a strip of five
        assert "n-pages" not in img.get_fields() or img.get("n-pages") == 1
        assert abs(img.avg() - 40) < 3, img.avg()  # frame 0 is grey 40, frame 1 grey 90


@pytest.mark.parametrize("fmt", ["webp", "avif"])
async def test_webp_and_avif_inputs(pool, tmp_path, fmt):
    src = images.photo(1600, 1200)
    data = src.webpsave_buffer(Q=80) if fmt == "webp" else src.heifsave_buffer(compression="av1", Q=50, effort=0)
    r = await pool.run(write(tmp_path, f"in.{fmt}", data))
    assert r.header.loader == ("webpload" if fmt == "webp" else "heifload")
    assert [(t.width, t.height) for t in r.thumbs] == [(64, 48), (256, 192), (1024, 768)]
    assert all(load(t.data).get("vips-loader") == "webpload_buffer" for t in r.thumbs)


@pytest.mark.parametrize(("fmt", "loader"), [("jpeg", "jpegload_buffer"), ("avif", "heifload_buffer")])
async def test_jpeg_and_avif_outputs(tmp_path, fmt, loader):
    pool = DecoderPool(ThumbSpec(sizes=(32, 200), format=fmt, quality=60), size=1, time_limit_s=30)
    try:
        r = await pool.run(write(tmp_path, "a.png", images.photo(400, 300, alpha=True).pngsave_buffer()))
    finally:
        await pool.close()
    for t, (w, h) in zip(r.thumbs, [(32, 24), (200, 150)], strict=True):
        img = load(t.data)
        assert img.get("vips-loader") == loader and (img.width, img.height) == (w, h)
        assert not any(f in METADATA for f in img.get_fields())
    if fmt == "jpeg":
        assert load(r.thumbs[-1].data).bands == 3  # alpha flattened for JPEG


HOSTILE = [
    ("bomb.png", lambda: images.png_declaring(30000, 30000), "too_many_pixels",
     "source is 30000×30000 = 900 MP, limit 50 MP (HOTPATH_THUMB_MAX_PIXELS)"),
    ("truncated.jpg", lambda: images.photo(800, 600).jpegsave_buffer()[:4000], "corrupt", "corrupt or truncated"),
    ("text.jpg", lambda: b"this is not an image at all\n" * 20, "not_an_image", "not an image"),
    ("drawing.svg", lambda: images.SVG, "blocked_format", "SVG is not an allowed format"),
    ("scan.tif", lambda: images.photo(64, 64).tiffsave_buffer(), "blocked_format", "TIFF is not an allowed format"),
    ("iphone.heic", images.heic_like, "heic", "no HEVC codec"),
    ("many.gif", lambda: images.animated_gif(800, 700, 100), "too_many_pixels",
     "source is 800×700 × 100 frames = 56 MP, limit 50 MP"),
]


@pytest.mark.parametrize(("name", "make", "label", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_input_is_refused_with_its_reason(pool, tmp_path, name, make, label, words):
    with pytest.raises(Rejected) as err:
        await pool.run(write(tmp_path, name, make()))
    assert err.value.label == label
    assert words in str(err.value), str(err.value)
    assert str(tmp_path) not in str(err.value)  # the reason names the source, not a temp path


async def test_decoder_survives_a_refusal_and_serves_the_next_source(pool, tmp_path):
    with pytest.raises(Rejected):
        await pool.run(write(tmp_path, "bomb.png", images.png_declaring(30000, 30000)))
    pids = pool.pids
    r = await pool.run(write(tmp_path, "ok.jpg", images.photo(640, 480).jpegsave_buffer()))
    assert r.thumbs[-1].width == 640 and pool.pids == pids  # same decoder process, reused


def test_libvips_itself_blocks_other_loaders():
    """Besides the byte sniffing: after configure_vips, libvips refuses TIFF, SVG and CSV and still reads JPEG
    (in a fresh interpreter: the configuration is process-wide)."""
    code = """
import json, pyvips
from thumb_worker.thumbs import configure_vips
from tests.thumb_worker import images
img = images.photo(32, 32)
samples = {"tiff": img.tiffsave_buffer(), "svg": images.SVG, "csv": b"1,2,3\\n4,5,6\\n", "jpeg": img.jpegsave_buffer()}
def widths():
    out = {}
    for k, v in samples.items():
        try:
            out[k] = pyvips.Image.new_from_buffer(v, "").width if k != "csv" else pyvips.Image.csvload_source(
                pyvips.Source.new_from_memory(v)).width
        except pyvips.Error:
            out[k] = "blocked"
    return out
before = widths()
configure_vips()
print(json.dumps({"before": before, "after": widths()}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["before"] == {"tiff": 32, "svg": 400, "csv": 3, "jpeg": 32}
    assert got["after"] == {"tiff": "blocked", "svg": "blocked", "csv": "blocked", "jpeg": 32}
