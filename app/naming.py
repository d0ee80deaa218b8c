"""File names of saved images, from a user pattern such as "{date}-{counter}-{seed}"."""

from __future__ import annotations

import re
import string
from datetime import datetime
from pathlib import Path

from engine.request import GenerationRequest

TOKENS = ("date", "time", "seed", "counter", "prompt", "model", "width", "height", "steps")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def validate_pattern(pattern: str) -> None:
    """Raise ValueError naming the problem if `pattern` cannot name a file."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError("filename_pattern: must not be empty")
    if any(sep in pattern for sep in ("/", "\\")):
        raise ValueError("filename_pattern: must not contain / or \\ (it names a file, not a folder)")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(pattern)
                  if name is not None]
    except ValueError as error:
        raise ValueError(f"filename_pattern: {error}") from None
    if any(spec or conversion for _, spec, conversion in fields):
        raise ValueError("filename_pattern: write tokens plainly, e.g. {seed}, without a format spec")
    fields = [name for name, _, _ in fields]
    unknown = [name for name in fields if name not in TOKENS]
    if unknown:
        raise ValueError(f"filename_pattern: unknown {{{unknown[0]}}}; allowed: "
                         + " ".join(f"{{{t}}}" for t in TOKENS))


def image_paths(
    folder: Path,
    pattern: str,
    suffix: str,
    request: GenerationRequest,
    model_name: str,
    count: int,
    now: datetime | None = None,
) -> list[Path]:
    """`count` unused paths in `folder`, one per image of the request.

    {counter} continues from the images already in the folder; names that would collide (the
    pattern has no counter, or two images of a batch share a seed) get "-2", "-3", … appended.
    """
    validate_pattern(pattern)
    now = now or datetime.now()
    counter = 1 + sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else 1
    paths: list[Path] = []
    for _ in range(count):
        stem = _safe(pattern.format(
            date=now.strftime("%Y-%m-%d"),
            time=now.strftime("%H%M%S"),
            seed=request.seed if request.seed is not None else "random",
            counter=f"{counter:05d}",
            prompt=_slug(request.prompt),
            model=model_name,
            width=request.width,
            height=request.height,
            steps=request.steps,
        ))
        path, extra = folder / f"{stem}{suffix}", 1
        while path.exists() or path in paths:
            extra += 1
            path = folder / f"{stem}-{extra}{suffix}"
        paths.append(path)
        counter += 1
    return paths


def _slug(prompt: str, limit: int = 48) -> str:
    words = re.findall(r"\w+", prompt.lower())
    return "_".join(words)[:limit].rstrip("_") or "untitled"


def _safe(stem: str) -> str:
    # Characters Windows refuses in file names, and control characters anywhere.
    return re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", stem).strip(" .") or "image"
