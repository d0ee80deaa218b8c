"""The middle of Mix-FFN, fused: SiLU → 3×3 depthwise conv (+bias) → value·SiLU(gate), one pass.

Mix-FFN's expanded activation is its widest tensor (2 × 2.5 × D channels per token); eagerly it
goes through SiLU, the depthwise conv, a SiLU of the gate half and the product, each a full pass
in and out of memory. Here the expanded tensor is read once and only the product, half as wide,
is written.

A program owns BLOCK_C channels of a strip 4 pixels wide and walks it down TILE_Y rows; each
thread holds its channels of all 4 columns. So each input row is loaded, and SiLU'd, at the six
columns the strip touches (1.5 times per element, where tiles shifted left, centre and right take
3) and added into the three output rows it touches: the one it completes, which is stored, the one
below, and the one after that. Zero padding comes from masked loads, since SiLU(0) = 0.

The expansion's own bias may come along (`input_bias`) and be added here, before SiLU, instead of
in cuBLAS's epilogue, whose bias cost the 0.6B expansion at 1024² 45 µs against 39 without (H100,
2 × 1024 tokens; 1.6B at 4096² 2.56 → 2.51 ms). Here it rides in SiLU's halving multiply-add, and
the loads outside the image give −b, so that the padding stays SiLU(−b + b) = 0. The CFG step
against the expansion's own bias, interleaved old/new/new/old: 0.6B 1024² 6.25 / 6.26 → 6.13 /
6.14 ms, 20-step sampling 120.0–120.7 → 117.9–118.6 (with a first form of the add, 2 µs a call
slower than this one); 1.6B 1024² and 4096² unchanged within noise (at 4096² this kernel spends
the GEMM's saving: 0.56 against 0.50 ms a call).

SiLU is most of the arithmetic. So SiLU has, besides the EXACT x / (1 + exp(−x)) that torch
computes, a TANH form through the GPU's tanh.approx, x/2 + x/2·tanh(x/2): one special-function op
instead of two, its error (≤ 2⁻¹⁰·⁷ relative in tanh) under the fp16 rounding of the stored
result. 16-bit tensors use it; fp32 ones get the exact form. Each row's loads go out a row ahead,
before the arithmetic of the row above, so that their latency hides behind it. H100, 1.6B at
4096²: 0.50 ms a call, against 0.58 ms loading and computing each row in turn, 0.77 ms for the
shifted-tile kernel before that and ~0.37 ms to move the bytes. (SiLU in fp16 pairs,
tanh.approx.f16x2, measured slower with the loads ahead: 0.53 ms.) Loads two rows ahead measured
slower still (H100, 2026-12-07, CUDA-graph replays, side by side): 0.560 → 0.723 ms a call at
1.6B 4096² (0.587 held to 168 registers, three programs an SM), 38.2 → 59.4 µs at 1.6B 1024²,
20.6 → 29.4 µs at 0.6B 1024²; 168 registers with one row ahead changed nothing (0.560).

In W8A8 the projection behind wants its input per token in int8, so `quantize_tokens` reads this
kernel's output back. Two ways around that pass measured slower (H100, 2026-12-07, CUDA-graph
replays, per call, 1.6B at 4096² / 0.6B at 1024²): SiLU in the int8 expansion's epilogue made the
GEMM 1414 → 1583 / 36.9 → 40.9 µs and this kernel, its input SiLU'd already, 503 → 714 / 24.3 →
30.7 µs (without the SiLU arithmetic its loads no longer hide); and on top of that, a persistent
program per strip of 2–8 rows × 4 pixels running through all the channels into a scratch of its
own, then handing the projection int8 (exact): 2030–3432 / 77–245 µs against 693 / 34.5 for this
kernel and the quantizer. The INT8 DiT step with both: 148.8 ms, against ~120.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import INTERPRET, multiprocessors, use_triton


def conv_glu_reference(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, input_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """hidden [B, 2C, h, w] (the 1×1 expansion, before its SiLU) → [B, C, h, w]; op for op the
    middle of `MixFFN.forward`, with `weight`/`bias` those of its depthwise `conv_depth`, and
    `input_bias` [2C], where given, the expansion's bias, not yet added to hidden."""
    if input_bias is not None:
        hidden = hidden + input_bias[:, None, None]
    x, gate = F.conv2d(F.silu(hidden), weight, bias, padding=1, groups=hidden.shape[1]).chunk(2, dim=1)
    return x * F.silu(gate)


EXACT, TANH = 0, 1  # how SiLU is computed (see the module's docstring)
STRIP = 4  # output columns a program's strip is wide: `_row`, `_apply` and the kernel unroll four
_STRIP = tl.constexpr(STRIP)


@triton.jit
def _silu(x, SILU: tl.constexpr):
    """SiLU in fp32 of a tile of any float dtype."""
    x = x.to(tl.float32)
    if SILU == 1:  # TANH
        half = x * 0.5  # x·sigmoid(x) = x/2 + x/2·tanh(x/2)
        return half * _tanh_approx(half) + half
    else:
        return x / (1 + tl.exp(-x))


@triton.jit
def _tanh_approx(x):
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _raw(base, y, x, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad):
    """One pixel's BLOCK_C channels as stored; `pad` outside the image."""
    ys = chans * 0 + y  # the tests as vectors: the interpreter rejects scalar & vector masks
    xs = chans * 0 + x
    inside = c_mask & (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    return tl.load(base + y * stride_y + x * stride_x + chans * stride_c, mask=inside, other=pad)


@triton.jit
def _row(base, y, x0, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad):
    """Input row y at the six columns x0 − 1 … x0 + 4 that the strip's four outputs read, as
    stored (SiLU comes a row later: see the kernel's loop); `pad` outside the image."""
    return (_raw(base, y, x0 - 1, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad),
            _raw(base, y, x0, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad),
            _raw(base, y, x0 + 1, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad),
            _raw(base, y, x0 + 2, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad),
            _raw(base, y, x0 + 3, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad),
            _raw(base, y, x0 + 4, chans, c_mask, height, width, stride_y, stride_x, stride_c, pad))


@triton.jit
def _act(raw, half_bias, HAS_INPUT_BIAS: tl.constexpr, SILU: tl.constexpr):
    """SiLU of one stored input pixel, the expansion's bias added first where it comes along
    (outside the image the load gave −bias, so the conv's padding is SiLU(0) = 0 still). The
    bias comes halved: in the TANH form the add rides in the halving's multiply-add."""
    if not HAS_INPUT_BIAS:
        return _silu(raw, SILU)
    x = raw.to(tl.float32)
    if SILU == 1:  # TANH, as `_silu`: x/2 + x/2·tanh(x/2), here of x + b
        half = x * 0.5 + half_bias
        return half * _tanh_approx(half) + half
    else:
        x = x + 2 * half_bias
        return x / (1 + tl.exp(-x))


@triton.jit
def _taps(w_ptr, chans, c_mask, tap_row, stride_wc, stride_wy, stride_wx):
    """One row of the 3×3 kernel: three [BLOCK_C] fp32 weight vectors, read from the conv's own
    [2C, 1, 3, 3] weight (a channel's 9 taps lie together, so the loads share lines). A tap-major
    fp32 copy made per call cost more than it saved: 0.17 ms of a 0.6B 1024² step (H100)."""
    w = w_ptr + chans * stride_wc + tap_row * stride_wy
    return (tl.load(w, mask=c_mask, other=0.0).to(tl.float32),
            tl.load(w + stride_wx, mask=c_mask, other=0.0).to(tl.float32),
            tl.load(w + 2 * stride_wx, mask=c_mask, other=0.0).to(tl.float32))


@triton.jit
def _apply(w0, w1, w2, a0, a1, a2, a3, a4, a5):
    """One tap row at the strip's four output columns, from its six input columns."""
    return (w0 * a0 + w1 * a1 + w2 * a2, w0 * a1 + w1 * a2 + w2 * a3,
            w0 * a2 + w1 * a3 + w2 * a4, w0 * a3 + w1 * a4 + w2 * a5)


@triton.jit
def _store(row_ptr, x, value, gate, mask, width, stride_x, SILU: tl.constexpr):
    xs = mask.to(tl.int32) * 0 + x
    tl.store(row_ptr + x * stride_x, (value * _silu(gate, SILU)).to(row_ptr.dtype.element_ty),
             mask=mask & (xs < width))


@triton.jit
def _conv_glu_kernel(
    h_ptr, w_ptr, bias_ptr, in_bias_ptr, o_ptr,
    C, height, width, stride_wc, stride_wy, stride_wx,
    stride_hb, stride_hc, stride_hy, stride_hx,
    stride_ob, stride_oc, stride_oy, stride_ox,
    HAS_BIAS: tl.constexpr, HAS_INPUT_BIAS: tl.constexpr, TILE_Y: tl.constexpr, BLOCK_C: tl.constexpr, SILU: tl.constexpr,
):
    pid_c = tl.program_id(0)  # fastest: neighbouring programs share pixels, so rows stay in L2
    pid_xy = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    strips = tl.cdiv(width, _STRIP)
    y0 = (pid_xy // strips) * TILE_Y
    x0 = (pid_xy % strips) * _STRIP
    chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = chans < C
    v_base = h_ptr + b * stride_hb
    g_base = v_base + C * stride_hc  # the gate half: channel C further on
    bias_v = tl.zeros([BLOCK_C], dtype=tl.float32)
    bias_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        bias_v = tl.load(bias_ptr + chans, mask=c_mask, other=0.0).to(tl.float32)
        bias_g = tl.load(bias_ptr + C + chans, mask=c_mask, other=0.0).to(tl.float32)
    # the expansion's bias (value and gate halves) and what a load outside the image gives: −bias
    pad_v = tl.zeros([BLOCK_C], dtype=h_ptr.dtype.element_ty)
    pad_g = tl.zeros([BLOCK_C], dtype=h_ptr.dtype.element_ty)
    if HAS_INPUT_BIAS:
        pad_v = -tl.load(in_bias_ptr + chans, mask=c_mask, other=0.0).to(h_ptr.dtype.element_ty)
        pad_g = -tl.load(in_bias_ptr + C + chans, mask=c_mask, other=0.0).to(h_ptr.dtype.element_ty)
    in_v = pad_v.to(tl.float32) * -0.5  # halved, as `_act` takes it
    in_g = pad_g.to(tl.float32) * -0.5
    # the 18 weight vectors stay in registers for the whole strip
    w_gate = w_ptr + C * stride_wc
    v00, v01, v02 = _taps(w_ptr, chans, c_mask, 0, stride_wc, stride_wy, stride_wx)
    v10, v11, v12 = _taps(w_ptr, chans, c_mask, 1, stride_wc, stride_wy, stride_wx)
    v20, v21, v22 = _taps(w_ptr, chans, c_mask, 2, stride_wc, stride_wy, stride_wx)
    g00, g01, g02 = _taps(w_gate, chans, c_mask, 0, stride_wc, stride_wy, stride_wx)
    g10, g11, g12 = _taps(w_gate, chans, c_mask, 1, stride_wc, stride_wy, stride_wx)
    g20, g21, g22 = _taps(w_gate, chans, c_mask, 2, stride_wc, stride_wy, stride_wx)

    # Input row y feeds output rows y + 1 (tap row 0), y (tap row 1) and y − 1 (tap row 2).
    # `done*` accumulates the output row one above the input row, `next*` the one level with it,
    # four columns each (value and gate halves). The walk starts one row above the strip, and
    # rows above it are not stored: their sums are only partial.
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)
    dv0, dv1, dv2, dv3, dg0, dg1, dg2, dg3 = zero, zero, zero, zero, zero, zero, zero, zero
    nv0, nv1, nv2, nv3, ng0, ng1, ng2, ng3 = zero, zero, zero, zero, zero, zero, zero, zero
    o_base = o_ptr + b * stride_ob + chans * stride_oc
    # Each row's loads go out a step ahead (see the module's docstring); the last step's fall one
    # row past the last the strip reads (masked at the image's edge, else unused).
    p0, p1, p2, p3, p4, p5 = _row(v_base, y0 - 1, x0, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, pad_v)
    r0, r1, r2, r3, r4, r5 = _row(g_base, y0 - 1, x0, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, pad_g)
    for y in range(y0 - 1, tl.minimum(y0 + TILE_Y, height) + 1):
        n0, n1, n2, n3, n4, n5 = _row(v_base, y + 1, x0, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, pad_v)
        m0, m1, m2, m3, m4, m5 = _row(g_base, y + 1, x0, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, pad_g)
        a0, a1, a2, a3, a4, a5 = (_act(p0, in_v, HAS_INPUT_BIAS, SILU), _act(p1, in_v, HAS_INPUT_BIAS, SILU),
                                  _act(p2, in_v, HAS_INPUT_BIAS, SILU), _act(p3, in_v, HAS_INPUT_BIAS, SILU),
                                  _act(p4, in_v, HAS_INPUT_BIAS, SILU), _act(p5, in_v, HAS_INPUT_BIAS, SILU))
        e0, e1, e2, e3, e4, e5 = (_act(r0, in_g, HAS_INPUT_BIAS, SILU), _act(r1, in_g, HAS_INPUT_BIAS, SILU),
                                  _act(r2, in_g, HAS_INPUT_BIAS, SILU), _act(r3, in_g, HAS_INPUT_BIAS, SILU),
                                  _act(r4, in_g, HAS_INPUT_BIAS, SILU), _act(r5, in_g, HAS_INPUT_BIAS, SILU))
        p0, p1, p2, p3, p4, p5 = n0, n1, n2, n3, n4, n5
        r0, r1, r2, r3, r4, r5 = m0, m1, m2, m3, m4, m5
        t0, t1, t2, t3 = _apply(v20, v21, v22, a0, a1, a2, a3, a4, a5)
        u0, u1, u2, u3 = _apply(g20, g21, g22, e0, e1, e2, e3, e4, e5)
        row = o_base + (y - 1) * stride_oy  # complete now
        in_strip = c_mask & (chans * 0 + y > y0)
        _store(row, x0, dv0 + t0 + bias_v, dg0 + u0 + bias_g, in_strip, width, stride_ox, SILU)
        _store(row, x0 + 1, dv1 + t1 + bias_v, dg1 + u1 + bias_g, in_strip, width, stride_ox, SILU)
        _store(row, x0 + 2, dv2 + t2 + bias_v, dg2 + u2 + bias_g, in_strip, width, stride_ox, SILU)
        _store(row, x0 + 3, dv3 + t3 + bias_v, dg3 + u3 + bias_g, in_strip, width, stride_ox, SILU)
        t0, t1, t2, t3 = _apply(v10, v11, v12, a0, a1, a2, a3, a4, a5)
        u0, u1, u2, u3 = _apply(g10, g11, g12, e0, e1, e2, e3, e4, e5)
        dv0, dv1, dv2, dv3 = nv0 + t0, nv1 + t1, nv2 + t2, nv3 + t3
        dg0, dg1, dg2, dg3 = ng0 + u0, ng1 + u1, ng2 + u2, ng3 + u3
        nv0, nv1, nv2, nv3 = _apply(v00, v01, v02, a0, a1, a2, a3, a4, a5)
        ng0, ng1, ng2, ng3 = _apply(g00, g01, g02, e0, e1, e2, e3, e4, e5)


# (TILE_Y, BLOCK_C, num_warps), H100, CUDA-graph timing, loads a row ahead: the tallest strip that
# still gives every SM two programs. 1.6B at 4096² 0.500 ms (16 rows: 0.511; best of 8 settings
# 0.498), 1.6B at 1024² 0.038 (16 rows: 0.046, 352 programs against 704), 0.6B at 1024² 16 rows,
# 0.021 (32 rows leave 192 programs for 132 SMs: 0.026). Strips 8 pixels wide with 128 channels a
# program (the input read 1.25 times, not 1.5; 168 registers against 230 by ptxas) measured slower
# at every shape and tile (2026-12-08, side by side): W8A8 1.6B 4096² 0.494 → 0.670 ms, 1.6B 1024²
# 0.037 → 0.047, 0.6B 1024² 0.021 → 0.026; FP16 0.556 → 0.646 ms at 1.6B 4096².
TILES = ((32, 256, 4), (16, 256, 4))


def conv_glu(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, input_bias: torch.Tensor | None = None,
    silu: int | None = None, tile: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Fused `conv_glu_reference`: hidden [B, 2C, h, w] in any memory layout → [B, C, h, w] in
    channels-last memory (tokens-major, what a following 1×1 conv or GEMM reads best).

    `silu` is EXACT or TANH; by default TANH for 16-bit tensors, EXACT for fp32 (the
    interpreter always runs EXACT: it has no inline assembly).
    """
    if not use_triton(hidden):
        return conv_glu_reference(hidden, weight, bias, input_bias)
    batch, channels2, height, width = hidden.shape
    if channels2 % 2 or weight.shape != (channels2, 1, 3, 3):
        raise ValueError(f"need a 3×3 depthwise weight [{channels2}, 1, 3, 3] and even channels, got {tuple(weight.shape)}")
    if input_bias is not None and input_bias.shape != (channels2,):
        raise ValueError(f"input_bias must be [{channels2}] (one per expanded channel), got {tuple(input_bias.shape)}")
    channels = channels2 // 2
    out = torch.empty(batch, channels, height, width, dtype=hidden.dtype, device=hidden.device,
                      memory_format=torch.channels_last)
    if silu is None:
        silu = EXACT if hidden.dtype == torch.float32 else TANH

    def grid_of(tile_y: int, block_c: int) -> tuple[int, int, int]:
        return triton.cdiv(channels, block_c), triton.cdiv(width, STRIP) * triton.cdiv(height, tile_y), batch

    if tile is None:
        tiles = ((4, 16, 1),) if INTERPRET else TILES
        tile = next((t for t in tiles if math.prod(grid_of(*t[:2])) >= 2 * multiprocessors(hidden)), tiles[-1])
    tile_y, block_c, warps = tile
    grid = grid_of(tile_y, block_c)
    _conv_glu_kernel[grid](
        hidden, weight, weight if bias is None else bias, weight if input_bias is None else input_bias, out,
        channels, height, width, weight.stride(0), weight.stride(2), weight.stride(3),
        *hidden.stride(), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        HAS_BIAS=bias is not None, HAS_INPUT_BIAS=input_bias is not None, TILE_Y=tile_y, BLOCK_C=block_c,
        SILU=EXACT if INTERPRET else silu, num_warps=warps, enable_fp_fusion=True,
    )
    return out
