"""The fused DiT kernels and their twins, on the CPU.

The Triton kernels run in a child process started with TRITON_INTERPRET=1 (the variable must be set
before Triton compiles anything, which this pytest process cannot promise once another test has
imported Triton); the child is this very file run as a script and prints its measurements as JSON.
The twins' wiring is checked in-process: on CPU tensors they run the kernels' references, which
must reproduce the plain DiT bit for bit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.dit import DiTConfig, LinearDiT
from tests.numerics import rel_err
from tests.triton_interpreter import run_interpreted

REPO = Path(__file__).resolve().parents[1]


def tiny_dit(seed: int = 0, **overrides) -> LinearDiT:
    config = dict(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
        caption_channels=24, sample_size=4,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    return LinearDiT(DiTConfig.from_dict(config)).eval()


def dit_inputs(batch: int = 2, h: int = 5, w: int = 6, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 8, h, w, generator=generator)
    timestep = torch.tensor([999.0, 321.0])[:batch]
    text = torch.randn(batch, 7, 24, generator=generator)
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[0, 4:] = 0
    return latents, timestep, text, mask


# ---- the twins' wiring, in-process (CPU tensors run the references) ----


def test_every_kernel_launch_names_its_fma_contraction():
    """Triton 3.10 turns FMA contraction off by default, where 3.9 and older had it on: a launch
    that leaves it to the default would change speed and rounding with the Triton release. So
    each launch in engine/kernels and quant/kernels (a `kernel[grid](...)` call) says which it wants."""
    import ast

    launches = []
    for path in sorted((REPO / "engine" / "kernels").glob("*.py")) + [REPO / "quant" / "kernels.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                named = any(k.arg == "enable_fp_fusion" for k in node.keywords)
                launches.append((f"{path.name}:{node.lineno}", named))
    assert len(launches) >= 10, launches  # the kernels were found at all
    assert [where for where, named in launches if not named] == []


@pytest.mark.parametrize("overrides", [{}, {"interpolation_scale": 1.0}, {"qk_norm": "rms_norm_across_heads"}],
                         ids=["nope", "position_embedding", "qk_norm"])
def test_twins_on_cpu_compute_the_plain_dit_bit_for_bit(overrides):
    from engine.accelerate import FastSanaBlock, swap_in_twins

    plain = tiny_dit(**overrides)
    fused = copy.deepcopy(plain)
    report = swap_in_twins(fused)
    assert report.fused_total == 4 * plain.config.num_layers + 1  # + the output norm
    assert all(isinstance(block, FastSanaBlock) for block in fused.transformer_blocks)
    with torch.inference_mode():
        assert torch.equal(fused(*dit_inputs()), plain(*dit_inputs()))


def test_fused_block_updates_the_residual_stream_in_place_with_the_reference_values():
    """`FastSanaBlock` returns the very tensor it was handed, now holding what `SanaBlock`
    returns (the DiT hands each block a tensor only it holds; a new one per branch cost a copy
    before cuBLAS added into it)."""
    from engine.accelerate import swap_in_twins

    plain = tiny_dit()
    fused = copy.deepcopy(plain)
    swap_in_twins(fused)
    latents, timestep, text, mask = dit_inputs()
    with torch.inference_mode():
        context = plain.encode_text(text, mask)
        modulation, _ = plain.time_embed(timestep, torch.float32)
        x = plain.patch_embed(latents)
        want = plain.transformer_blocks[0](x.clone(), modulation, context.keys_values[0], context.padding, 5, 6)
        stream = x.clone()
        got = fused.transformer_blocks[0](stream, modulation, context.keys_values[0], context.padding, 5, 6)
    assert got.data_ptr() == stream.data_ptr()
    assert torch.equal(got, want) and not torch.equal(got, x)


@pytest.mark.parametrize("variant", ["plain", "twins", "twins_int8"])
def test_guided_latents_pass_the_first_self_attention_once_and_give_the_doubled_call(variant):
    """Classifier-free guidance hands the latents once for both texts: the first block's
    self-attention (it reads no text) runs on those rows alone, the later blocks on both halves,
    and the velocity is that of the latents doubled up front, bit for bit on the CPU."""
    from engine.accelerate import swap_in_twins
    from quant import QuantizedTokens, quantize_model, set_int8

    dit = tiny_dit()
    if variant != "plain":
        swap_in_twins(dit)
    if variant == "twins_int8":
        quantize_model(dit)
        set_int8(dit, True)
    latents, _, text, mask = dit_inputs()
    text, mask = torch.cat([text, text.flip(0)]), torch.cat([mask, mask.flip(0)])  # 4 rows for 2 latents

    def tokens(y) -> int:  # what the self-attention was handed, in tokens
        y = y.values if isinstance(y, QuantizedTokens) else y
        return y.numel() // y.shape[-1]

    seen = []
    for block in dit.transformer_blocks:
        block.attn1.register_forward_pre_hook(lambda module, args: seen.append(tokens(args[0])))
    with torch.inference_mode():
        context = dit.encode_text(text, mask)
        shared = dit.denoise(latents, torch.tensor([640.0]), context)
        seen_shared, seen[:] = list(seen), []
        doubled = dit.denoise(torch.cat([latents, latents]), torch.tensor([640.0]), context)
    assert shared.shape == doubled.shape == (4, 8, 5, 6)
    assert torch.equal(shared, doubled)
    image = 5 * 6
    assert seen_shared == [2 * image, 4 * image] and seen == [4 * image, 4 * image]
    # a timestep per text row modulates each row its own way: the latents are doubled up front
    per_row = torch.tensor([999.0, 321.0, 500.0, 20.0])
    with torch.inference_mode():
        assert torch.equal(dit.denoise(latents, per_row, context),
                           dit.denoise(torch.cat([latents, latents]), per_row, context))


def test_latents_or_timesteps_that_do_not_fit_the_text_rows_are_refused_by_name():
    dit = tiny_dit()
    latents, _, text, mask = dit_inputs()
    with torch.inference_mode():
        context = dit.encode_text(torch.cat([text, text[:1]]), torch.cat([mask, mask[:1]]))
        with pytest.raises(ValueError, match="2 latents for 3 text rows"):
            dit.denoise(latents, torch.tensor([640.0]), context)
        guided = dit.encode_text(torch.cat([text, text]), torch.cat([mask, mask]))
        with pytest.raises(ValueError, match="2 timesteps for 4 text rows: give one, or one per text row"):
            dit.denoise(latents, torch.tensor([640.0, 20.0]), guided)


def test_twins_hold_the_same_parameters_under_the_same_names():
    from engine.accelerate import swap_in_twins

    dit = tiny_dit()
    before = dict(dit.named_parameters())
    swap_in_twins(dit)
    after = dict(dit.named_parameters())
    assert list(after) == list(before)
    assert all(after[name] is before[name] for name in before)


@pytest.mark.parametrize("order", ["quantize_then_accelerate", "accelerate_then_quantize"])
def test_twins_compose_with_w8a8_swaps_in_either_order(order):
    from engine.accelerate import swap_in_twins
    from quant import quantize_model

    plain = tiny_dit()
    fused = copy.deepcopy(plain)
    expected_report = quantize_model(plain)
    if order == "quantize_then_accelerate":
        report = quantize_model(fused)
        swap_in_twins(fused)
    else:
        swap_in_twins(fused)
        report = quantize_model(fused)
    assert report.quantized == expected_report.quantized
    with torch.inference_mode():
        assert torch.equal(fused(*dit_inputs()), plain(*dit_inputs()))


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_self_attention_projections_run_as_one_gemm_over_the_layers_own_memory(int8):
    from engine.accelerate import swap_in_twins
    from quant import quantize_model, set_int8

    plain = tiny_dit()
    fused = copy.deepcopy(plain)
    quantize_model(plain)
    quantize_model(fused)
    set_int8(plain, int8)
    set_int8(fused, int8)
    swap_in_twins(fused)
    state = {name: t.clone() for name, t in fused.state_dict().items()}
    attn = fused.transformer_blocks[0].attn1
    with torch.inference_mode():
        assert torch.equal(fused(*dit_inputs()), plain(*dit_inputs()))
    name = "weight_int8" if int8 else "weight"
    stacked = attn._stacks[name]
    layers = (attn.to_q, attn.to_k, attn.to_v)
    # the layers' tensors are now the stack's rows: no copy is kept beside them
    rows = stacked.shape[0] // 3
    for i, layer in enumerate(layers):
        assert getattr(layer, name).data_ptr() == stacked[i * rows].data_ptr()
    assert fused.state_dict().keys() == state.keys()
    assert all(torch.equal(t, state[n]) for n, t in fused.state_dict().items())
    with torch.inference_mode():
        fused(*dit_inputs())
    assert attn._stacks[name] is stacked  # reused, not stacked again each call

    # a load replaces nothing in place that the stack would miss: new weights are what runs
    other = tiny_dit(seed=5)
    quantize_model(other)
    set_int8(other, int8)
    fused.load_state_dict(other.state_dict())
    attn.to_k.weight.data = attn.to_k.weight.data.clone()  # as a .to() would: its own memory again
    attn.to_k.requantize()
    with torch.inference_mode():
        assert torch.equal(fused(*dit_inputs()), other(*dit_inputs()))
    assert attn._stacks[name] is not stacked


@pytest.mark.parametrize("case", ["holes", "one_row_all_padding"])
def test_cross_attention_reads_a_rows_tokens_wherever_the_mask_puts_them(case):
    """`encode_text` moves each row's tokens first so the fused cross-attention can read a row's
    first `lengths` keys: the plain DiT and the twins (their CPU path builds its mask from the
    lengths alone) must give what the tokens give, in whatever order the mask leaves them — here
    against the same prompt with its tokens reversed."""
    from engine.accelerate import swap_in_twins

    plain = tiny_dit()
    fused = copy.deepcopy(plain)
    swap_in_twins(fused)
    latents, timestep, text, _ = dit_inputs()
    mask = torch.tensor([[1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 1, 1, 0]])
    if case == "one_row_all_padding":  # the reference's finite bias: such a row attends to all 7
        mask[0] = 0
    # an all-padding row: the reference's scores − 10000 keep only ~1e-3 of their resolution in
    # fp32, where the twin, attending to all 7, adds nothing
    tolerance = 1e-6 if case == "holes" else 1e-3
    flipped = (latents, timestep, text.flip(1), mask.flip(1))
    with torch.inference_mode():
        want = plain(*flipped)
        assert rel_err(plain(latents, timestep, text, mask), want) < tolerance
        assert rel_err(fused(latents, timestep, text, mask), want) < tolerance
        if case == "holes":  # and the padding is really left out: other values there change nothing
            noise = torch.randn_like(text) * (mask == 0)[..., None]
            assert rel_err(fused(latents, timestep, text + noise, mask), want) < 1e-6
    lengths = plain.encode_text(text, mask).padding.lengths
    assert lengths.tolist() == ([4, 4] if case == "holes" else [7, 4])


@pytest.mark.parametrize("bad", ["rows", "keys", "values"])
def test_cross_attention_names_the_shapes_that_do_not_fit(bad):
    """On every path (here the CPU's reference), not only where the kernel launches: a clear
    ValueError naming the shapes, instead of a reshape failing somewhere inside."""
    from engine.kernels.cross_attention import attend_prefix

    q, k, v = torch.randn(2 * 5, 2, 8), torch.randn(2 * 3, 2, 8), torch.randn(2 * 3, 2, 8)
    fitting = (q, k, v)
    if bad == "rows":
        q = q[:9]
    elif bad == "keys":
        k = torch.randn(2 * 3, 2, 4)
    else:
        v = v[:4]
    with pytest.raises(ValueError, match=r"q \(\d+, 2, 8\).*do not split into 2 rows"):
        attend_prefix(q, k, v, torch.tensor([3, 2]))
    assert attend_prefix(*fitting, torch.tensor([3, 2])).shape == (10, 2, 8)


def test_accelerate_dit_leaves_a_cpu_model_alone_and_says_why():
    from engine.accelerate import accelerate_dit

    dit = tiny_dit()
    modules = list(dit.modules())
    report = accelerate_dit(dit)
    assert list(dit.modules()) == modules
    assert report.swapped == () and "cpu" in str(report)


def test_swapping_twice_changes_nothing_more():
    from engine.accelerate import swap_in_twins

    dit = tiny_dit()
    first = swap_in_twins(dit)
    modules = list(dit.modules())
    second = swap_in_twins(dit)
    assert len(first.swapped) == 9 and second.swapped == () and second.fused_total == 9
    assert list(dit.modules()) == modules


def test_reference_ops_are_the_dit_modules_arithmetic():
    """The kernels' oracles are the DiT's own math: check each against the module it replaces."""
    from engine.kernels.glu import conv_glu_reference
    from engine.kernels.linear_attention import linear_attention_reference

    block = tiny_dit().transformer_blocks[0]
    x = torch.randn(2, 30, 64)
    attn = block.attn1
    with torch.inference_mode():
        fused = attn.to_out(linear_attention_reference(attn.to_q(x), attn.to_k(x), attn.to_v(x), attn.heads))
        assert torch.equal(fused.clamp(-65504, 65504), attn(x))
        nchw = torch.randn(2, 64, 5, 6)
        ff = block.ff
        hidden = ff.conv_inverted(nchw)
        assert torch.equal(ff.conv_point(conv_glu_reference(hidden, ff.conv_depth.weight, ff.conv_depth.bias)), ff(nchw))


# way: (W8A8, bias, the tokens carry the bias's ones column, gate rows, tokens a sample,
#       whether the separate residual pass runs)
WAYS = {"int8_epilogue": (True, True, False, 2, 6, False), "folded_gate": (False, False, False, 1, 64, False),
        "folded_gate_and_bias": (False, True, True, 1, 64, False),
        "bias_without_its_column": (False, True, False, 1, 64, True),
        "gate_per_sample": (False, False, False, 2, 64, True),
        "too_few_tokens_an_input": (False, False, False, 1, 40, True)}


@pytest.mark.parametrize("way", WAYS)
def test_a_projection_lands_in_the_residual_stream_as_the_layer_then_its_gated_residual(way, monkeypatch):
    """`Residual.project`, each of its ways, against the projection followed by the reference
    gated residual (with the self-attention's clip) in float64. The two fused ways never run the
    separate residual pass; folding the gate into the weight needs one gate row and
    FOLD_ROWS_PER_INPUT tokens an input (2·64 rows for 32 inputs, where 2·40 are too few), and a
    bias folds only where its ones column comes along."""
    from engine.accelerate import FOLD_ROWS_PER_INPUT, Residual
    from engine.kernels import modulate as md
    from quant import QuantLinear

    assert 2 * 40 < FOLD_ROWS_PER_INPUT * 32 <= 2 * 64  # the ways below straddle the threshold
    int8, bias, ones_column, gate_rows, tokens, separate_pass = WAYS[way]
    torch.manual_seed(0)
    batch, k, n = 2, 32, 16
    layer = torch.nn.Linear(k, n, bias=bias)
    if int8:
        layer = QuantLinear.from_float(layer)
    x, inputs = torch.randn(batch, tokens, n) * 3, torch.randn(batch * tokens, k)
    table, modulation = torch.randn(6, n), torch.randn(gate_rows, 6, n)
    separate, real = [], md.gated_residual
    monkeypatch.setattr(md, "gated_residual", lambda *args, **kwargs: separate.append(1) or real(*args, **kwargs))
    with torch.inference_mode():
        branch = layer(inputs).view(x.shape)
        want = md.gated_residual_reference(x.double(), branch.double(), table.double(), modulation.double(), 2, True)
        if ones_column:
            column = torch.zeros(inputs.shape[0], md.BIAS_COLUMNS)
            column[:, 0] = 1
            inputs = torch.cat([inputs, column], dim=1)
        residual = Residual(x.clone(), table, modulation, 2, clamp=True)
        got = residual.project(layer, inputs)
    assert rel_err(got, want) < 1e-5
    assert got.data_ptr() == residual.x.data_ptr()  # in place
    assert bool(separate) == separate_pass


# ---- Triton kernels under TRITON_INTERPRET=1 (measured in the child, asserted here) ----


def _interpreter_measurements() -> dict:
    from engine.kernels import cross_attention as ca, glu, linear_attention as la, modulate as md

    torch.manual_seed(0)
    results = {}

    def upcast(*tensors):
        return [t.float() if isinstance(t, torch.Tensor) else t for t in tensors]

    def record(name, got, want, dtype, extra=None):
        results[name] = {"rel_err": rel_err(got, want), "finite": bool(torch.isfinite(got).all()),
                         "dtype_kept": got.dtype == dtype, **(extra or {})}

    for dtype in (torch.float32, torch.float16):
        tag = str(dtype).removeprefix("torch.")
        # linear attention: odd N split over slices, one slice, a head dim that is not a power of 2,
        # and q/k/v as column slices of one fused [B, N, 3·C] projection (token stride 3·C)
        for case, (heads, head_dim, tokens, splits) in {
            "split": (3, 32, 37, None), "one_slice": (2, 32, 50, 1), "head_dim_24": (2, 24, 33, 2),
        }.items():
            q, k, v = (torch.randn(2, tokens, heads * head_dim).to(dtype) for _ in range(3))
            q[0, 3] = -1.0  # a query the ReLU zeroes: its output must be 0, not 0/0
            got = la.linear_attention(q, k, v, heads, splits=splits)
            record(f"linear_attention/{case}/{tag}", got, la.linear_attention_reference(*upcast(q, k, v), heads),
                   dtype, {"zero_query_row_is_zero": bool((got[0, 3] == 0).all())})
        qkv = torch.randn(2, 29, 3 * 64).to(dtype)
        q, k, v = qkv.split(64, dim=-1)
        record(f"linear_attention/strided/{tag}", la.linear_attention(q, k, v, 2),
               la.linear_attention_reference(*upcast(q, k, v), 2), dtype)
        # with the bias's ones column after the last head: (1, 0, …, 0) on every row, tokens split
        got = la.linear_attention(q, k, v, 2, splits=2, bias_column=True)
        ones = torch.zeros(2, 29, md.BIAS_COLUMNS, dtype=dtype)
        ones[..., 0] = 1
        record(f"linear_attention/bias_column/{tag}", got[..., :64], la.linear_attention_reference(*upcast(q, k, v), 2),
               dtype, {"bias_column": got.shape == (2, 29, 64 + md.BIAS_COLUMNS) and torch.equal(got[..., 64:], ones)})

        # AdaLN: 37 tokens, so a tile of rows straddles the two samples
        x = (torch.randn(2, 37, 80) * 3 + 1).to(dtype)
        branch = torch.randn(2, 37, 80).to(dtype)
        table, modulation = torch.randn(6, 80).to(dtype), torch.randn(2, 6, 80).to(dtype)
        record(f"modulate/{tag}", md.modulate(x, table, modulation, 0, 1, 1e-6),
               md.modulate_reference(*upcast(x, table, modulation), 0, 1, 1e-6), dtype)
        record(f"modulate/one_modulation_row/{tag}", md.modulate(x, table, modulation[:1], 3, 4, 1e-6),
               md.modulate_reference(*upcast(x, table, modulation[:1]), 3, 4, 1e-6), dtype)
        # the DiT's output norm: a two-row table, one timestep row per sample seen twice (stride 0)
        from engine.dit import OutputNorm
        table2, step_row = torch.randn(2, 80).to(dtype), torch.randn(2, 1, 80).to(dtype)
        record(f"modulate/output_norm/{tag}", md.modulate(x, table2, step_row.expand(-1, 2, -1), 0, 1, 1e-6),
               OutputNorm(1e-6)(*upcast(x, table2, step_row)), dtype)
        # 24 tokens a sample: programs walk several rows each (4 here), their sample's rows read once
        x24, branch24 = x[:, :24].contiguous(), branch[:, :24].contiguous()
        record(f"modulate/rows_a_program/{tag}", md.modulate(x24, table, modulation, 0, 1, 1e-6),
               md.modulate_reference(*upcast(x24, table, modulation), 0, 1, 1e-6), dtype)
        record(f"add_modulate/rows_a_program/{tag}", md.add_modulate(x24.clone(), branch24, table, modulation, 3, 4, 1e-6)[1],
               md.add_modulate_reference(*upcast(x24.clone(), branch24, table, modulation), 3, 4, 1e-6)[1], dtype)
        # the W8A8 handover: y quantized per token in the same pass, as quantizing the stored y
        # would; the kernel sums a row in two chunks, so a y may move by its last bit, and its
        # integer by a step where it sat on a rounding boundary
        from quant import kernels as qk
        bias80 = (torch.randn(80) * 4).to(dtype)
        for case, (rows, more, args, bias) in {
            "one_modulation_row": (x, branch, (table, modulation[:1], 3, 4), None),
            "rows_a_program": (x24, branch24, (table, modulation, 0, 1), None),
            "branch_bias": (x24, branch24, (table, modulation, 0, 1), bias80),
        }.items():
            handed = md.modulate(rows, *args, 1e-6, quantize=True)
            stored = qk.quantize_tokens(md.modulate(rows, *args, 1e-6))
            target = rows.clone()
            summed_q, handed_add = md.add_modulate(target, more, *args, 1e-6, quantize=True, bias=bias)
            summed, stored_y = md.add_modulate(rows.clone(), more, *args, 1e-6, bias=bias)

            def off(handed, stored):
                steps = (handed.values.view(stored[0].shape).int() - stored[0].int()).abs()
                scale = (handed.scale.view(stored[1].shape) - stored[1]).abs() / stored[1]
                return {"shape": handed.values.shape == rows.shape, "int8": handed.values.dtype == torch.int8,
                        "steps_max": int(steps.max()), "steps_off": float((steps > 0).float().mean()),
                        "scale_rel": float(scale.max())}

            results[f"quantized_handover/{case}/{tag}"] = {
                "modulate": off(handed, stored), "add_modulate": off(handed_add, qk.quantize_tokens(stored_y)),
                "sum_equal": torch.equal(summed_q, summed),
            }
        target = x.clone()
        summed, y = md.add_modulate(target, branch, table, modulation, 3, 4, 1e-6)
        want_sum, want_y = md.add_modulate_reference(*upcast(x.clone(), branch, table, modulation), 3, 4, 1e-6)
        record(f"add_modulate/sum/{tag}", summed, want_sum, dtype, {"in_place": summed.data_ptr() == target.data_ptr()})
        record(f"add_modulate/y/{tag}", y, want_y, dtype)
        huge = branch * 1e6 if dtype == torch.float32 else branch  # past ±65504 only where fp32 can hold it
        for clamp in (False, True):
            record(f"gated_residual/clamp_{clamp}/{tag}", md.gated_residual(x, huge, table, modulation, 2, clamp),
                   md.gated_residual_reference(*upcast(x, huge, table, modulation), 2, clamp), dtype)
        # a 16-bit projection's bias, left out of its GEMM and added by the pass behind it
        # (large, so that a bias added twice or not at all shows)
        bias = (torch.randn(80) * 4).to(dtype)
        summed, y = md.add_modulate(x.clone(), branch, table, modulation, 3, 4, 1e-6, bias=bias)
        want_sum, want_y = md.add_modulate_reference(*upcast(x.clone(), branch, table, modulation), 3, 4, 1e-6,
                                                     bias.float())
        record(f"add_modulate/bias_sum/{tag}", summed, want_sum, dtype)
        record(f"add_modulate/bias_y/{tag}", y, want_y, dtype)
        record(f"gated_residual/bias/{tag}", md.gated_residual(x, branch, table, modulation, 2, True, bias=bias),
               md.gated_residual_reference(*upcast(x, branch, table, modulation), 2, True, bias.float()), dtype)
        target = x.clone()
        got = md.gated_residual(target, branch, table, modulation, 5, out=target)
        record(f"gated_residual/in_place/{tag}", got, md.gated_residual_reference(*upcast(x, branch, table, modulation), 5),
               dtype, {"in_place": got.data_ptr() == target.data_ptr()})

        # a projection's weight [N, K] scaled row by row by one gate row (K not a tile multiple)
        weight = torch.randn(80, 300).to(dtype)
        record(f"gated_weight/wide/{tag}", md.gated_weight(weight, table, modulation[1:], 2),
               md.gated_weight_reference(*upcast(weight, table, modulation[1:]), 2), dtype)
        weight, table3, row3 = torch.randn(37, 50).to(dtype), torch.randn(6, 37).to(dtype), torch.randn(1, 6, 37).to(dtype)
        record(f"gated_weight/ragged/{tag}", md.gated_weight(weight, table3, row3, 5),  # N, K off the tile
               md.gated_weight_reference(*upcast(weight, table3, row3), 5), dtype)
        bias37 = torch.randn(37).to(dtype)  # the bias as column 50, zeros after it; 256 + 2 columns: two tiles
        for case, w in {"bias": weight, "bias_second_tile": torch.randn(37, 250).to(dtype)}.items():
            got = md.gated_weight(w, table3, row3, 5, bias37)
            want = md.gated_weight_reference(*upcast(w, table3, row3), 5, bias37.float())
            record(f"gated_weight/{case}/{tag}", got, want, dtype,
                   {"bias_column": got.shape == (37, w.shape[1] + md.BIAS_COLUMNS) and torch.equal(got[:, w.shape[1] + 1:],
                                                                                             torch.zeros_like(got[:, w.shape[1] + 1:]))})

        # cross-attention to each row's first `lengths` keys: a short and a full row, head dims
        # that are not a power of two (72 in two column chunks, 64 + 16, the last part masked;
        # 88 in three, 64 + 16 + 16; 112 in one padded to 128), a row of one key; the padding
        # holds NaN, which must not be read
        for case, (heads, head_dim, tokens, keys, lengths) in {
            "short_row": (2, 24, 37, 20, [5, 20]), "head_dim_72": (2, 72, 33, 40, [40, 17]),
            "head_dim_88": (2, 88, 19, 24, [24, 9]),
            "head_dim_112": (2, 112, 21, 24, [24, 9]), "one_key": (1, 32, 20, 16, [1, 16]),
        }.items():
            q = torch.randn(2 * tokens, heads, head_dim).to(dtype)
            k, v = (torch.randn(2 * keys, heads, head_dim).to(dtype) for _ in range(2))
            row_of_key = torch.arange(2 * keys) // keys
            padding = (torch.arange(2 * keys) % keys) >= torch.tensor(lengths)[row_of_key]
            k[padding], v[padding] = float("nan"), float("nan")
            got = ca.attend_prefix(q, k, v, torch.tensor(lengths, dtype=torch.int32))
            want = ca.attend_prefix_reference(*upcast(q, k.nan_to_num(), v.nan_to_num()), torch.tensor(lengths))
            record(f"cross_attention/{case}/{tag}", got, want, dtype)

        # Mix-FFN's middle: odd image sizes, NCHW and channels-last input, with and without bias,
        # and with the expansion's bias left to it (large, so that a wrongly padded edge shows)
        for case, (channels2, h, w, bias, channels_last, input_bias) in {
            "nchw_bias": (40, 5, 7, True, False, False), "channels_last": (24, 9, 4, False, True, False),
            "odd_channels": (34, 4, 6, True, True, False), "input_bias": (36, 6, 5, True, True, True),
            "strips": (20, 9, 19, True, True, False),  # rows of several strips, the last one partial
        }.items():
            hidden = torch.randn(2, channels2, h, w) * 2
            if channels_last:
                hidden = hidden.contiguous(memory_format=torch.channels_last)
            hidden = hidden.to(dtype)
            weight = torch.randn(channels2, 1, 3, 3).to(dtype)
            b = torch.randn(channels2).to(dtype) if bias else None
            pre = (torch.randn(channels2) * 3).to(dtype) if input_bias else None
            got = glu.conv_glu(hidden, weight, b, pre)
            want = glu.conv_glu_reference(*upcast(hidden, weight, b), None if pre is None else pre.float())
            flags = {"channels_last_out": got.is_contiguous(memory_format=torch.channels_last)}
            if pre is not None:  # against the edges padded before the bias: SiLU(b) there, not 0
                padded = F.pad(hidden.float(), (1, 1, 1, 1)) + pre.float()[:, None, None]
                value, gate = F.conv2d(F.silu(padded), weight.float(), b.float(), groups=channels2).chunk(2, dim=1)
                flags["input_bias_padding"] = (rel_err(value * F.silu(gate), want) > 0.05
                                               and rel_err(got.float(), want) < 1e-2)
            record(f"conv_glu/{case}/{tag}", got, want, dtype, flags)
    return results


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(__file__, timeout=300)


# fp32: the kernels' fp32 arithmetic in another order than torch's; fp16: the one rounding of the
# output (~2⁻¹² relative, rms), where eager fp16 rounds at every op.
TOLERANCE = {"float32": 1e-5, "float16": 1e-3}


@pytest.mark.parametrize("kernel", ["linear_attention", "modulate", "add_modulate", "gated_residual", "gated_weight",
                                    "conv_glu", "cross_attention"])
def test_triton_kernel_matches_its_reference_in_the_interpreter(interpreted, kernel):
    cases = {name: r for name, r in interpreted.items() if name.split("/")[0] == kernel}
    assert len(cases) >= 4
    for name, r in cases.items():
        assert r["finite"] and r["dtype_kept"], (name, r)
        assert r["rel_err"] <= TOLERANCE[name.rsplit("/", 1)[1]], (name, r)


def test_modulate_hands_a_w8a8_layer_its_input_quantized_as_the_quantizer_would(interpreted):
    cases = {name: r for name, r in interpreted.items() if name.startswith("quantized_handover/")}
    assert len(cases) == 6
    for name, r in cases.items():
        assert r["sum_equal"], name
        for handover in (r["modulate"], r["add_modulate"]):
            assert handover["shape"] and handover["int8"], (name, r)
            assert handover["steps_max"] <= 1 and handover["steps_off"] <= 1e-3, (name, r)
            assert handover["scale_rel"] <= 1e-6, (name, r)


def test_linear_attention_kernel_gives_zero_for_a_query_the_relu_zeroes(interpreted):
    rows = [r["zero_query_row_is_zero"] for name, r in interpreted.items() if "zero_query_row_is_zero" in r]
    assert rows and all(rows)


def test_residual_kernels_write_in_place_when_asked(interpreted):
    flags = [r["in_place"] for r in interpreted.values() if "in_place" in r]
    assert len(flags) == 4 and all(flags)


def test_bias_columns_are_laid_out_where_the_folded_projection_reads_them(interpreted):
    """linear_attention's ones column and gated_weight's bias column: (1, 0, …, 0) after the
    heads, the gated bias then zeros after the weight's inputs."""
    flags = {name: r["bias_column"] for name, r in interpreted.items() if "bias_column" in r}
    assert len(flags) == 6 and all(flags.values()), flags


def test_conv_glu_kernel_writes_channels_last(interpreted):
    flags = [r["channels_last_out"] for r in interpreted.values() if "channels_last_out" in r]
    assert len(flags) == 10 and all(flags)


def test_conv_glu_pads_after_adding_the_expansions_bias(interpreted):
    """With `input_bias`, the zero padding is of SiLU(hidden + b): padding hidden with zeros first
    (SiLU(b) at the edges) would give a visibly different result."""
    flags = [r["input_bias_padding"] for r in interpreted.values() if "input_bias_padding" in r]
    assert len(flags) == 2 and all(flags)


if __name__ == "__main__":
    print(json.dumps(_interpreter_measurements()))
