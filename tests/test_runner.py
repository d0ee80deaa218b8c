"""DenoiseRunner on the CPU: its eager path is the plain sampling loop's model call, bit for bit."""

from __future__ import annotations

import pytest
import torch

from engine.dit import DiTConfig, LinearDiT
from engine.runner import DenoiseRunner
from engine.solver import SchedulerConfig, make_solver


def tiny_dit() -> LinearDiT:
    torch.manual_seed(0)
    config = DiTConfig.from_dict(dict(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
        caption_channels=24, sample_size=4, timestep_scale=1.0,
    ))
    return LinearDiT(config).eval()


def text_batch(guided: bool, n: int = 1):
    generator = torch.Generator().manual_seed(2)
    rows = 2 * n if guided else n
    text = torch.randn(rows, 7, 24, generator=generator)
    mask = torch.ones(rows, 7, dtype=torch.long)
    mask[0, 3:] = 0
    return text, mask


def plain_velocity(dit, latents, timestep, text, mask, guidance_scale):
    """The Generator's lines, verbatim."""
    guided = guidance_scale is not None
    model_input = torch.cat([latents, latents]) if guided else latents
    t = torch.full((model_input.shape[0],), timestep, device=latents.device)
    velocity = dit(model_input.to(next(dit.parameters()).dtype), t, text, mask).float()
    if guided:
        unconditional, conditional = velocity.chunk(2)
        velocity = unconditional + guidance_scale * (conditional - unconditional)
    return velocity


@pytest.mark.parametrize("guidance_scale", [None, 4.5], ids=["unguided", "guided"])
def test_runner_velocity_on_cpu_equals_the_plain_call_bit_for_bit(guidance_scale):
    dit = tiny_dit()
    runner = DenoiseRunner(dit)
    text, mask = text_batch(guidance_scale is not None, n=2)
    latents = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = plain_velocity(dit, latents, 637.0, text, mask, guidance_scale)
    got = runner.velocity(latents, 637.0, text, mask, guidance_scale)
    assert not runner.uses_graphs
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_sampling_loop_through_the_runner_equals_the_plain_loop_bit_for_bit():
    dit = tiny_dit()
    runner = DenoiseRunner(dit)
    text, mask = text_batch(guided=True)
    config = SchedulerConfig(flow_shift=3.0)

    def sample(velocity_of):
        solver = make_solver("dpm", config, 5)
        latents = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(4))
        for timestep in solver.timesteps:
            latents = solver.step(velocity_of(latents, timestep), latents)
        return latents

    with torch.inference_mode():
        expected = sample(lambda x, t: plain_velocity(dit, x, t, text, mask, 4.5))
    got = sample(lambda x, t: runner.velocity(x, t, text, mask, 4.5))
    assert torch.equal(got, expected)


def test_bind_keeps_graphs_for_an_unchanged_dit_and_drops_them_when_it_changes():
    dit = tiny_dit()
    runner = DenoiseRunner(dit)
    runner._graphs["captured"] = object()  # stands in for a CUDA graph
    assert runner.bind(dit) is runner and "captured" in runner._graphs
    dit.to(torch.float64)  # new weight storage: a graph would read freed memory
    runner.bind(dit)
    assert not runner._graphs
    runner._graphs["captured"] = object()
    other = tiny_dit()
    runner.bind(other)
    assert runner.dit is other and not runner._graphs


def test_bind_notices_an_int8_switch():
    from quant import quantize_model, set_int8

    dit = tiny_dit()
    quantize_model(dit)
    runner = DenoiseRunner(dit)
    runner._graphs["captured"] = object()
    set_int8(dit, False)
    runner.bind(dit)
    assert not runner._graphs
