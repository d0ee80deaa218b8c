"""Writing finished images so that nothing is lost and every file can restore its settings.

Images are written atomically (a temporary file beside the target, then a rename) so a crash or a
full disk never leaves a half-written picture under the final name. PNGs carry two text chunks:
`parameters` in the A1111 style that other tools read, and `sana_studio` with the exact request.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

from .errors import OutputError
from .request import GenerationRequest

SOLVER_NAMES = {"dpm": "Flow-DPM-Solver", "euler": "Flow-Euler"}
REQUEST_CHUNK = "sana_studio"
PARAMETERS_CHUNK = "parameters"


def format_parameters(request: GenerationRequest, model_name: str, precision: str) -> str:
    """The A1111 `parameters` text: prompt, negative prompt, then one line of key: value pairs."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields = [
        ("Steps", request.steps),
        ("Sampler", SOLVER_NAMES[request.solver]),
        ("CFG scale", f"{request.guidance_scale:g}"),
        ("Seed", request.seed),
        ("Size", f"{request.width}x{request.height}"),
        ("Model", model_name),
        ("Precision", precision),
    ]
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Request fields from an A1111 `parameters` text (ours or another tool's); unknown keys ignored."""
    lines = text.strip().split("\n")
    settings_line = lines[-1] if len(lines) > 1 and "Steps:" in lines[-1] else ""
    body = lines[:-1] if settings_line else lines
    prompt_lines, negative_lines, target = [], [], None
    for line in body:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if target is negative_lines else prompt_lines).append(line)
    fields: dict = {"prompt": "\n".join(prompt_lines).strip()}
    if negative_lines:
        fields["negative_prompt"] = "\n".join(negative_lines).strip()
    settings = {key.strip(): value.strip().strip('"') for key, value in _FIELD.findall(settings_line)}
    conversions = {
        "Steps": ("steps", int),
        "CFG scale": ("guidance_scale", float),
        "Seed": ("seed", int),
    }
    for key, (name, convert) in conversions.items():
        if key in settings:
            try:
                fields[name] = convert(settings[key])
            except ValueError:
                pass
    if "Size" in settings:
        match = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", settings["Size"])
        if match:
            fields["width"], fields["height"] = int(match[1]), int(match[2])
    sampler = settings.get("Sampler", "")
    for solver, name in SOLVER_NAMES.items():
        if sampler == name:
            fields["solver"] = solver
    return fields


def read_request_fields(path: str | os.PathLike) -> dict:
    """The request stored in an image: our exact JSON chunk if present, else A1111 `parameters`."""
    with Image.open(path) as image:
        info = dict(image.info)
    if REQUEST_CHUNK in info:
        data = json.loads(info[REQUEST_CHUNK])
        return data.get("request", data)
    if PARAMETERS_CHUNK in info:
        return parse_parameters(info[PARAMETERS_CHUNK])
    return {}


def save_image(
    image: Image.Image,
    path: str | os.PathLike,
    request: GenerationRequest,
    model_name: str,
    precision: str,
) -> Path:
    """Write `image` atomically with its generation metadata; the format follows the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    parameters = format_parameters(request, model_name, precision)
    exact = json.dumps({"request": request.to_dict(), "model": model_name, "precision": precision})
    if suffix == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_CHUNK, parameters)
        info.add_text(REQUEST_CHUNK, exact)
        options = {"format": "PNG", "pnginfo": info}
    elif suffix in (".jpg", ".jpeg", ".webp"):
        # These formats have no text chunks; EXIF UserComment (0x9286) is where A1111 puts them.
        exif = Image.Exif()
        exif[0x9286] = parameters
        options = {"format": "JPEG" if suffix != ".webp" else "WEBP", "quality": 95, "exif": exif}
    else:
        raise OutputError(f"{path}: unsupported image format {suffix or '(none)'}; use .png, .jpg or .webp")
    write_atomically(path, lambda handle: image.save(handle, **options))
    return path


def write_atomically(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{path}: the folder {directory} does not exist")
    try:
        part, handle = _new_part_file(directory, path.name)
    except OSError as error:
        raise OutputError(f"{path}: cannot write in {directory} ({error.strerror or error})") from None
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
    except BaseException as error:
        part.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
        raise


def _new_part_file(directory: Path, name: str) -> tuple[Path, BinaryIO]:
    """A new temporary file beside the target, created with mode 0666 less the umask — the mode
    any new file gets (tempfile's are 0600, which would leave saved images private)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        part = directory / f".{name}.{secrets.token_hex(4)}.part"
        try:
            return part, open(os.open(part, flags, 0o666), "wb")
        except FileExistsError:
            continue


def numbered_paths(path: str | os.PathLike, count: int) -> list[Path]:
    """FILE.png for one image; FILE-1.png … FILE-n.png for several."""
    path = Path(path)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count + 1)]
