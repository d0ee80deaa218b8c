"""Reading a demo image back against its caption, by pixel statistics alone.

Every pixel is named by its nearest palette colour (or none, when no colour is near). An object
is *placed* when a connected region of its colour, of an object's area, has its centroid in the
3×3 grid cell of its named position (anywhere, when its caption leaves the position unsaid). Its
*shape* is read from that region's bounding-box fill ratio (circle π/4, square 1, triangle 1/2,
star less), as the shape whose perfect ratio is nearest. The *background* is right when its
colour is the most common one and covers half the image. Ground-truth renders score 100%
(tests/test_demo_model.py checks that), so a model's score is the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .scenes import (
    CELLS,
    COLOURS,
    PALETTE,
    SHAPES,
    SIZE_JITTER,
    SIZES,
    SQUARE_HALF_SIDE,
    Scene,
    SceneObject,
    fill_ratio,
)

MAX_COLOUR_DISTANCE = 64.0  # RGB units; the closest two palette colours are 81 apart
BACKGROUND_SHARE = 0.5
EXPECTED_FILL = {shape: fill_ratio(shape) for shape in SHAPES}


@dataclass(frozen=True)
class ObjectVerdict:
    object: SceneObject
    placed: bool  # a region of its colour sits at its position
    fill: float | None  # that region's area / bounding-box area
    shape: str | None  # the shape that fill ratio reads as

    @property
    def shape_right(self) -> bool:
        return self.placed and self.shape == self.object.shape


@dataclass(frozen=True)
class ImageVerdict:
    scene: Scene
    background_right: bool
    objects: tuple[ObjectVerdict, ...]


def judge(image, scene: Scene) -> ImageVerdict:
    """`image`: a PIL image or an [H, W, 3] uint8 array, square."""
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    height, width, _ = pixels.shape
    labels = palette_labels(pixels)
    counts = np.bincount(labels.ravel() + 1, minlength=len(COLOURS) + 1)[1:]
    background = COLOURS.index(scene.background)
    background_right = int(counts.argmax()) == background and counts[background] >= BACKGROUND_SHARE * labels.size
    side = min(height, width)
    # Smaller than a third of the smallest object: a fringe of blended edge pixels, not an object;
    # larger than 2.5× the largest: a wash of colour, not an object.
    min_area = 0.35 * _smallest_area() * side * side
    max_area = 2.5 * _largest_area() * side * side
    verdicts = []
    for obj in scene.objects:
        regions = _regions(labels == COLOURS.index(obj.colour))
        found = [r for r in regions if min_area <= r.area <= max_area]
        if obj.position is not None:  # a caption that leaves the place unsaid: anywhere will do
            col, row = CELLS[obj.position]
            found = [r for r in found if int(3 * r.x / width) == col and int(3 * r.y / height) == row]
        if not found:
            verdicts.append(ObjectVerdict(obj, False, None, None))
            continue
        region = max(found, key=lambda r: r.area)
        fill = region.area / region.box_area
        shape = min(SHAPES, key=lambda s: abs(EXPECTED_FILL[s] - fill))
        verdicts.append(ObjectVerdict(obj, True, fill, shape))
    return ImageVerdict(scene, bool(background_right), tuple(verdicts))


def summarize(verdicts: list[ImageVerdict]) -> dict[str, float | int]:
    """Counts and fractions over many images: objects placed, shapes right, backgrounds right."""
    objects = [o for v in verdicts for o in v.objects]
    placed = sum(o.placed for o in objects)
    shapes = sum(o.shape_right for o in objects)
    backgrounds = sum(v.background_right for v in verdicts)
    return {
        "images": len(verdicts),
        "objects": len(objects),
        "placed": placed,
        "shapes_right": shapes,
        "backgrounds_right": backgrounds,
        "placed_fraction": placed / max(1, len(objects)),
        "shape_fraction": shapes / max(1, len(objects)),
        "background_fraction": backgrounds / max(1, len(verdicts)),
    }


def palette_labels(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 → [H, W] index of the nearest palette colour, −1 where none is near."""
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=np.int32)
    squared = np.square(pixels.astype(np.int32)[:, :, None, :] - palette).sum(-1)
    index = squared.argmin(-1)
    nearest = np.take_along_axis(squared, index[..., None], -1)[..., 0]
    return np.where(nearest <= MAX_COLOUR_DISTANCE**2, index, -1)


@dataclass(frozen=True)
class _Region:
    area: int
    x: float  # centroid, pixels
    y: float
    box_area: int


def _regions(mask: np.ndarray) -> list[_Region]:
    """8-connected regions of a boolean [H, W] mask, found by joining runs of pixels row by row."""
    rows = np.asarray(mask, dtype=np.int8)
    edges = np.diff(np.pad(rows, ((0, 0), (1, 1))), axis=1)
    run_rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]  # exclusive; runs come out in the same row-major order
    parent = list(range(len(starts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of_row = np.searchsorted(run_rows, np.arange(rows.shape[0] + 1))
    for y in range(1, rows.shape[0]):
        above = range(first_of_row[y - 1], first_of_row[y])
        for i in range(first_of_row[y], first_of_row[y + 1]):
            for j in above:  # 8-connected: runs touch when they overlap once widened by a pixel
                if starts[j] <= ends[i] and starts[i] <= ends[j]:
                    parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(starts)):
        groups.setdefault(root(i), []).append(i)
    regions = []
    for members in groups.values():
        s, e, y = starts[members], ends[members], run_rows[members]
        lengths = e - s
        area = int(lengths.sum())
        x_sum = float(((s + e) * lengths).sum()) / 2  # Σ pixel centres of each run, +0.5 each
        box = int(e.max() - s.min()) * int(y.max() - y.min() + 1)
        regions.append(_Region(area, x_sum / area, float((y * lengths).sum()) / area + 0.5, box))
    return regions


def _smallest_area() -> float:
    """Area (fraction of the image) of the smallest object the grammar can draw: a small star."""
    radius = SIZES["small"] * (1 - SIZE_JITTER)
    return fill_ratio("star") * _star_box() * radius * radius


def _largest_area() -> float:
    radius = SIZES["large"] * (1 + SIZE_JITTER)
    return (2 * SQUARE_HALF_SIDE * radius) ** 2


def _star_box() -> float:
    """The star's bounding-box area in units of its size squared: width 2·sin 72°, height 1 + cos 36°."""
    return 2 * math.sin(2 * math.pi / 5) * (1 + math.cos(math.pi / 5))
