"""The fast live preview: a 32→3 linear map plus bias from latents to colours.

Fitted once per model against the model's own DC-AE (encode smooth synthetic colour fields,
regress the latents on the images' colours pooled to latent resolution) and stored beside the
model, so a preview costs one tiny matmul per step instead of a decode.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .dcae import DCAE

FIT_SIZE = 256  # pixels; 8×8 latents per image is plenty for an affine map
FIT_IMAGES = 12
FILE_NAME = "latent_preview.json"


class LatentPreviewer:
    """Turns a scaled latent [32, h, w] into an RGB preview image of h×w pixels."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight = weight.float()  # [3, C]
        self.bias = bias.float()  # [3]

    def __call__(self, latent: torch.Tensor) -> Image.Image:
        weight = self.weight.to(latent.device)
        bias = self.bias.to(latent.device)
        rgb = torch.einsum("chw,rc->hwr", latent.float(), weight) + bias
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(pixels, "RGB")

    def to_json(self) -> str:
        return json.dumps({"weight": self.weight.tolist(), "bias": self.bias.tolist()})

    @classmethod
    def from_json(cls, text: str) -> LatentPreviewer:
        data = json.loads(text)
        return cls(torch.tensor(data["weight"]), torch.tensor(data["bias"]))


@torch.no_grad()
def fit_previewer(dcae: DCAE, scaling_factor: float, seed: int = 0) -> LatentPreviewer:
    parameter = next(dcae.parameters())
    images = synthetic_images(FIT_IMAGES, FIT_SIZE, seed)
    latents = dcae.encode(images.to(parameter.device, parameter.dtype)).float() * scaling_factor
    colours = F.avg_pool2d(images, FIT_SIZE // latents.shape[-1])
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).cpu().double()
    y = colours.permute(0, 2, 3, 1).reshape(-1, 3).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    # A little ridge keeps the map stable when some latent channels barely vary.
    solution = torch.linalg.solve(x.T @ x + 1e-3 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    return LatentPreviewer(solution[:-1].T.float(), solution[-1].float())


def synthetic_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields in [-1, 1]: gradients and blobs, like a blurry photo."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    images = []
    for _ in range(count):
        base = torch.rand(3, 1, 1, generator=generator) * 2 - 1
        gradient = (torch.rand(3, 2, generator=generator) * 2 - 1) @ torch.stack([xx.flatten(), yy.flatten()])
        image = base + 0.5 * gradient.view(3, size, size)
        for _ in range(3):
            centre = torch.rand(2, generator=generator) * 2 - 1
            colour = torch.rand(3, 1, 1, generator=generator) * 2 - 1
            radius = 0.1 + 0.4 * torch.rand(1, generator=generator)
            mask = (((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) < radius**2).float()
            image = image * (1 - mask) + colour * mask
        images.append(image.clamp(-1, 1))
    return torch.stack(images)


def load_or_fit_previewer(model_path: Path, cache_dir: Path | None, dcae: DCAE, scaling_factor: float) -> LatentPreviewer:
    """The stored map beside the model, else in `cache_dir`, else a fresh fit (then stored)."""
    candidates = [model_path / FILE_NAME]
    if cache_dir is not None:
        key = hashlib.sha256(str(model_path.resolve()).encode()).hexdigest()[:16]
        candidates.append(cache_dir / f"{key}-{FILE_NAME}")
    for path in candidates:
        if path.is_file():
            try:
                return LatentPreviewer.from_json(path.read_text())
            except (ValueError, KeyError):
                pass  # a damaged cache is refitted below
    previewer = fit_previewer(dcae, scaling_factor)
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(previewer.to_json())
            break
        except OSError:
            continue  # a read-only model folder: try the cache
    return previewer


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Decoder output in [-1, 1], [B, 3, H, W] → 8-bit RGB images (diffusers' rounding)."""
    array = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((frame * 255).round().astype(np.uint8), "RGB") for frame in array]
