"""What a source must pass before it is decoded: its format (sniffed from the first bytes), its header
(loader, width × height × frames, HEIF codec), and the reasons given when it does not.

Why sniff the bytes ourselves as well as blocking libvips's loaders: a blocked loader makes libvips say only
"not in a known format", and the dead-letter reason should say "SVG is not an allowed format" instead.
Every refusal is a `Rejected` (a taskkit PermanentError: dead-lettered at once) with a metrics label.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskkit.errors import PermanentError

# libvips loader classes allowed to run (nicknames are silently ignored by operation_block_set).
ALLOWED_LOADER_CLASSES = ("VipsForeignLoadJpeg", "VipsForeignLoadPng", "VipsForeignLoadWebp",
                          "VipsForeignLoadNsgif", "VipsForeignLoadHeif")
# The `vips-loader` header field of an allowed source: the nickname prefix of those classes.
ALLOWED_LOADERS = {"jpegload": "JPEG", "pngload": "PNG", "webpload": "WebP", "gifload": "GIF", "heifload": "HEIF/AVIF"}
ALLOWED_NAMES = "JPEG, PNG, WebP, GIF, AVIF"
HEVC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")
SNIFF_BYTES = 64


class Rejected(PermanentError):
    """A source that will never make a thumbnail; `label` is the metrics reason, the message a person's."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__(message)
        self.label = label

    def __reduce__(self):  # ARQ pickles the failure: keep the label
        return (Rejected, (self.label, str(self)))


@dataclass(frozen=True, slots=True)
class Header:
    """What the header of a source says, read without decoding its pixels."""

    width: int
    height: int
    pages: int  # frames of an animation / images of a HEIF; 1 when the header has no n-pages
    loader: str  # libvips's `vips-loader`, e.g. "jpegload"
    heif_compression: str = ""  # "av1" or "hevc" for HEIF sources

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.pages


def sniff(head: bytes) -> str | None:
    """The format the first bytes of a source announce when it is one we refuse, else None.

    Returns a Rejected label's detail: "SVG", "TIFF", "PDF", "HEIC", ... None means "let libvips look"
    (allowed formats, and data that is no image at all, which libvips then fails to recognise)."""
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith((b"\x08\xf2\xa6\xb6", b"\xb6\xa6\xf2\x08")):
        return "vips"
    if head[4:8] == b"ftyp" and head[8:12] in HEVC_BRANDS:
        return "HEIC"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml", b"<!doctype svg")):
        return "SVG"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith((b"\x00\x00\x00\x0cjxl ", b"\xff\x0a")):
        return "JPEG XL"
    return None


def heic_reason() -> str:
    return ("HEIC (HEVC-coded HEIF, e.g. an iPhone photo) cannot be decoded: this libvips build has no HEVC codec; "
            "upload JPEG or AVIF instead")


def refuse_sniffed(kind: str) -> Rejected:
    """The Rejected for a format `sniff` recognised."""
    if kind == "HEIC":
        return Rejected("heic", heic_reason())
    return Rejected("blocked_format", f"{kind} is not an allowed format (allowed: {ALLOWED_NAMES})")


def check_size(size: int, max_bytes: int) -> None:
    """Refuse an empty source or one over the byte limit (from `stat`, and again while reading)."""
    if size == 0:
        raise Rejected("empty", "source is an empty (zero-byte) object: nothing to make a thumbnail of")
    if size > max_bytes:
        raise Rejected("too_large", f"source is {_mb(size)}, limit {_mb(max_bytes)} (HOTPATH_THUMB_MAX_BYTES)")


def check_header(h: Header, max_pixels: int) -> None:
    """Refuse a header whose loader is not allowed, whose codec is HEVC, or whose pixels × frames are over the limit."""
    family = next((name for prefix, name in ALLOWED_LOADERS.items() if h.loader.startswith(prefix)), None)
    if family is None:
        raise Rejected("blocked_format", f"format read by libvips's {h.loader!r} is not allowed (allowed: {ALLOWED_NAMES})")
    if h.loader.startswith("heifload") and h.heif_compression not in ("av1", ""):
        if h.heif_compression == "hevc":
            raise Rejected("heic", heic_reason())
        raise Rejected("blocked_format", f"HEIF coded with {h.heif_compression!r} is not allowed (allowed: AVIF)")
    if h.width <= 0 or h.height <= 0:
        raise Rejected("corrupt", f"source header declares {h.width}×{h.height} pixels: not a usable image")
    if h.pixels > max_pixels:
        frames = f" × {h.pages} frames" if h.pages > 1 else ""
        raise Rejected("too_many_pixels", f"source is {h.width}×{h.height}{frames} = {_mp(h.pixels)}, "
                                          f"limit {_mp(max_pixels)} (HOTPATH_THUMB_MAX_PIXELS)")


def not_an_image(detail: str) -> Rejected:
    return Rejected("not_an_image", f"source is not an image libvips can read ({detail}); allowed: {ALLOWED_NAMES}")


def corrupt(detail: str) -> Rejected:
    return Rejected("corrupt", f"source image is corrupt or truncated: {detail}")


def _mp(pixels: int) -> str:
    mp = pixels / 1e6
    return f"{mp:.0f} MP" if mp >= 10 else f"{mp:.1f} MP"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n} bytes)" if n >= 100_000 else f"{n} bytes"
