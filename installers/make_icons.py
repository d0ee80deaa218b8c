"""Draw the app icon into resources/icons/: an SVG, and from the same shapes a PNG, .ico and .icns.

A dusk-coloured rounded square (the latent) with a four-pointed spark rising out of it (the image
forming). Run it again after changing a shape: `python installers/make_icons.py`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"
SIZE = 256  # the SVG's user units
TOP, BOTTOM = (30, 27, 75), (124, 58, 237)  # gradient of the tile, top to bottom
SPARK, GLOW = (255, 255, 255), (253, 224, 71)  # white spark, a warm horizon
CORNER = 56
# a four-pointed star: centre, long arm, short arm, waist
SPARKS = [((124, 112), 78, 58, 14), ((188, 164), 28, 22, 6)]
HORIZON = 196  # the band the spark rises from


def star(cx: float, cy: float, vertical: float, horizontal: float, waist: float) -> list[tuple[float, float]]:
    return [(cx, cy - vertical), (cx + waist, cy - waist), (cx + horizontal, cy), (cx + waist, cy + waist),
            (cx, cy + vertical), (cx - waist, cy + waist), (cx - horizontal, cy), (cx - waist, cy - waist)]


def svg() -> str:
    def points(poly):
        return " ".join(f"{x:g},{y:g}" for x, y in poly)

    hex_ = "#{:02x}{:02x}{:02x}".format
    stars = "\n".join(
        f'  <polygon points="{points(star(cx, cy, v, h, w))}" fill="{hex_(*SPARK)}"/>'
        for (cx, cy), v, h, w in SPARKS
    )
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}">
  <defs>
    <linearGradient id="tile" x1="0" y1="0" x2="0" y2="1">
      <stop offset="0" stop-color="{hex_(*TOP)}"/>
      <stop offset="1" stop-color="{hex_(*BOTTOM)}"/>
    </linearGradient>
  </defs>
  <rect x="8" y="8" width="{SIZE - 16}" height="{SIZE - 16}" rx="{CORNER}" fill="url(#tile)"/>
  <rect x="40" y="{HORIZON}" width="{SIZE - 80}" height="6" rx="3" fill="{hex_(*GLOW)}" opacity="0.55"/>
{stars}
</svg>
"""


def png(size: int) -> Image.Image:
    scale = 4 * size / SIZE  # drawn 4x larger, then reduced: Pillow draws without anti-aliasing

    def s(value):
        return value * scale

    big = 4 * size
    tile = Image.new("RGBA", (big, big))
    for y in range(big):
        t = y / (big - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(TOP, BOTTOM, strict=True))
        tile.paste(colour + (255,), (0, y, big, y + 1))
    mask = Image.new("L", (big, big))
    ImageDraw.Draw(mask).rounded_rectangle((s(8), s(8), s(SIZE - 8), s(SIZE - 8)), radius=s(CORNER), fill=255)
    image = Image.new("RGBA", (big, big))
    image.paste(tile, mask=mask)
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rounded_rectangle((s(40), s(HORIZON), s(SIZE - 40), s(HORIZON + 6)), radius=s(3), fill=GLOW + (140,))
    for (cx, cy), v, h, w in SPARKS:
        draw.polygon([(s(x), s(y)) for x, y in star(cx, cy, v, h, w)], fill=SPARK + (255,))
    return image.resize((size, size), Image.LANCZOS)


def main() -> None:
    ICONS.mkdir(parents=True, exist_ok=True)
    (ICONS / "sana-studio.svg").write_text(svg(), encoding="utf-8")
    large = png(512)
    large.resize((256, 256), Image.LANCZOS).save(ICONS / "sana-studio.png")
    large.save(ICONS / "sana-studio.ico", sizes=[(n, n) for n in (16, 24, 32, 48, 64, 128, 256)])
    large.save(ICONS / "sana-studio.icns")


if __name__ == "__main__":
    main()
