"""The middle of Mix-FFN, fused: SiLU → 3×3 depthwise conv (+bias) → value·SiLU(gate), one pass.

Mix-FFN's expanded activation is its widest tensor (2 × 2.5 × D channels per token); eagerly it
goes through SiLU, the depthwise conv, a SiLU of the gate half and the product, each a full pass
in and out of memory. Here the expanded tensor is read once and only the product, half as wide,
is written.

A program owns a strip of TILE_X pixels × BLOCK_C channels and walks it down TILE_Y rows. Each
input row is loaded once (shifted left, centre, right: three SiLUs per element, not nine), and
added into the three output rows it touches: the one it completes, which is stored, the one
below, and the one after that. Zero padding comes from masked loads, since SiLU(0) = 0.

The kernel is bound by arithmetic more than by memory (at 4096², 0.87 ms against 0.37 ms to move
its bytes), and SiLU is most of it. So SiLU has, besides the EXACT x / (1 + exp(−x)) that torch
computes, a TANH form through the GPU's tanh.approx, x/2 + x/2·tanh(x/2): one special-function op
instead of two (0.90 ms against 1.18 ms at one tile size), its error (≤ 2⁻¹⁰·⁷ relative in tanh)
under the fp16 rounding of the stored result. 16-bit tensors use it; fp32 ones get the exact form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import INTERPRET, use_triton


def conv_glu_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """hidden [B, 2C, h, w] (the 1×1 expansion, before its SiLU) → [B, C, h, w]; op for op the
    middle of `MixFFN.forward`, with `weight`/`bias` those of its depthwise `conv_depth`."""
    x, gate = F.conv2d(F.silu(hidden), weight, bias, padding=1, groups=hidden.shape[1]).chunk(2, dim=1)
    return x * F.silu(gate)


EXACT, TANH = 0, 1  # how SiLU is computed (see the module's docstring)


@triton.jit
def _silu(x, SILU: tl.constexpr):
    """SiLU in fp32 of a tile of any float dtype."""
    x = x.to(tl.float32)
    if SILU == 1:  # TANH
        half = x * 0.5  # x·sigmoid(x) = x/2 + x/2·tanh(x/2)
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [half],
                                      dtype=tl.float32, is_pure=True, pack=1)
        return half * t + half
    else:
        return x / (1 + tl.exp(-x))


@triton.jit
def _silu_row(base, row, xs, chans, c_mask, height, width, stride_y, stride_x, stride_c, SILU: tl.constexpr):
    """SiLU of one input row, loaded shifted one pixel left, centred and shifted right: three
    [TILE_X, BLOCK_C] fp32 tiles, zero outside the image."""
    ptrs = base + row * stride_y + xs[:, None] * stride_x + chans[None, :] * stride_c
    rows = xs * 0 + row  # the row test as a vector: the interpreter rejects scalar & vector masks
    row_ok = ((rows >= 0) & (rows < height))[:, None] & c_mask[None, :]
    left = tl.load(ptrs - stride_x, mask=row_ok & ((xs >= 1) & (xs <= width))[:, None], other=0.0)
    centre = tl.load(ptrs, mask=row_ok & (xs < width)[:, None], other=0.0)
    right = tl.load(ptrs + stride_x, mask=row_ok & (xs + 1 < width)[:, None], other=0.0)
    return _silu(left, SILU), _silu(centre, SILU), _silu(right, SILU)


@triton.jit
def _tap_row(w_ptr, chans, c_mask, tap_row, stride_wt):
    """One row of the 3×3 kernel: three [1, BLOCK_C] fp32 weight rows (weights are tap-major, so
    each tap's channels load as one vector)."""
    w = w_ptr + tap_row * 3 * stride_wt + chans
    w0 = tl.load(w, mask=c_mask, other=0.0)[None, :]
    w1 = tl.load(w + stride_wt, mask=c_mask, other=0.0)[None, :]
    w2 = tl.load(w + 2 * stride_wt, mask=c_mask, other=0.0)[None, :]
    return w0, w1, w2


@triton.jit
def _apply(w0, w1, w2, left, centre, right):
    return w0 * left + w1 * centre + w2 * right


@triton.jit
def _conv_glu_kernel(
    h_ptr, w_ptr, bias_ptr, o_ptr,
    C, height, width, stride_wt,
    stride_hb, stride_hc, stride_hy, stride_hx,
    stride_ob, stride_oc, stride_oy, stride_ox,
    HAS_BIAS: tl.constexpr, TILE_X: tl.constexpr, TILE_Y: tl.constexpr, BLOCK_C: tl.constexpr,
    SILU: tl.constexpr,
):
    pid_c = tl.program_id(0)  # fastest: neighbouring programs share pixels, so rows stay in L2
    pid_xy = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    tiles_x = tl.cdiv(width, TILE_X)
    y0 = (pid_xy // tiles_x) * TILE_Y
    xs = (pid_xy % tiles_x) * TILE_X + tl.arange(0, TILE_X)
    chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = chans < C
    v_base = h_ptr + b * stride_hb
    g_base = v_base + C * stride_hc  # the gate half: channel C further on
    bias_v = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    bias_g = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        bias_v = tl.load(bias_ptr + chans, mask=c_mask, other=0.0).to(tl.float32)[None, :]
        bias_g = tl.load(bias_ptr + C + chans, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    # the 18 weight rows stay in registers for the whole strip
    v00, v01, v02 = _tap_row(w_ptr, chans, c_mask, 0, stride_wt)
    v10, v11, v12 = _tap_row(w_ptr, chans, c_mask, 1, stride_wt)
    v20, v21, v22 = _tap_row(w_ptr, chans, c_mask, 2, stride_wt)
    g00, g01, g02 = _tap_row(w_ptr + C, chans, c_mask, 0, stride_wt)
    g10, g11, g12 = _tap_row(w_ptr + C, chans, c_mask, 1, stride_wt)
    g20, g21, g22 = _tap_row(w_ptr + C, chans, c_mask, 2, stride_wt)

    # Input row y feeds output rows y + 1 (tap row 0), y (tap row 1) and y − 1 (tap row 2).
    # `done_*` accumulates the output row one above the input row, `next_*` the one level with it.
    lv, cv, rv = _silu_row(v_base, y0 - 1, xs, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, SILU)
    lg, cg, rg = _silu_row(g_base, y0 - 1, xs, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, SILU)
    done_v = _apply(v00, v01, v02, lv, cv, rv)
    done_g = _apply(g00, g01, g02, lg, cg, rg)
    lv, cv, rv = _silu_row(v_base, y0, xs, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, SILU)
    lg, cg, rg = _silu_row(g_base, y0, xs, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, SILU)
    done_v += _apply(v10, v11, v12, lv, cv, rv)
    done_g += _apply(g10, g11, g12, lg, cg, rg)
    next_v = _apply(v00, v01, v02, lv, cv, rv)
    next_g = _apply(g00, g01, g02, lg, cg, rg)

    o_ptrs = o_ptr + b * stride_ob + xs[:, None] * stride_ox + chans[None, :] * stride_oc
    store_mask = (xs < width)[:, None] & c_mask[None, :]
    for y in range(y0 + 1, tl.minimum(y0 + TILE_Y, height) + 1):
        lv, cv, rv = _silu_row(v_base, y, xs, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, SILU)
        lg, cg, rg = _silu_row(g_base, y, xs, chans, c_mask, height, width, stride_hy, stride_hx, stride_hc, SILU)
        value = done_v + _apply(v20, v21, v22, lv, cv, rv) + bias_v
        gate = done_g + _apply(g20, g21, g22, lg, cg, rg) + bias_g
        out = value * _silu(gate, SILU)
        tl.store(o_ptrs + (y - 1) * stride_oy, out.to(o_ptr.dtype.element_ty), mask=store_mask)
        done_v = next_v + _apply(v10, v11, v12, lv, cv, rv)
        done_g = next_g + _apply(g10, g11, g12, lg, cg, rg)
        next_v = _apply(v00, v01, v02, lv, cv, rv)
        next_g = _apply(g00, g01, g02, lg, cg, rg)


# (TILE_X, TILE_Y, BLOCK_C, num_warps), the best of those measured on an H100 at both published
# shapes: 0.87 ms for 1.6B at 4096² (eager: 3.36 ms), 0.043 ms for 0.6B at 1024² (eager: 0.124 ms).
# Bigger tiles spill registers; prefetching the next row in the loop measured no faster.
TILE = (8, 32, 64, 4)
# The kernel is latency-bound: 160 registers a thread leave room for 12 warps an SM (ncu, 1.6B at
# 4096²: 37% of DRAM bandwidth, 51% of issue slots). Capped at 128 it runs 0.77 ms instead of 0.86
# there, but 0.033 instead of 0.031 ms at 1024² (H100), so the cap is for large images only: from a
# 64×64 latent (2048², not measured) up.
MAX_REGISTERS, CAP_FROM_PIXELS = 128, 64 * 64


def conv_glu(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    silu: int | None = None, tile: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Fused `conv_glu_reference`: hidden [B, 2C, h, w] in any memory layout → [B, C, h, w] in
    channels-last memory (tokens-major, what a following 1×1 conv or GEMM reads best).

    `silu` is EXACT or TANH; by default TANH for 16-bit tensors, EXACT for fp32 (the
    interpreter always runs EXACT: it has no inline assembly).
    """
    if not use_triton(hidden):
        return conv_glu_reference(hidden, weight, bias)
    batch, channels2, height, width = hidden.shape
    if channels2 % 2 or weight.shape != (channels2, 1, 3, 3):
        raise ValueError(f"need a 3×3 depthwise weight [{channels2}, 1, 3, 3] and even channels, got {tuple(weight.shape)}")
    channels = channels2 // 2
    taps = weight.reshape(channels2, 9).t().float().contiguous()  # [9, 2C] fp32, 0.4 MB at 1.6B: per call
    out = torch.empty(batch, channels, height, width, dtype=hidden.dtype, device=hidden.device,
                      memory_format=torch.channels_last)
    tile_x, tile_y, block_c, warps = tile or ((4, 4, 16, 1) if INTERPRET else TILE)
    if silu is None:
        silu = EXACT if hidden.dtype == torch.float32 else TANH
    grid = (triton.cdiv(channels, block_c), triton.cdiv(width, tile_x) * triton.cdiv(height, tile_y), batch)
    cap = {} if INTERPRET or tile or height * width < CAP_FROM_PIXELS else {"maxnreg": MAX_REGISTERS}
    _conv_glu_kernel[grid](
        hidden, taps, taps if bias is None else bias, out,
        channels, height, width, taps.stride(0),
        *hidden.stride(), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        HAS_BIAS=bias is not None, TILE_X=tile_x, TILE_Y=tile_y, BLOCK_C=block_c,
        SILU=EXACT if INTERPRET else silu, num_warps=warps, **cap,
    )
    return out
