"""On a CUDA GPU: the fused kernels, the accelerated DiT and the graph runner, in fp16.

Runs on the device machine (`pytest -m gpu tests/test_kernels_gpu.py`); skipped where there is no
CUDA. Random weights in the published configurations; every reference is the plain-torch op.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.dit import DiTConfig, LinearDiT
from tests.numerics import rel_err

CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "published_configs"
KERNEL_TOLERANCE = 1e-3  # fp16 kernel vs its reference on fp32-upcast inputs: one output rounding
DIT_TOLERANCE = 1e-2  # fp16 vs fp16 through 20 blocks: each rounds differently
GRAPH_TOLERANCE = 1e-3  # the same kernels replayed: in practice identical

pytestmark = pytest.mark.gpu

# (batch, tokens = h·w side², width, linear heads, FFN hidden): 0.6B at 1024², 1.6B at 4096²
SHAPES = {"600m_1024": (2, 32, 1152, 36, 2880), "1600m_4096": (2, 128, 2240, 70, 5600)}


def poison_allocator(numel: int) -> None:
    """Leave NaNs where the next allocation of this size will land, so an unwritten output shows."""
    torch.empty(numel, dtype=torch.float16, device="cuda").fill_(float("nan"))


def upcast(*tensors):
    return [t.float() if isinstance(t, torch.Tensor) else t for t in tensors]


def check(record_property, name, got, want):
    error = rel_err(got, want)
    record_property(name, error)
    print(f"{name}: relative error {error:.2e}")
    assert torch.isfinite(got).all(), name
    assert error <= KERNEL_TOLERANCE, (name, error)


@pytest.mark.parametrize("shape", SHAPES)
def test_fused_kernels_match_their_references_in_fp16(shape, record_property):
    from engine.kernels import glu, linear_attention as la, modulate as md

    batch, side, dim, heads, hidden = SHAPES[shape]
    tokens = side * side
    generator = torch.Generator("cuda").manual_seed(0)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, device="cuda", generator=generator) * scale).half()

    q, k, v = randn(batch, tokens, dim), randn(batch, tokens, dim), randn(batch, tokens, dim)
    poison_allocator(q.numel())
    want = la.linear_attention_reference(*upcast(q, k, v), heads)
    check(record_property, "linear_attention", la.linear_attention(q, k, v, heads), want)
    with_column = la.linear_attention(q, k, v, heads, bias_column=True)  # to_out's bias rides on it
    check(record_property, "linear_attention_bias_column", with_column[..., :dim], want)
    ones = torch.zeros(batch, tokens, md.BIAS_COLUMNS, device="cuda", dtype=torch.half)
    ones[..., 0] = 1
    assert torch.equal(with_column[..., dim:], ones)

    x, branch = randn(batch, tokens, dim, scale=3.0), randn(batch, tokens, dim)
    table, modulation = randn(6, dim, scale=0.1), randn(batch, 6, dim, scale=0.5)
    poison_allocator(x.numel())
    check(record_property, "modulate", md.modulate(x, table, modulation, 0, 1, 1e-6),
          md.modulate_reference(*upcast(x, table, modulation), 0, 1, 1e-6))
    want_sum, want_y = md.add_modulate_reference(*upcast(x, branch, table, modulation), 3, 4, 1e-6)
    poison_allocator(x.numel())
    got_sum, got_y = md.add_modulate(x.clone(), branch, table, modulation, 3, 4, 1e-6)
    check(record_property, "add_modulate_sum", got_sum, want_sum)
    check(record_property, "add_modulate_y", got_y, want_y)
    bias = randn(dim, scale=0.5)  # a 16-bit projection's, left out of its GEMM (the cross-attention's to_out)
    want_sum, want_y = md.add_modulate_reference(*upcast(x, branch, table, modulation), 3, 4, 1e-6, bias.float())
    got_sum, got_y = md.add_modulate(x.clone(), branch, table, modulation, 3, 4, 1e-6, bias=bias)
    check(record_property, "add_modulate_bias_sum", got_sum, want_sum)
    check(record_property, "add_modulate_bias_y", got_y, want_y)
    # the W8A8 handover: the int8 the quantizer would make of the stored y. Its own compile may sum
    # a row in another order, moving a rare y by an fp16 ulp and its integer by one step.
    from quant import quantize_tokens
    for name, (handed, stored) in {
        "modulate_int8": (md.modulate(x, table, modulation, 0, 1, 1e-6, quantize=True),
                          md.modulate(x, table, modulation, 0, 1, 1e-6)),
        "add_modulate_int8": (md.add_modulate(x.clone(), branch, table, modulation, 3, 4, 1e-6, quantize=True)[1],
                              md.add_modulate(x.clone(), branch, table, modulation, 3, 4, 1e-6)[1]),
        "add_modulate_bias_int8": (
            md.add_modulate(x.clone(), branch, table, modulation, 3, 4, 1e-6, quantize=True, bias=bias)[1],
            md.add_modulate(x.clone(), branch, table, modulation, 3, 4, 1e-6, bias=bias)[1]),
    }.items():
        values, scale = quantize_tokens(stored)
        steps = (handed.values.view(values.shape).int() - values.int()).abs()
        record_property(f"{name}_steps_off", int((steps > 0).sum()))
        assert handed.values.shape == x.shape and int(steps.max()) <= 1, name
        assert (steps > 0).float().mean() <= 1e-5, name
        assert rel_err(handed.scale.view(scale.shape), scale) <= 1e-3, name
    poison_allocator(x.numel())
    check(record_property, "gated_residual", md.gated_residual(x, branch, table, modulation, 2, clamp=True),
          md.gated_residual_reference(*upcast(x, branch, table, modulation), 2, clamp=True))
    check(record_property, "gated_residual_bias",
          md.gated_residual(x, branch, table, modulation, 2, clamp=True, bias=bias),
          md.gated_residual_reference(*upcast(x, branch, table, modulation), 2, clamp=True, bias=bias.float()))

    projection = randn(dim, hidden, scale=0.02)  # the Mix-FFN's, whose gate it takes where one serves the batch
    check(record_property, "gated_weight", md.gated_weight(projection, table, modulation[:1], 5),
          md.gated_weight_reference(*upcast(projection, table, modulation[:1]), 5))
    to_out, to_out_bias = randn(dim, dim, scale=0.02), randn(dim, scale=0.1)  # the self-attention's, bias folded in
    check(record_property, "gated_weight_bias", md.gated_weight(to_out, table, modulation[:1], 2, to_out_bias),
          md.gated_weight_reference(*upcast(to_out, table, modulation[:1]), 2, to_out_bias.float()))

    expanded = randn(batch, side, side, 2 * hidden, scale=2.0).permute(0, 3, 1, 2)  # channels-last, as a 1×1 conv gives
    weight, bias = randn(2 * hidden, 1, 3, 3, scale=0.3), randn(2 * hidden, scale=0.1)
    want = glu.conv_glu_reference(*upcast(expanded, weight, bias))
    poison_allocator(batch * hidden * tokens)
    check(record_property, "conv_glu", glu.conv_glu(expanded, weight, bias), want)
    check(record_property, "conv_glu_exact_silu", glu.conv_glu(expanded, weight, bias, silu=glu.EXACT), want)
    expansion_bias = randn(2 * hidden, scale=1.0)  # the 1×1 expansion's, added here instead of in its GEMM
    check(record_property, "conv_glu_input_bias", glu.conv_glu(expanded, weight, bias, expansion_bias),
          glu.conv_glu_reference(*upcast(expanded, weight, bias, expansion_bias)))


@pytest.mark.parametrize("heads, head_dim, tokens", [(16, 72, 1024), (20, 112, 16384)], ids=["600m_1024", "1600m_4096"])
def test_cross_attention_over_each_rows_tokens_matches_masked_attention(heads, head_dim, tokens, record_property):
    """`cross_attention.attend_prefix` (the Triton kernel reading each row's first `lengths` keys)
    against fp32 softmax attention with the padding masked, as the reference DiT computes it: a
    short unconditional row, a full one, one of a single token; the padding holds NaN, unread."""
    from engine.kernels.cross_attention import attend_prefix

    generator = torch.Generator("cuda").manual_seed(0)
    rows, length = 3, 300
    q = torch.randn(rows * tokens, heads, head_dim, device="cuda", generator=generator).half()
    k, v = (torch.randn(rows * length, heads, head_dim, device="cuda", generator=generator).half() for _ in range(2))
    lengths = torch.tensor([40, 300, 1], dtype=torch.int32, device="cuda")
    padding = (torch.arange(rows * length, device="cuda") % length) >= lengths.repeat_interleave(length)
    k_read, v_read = k.clone(), v.clone()
    k_read[padding], v_read[padding] = float("nan"), float("nan")
    poison_allocator(q.numel())
    got = attend_prefix(q, k_read, v_read, lengths)
    keep = torch.arange(length, device="cuda") < lengths[:, None].long()
    bias = (keep.float()[:, None, None, :] - 1) * 10000.0
    as_rows = [t.float().view(rows, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v)]
    want = torch.nn.functional.scaled_dot_product_attention(*as_rows, attn_mask=bias)
    check(record_property, "cross_attention_prefix", got, want.transpose(1, 2).reshape(q.shape))


def build_dit(config_file: str) -> LinearDiT:
    torch.manual_seed(0)
    with torch.device("cuda"):
        dit = LinearDiT(DiTConfig.from_dict(json.loads((CONFIGS / config_file).read_text())))
    return dit.half().eval()


def dit_inputs(batch: int, side: int, caption_channels: int = 2304, seed: int = 1):
    generator = torch.Generator("cuda").manual_seed(seed)
    latents = torch.randn(batch, 32, side, side, device="cuda", generator=generator)
    text = torch.randn(batch, 300, caption_channels, device="cuda", generator=generator).half()
    mask = torch.zeros(batch, 300, dtype=torch.long, device="cuda")
    mask[0, :40] = 1
    mask[1:, :300] = 1
    return latents, text, mask


@pytest.mark.parametrize("timesteps", [[999.0, 420.0], [700.0]], ids=["per_row", "shared"])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("config_file, image_side", [
    ("transformer_sana_1600m_1024px.json", 1024),
    ("transformer_sana_1600m_4kpx_bf16.json", 4096),
])
def test_accelerated_dit_matches_the_plain_dit_at_1600m(config_file, image_side, precision, timesteps,
                                                        record_property):
    """The fused twins against the reference modules, each in FP16, and each in W8A8 (where the
    twins also take the quantized projections' fast path: one quantization for Q, K and V, and
    the residual added in the GEMM's epilogue). One timestep shared by the batch (the sampler's
    case) lets the FP16 twins fold the Mix-FFN's gate into its projection's weight."""
    from engine.accelerate import accelerate_dit
    from quant import quantize_model

    dit = build_dit(config_file)
    if precision == "int8":
        quantize_model(dit)
    latents, text, mask = dit_inputs(2, image_side // 32)
    timestep = torch.tensor(timesteps, device="cuda")
    with torch.inference_mode():
        expected = dit(latents.half(), timestep, text, mask)
        report = accelerate_dit(dit)
        got = dit(latents.half(), timestep, text, mask)
    error = rel_err(got, expected)
    record_property("relative_error", error)
    print(f"{config_file} {image_side}²: accelerated vs plain, relative error {error:.2e}; {report}")
    assert report.fused_total == 4 * dit.config.num_layers + 1  # + the output norm
    assert torch.isfinite(got).all()
    assert error <= DIT_TOLERANCE


def eager_and_graph_velocities(dit, runs):
    """Each run: (latents, timestep, text, mask, guidance) through the graph runner, then through
    the DiT's plain forward (which encodes the prompt anew every call)."""
    from engine.runner import DenoiseRunner
    from tests.test_runner import plain_velocity

    runner = DenoiseRunner(dit)
    pairs = []
    for latents, timestep, text, mask, guidance in runs:
        graphed = runner.velocity(latents, timestep, text, mask, guidance)
        with torch.inference_mode():
            pairs.append((graphed, plain_velocity(dit, latents, timestep, text, mask, guidance)))
    return runner, pairs


def test_graph_runner_gives_the_eager_velocities(record_property):
    from engine.accelerate import accelerate_dit

    dit = build_dit("transformer_sana_600m_1024px.json")
    accelerate_dit(dit)
    latents, text, mask = dit_inputs(2, 32)
    one, one_text, one_mask = latents[:1], text[1:], mask[1:]
    runs = [  # new timesteps, latents and guidance each step; the unguided call is a second graph;
        # the last, another prompt of the same shape (the graph must read its encoding, not the old one)
        (one, 999.0, text, mask, 4.5), (one * 0.5, 500.0, text, mask, 7.0),
        (one, 250.0, one_text, one_mask, None), (one.flip(-1), 10.0, text, mask, 4.5),
        (one, 400.0, text.flip(1), mask, 4.5),
    ]
    runner, pairs = eager_and_graph_velocities(dit, runs)
    assert len(runner._graphs) == 2
    for i, (graphed, eager) in enumerate(pairs):
        error = rel_err(graphed, eager)
        record_property(f"step_{i}", error)
        print(f"graph vs eager, call {i}: relative error {error:.2e}, identical: {torch.equal(graphed, eager)}")
        assert error <= GRAPH_TOLERANCE


def test_graph_runner_keeps_the_position_table_of_each_size_alive(record_property):
    from engine.accelerate import accelerate_dit

    dit = build_dit("transformer_sana_1600m_4kpx_bf16.json")  # 2-D sin-cos table, cached per size
    accelerate_dit(dit)
    big, text, mask = dit_inputs(2, 32)
    small = torch.randn(1, 32, 16, 24, device="cuda")
    runs = [(big[:1], 700.0, text, mask, 4.5), (small, 700.0, text, mask, 4.5), (big[:1], 300.0, text, mask, 4.5)]
    _, pairs = eager_and_graph_velocities(dit, runs)
    for i, (graphed, eager) in enumerate(pairs):
        error = rel_err(graphed, eager)
        record_property(f"call_{i}", error)
        assert error <= GRAPH_TOLERANCE, (i, error)


def test_graph_runner_composes_with_w8a8_and_the_fused_twins(record_property):
    from engine.accelerate import accelerate_dit
    from quant import quantize_model

    dit = build_dit("transformer_sana_600m_1024px.json")
    quantize_model(dit)
    accelerate_dit(dit)
    latents, text, mask = dit_inputs(2, 32)
    _, pairs = eager_and_graph_velocities(dit, [(latents[:1], 600.0, text, mask, 4.5)])
    graphed, eager = pairs[0]
    error = rel_err(graphed, eager)
    record_property("relative_error", error)
    print(f"W8A8 + fused, graph vs eager: relative error {error:.2e}")
    assert torch.isfinite(graphed).all() and error <= GRAPH_TOLERANCE


@pytest.mark.parametrize("width, tokens", [(1152, 2 * 1024), (2240, 2 * 16384)])
def test_w8a8_kernels_are_exact_at_the_dit_shapes(width, tokens, record_property):
    """Issue #5: at the 0.6B width at 1024² and the 1.6B width at 4096², both GEMM kernels' int32
    accumulators equal torch._int_mm's, the fused epilogue equals the reference dequantization,
    and both quantizer paths equal the reference, element for element."""
    from quant import int8 as ref
    from quant import kernels

    torch.manual_seed(width)
    hidden = int(2.5 * width)
    for n, k in ((width, width), (2 * hidden, width), (width, hidden)):
        x = torch.randn(tokens, k, device="cuda", dtype=torch.float16) * 3
        x[7, 5] = 900.0  # an outlier channel
        q_ref, s_ref = ref.quantize_per_token(x)
        for one_pass in (True, False):
            poison_allocator(tokens * k // 2)
            q, s = kernels.quantize_tokens(x, one_pass=one_pass)
            assert torch.equal(q, q_ref) and torch.equal(s, s_ref.reshape(s.shape)), (n, k, one_pass)
        weight = torch.randn(n, k, device="cuda", dtype=torch.float16) / k**0.5
        w_q, w_scale = ref.quantize_per_channel(weight)
        bias = torch.randn(n, device="cuda", dtype=torch.float16)
        acc = torch._int_mm(q_ref, w_q.t())
        want = ref.dequantize_epilogue(acc, s_ref.reshape(-1, 1), w_scale, bias, torch.float16)
        kinds = [False] + ([True] if kernels._use_tma(q_ref, w_q) else [])
        record_property(f"gemm_kernels_{n}x{k}", ["tma" if t else "pointer" for t in kinds])
        for tma in kinds:
            assert torch.equal(kernels.int8_matmul(q_ref, w_q, tma=tma), acc), (n, k, tma)
            got = kernels.int8_gemm(q_ref, s_ref.reshape(-1, 1), w_q, w_scale, bias, torch.float16, tma=tma)
            assert torch.equal(got, want), (n, k, tma, rel_err(got, want))
        if n == width:  # the projections whose output lands in the residual stream
            stream = torch.randn(tokens, n, device="cuda", dtype=torch.float16) * 3
            gate = torch.rand(2, n, device="cuda") - 0.5  # one row per sample
            for clamp in (False, True):
                residual = ref.GatedResidual(stream, gate, clamp)
                want_sum = ref.gated_residual_epilogue(want, residual)
                for tma in kinds:
                    got = kernels.int8_gemm(q_ref, s_ref.reshape(-1, 1), w_q, w_scale, bias, torch.float16,
                                            tma=tma, residual=residual)
                    assert torch.equal(got, want_sum), (n, k, tma, clamp, rel_err(got, want_sum))
                    in_place = ref.GatedResidual(stream.clone(), gate, clamp)
                    for kernel in (kernels._int8_gemm_kernel, kernels._int8_gemm_tma_kernel):
                        kernel.cache.clear()  # tune anew: each timed trial must leave x as it was
                    kernels.int8_gemm(q_ref, s_ref.reshape(-1, 1), w_q, w_scale, bias, torch.float16,
                                      tma=tma, residual=in_place, out=in_place.x)
                    assert torch.equal(in_place.x, want_sum), (n, k, tma, clamp, "in place")
    if torch.cuda.get_device_capability() >= (9, 0):
        assert kinds == [False, True], "Hopper runs the TMA kernel"
