"""The demo model's world: flat shapes on a flat background, and the grammar that names them.

A scene is one to three objects (colour, shape, size, position) on a named background, e.g.
"a large red circle on the left and a small blue square on the right, on a yellow background".
Each position has its own anchor, spaced so that no two objects can touch; an object's colour is
never the background's. Scenes are drawn from a seeded `random.Random`, then rendered on any
torch device from signed distances (anti-aliased edges), so a GPU makes its own training batches.

Held-out rule: a scene is held out when the hash of its canonical form (background plus the
objects ordered by position, so every phrasing of it counts) falls in one residue class.
`sample_scene(split="train")` never returns one; `held_out_scenes` lists only those.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, replace

import torch
from torch import Tensor

# sRGB 0..255, far enough apart that every pixel can be named by its nearest palette colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star")
# Half the extent of an object's box, as a fraction of the image side. A small object spans about
# 1.4 latent pixels at 32× compression: any smaller and the autoencoder blurs a star's points away.
SIZES = {"small": 0.085, "large": 0.115}
SIZE_JITTER = 0.05  # relative
# Anchors (x, y) with y down. Any two differ by 0.3 along some axis, and two large objects (each
# ≤ 0.121 from its centre) jittered by ≤ 0.02 keep a gap of ≥ 4 pixels at 256², so objects never
# overlap. Each anchor lies in its own cell of a 3×3 grid and an object's centre never leaves it:
# the checker reads positions that way.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "center": (0.5, 0.5),
}
POSITION_JITTER = 0.02
CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}  # (col, row)
PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
SQUARE_HALF_SIDE = 0.9  # × the size, so a square looks as big as a circle of that size
STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
HELD_OUT_MODULUS = 64  # one scene in 64 is held out


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str | None  # None: left unsaid, as in "a red circle on a blue background"
    position: str | None

    def phrase(self) -> str:
        size = f"{self.size} " if self.size else ""
        position = f" {PHRASES[self.position]}" if self.position else ""
        return f"a {size}{self.colour} {self.shape}{position}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]  # in the caption's order

    def caption(self) -> str:
        phrases = [o.phrase() for o in self.objects]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        article = "an" if self.background[0] in "aeiou" else "a"
        return f"{listed}, on {article} {self.background} background"

    def key(self) -> str:
        """The scene whatever the phrasing: objects in position order."""
        ordered = sorted(self.objects, key=lambda o: tuple(POSITIONS).index(o.position))
        parts = [f"{o.position}:{o.size}:{o.colour}:{o.shape}" for o in ordered]
        return f"{self.background}|" + ";".join(parts)

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(self.key().encode()).digest()
        return int.from_bytes(digest[:8], "little") % HELD_OUT_MODULUS == 0


def sample_scene(rng: random.Random, split: str = "train", objects: int | None = None) -> Scene:
    """A random scene from `split` ("train" or "held_out"); `objects` fixes the object count."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split {split!r} is not 'train' or 'held_out'")
    while True:
        background = rng.choice(COLOURS)
        count = objects if objects is not None else rng.randint(1, 3)
        positions = rng.sample(tuple(POSITIONS), count)
        scene = Scene(background, tuple(
            SceneObject(
                rng.choice([c for c in COLOURS if c != background]),
                rng.choice(SHAPES), rng.choice(tuple(SIZES)), position,
            )
            for position in positions
        ))
        if scene.held_out == (split == "held_out"):
            return scene


def loose_caption(scene: Scene, rng: random.Random, unsaid: float) -> str:
    """The scene's caption with, now and then, an object's size or position left unsaid, as people
    type ("a red circle on a blue background"): the model learns to draw the object anyway, at the
    size and place the scene gave it. `unsaid`: the chance of leaving out each size, and apart each
    position. Trained on full captions only, the demo drew a plain blue background for that prompt
    at any guidance."""
    said = tuple(
        replace(o, size=o.size if rng.random() >= unsaid else None,
                position=o.position if rng.random() >= unsaid else None)
        for o in scene.objects
    )
    return Scene(scene.background, said).caption()


def held_out_scenes(count: int, seed: int = 0) -> list[Scene]:
    """`count` distinct held-out scenes, a third each with one, two and three objects."""
    rng = random.Random(f"held-out-{seed}")
    scenes: list[Scene] = []
    while len(scenes) < count:
        scene = sample_scene(rng, "held_out", objects=1 + len(scenes) % 3)
        if scene.key() not in {s.key() for s in scenes}:
            scenes.append(scene)
    return scenes


_OBJECT = re.compile(
    rf"a (?P<size>{'|'.join(SIZES)}) (?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) "
    rf"(?P<phrase>{'|'.join(PHRASES.values())})"
)


def parse_caption(caption: str) -> Scene:
    """The scene a grammar caption names; ValueError for anything the grammar cannot say."""
    match = re.fullmatch(r"(?P<head>.+), on an? (?P<background>\w+) background", caption.strip())
    head, background = (match["head"], match["background"]) if match else ("", "")
    parts = re.split(r", | and ", head)
    matches = [_OBJECT.fullmatch(p) for p in parts]
    if not match or background not in PALETTE or not parts or not all(matches):
        raise ValueError(f"not a caption of the demo grammar: {caption!r}")
    position_of = {phrase: name for name, phrase in PHRASES.items()}
    return Scene(background, tuple(
        SceneObject(m["colour"], m["shape"], m["size"], position_of[m["phrase"]]) for m in matches
    ))


@dataclass(frozen=True)
class Placement:
    """Where one object lands: its centre and half-extent, as fractions of the image side."""

    x: float
    y: float
    radius: float


def place(scene: Scene, rng: random.Random) -> list[Placement]:
    """A jittered centre and size per object, in the scene's object order."""
    placements = []
    for obj in scene.objects:
        x, y = POSITIONS[obj.position]
        placements.append(Placement(
            x + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
            y + rng.uniform(-POSITION_JITTER, POSITION_JITTER),
            SIZES[obj.size] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)),
        ))
    return placements


def render(
    scenes: list[Scene], placements: list[list[Placement]], size: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Images [B, 3, size, size] in [-1, 1], float32, on `device`."""
    device = torch.device(device)
    palette = torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float32) / 127.5 - 1
    image = palette[[COLOURS.index(s.background) for s in scenes]][:, :, None, None]
    image = image.to(device).expand(len(scenes), 3, size, size)
    # One entry per object: which image, which slot, its colour, shape and placement.
    entries = [(b, k, obj, p) for b, (scene, where) in enumerate(zip(scenes, placements))
               for k, (obj, p) in enumerate(zip(scene.objects, where))]
    if not entries:
        return image.contiguous()
    geometry = torch.tensor([[p.x, p.y, p.radius] for *_, p in entries], device=device)
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    radius = geometry[:, 2, None, None]
    # Coordinates relative to each object's centre, in units of its size: [N, H, W].
    u = (axis.view(1, 1, size) - geometry[:, 0, None, None]) / radius
    v = (axis.view(1, size, 1) - geometry[:, 1, None, None]) / radius
    distance = torch.empty(len(entries), size, size, device=device)
    for index, signed_distance in enumerate((_circle, _square, _triangle, _star)):
        chosen = [i for i, (_, _, obj, _) in enumerate(entries) if SHAPES.index(obj.shape) == index]
        if chosen:
            rows = torch.tensor(chosen, device=device)
            distance[rows] = signed_distance(u[rows], v[rows])
    # Signed distance in pixels → coverage with a one-pixel ramp: anti-aliased edges.
    coverage = (0.5 - distance * radius * size).clamp(0, 1)
    colour = palette[[COLOURS.index(obj.colour) for _, _, obj, _ in entries]].to(device)
    for k in range(max(k for _, k, _, _ in entries) + 1):
        rows = [i for i, entry in enumerate(entries) if entry[1] == k]
        images = torch.tensor([entries[i][0] for i in rows], device=device)
        alpha = coverage[rows][:, None]
        image = image.index_put((images,), image[images] * (1 - alpha) + colour[rows][:, :, None, None] * alpha)
    return image.contiguous()


def render_scenes(scenes: list[Scene], size: int, rng: random.Random, device: torch.device | str = "cpu") -> Tensor:
    return render(scenes, [place(s, rng) for s in scenes], size, device)


# Signed distances in units of the object's size (negative inside); exact inside, and near enough
# outside for a one-pixel anti-aliasing ramp.
def _circle(u: Tensor, v: Tensor) -> Tensor:
    return torch.sqrt(u * u + v * v) - 1


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) - SQUARE_HALF_SIDE


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # Apex at the top (0, −1), base along v = 1 from u = −1 to 1: fills half of its box.
    slant = (2 * u.abs() - v - 1) / math.sqrt(5)
    return torch.maximum(slant, v - 1)


def _star(u: Tensor, v: Tensor) -> Tensor:
    # Fold the plane into the half-sector between a tip (angle 0, straight up) and the next inner
    # corner (36°); there the star is the origin's side of the line through those two corners.
    sector = 2 * math.pi / 5
    angle = torch.remainder(torch.atan2(u, -v), sector)
    angle = torch.minimum(angle, sector - angle)
    r = torch.sqrt(u * u + v * v)
    qx, qy = r * torch.cos(angle), r * torch.sin(angle)
    tip = (1.0, 0.0)
    inner = (STAR_INNER * math.cos(sector / 2), STAR_INNER * math.sin(sector / 2))
    nx, ny = inner[1] - tip[1], tip[0] - inner[0]  # outward normal of the tip→inner edge
    norm = math.hypot(nx, ny)
    return ((qx - tip[0]) * nx + (qy - tip[1]) * ny) / norm


def star_outline() -> list[tuple[float, float]]:
    """The star's ten corners (u, v), tip up, in units of its size."""
    corners = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else STAR_INNER
        angle = i * math.pi / 5
        corners.append((r * math.sin(angle), -r * math.cos(angle)))
    return corners


def fill_ratio(shape: str) -> float:
    """Area over bounding-box area of a perfect `shape`: what the checker expects to measure."""
    if shape == "circle":
        return math.pi / 4
    if shape == "square":
        return 1.0
    if shape == "triangle":
        return 0.5
    corners = star_outline()
    area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1])))
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return area / ((max(xs) - min(xs)) * (max(ys) - min(ys)))
