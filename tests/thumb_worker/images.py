"""Photo-like test images made with pyvips itself (gradients plus noise, not flat colour), and hostile files."""

from __future__ import annotations

import struct
import zlib

import pyvips


def photo(width: int, height: int, *, alpha: bool = False, sigma: float = 20.0) -> pyvips.Image:
    """An sRGB image with a gradient per channel and gaussian noise; a gradient alpha channel if asked."""
    xy = pyvips.Image.xyz(width, height)
    gx = xy[0] * (255.0 / width)
    gy = xy[1] * (255.0 / height)
    noise = pyvips.Image.gaussnoise(width, height, sigma=sigma, mean=0)
    img = (gx + noise).bandjoin([gy + noise, (gx + gy) / 2 + noise])
    if alpha:
        img = img.bandjoin(gx)
    return img.cast("uchar").copy(interpretation="srgb")


def marked(width: int, height: int) -> pyvips.Image:
    """A photo whose top-left quarter is pure red: after a rotation the red corner says where 'up' went."""
    img = photo(width, height, sigma=4)
    red = pyvips.Image.black(width // 4, height // 4).new_from_image([255, 0, 0]).cast("uchar")
    return img.insert(red.copy(interpretation="srgb"), 0, 0)


def jpeg_with_orientation(img: pyvips.Image, orientation: int, q: int = 85) -> bytes:
    out = img.copy()
    out.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return out.jpegsave_buffer(Q=q)  # keeps EXIF (orientation) by default


def animated_gif(width: int, height: int, frames: int) -> bytes:
    """An animated GIF of distinct frames (the encoder merges equal ones): frame 0 is grey 40, frame i has a
    white bar i pixels wide on grey 90."""
    pages = []
    for i in range(frames):
        page = pyvips.Image.black(width, height).new_from_image([40 if i == 0 else 90] * 3).cast("uchar")
        if i:
            page = page.draw_rect([255, 255, 255], 0, 0, min(i, width), height, fill=True)
        pages.append(page)
    strip = pyvips.Image.arrayjoin(pages, across=1).copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [100] * frames)
    return strip.gifsave_buffer(effort=1, bitdepth=2, dither=0)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width×height (a decompression bomb's header) with one short IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


SVG = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300">'
       b'<rect width="400" height="300" fill="red"/></svg>')


def heic_like() -> bytes:
    """The first box of an HEIC (iPhone) file: `ftyp` with brand `heic` (this build cannot decode HEVC anyway)."""
    ftyp = b"ftyp" + b"heic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", len(ftyp) + 4) + ftyp + b"\x00" * 200
