"""Reading weight files, and checking every tensor against the model before anything is loaded.

Published checkpoints come as one safetensors file, as shards listed by an index, or as `.fp16` /
`.bf16` variants of either; original NVlabs checkpoints come as a `.pth`. A truncated download or
a mismatched config must be reported by file and tensor name, not met as a shape error deep in a
forward pass.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import CheckpointError, ConfigError

# diffusers writes variants as NAME.VARIANT.safetensors and NAME.safetensors.index.VARIANT.json.
VARIANTS = (None, "fp16", "bf16")
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of one component, the plain files before any variant; else a `.pth`."""
    for variant in VARIANTS:
        tag = f".{variant}" if variant else ""
        for stem in WEIGHT_STEMS:
            single = folder / f"{stem}{tag}.safetensors"
            if single.is_file():
                return [single]
            index = folder / f"{stem}.safetensors.index{tag}.json"
            if index.is_file():
                return _files_of_index(index)
    other = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.pth"))
    if len(other) == 1:
        return other
    if not other:
        raise CheckpointError(f"{folder}: no weights found (expected diffusion_pytorch_model.safetensors, "
                              f"model.safetensors, a sharded index or a .pth)")
    names = ", ".join(p.name for p in other)
    raise CheckpointError(f"{folder}: several weight files and no index to say which to use: {names}")


def _files_of_index(index: Path) -> list[Path]:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no weight_map in the index")
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
    return files


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes from a safetensors header, checking the file is complete."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw_length = handle.read(8)
            if len(raw_length) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw_length)
            if length > size - 8:
                raise ValueError("header runs past the end of the file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({error})") from None
    tensors, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            start, stop = entry["data_offsets"]
            shape = tuple(int(d) for d in entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        tensors[name] = TensorInfo(shape, dtype, path)
        end = max(end, stop)
    if 8 + length + end != size:
        raise CheckpointError(
            f"{path}: truncated or corrupt safetensors file (the header describes "
            f"{8 + length + end} bytes, the file has {size}); download it again"
        )
    return tensors


def read_headers(files: list[Path]) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    for path in files:
        infos.update(read_safetensors_header(path))
    return infos


def check_tensors(component: str, expected: dict[str, tuple[int, ...]], found: dict[str, TensorInfo]) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        name for name in set(expected) & set(found) if tuple(expected[name]) != found[name].shape
    )
    if not (missing or unexpected or misshaped):
        return
    files = sorted({str(info.file) for info in found.values()})
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_some(unexpected)}")
    for name in misshaped[:5]:
        problems.append(
            f"{name} has shape {list(found[name].shape)} in {found[name].file.name}, "
            f"the config needs {list(expected[name])}"
        )
    if len(misshaped) > 5:
        problems.append(f"and {len(misshaped) - 5} more mis-shaped tensors")
    raise CheckpointError(
        f"{component} weights do not match its config.json ({'; '.join(problems)}) in {', '.join(files)}"
    )


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def load_safetensors(files: list[Path], device: torch.device) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            tensors.update(load_file(path, device=str(device)))
        except Exception as error:  # safetensors raises its own error type for a damaged body
            raise CheckpointError(f"{path}: cannot read tensors ({error})") from None
    return tensors


def load_original_pth(path: Path) -> dict[str, torch.Tensor]:
    """An NVlabs `.pth`: tensors only (weights_only), under `state_dict` when it is there."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (optionally under 'state_dict')")
    return data


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
