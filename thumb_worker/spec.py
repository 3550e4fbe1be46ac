"""What the pipeline is asked for and what it returns: ThumbSpec, Thumb, ThumbResult (plain data, no libvips).

Why apart from thumbs.py: the worker process and the API only handle these values; libvips itself is
loaded only in the decoder processes, so neither of them pays its memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from thumb_worker.guards import Header

Format = Literal["webp", "jpeg", "avif"]
EXTENSIONS: dict[str, str] = {"webp": "webp", "jpeg": "jpg", "avif": "avif"}
CONTENT_TYPES: dict[str, str] = {"webp": "image/webp", "jpeg": "image/jpeg", "avif": "image/avif"}


@dataclass(frozen=True, slots=True)
class ThumbSpec:
    """What to make of a source: sizes on the long edge, output format and quality, and the pixel budget."""

    sizes: tuple[int, ...] = (64, 256, 1024)
    format: Format = "webp"
    quality: int = 80
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 1 for s in self.sizes):
            raise ValueError(f"sizes must be one or more positive pixel counts, got {self.sizes!r}")
        if self.format not in EXTENSIONS:
            raise ValueError(f"format must be one of {', '.join(EXTENSIONS)}, got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1-100, got {self.quality}")

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.format]


@dataclass(frozen=True, slots=True)
class Thumb:
    """One encoded thumbnail."""

    size: int
    width: int
    height: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ThumbResult:
    """Every thumbnail of one source, its header and how long the libvips work took."""

    header: Header
    thumbs: tuple[Thumb, ...]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
