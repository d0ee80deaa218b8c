"""The sizes SANA was trained on: one aspect-ratio table, scaled to each native resolution.

SANA's multi-scale training buckets (the `ASPECT_RATIO_*_BIN` tables of the reference pipelines)
are the same grid at every resolution: each side is a whole number of sixteenths of the native
side (32 px at 512, 64 at 1024, 128 at 2K, 256 at 4K), so one table in those units serves all
four. The 512 and 1024 tables publish a subset of the 2K/4K ratios; the extra ones still land on
multiples of 32 and are kept so that every resolution offers the same shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .request import LATENT_STRIDE, MAX_SIDE, MIN_SIDE

NATIVE_SIZES = (512, 1024, 2048, 4096)
UNITS_PER_SIDE = 16

# (height, width) in sixteenths of the native side, ordered as the reference tables by
# height/width, so widest first. Not quite symmetric: there is a 0.52 (11, 21) bucket but no
# (21, 11) one.
UNIT_SHAPES = (
    (8, 32), (8, 31), (8, 30), (8, 29), (9, 28), (9, 27), (9, 26), (10, 25), (10, 24),
    (11, 23), (11, 22), (11, 21), (12, 21), (12, 20), (13, 19), (13, 18), (14, 18),
    (14, 17), (15, 17), (15, 16),
    (16, 16),
    (16, 15), (17, 15), (17, 14), (18, 14), (18, 13), (19, 13), (20, 12), (21, 12),
    (22, 11), (23, 11), (24, 10), (25, 10), (26, 9), (27, 9), (28, 9), (29, 8),
    (30, 8), (31, 8), (32, 8),
)


@dataclass(frozen=True)
class SizePreset:
    width: int
    height: int

    @property
    def ratio(self) -> float:
        return self.width / self.height

    @property
    def label(self) -> str:
        return f"{self.width} × {self.height}"


def presets(native_size: int) -> list[SizePreset]:
    """The trained sizes of a model with this native side, widest first.

    For the published native sides every size is already a multiple of 32; any other side (a
    tiny test model) gets the same shapes snapped to 32, without duplicates. Sizes beyond what a
    request allows (a 4K model's 8192-wide bucket) are left out.
    """
    if native_size < MIN_SIDE:
        raise ValueError(f"native size {native_size} is below {MIN_SIDE}")
    unit = native_size / UNITS_PER_SIDE
    sizes: list[SizePreset] = []
    for h, w in UNIT_SHAPES:
        if max(h, w) * unit > MAX_SIDE or min(h, w) * unit < MIN_SIDE:
            continue
        size = SizePreset(width=snap(w * unit), height=snap(h * unit))
        if size not in sizes:
            sizes.append(size)
    return sizes


def closest_preset(native_size: int, width: int, height: int) -> SizePreset:
    """The trained size whose aspect ratio is nearest to width:height (ties: the squarer one)."""
    target = width / height
    return min(presets(native_size), key=lambda s: (abs(s.ratio - target), abs(s.ratio - 1.0)))


def snap(side: int) -> int:
    """The nearest side a request accepts: a multiple of the latent stride (halves up), within limits."""
    return min(MAX_SIDE, max(MIN_SIDE, int(side / LATENT_STRIDE + 0.5) * LATENT_STRIDE))
