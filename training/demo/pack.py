"""Carry a trained demo model off the training machine in a few small files, and back in.

The GPU machine returns at most 8 files of at most 16 MiB each, two folders deep; the model
folder has a dozen files and a 26 MB transformer. So `pack` writes one tar of the folder cut
into 15 MiB parts, plus the training log and the held-out contact sheet; `unpack` joins the
parts and extracts the folder, checking the tar's SHA-256.

    python3 -m training.demo.pack out/demo "$OUT"            # on the GPU machine
    python3 -m training.demo.pack --unpack DIR resources       # here: DIR holds the parts
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

from .train import LOG, MODEL_FOLDER

PART_BYTES = 15 * 2**20
PREFIX = f"{MODEL_FOLDER}.tar.part"
MANIFEST = f"{MODEL_FOLDER}.manifest.json"


def pack(out: Path, destination: Path) -> list[Path]:
    """Write the parts, a manifest, the log and the guidance-4.5 sheet into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(out / MODEL_FOLDER, arcname=MODEL_FOLDER)
    data = buffer.getvalue()
    written = []
    for index, start in enumerate(range(0, len(data), PART_BYTES)):
        path = destination / f"{PREFIX}{index}"
        path.write_bytes(data[start:start + PART_BYTES])
        written.append(path)
    manifest = {"parts": [p.name for p in written], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=1))
    written.append(destination / MANIFEST)
    for extra in (out / LOG, out / "held_out_guidance_4.5.png"):
        if extra.is_file():
            shutil.copy(extra, destination / extra.name)
            written.append(destination / extra.name)
    return written


def unpack(parts: Path, parent: Path) -> Path:
    """Join the parts found in `parts`, check them, and extract `demo_model/` under `parent`."""
    manifest = json.loads((parts / MANIFEST).read_text())
    data = b"".join((parts / name).read_bytes() for name in manifest["parts"])
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SystemExit(f"{parts}: the parts do not add up to the packed model (SHA-256 differs)")
    target = parent / MODEL_FOLDER
    if target.exists():
        shutil.rmtree(target)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        if any(not m.name.startswith(MODEL_FOLDER) or ".." in Path(m.name).parts or not (m.isfile() or m.isdir())
               for m in members):
            raise SystemExit(f"{parts}: unexpected entries in the packed model")
        tar.extractall(parent, members=members)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="training --out folder (or, with --unpack, the parts folder)")
    parser.add_argument("destination", type=Path, help="where the parts go (or, with --unpack, the parent folder)")
    parser.add_argument("--unpack", action="store_true")
    args = parser.parse_args(argv)
    if args.unpack:
        print(f"extracted {unpack(args.source, args.destination)}")
    else:
        for path in pack(args.source, args.destination):
            print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
