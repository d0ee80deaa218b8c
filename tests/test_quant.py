"""W8A8: the reference arithmetic, the layers, the Triton kernels (interpreted on the CPU), the policy.

The Triton checks run in a child process started with TRITON_INTERPRET=1: the variable must be set
before Triton compiles anything, which this pytest process cannot promise once another test has
imported Triton. The child is this very file run as a script; it prints its measurements as JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import quant
from quant import int8 as ref
from tests.numerics import rel_err
from tests.triton_interpreter import run_interpreted

REPO = Path(__file__).resolve().parents[1]


def awkward_activations(rows: int = 64, channels: int = 256) -> torch.Tensor:
    """Gaussian rows, plus the rows that break naive quantizers: all-zero, one huge outlier channel,
    a whole row 1000× larger, a row of denormal-small values, a constant row."""
    torch.manual_seed(0)
    x = torch.randn(rows, channels)
    x[3] = 0
    x[5, 17] = 300.0
    x[7] *= 1000
    x[9] = torch.randn(channels) * 1e-30
    x[11] = -2.5
    return x


def assert_within_half_a_step(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor):
    """|x − q·s| ≤ s/2 per element, plus three fp32 roundings (127/absmax, absmax/127, x·inv) of a
    value ≤ 127·s; s is [rows, 1]."""
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert s.dtype == torch.float32 and torch.isfinite(s).all() and (s > 0).all()
    err = (x.double() - q.double() * s.double()).abs()
    bound = s.double() * (0.5 + 3 * 127 * 2**-24)
    assert (err <= bound).all(), f"worst error {(err / s.double()).max():.6f} steps"


def test_per_token_quantization_error_is_within_half_a_step_even_for_outlier_and_zero_rows():
    for x in (awkward_activations(), awkward_activations().half()):
        q, s = quant.quantize_per_token(x)
        assert s.shape == (x.shape[0], 1)
        assert_within_half_a_step(x, q, s)
        assert (q[3] == 0).all()


def test_per_channel_weight_quantization_error_is_within_half_a_step():
    w = awkward_activations(48, 96)
    q, s = quant.quantize_per_channel(w)
    assert q.shape == (48, 96) and s.shape == (48,)
    assert_within_half_a_step(w, q, s[:, None])


def test_int8_matmul_reference_is_exact_on_every_path():
    torch.manual_seed(0)
    for m, n, k in ((33, 48, 64), (5, 17, 7)):  # torch._int_mm, then the int64 fallback
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        exact = a.long() @ w.long().t()
        assert torch.equal(quant.int8_matmul_reference(a, w).long(), exact)


def _float64_w8a8(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The same quantized arithmetic with the dequantization done in float64."""
    q, s = quant.quantize_per_token(x)
    w_q, w_s = quant.quantize_per_channel(weight)
    out = (q.double() @ w_q.double().t()) * s.double() * w_s.double()
    return out + bias.double() if bias is not None else out


def test_quant_linear_matches_float64_arithmetic_tightly_and_the_float_layer_loosely():
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(96, 80, bias=bias)
        x = torch.randn(3, 7, 96)
        layer = quant.QuantLinear.from_float(linear)
        out = layer(x)
        assert out.shape == (3, 7, 80) and out.dtype == torch.float32
        expected = _float64_w8a8(x.reshape(-1, 96), linear.weight, linear.bias).reshape(3, 7, 80)
        assert rel_err(out, expected) < 1e-6  # only the fp32 epilogue's rounding differs
        # W8A8 against float: ~0.5% per operand for Gaussian data (half a step of absmax/127).
        assert rel_err(out, linear(x)) < 2e-2
        layer.int8 = False
        assert torch.equal(layer(x), linear(x))


def test_gemm_on_a_fused_modulate_quantization_equals_the_layer_on_the_modulated_input():
    torch.manual_seed(0)
    layer = quant.QuantLinear.from_float(nn.Linear(32, 24))
    x, shift, scale = torch.randn(2, 9, 32), torch.randn(2, 32), torch.randn(2, 32)
    fused = layer.gemm(*quant.quantize_modulated(x, shift, scale))
    assert torch.equal(fused, layer(ref.modulate(x, shift, scale)).reshape(18, 24))


def test_quant_pointwise_conv_matches_float64_arithmetic_for_nchw_and_channels_last_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 40, kernel_size=1)
    layer = quant.QuantPointwiseConv.from_float(conv)
    x = torch.randn(2, 64, 5, 6)
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 64)
    expected = _float64_w8a8(tokens, conv.weight.reshape(40, 64), conv.bias).reshape(2, 5, 6, 40).permute(0, 3, 1, 2)
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        out = layer(layout)
        assert out.shape == (2, 40, 5, 6)
        assert rel_err(out, expected) < 1e-6
        assert rel_err(out, conv(x)) < 2e-2
    layer.int8 = False
    assert torch.equal(layer(x), conv(x))


def test_pointwise_conv_refuses_convs_that_are_not_gemms():
    for conv in (nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1, groups=8), nn.Conv2d(8, 8, 1, stride=2)):
        with pytest.raises(ValueError, match="1×1"):
            quant.QuantPointwiseConv.from_float(conv)


def test_quantized_layer_keeps_state_dict_keys_refreshes_int8_on_load_and_keeps_scales_fp32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    keys = set(model.state_dict())
    quant.quantize_model(model, quant.QuantPolicy(int8=("0",)))
    assert set(model.state_dict()) == keys
    new_weight = torch.randn(16, 32) * 3
    model.load_state_dict({"0.weight": new_weight, "0.bias": torch.zeros(16)})
    assert torch.equal(model[0].weight_int8, quant.quantize_per_channel(new_weight)[0])
    model.half()
    assert model[0].weight_scale.dtype == torch.float32 and model[0].weight.dtype == torch.float16


def test_fused_pre_ops_quantize_the_modulated_and_gated_activation():
    torch.manual_seed(0)
    x, shift, scale = torch.randn(2, 9, 32), torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    q, s = quant.quantize_modulated(x, shift, scale)
    assert q.shape == (18, 32) and s.shape == (18, 1)
    assert_within_half_a_step((x * (1 + scale) + shift).reshape(18, 32), q, s)
    h = torch.randn(2, 9, 64)
    q, s = quant.quantize_glu(h)
    assert q.shape == (18, 32) and s.shape == (18, 1)
    assert_within_half_a_step((h[..., :32] * torch.nn.functional.silu(h[..., 32:])).reshape(18, 32), q, s)


# ---- Triton kernels under TRITON_INTERPRET=1 (measured in the child, asserted here) ----


def _interpreter_measurements() -> dict:
    from quant import kernels

    torch.manual_seed(0)
    results = {}

    def compare(name, got, want):
        (q, s), (rq, rs) = got, want
        rq, rs = rq.reshape(q.shape), rs.reshape(s.shape)
        results[name] = {
            "q_mismatches": int((q != rq).sum()),
            "q_max_diff": int((q.int() - rq.int()).abs().max()),
            "scale_rel_err": rel_err(s, rs),
            "elements": q.numel(),
        }

    # Each case through both paths: a row in one tile (one read), and tiled (absmax pass, then
    # quantize pass). 600 channels is not a power of two, so the one-pass tile has masked lanes.
    for path, one_pass in (("one_pass", True), ("two_pass", False)):
        x = awkward_activations(66, 64).reshape(2, 33, 64)
        compare(f"plain_{path}", kernels.quantize_tokens(x, one_pass=one_pass), ref.quantize_per_token(x))
        wide = awkward_activations(12, 600).reshape(2, 6, 600)
        compare(f"wide_{path}", kernels.quantize_tokens(wide, one_pass=one_pass), ref.quantize_per_token(wide))
        nchw = torch.randn(2, 64, 5, 7)
        as_tokens = nchw.permute(0, 2, 3, 1).reshape(2, 35, 64)  # strided: channels 35 apart
        compare(f"plain_nchw_{path}", kernels.quantize_tokens(as_tokens, one_pass=one_pass),
                ref.quantize_per_token(as_tokens))
        shift, scale = torch.randn(2, 64), torch.randn(2, 1, 64)
        compare(
            f"modulate_{path}",
            kernels.quantize_tokens(x, kernels.PRE_MODULATE, shift, scale, one_pass=one_pass),
            ref.quantize_modulated_reference(x, shift, scale),
        )
        gated = torch.randn(2, 33, 160) * 3
        compare(f"glu_{path}", kernels.quantize_tokens(gated, kernels.PRE_GLU, one_pass=one_pass),
                ref.quantize_glu_reference(gated))

    # Both GEMM kernels: the pointer one (Ampere, Ada) and the TMA one (Hopper), whose descriptors
    # need rows 16-byte aligned (K a multiple of 16). Tiles are 32×32×32; the TMA grid has 4
    # persistent programs, so 70×48 (3×2 tiles) also walks more than one tile per program.
    shapes = {"pointer": ((33, 48, 64), (33, 48, 80), (70, 20, 100)), "tma": ((33, 48, 64), (70, 48, 80), (9, 20, 112))}
    for kernel, kernel_shapes in shapes.items():
        tma = kernel == "tma"
        gemms = {}
        for m, n, k in kernel_shapes:
            a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
            w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
            a_scale, w_scale, bias = torch.rand(m, 1) / 100, torch.rand(n) / 100, torch.randn(n)
            acc = ref.int8_matmul_reference(a, w)
            entry = {"int32_exact": torch.equal(kernels.int8_matmul(a, w, tma=tma), acc)}
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                got = kernels.int8_gemm(a, a_scale, w, w_scale, bias, dtype, tma=tma).float()
                want = ref.dequantize_epilogue(acc, a_scale, w_scale, bias, dtype).float()
                entry[str(dtype)] = {
                    "equal": torch.equal(got, want),
                    "max_rel_diff": ((got - want.double()).abs() / want.abs().clamp_min(1e-6)).max().item(),
                }
            entry["no_bias_equal"] = torch.equal(
                kernels.int8_gemm(a, a_scale, w, w_scale, None, torch.float32, tma=tma),
                ref.dequantize_epilogue(acc, a_scale, w_scale, None, torch.float32),
            )
            # The residual epilogue: one gate row per sample (m = 2 samples' tokens where m is
            # even), the clip on (scales large enough that fp16 branches overflow), and in place.
            groups = 2 if m % 2 == 0 else 1
            for dtype in (torch.float32, torch.float16):
                big_scale = a_scale * 3e4
                x = torch.randn(m, n).to(dtype)
                gate = torch.rand(groups, n) - 0.5  # |gate| ≤ ½: a clipped branch stays finite in fp16
                for clamp in (False, True):
                    # with the clip also a base row (an AdaLN table row) under the per-sample rows
                    base = torch.rand(n) * 0.2 - 0.1 if clamp else None
                    residual = ref.GatedResidual(x.clone(), gate, clamp, base)
                    want = ref.gated_residual_epilogue(
                        ref.dequantize_epilogue(acc, big_scale, w_scale, bias, dtype), residual)
                    got = kernels.int8_gemm(a, big_scale, w, w_scale, bias, dtype, tma=tma, residual=residual)
                    in_place = kernels.int8_gemm(a, big_scale, w, w_scale, bias, dtype, tma=tma,
                                                 residual=residual, out=residual.x)
                    entry[f"residual_{dtype}_clamp{clamp}"] = {
                        "equal": torch.equal(got, want), "in_place_equal": torch.equal(in_place, want),
                        "wrote_in_place": in_place.data_ptr() == residual.x.data_ptr(),
                        "finite": bool(torch.isfinite(want).all()),
                        "clipped": bool((ref.dequantize_epilogue(acc, big_scale, w_scale, bias, dtype).float().abs()
                                         > ref.FP16_MAX).any()),
                    }
            if m % 7 == 0:  # samples of m/7 rows, shorter than a tile: the launcher's other way
                residual = ref.GatedResidual(torch.randn(m, n), torch.randn(7, n), True)
                want = ref.gated_residual_epilogue(ref.dequantize_epilogue(acc, a_scale, w_scale, bias, torch.float32),
                                                   residual)
                got = kernels.int8_gemm(a, a_scale, w, w_scale, bias, torch.float32, tma=tma, residual=residual)
                entry["short_samples_equal"] = torch.equal(got, want)
            gemms[f"{m}x{n}x{k}"] = entry
        results[f"gemm_{kernel}"] = gemms
    results["tma_chosen_for_aligned_k"] = kernels._use_tma(torch.zeros(4, 64, dtype=torch.int8),
                                                           torch.zeros(8, 64, dtype=torch.int8))
    results["tma_refused_for_unaligned_k"] = not kernels._use_tma(torch.zeros(4, 100, dtype=torch.int8),
                                                                  torch.zeros(8, 100, dtype=torch.int8))
    return results


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(__file__, timeout=120)


@pytest.mark.parametrize("path", ["one_pass", "two_pass"])
@pytest.mark.parametrize("case", ["plain", "wide", "plain_nchw", "modulate"])
def test_triton_quantize_kernel_matches_reference_bit_for_bit(interpreted, case, path):
    r = interpreted[f"{case}_{path}"]
    assert r["q_mismatches"] == 0 and r["scale_rel_err"] == 0.0, r


@pytest.mark.parametrize("path", ["one_pass", "two_pass"])
def test_triton_glu_quantize_kernel_matches_reference_up_to_exp_rounding(interpreted, path):
    # numpy's exp and torch's may differ in the last ulp; that can move a value sitting on a
    # rounding boundary by one step, and nothing more.
    r = interpreted[f"glu_{path}"]
    assert r["q_max_diff"] <= 1 and r["q_mismatches"] <= r["elements"] * 1e-3, r
    assert r["scale_rel_err"] < 1e-6, r


@pytest.mark.parametrize("kernel", ["pointer", "tma"])
def test_triton_gemm_accumulates_int32_exactly_across_block_edges(interpreted, kernel):
    assert len(interpreted[f"gemm_{kernel}"]) == 3
    for shape, r in interpreted[f"gemm_{kernel}"].items():
        assert r["int32_exact"], shape


def test_the_tma_gemm_serves_only_operands_whose_rows_it_can_address(interpreted):
    assert interpreted["tma_chosen_for_aligned_k"] and interpreted["tma_refused_for_unaligned_k"]


@pytest.mark.parametrize("kernel", ["pointer", "tma"])
def test_triton_gemm_epilogue_matches_reference_dequantization(interpreted, kernel):
    for shape, r in interpreted[f"gemm_{kernel}"].items():
        assert r["torch.float32"]["equal"] and r["torch.float16"]["equal"] and r["no_bias_equal"], (shape, r)
        # The interpreter emulates bf16 rounding crudely (no ties-to-even), hence one bf16 step
        # (2^-7 relative) rather than equality; on the GPU the cast is a true RNE.
        assert r["torch.bfloat16"]["max_rel_diff"] <= 2**-7, (shape, r)


@pytest.mark.parametrize("kernel", ["pointer", "tma"])
def test_triton_gemm_adds_the_gated_residual_in_its_epilogue_exactly(interpreted, kernel):
    for shape, r in interpreted[f"gemm_{kernel}"].items():
        cases = {key: value for key, value in r.items() if key.startswith("residual_")}
        assert len(cases) == 4, shape
        assert r.get("short_samples_equal", True), shape
        for case, c in cases.items():
            assert c["equal"] and c["in_place_equal"] and c["wrote_in_place"], (shape, case, c)
        # the cases reach the clip: branches past ±65504 exist, and clipped they stay finite in fp16
        assert r["residual_torch.float16_clampTrue"]["clipped"], shape
        assert r["residual_torch.float16_clampTrue"]["finite"], shape
        assert not r["residual_torch.float16_clampFalse"]["finite"], shape
    assert sum("short_samples_equal" in r for r in interpreted[f"gemm_{kernel}"].values()) == 1


def test_the_residual_epilogue_reference_is_x_plus_gate_times_branch_per_sample():
    branch = torch.tensor([[1.0, -70000.0], [2.0, 3.0], [4.0, 5.0], [6.0, 1e5]])
    x = torch.arange(8.0).reshape(4, 2)
    gate = torch.tensor([[1.0, 0.5], [-1.0, 2.0]])  # rows 0-1 take gate row 0, rows 2-3 row 1
    plain = ref.gated_residual_epilogue(branch, ref.GatedResidual(x, gate))
    expected = torch.tensor([[0 + 1.0, 1 - 35000.0], [2 + 2.0, 3 + 1.5], [4 - 4.0, 5 + 10.0], [6 - 6.0, 7 + 2e5]])
    assert torch.equal(plain, expected)
    clipped = ref.gated_residual_epilogue(branch, ref.GatedResidual(x, gate, clamp=True))
    assert clipped[0, 1] == 1 - 0.5 * ref.FP16_MAX and clipped[3, 1] == 7 + 2 * ref.FP16_MAX
    x_q = torch.randint(-127, 128, (4, 16), dtype=torch.int8)
    w_q = torch.randint(-127, 128, (2, 16), dtype=torch.int8)
    a_scale, w_scale = torch.rand(4, 1), torch.rand(2)
    out = x.clone()
    got = quant.int8_gemm(x_q, a_scale, w_q, w_scale, None, torch.float32, residual=ref.GatedResidual(out, gate), out=out)
    want = x + gate.repeat_interleave(2, 0) * (x_q.double() @ w_q.double().t() * a_scale.double() * w_scale.double())
    assert got.data_ptr() == out.data_ptr()
    assert rel_err(got, want) < 1e-6


# ---- The policy on a real (tiny, random) SANA DiT ----


def _tiny_sana(num_layers: int = 2) -> nn.Module:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.SanaTransformer2DModel(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=32,
        num_layers=num_layers,
        num_cross_attention_heads=2,
        cross_attention_head_dim=32,
        cross_attention_dim=64,
        caption_channels=48,
        sample_size=8,
    ).eval()


EXPECTED_INT8 = [
    f"transformer_blocks.{i}.{layer}"
    for i in range(2)
    for layer in (
        "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_out.0",
        "ff.conv_inverted", "ff.conv_point",
    )
]


@torch.no_grad()
def test_quantize_model_swaps_exactly_the_policy_layers_and_switches_back_bit_identically():
    model = _tiny_sana()
    torch.manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(2, 8, 8, 8),
        encoder_hidden_states=torch.randn(2, 7, 48),
        timestep=torch.tensor([500.0, 20.0]),
    )
    reference = model(**inputs).sample
    keys = set(model.state_dict())

    report = quant.quantize_model(model)
    assert list(report.quantized) == EXPECTED_INT8
    assert {"proj_out", "transformer_blocks.0.attn2.to_k", "transformer_blocks.0.attn2.to_v",
            "transformer_blocks.0.ff.conv_depth", "time_embed.linear"} <= set(report.kept)
    assert set(model.state_dict()) == keys

    int8_out = model(**inputs).sample
    err = rel_err(int8_out, reference)
    print(f"W8A8 tiny SANA DiT, relative error to float: {err:.2e}")
    assert 0 < err < 2e-2

    assert quant.set_int8(model, False) == len(EXPECTED_INT8)
    assert torch.equal(model(**inputs).sample, reference)
    quant.set_int8(model, True)
    assert torch.equal(model(**inputs).sample, int8_out)

    assert list(quant.dequantize_model(model)) == EXPECTED_INT8
    assert not any(isinstance(m, (quant.QuantLinear, quant.QuantPointwiseConv)) for m in model.modules())
    assert torch.equal(model(**inputs).sample, reference)


@torch.no_grad()
def test_parked_float_weights_wait_in_host_memory_and_come_back_unchanged():
    """`set_int8(..., park_float=True)`: INT8 runs without the float weights (each Parameter an
    empty placeholder of its dtype), float refuses to run until they are back, and switching back
    puts them in place bit for bit — also after a cast of the parked model (exact to float64)."""
    model = _tiny_sana()
    inputs = {"hidden_states": torch.randn(2, 8, 8, 8), "encoder_hidden_states": torch.randn(2, 7, 48),
              "timestep": torch.tensor([500.0, 20.0])}
    reference = model(**inputs).sample
    quant.quantize_model(model)
    int8_out = model(**inputs).sample
    layers = [m for m in model.modules() if isinstance(m, (quant.QuantLinear, quant.QuantPointwiseConv))]
    weights = {id(layer): layer.weight.detach().clone() for layer in layers}
    parameters = {id(layer): layer.weight for layer in layers}

    quant.set_int8(model, True, park_float=True)
    assert all(layer.parked and layer.weight.numel() == 0 for layer in layers)
    assert torch.equal(model(**inputs).sample, int8_out)
    layers[0].int8 = False  # a switch that skips set_int8 finds no weight: a clear error, not a wrong result
    with pytest.raises(RuntimeError, match="parked"):
        model(**inputs)

    quant.set_int8(model, False)
    assert not any(layer.parked for layer in layers)
    assert all(layer.weight is parameters[id(layer)] for layer in layers)  # the same Parameters
    assert all(torch.equal(layer.weight, weights[id(layer)]) for layer in layers)
    assert torch.equal(model(**inputs).sample, reference)

    with torch.inference_mode():  # where the Generator switches: the weights must stay ordinary tensors
        quant.set_int8(model, True, park_float=True)
        model.double()  # moves and casts the placeholders; the parked weights follow when they return
        quant.set_int8(model, False)
    assert not any(layer.weight.is_inference() for layer in layers)
    assert all(layer.weight.dtype == torch.float64 for layer in layers)
    assert all(torch.equal(layer.weight, weights[id(layer)].double()) for layer in layers)

    # quantizing with park_float parks each layer as it is made: the same int8 model, parked
    fresh = _tiny_sana()
    quant.quantize_model(fresh, park_float=True)
    fresh_layers = [m for m in fresh.modules() if isinstance(m, (quant.QuantLinear, quant.QuantPointwiseConv))]
    assert len(fresh_layers) == len(layers) and all(layer.parked and layer.int8 for layer in fresh_layers)
    assert torch.equal(fresh(**inputs).sample, int8_out)
    # dropping the int8 layers of a parked model puts the float weights back first
    assert list(quant.dequantize_model(fresh)) == EXPECTED_INT8
    assert torch.equal(fresh(**inputs).sample, reference)


def test_policy_keep_overrides_int8_and_mistakes_fail_loudly():
    model = _tiny_sana()
    policy = quant.QuantPolicy(int8=quant.DEFAULT_POLICY.int8, keep=(r"transformer_blocks\.0\..*",))
    report = quant.quantize_model(model, policy)
    assert list(report.quantized) == EXPECTED_INT8[8:]

    with pytest.raises(TypeError, match="attn1"):
        quant.quantize_model(_tiny_sana(), quant.QuantPolicy(int8=(r"transformer_blocks\.0\.attn1",)))
    with pytest.raises(ValueError, match="names no layer"):
        quant.quantize_model(_tiny_sana(), quant.QuantPolicy(int8=(r"blocks\.\d+\.qkv",)))
    with pytest.raises(ValueError, match="quantize_model first"):
        quant.set_int8(_tiny_sana(), True)
    with pytest.raises(ValueError, match="regular expression"):
        quant.QuantPolicy(int8=("to_q(",))


if __name__ == "__main__":
    print(json.dumps(_interpreter_measurements()))


@pytest.mark.parametrize("version, usable", [("3.3.1", False), ("3.0.0", False), ("3.4.0", True),
                                             ("3.6.0+git1b2c3d4", True), ("3.10.0", True), ("4.0.0", True)])
def test_a_triton_older_than_3_4_is_refused_with_an_error_naming_both_releases(monkeypatch, version, usable):
    """3.3.1 lacks the tensor descriptors, `triton.knobs` and `tl.range(warp_specialize=...)` that
    the kernels use; the check compares releases as numbers, so 3.10 counts as newer than 3.4."""
    import triton

    from quant.triton_support import require_triton

    monkeypatch.setattr(triton, "__version__", version)
    if usable:
        require_triton()
    else:
        with pytest.raises(ImportError, match=rf"Triton {re.escape(version)} is older than 3\.4"):
            require_triton()
