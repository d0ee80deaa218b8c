"""On a CUDA GPU: the published 1.6B configurations, random weights, fp16, against diffusers.

Runs on the device machine (`pytest -m gpu`); skipped where there is no CUDA.
"""

import json
from pathlib import Path

import pytest
import torch

from engine.dit import DiTConfig, LinearDiT
from tests.numerics import rel_err

CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "published_configs"
TOLERANCE = 1e-2  # fp16 vs fp16: both round differently; fp32 accumulation keeps it near 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("config_file, side", [
    ("transformer_sana_1600m_1024px.json", 1024),
    ("transformer_sana_1600m_2kpx_bf16.json", 2048),
])
def test_dit_1600m_fp16_matches_diffusers_on_cuda(config_file, side, record_property):
    from diffusers import SanaTransformer2DModel

    data = json.loads((CONFIGS / config_file).read_text())
    torch.manual_seed(0)
    reference = SanaTransformer2DModel.from_config(data).to("cuda", torch.float16).eval()
    with torch.device("meta"):
        ours = LinearDiT(DiTConfig.from_dict(data))
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    ours.eval()

    generator = torch.Generator("cuda").manual_seed(1)
    latent = side // 32
    x = torch.randn(2, 32, latent, latent, device="cuda", generator=generator).half()
    text = torch.randn(2, 300, 2304, device="cuda", generator=generator).half()
    mask = torch.zeros(2, 300, dtype=torch.long, device="cuda")
    mask[0, :40] = 1
    mask[1, :300] = 1
    timestep = torch.tensor([999.0, 420.0], device="cuda")
    with torch.inference_mode():
        expected = reference(x, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=timestep,
                             return_dict=False)[0]
        got = ours(x, timestep, text, mask)
    error = rel_err(got, expected)
    record_property("relative_error", error)
    print(f"{config_file} {side}²: relative error fp16 ours vs diffusers = {error:.2e}")
    assert torch.isfinite(got).all()
    assert error <= TOLERANCE
