"""DenoiseRunner on the CPU: its eager path is the plain sampling loop's model call, bit for bit."""

from __future__ import annotations

import copy
from types import SimpleNamespace

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
    t = torch.full((1,), timestep, device=latents.device)
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


def captured_stand_in() -> SimpleNamespace:
    """Stands in for a captured CUDA graph: the one field `bind` touches, the prompt it holds."""
    return SimpleNamespace(prompt=(torch.zeros(1), torch.ones(1)))


def test_bind_keeps_graphs_for_an_unchanged_dit_and_drops_them_when_it_changes():
    dit = tiny_dit()
    runner = DenoiseRunner(dit)
    runner._graphs["captured"] = captured = captured_stand_in()
    assert runner.bind(dit) is runner and runner._graphs["captured"] is captured
    assert captured.prompt == ()  # kept, but its prompt is encoded anew
    dit.to(torch.float64)  # new weight storage: a graph would read freed memory
    runner.bind(dit)
    assert not runner._graphs
    runner._graphs["captured"] = captured_stand_in()
    other = tiny_dit()
    runner.bind(other)
    assert runner.dit is other and not runner._graphs


def test_bind_notices_an_int8_switch():
    from quant import quantize_model, set_int8

    dit = tiny_dit()
    quantize_model(dit)
    runner = DenoiseRunner(dit)
    runner._graphs["captured"] = captured_stand_in()
    set_int8(dit, False)
    runner.bind(dit)
    assert not runner._graphs


def test_the_prompt_is_encoded_once_per_text_and_mask(monkeypatch):
    """Every step of a generation reuses the encoded prompt; a new text, a new mask or a `bind`
    (once per generation: the weights may have been loaded in place) encode it again, and the
    velocities stay the plain call's, bit for bit."""
    dit = tiny_dit()
    plain = copy.deepcopy(dit)  # the reference's own encodings are not the runner's
    runner = DenoiseRunner(dit)
    encoded = []
    encode = dit.encode_text
    monkeypatch.setattr(dit, "encode_text", lambda text, mask: encoded.append(text) or encode(text, mask))
    text, mask = text_batch(guided=True)
    latents = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(5))
    for t in (900.0, 500.0, 100.0):
        got = runner.velocity(latents, t, text, mask, 4.5)
        with torch.inference_mode():
            assert torch.equal(got, plain_velocity(plain, latents, t, text, mask, 4.5))
    assert len(encoded) == 1

    other_text = text.flip(1)  # another prompt
    got = runner.velocity(latents, 300.0, other_text, mask, 4.5)
    with torch.inference_mode():
        assert torch.equal(got, plain_velocity(plain, latents, 300.0, other_text, mask, 4.5))
    assert len(encoded) == 2 and encoded[-1] is other_text
    other_mask = torch.ones_like(mask)
    runner.velocity(latents, 300.0, other_text, other_mask, 4.5)
    assert len(encoded) == 3
    runner.velocity(latents, 200.0, other_text, other_mask, 4.5)
    assert len(encoded) == 3
    with torch.no_grad():
        for model in (dit, plain):  # a load in place, then the generation's bind
            model.caption_projection.linear_1.weight.mul_(2.0)
    runner.bind(dit)
    got = runner.velocity(latents, 200.0, other_text, other_mask, 4.5)
    with torch.inference_mode():
        assert torch.equal(got, plain_velocity(plain, latents, 200.0, other_text, other_mask, 4.5))
    assert len(encoded) == 4


def test_only_a_new_latent_size_counts_as_readying_the_gpu():
    """`prepares` tells the Generator when the next call captures the first graph for a size (the
    call in which Triton compiles and tunes the GEMMs for the token count). A new prompt length at
    a known size captures a graph too, but tunes nothing, so it is not announced. Graphs are
    CUDA-only, so the CPU runner never prepares; the size bookkeeping is checked directly."""
    from engine.runner import _graph_key

    runner = DenoiseRunner(tiny_dit(), graphs=True)
    latents = torch.zeros(1, 8, 4, 6)
    text, mask = text_batch(guided=True)
    assert runner._new_size(latents)
    runner._graphs[_graph_key(latents, text, mask, True)] = captured_stand_in()
    assert not runner._new_size(latents)
    assert not runner._new_size(latents.clone())  # another tensor of the same size
    longer = torch.zeros(2, 11, 24), torch.ones(2, 11, dtype=torch.long)
    runner._graphs[_graph_key(latents, *longer, True)] = captured_stand_in()  # a new prompt length
    assert not runner._new_size(latents)
    assert runner._new_size(torch.zeros(1, 8, 6, 4))  # another size
    assert runner._new_size(torch.zeros(2, 8, 4, 6))  # two images: twice the tokens
    assert runner._new_size(latents.double())
    assert not runner.prepares(latents[:, :, :2]), "no graphs on the CPU, so nothing to ready"
