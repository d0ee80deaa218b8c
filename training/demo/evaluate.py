"""Held-out captions through the engine's own loader and Generator, judged by pixel statistics.

Used at the end of training (on the GPU, so the log says how good the weights are before they
travel) and by tests/test_demo_model.py (on the CPU, with the bundled weights).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from engine.demo import GUIDANCE
from engine.generator import Generator
from engine.model import SanaModel
from engine.request import GenerationRequest

from .judge import ImageVerdict, judge, summarize
from .scenes import Scene, held_out_scenes

STEPS = 20
HELD_OUT_CAPTIONS = 16
SEEDS = (0, 1)


def judge_held_out(
    model: SanaModel,
    captions: int = HELD_OUT_CAPTIONS,
    seeds: tuple[int, ...] = SEEDS,
    guidance: float = GUIDANCE,
    steps: int = STEPS,
    precision: str = "fp32",
) -> tuple[list[ImageVerdict], list[Image.Image]]:
    """Generate each held-out caption once per seed at the model's native size; judge each image."""
    prompts = [(scene.caption(), scene) for scene in held_out_scenes(captions)]
    return judge_prompts(model, prompts, seeds, guidance, steps, precision)


def judge_prompts(
    model: SanaModel,
    prompts: list[tuple[str, Scene]],
    seeds: tuple[int, ...] = SEEDS,
    guidance: float = GUIDANCE,
    steps: int = STEPS,
    precision: str = "fp32",
) -> tuple[list[ImageVerdict], list[Image.Image]]:
    """Each prompt once per seed, judged against the scene it names (in whatever wording)."""
    generator = Generator(model, previews=False)
    size = model.native_size
    verdicts, images = [], []
    for prompt, scene in prompts:
        for seed in seeds:
            request = GenerationRequest(
                prompt, width=size, height=size, steps=steps, guidance_scale=guidance, seed=seed,
                precision=precision,
            )
            image = generator.generate(request)[0]
            verdicts.append(judge(image, scene))
            images.append(image)
    return verdicts, images


def judge_reconstructions(dcae, size: int, scenes: int = 64, seed: int = 0) -> dict:
    """The autoencoder alone: ground-truth renders of held-out and training scenes through
    encode → decode, judged like generated images. What it loses (a star's points, a square's
    corners) no DiT can put back, so this is the ceiling of the held-out scores."""
    import random

    import torch

    from .scenes import render_scenes, sample_scene

    rng = random.Random(f"reconstructions-{seed}")
    half = scenes // 2
    chosen = held_out_scenes(half, seed) + [sample_scene(rng) for _ in range(scenes - half)]
    parameter = next(dcae.parameters())
    images = render_scenes(chosen, size, rng).to(parameter.device, parameter.dtype)
    with torch.no_grad():
        reconstructed = dcae.decode(dcae.encode(images)).float().clamp(-1, 1)
    pixels = ((reconstructed + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    summary = report([judge(image, scene) for image, scene in zip(pixels, chosen)])
    summary.pop("images_detail")
    return summary


def report(verdicts: list[ImageVerdict]) -> dict:
    """The summary, the shapes read right per shape, and, per image, what was asked and what was
    found: for logs and failures."""
    by_shape: dict[str, list[int]] = {}
    for verdict in verdicts:
        for o in verdict.objects:
            right_total = by_shape.setdefault(o.object.shape, [0, 0])
            right_total[0] += bool(o.shape_right)
            right_total[1] += 1
    details = []
    for verdict in verdicts:
        details.append({
            "caption": verdict.scene.caption(),
            "background_right": verdict.background_right,
            "objects": [
                {"object": o.object.phrase(), "shape": o.object.shape, "placed": o.placed,
                 "fill": None if o.fill is None else round(o.fill, 3), "read_as": o.shape}
                for o in verdict.objects
            ],
        })
    return {**summarize(verdicts), "shapes_right_by_shape": by_shape, "images_detail": details}


def contact_sheet(images: list[Image.Image], columns: int, path: Path) -> None:
    width, height = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "gray")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
