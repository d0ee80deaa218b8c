"""Memory-bounded DC-AE decoding: tiles give the one-pass image; plans follow the memory budget;
running out of memory retries with smaller tiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.dcae import DCAE, DCAEConfig, MultiScaleLinearAttention
from engine.tiling import (
    DEFAULT_MAX_BYTES,
    MIN_TILE,
    _attend_in_tiles,
    decode_auto,
    decode_tiled,
    memory_budget,
    plan_decode,
)

PUBLISHED = Path(__file__).parents[1] / "engine" / "published_configs" / "vae_dc-ae-f32c32-sana-1.0.json"
# fp32 on the CPU: tiles only change the order of the attention sums, so they agree to rounding.
TOLERANCE = 1e-5
GiB = 2**30


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


# tests/tiny_models.py's make_vae, built directly (no diffusers import): six stages, ResBlocks then
# EfficientViT blocks, 32× down, 32 latent channels.
TINY = {
    "latent_channels": 32, "attention_head_dim": 8,
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "encoder_block_out_channels": [8, 8, 16, 16, 32, 32], "decoder_block_out_channels": [8, 8, 16, 16, 32, 32],
    "encoder_layers_per_block": [1] * 6, "decoder_layers_per_block": [1] * 6,
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]], "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "upsample_block_type": "interpolate", "downsample_block_type": "Conv", "scaling_factor": 0.41407,
}


@pytest.fixture(scope="module")
def dcae() -> DCAE:
    torch.manual_seed(0)
    model = DCAE(DCAEConfig.from_dict(TINY)).eval()
    with torch.no_grad():  # norms away from their ones/zeros init, so that they matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    # Two images, non-square, sides that no tile size below divides.
    return torch.randn(2, 32, 5, 7, generator=torch.Generator().manual_seed(3)) / 0.41407


@pytest.fixture(scope="module")
def one_pass(dcae, latents) -> torch.Tensor:
    with torch.no_grad():
        return dcae.decode(latents)


@pytest.mark.parametrize("tile", [3, 5])
def test_tiled_decode_equals_one_pass_decode(dcae, latents, one_pass, tile):
    tiled = decode_tiled(dcae, latents, tile=tile)
    error = rel_err(tiled, one_pass)
    print(f"tile {tile}: rel. error tiled vs one pass {error:.2e}")
    assert tiled.shape == one_pass.shape
    assert error <= TOLERANCE


def test_attention_over_tiles_uses_the_whole_image():
    """The deep stages' linear attention sums over every pixel: computed tile by tile from global
    sums it matches one pass; a tile attending over itself alone would not."""
    torch.manual_seed(0)
    attn = MultiScaleLinearAttention(16, 8, (5,)).eval()
    x = torch.randn(1, 16, 20, 23)
    with torch.no_grad():
        whole = attn(x)
        tiled = _attend_in_tiles(attn, x, core=7)
        alone = attn(x[:, :, :7, :7])
    assert rel_err(tiled, whole) <= TOLERANCE
    assert rel_err(alone[..., :5, :5], whole[..., :5, :5]) > 1e-2  # proves the test could fail


@pytest.mark.parametrize("mode", ["off", "auto", "always"])
def test_every_tiling_mode_gives_the_one_pass_image(dcae, latents, one_pass, mode):
    # A budget far below the one-pass need forces "auto" to tile.
    images = decode_auto(dcae, latents, mode=mode, max_bytes=2**20)
    assert rel_err(images, one_pass) <= TOLERANCE


def test_unknown_tiling_mode_is_refused(dcae, latents):
    with pytest.raises(ValueError, match="not one of auto, always, off"):
        decode_auto(dcae, latents, mode="sometimes")


@pytest.fixture(scope="module")
def published() -> DCAE:
    """The published f32c32 DC-AE on the meta device: shapes only, no weights, no compute."""
    config = DCAEConfig.from_dict(json.loads(PUBLISHED.read_text()))
    with torch.device("meta"):
        return DCAE(config)


def test_small_images_decode_in_one_pass(published):
    plan = plan_decode(published, (1, 32, 32, 32), torch.bfloat16, DEFAULT_MAX_BYTES)
    assert plan.tile is None and plan.predicted_bytes <= DEFAULT_MAX_BYTES


@pytest.mark.parametrize("budget_gib", [1, 2, 3])
def test_tiles_of_a_4k_decode_fit_the_memory_budget(published, budget_gib):
    budget = budget_gib * GiB
    whole = plan_decode(published, (1, 32, 128, 128), torch.bfloat16, 10**15)
    plan = plan_decode(published, (1, 32, 128, 128), torch.bfloat16, budget)
    print(f"{budget_gib} GiB: tiles of {plan.tile} latent px, predicted {plan.predicted_bytes / GiB:.2f} GiB "
          f"(one pass {whole.predicted_bytes / GiB:.1f} GiB)")
    assert whole.tile is None and whole.predicted_bytes > 16 * GiB
    assert plan.tile is not None and MIN_TILE <= plan.tile < 128
    assert plan.predicted_bytes <= budget


def test_smaller_budget_gives_smaller_tiles(published):
    tiles = [plan_decode(published, (1, 32, 128, 128), torch.bfloat16, b * GiB).tile for b in (4, 2, 1)]
    assert tiles[0] > tiles[1] > tiles[2]


def test_memory_budget_on_the_cpu_is_the_target():
    assert memory_budget(torch.device("cpu")) == DEFAULT_MAX_BYTES
    assert memory_budget(torch.device("cpu"), 5 * GiB) == 5 * GiB


def _fail_full_resolution_convs(dcae, largest_ok: int, times: int):
    """Makes the last conv raise OutOfMemoryError for inputs of more than `largest_ok` pixels, the
    first `times` times; returns the pixel counts it saw."""
    seen = []

    def hook(module, inputs):
        pixels = inputs[0].shape[-2] * inputs[0].shape[-1]
        seen.append(pixels)
        if pixels > largest_ok and len([p for p in seen if p > largest_ok]) <= times:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    return seen, dcae.decoder.conv_out.register_forward_pre_hook(hook)


def test_out_of_memory_retries_with_smaller_tiles(dcae, latents, one_pass):
    seen, handle = _fail_full_resolution_convs(dcae, largest_ok=10**6, times=0)
    try:
        decode_tiled(dcae, latents, tile=6)
        largest = max(seen)  # the largest tile a 6-px tile plan decodes
        handle.remove()
        seen, handle = _fail_full_resolution_convs(dcae, largest_ok=largest - 1, times=1)
        images = decode_tiled(dcae, latents, tile=6)
    finally:
        handle.remove()
    assert seen[0] == largest  # the first big tile failed ...
    assert max(seen[1:]) < largest  # ... and the retry used smaller tiles
    assert rel_err(images, one_pass) <= TOLERANCE


def test_out_of_memory_at_the_smallest_tile_is_raised(dcae, latents):
    seen, handle = _fail_full_resolution_convs(dcae, largest_ok=0, times=10**6)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            decode_tiled(dcae, latents, tile=MIN_TILE)
    finally:
        handle.remove()
    assert len(seen) == 1  # no retry below MIN_TILE
