"""SANA's ReLU linear attention, fused: q, k, v in, attended values out, nothing in between.

out_i = Σ_j (q_i·k_j) v_j / Σ_j (q_i·k_j) = q_i·(KᵀV) / q_i·(Kᵀ1), with q, k through ReLU. Two
launches, each one pass over its inputs, reading the projections where they lie ([B, N, H·d], head
h in columns h·d … h·d + d − 1) and writing the output there too, so no transpose, no padded V
and no fp32 copy of q, k or v ever reaches memory:

1. per (batch × head, slice of the tokens): KᵀV [d, d] and Kᵀ1 [d] over that slice, in fp32, to a
   small workspace. Slicing N is what fills the GPU when B·H is only ~100 (or 72) programs.
2. per (batch × head, slice): sum the slices' partials (deterministic, no atomics), then
   q·(KᵀV) / (q·Kᵀ1 + ε) for each of the slice's tokens, in fp32, written in the input dtype.

Where `to_out`'s bias rides in its weight (`accelerate.Residual`, the gate folded into a 16-bit
weight), the output rows carry `BIAS_COLUMNS` more columns, (1, 0, …, 0), written by the last
head's programs: [mixed, 1] · [W, b]ᵀ = W·mixed + b, with no pass of its own.

In W8A8, `to_out` takes this output per token in int8, so `quantize_tokens` reads it back. A third
launch that did without that pass measured slower (H100, 2026-12-07, CUDA-graph replays, side by
side, its best of 18 settings of tokens × warps × stages): its programs owned whole token rows and
ran over the heads twice, for each row's absmax and then to quantize, recomputing q·(KᵀV) from
each head's summed KᵀV instead of storing the 16-bit output. KᵀV, output and quantizer: 347 → 512
µs at 1.6B 4096², 34 → 137 at 1.6B 1024², 20 → 72 at 0.6B 1024² (bit-equal to the two-pass result
where its tile matched this kernel's). The INT8 CFG step at 1.6B 4096², interleaved: 122.3–123.0
→ 124.9–126.0 ms. The serial walk over 70 heads, a KᵀV load from L2 each, is latency-bound, and
at 1024² there are too few programs to hide it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from quant.int8 import FP16_MAX

from ._launch import INTERPRET, multiprocessors, use_triton
from .modulate import BIAS_COLUMNS

EPS = 1e-15  # as diffusers: keeps an all-zero query (every q·k = 0) at 0 instead of 0/0
_EPS = tl.constexpr(EPS)
_FP16_MAX = tl.constexpr(FP16_MAX)


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """q, k, v [B, N, H·d] (q and k before the ReLU) → [B, N, H·d] in q's dtype; exactly the
    arithmetic of `LinearSelfAttention.forward` between its projections and `to_out`."""
    batch, tokens, _ = q.shape
    q = F.relu(q).view(batch, tokens, heads, -1).transpose(1, 2)
    k = F.relu(k).view(batch, tokens, heads, -1).transpose(1, 2)
    v = v.view(batch, tokens, heads, -1).transpose(1, 2)
    kv = k.float().transpose(-1, -2) @ F.pad(v.float(), (0, 1), value=1.0)  # ones column → Kᵀ1
    out = q.float() @ kv
    out = out[..., :-1] / (out[..., -1:] + EPS)
    # A weighted mean of V's rows cannot leave V's range: this clamp only guards the cast.
    out = out.clamp(-FP16_MAX, FP16_MAX)
    return out.transpose(1, 2).reshape(batch, tokens, -1).to(q.dtype)


@triton.jit
def _relu_tile(ptr, offs_n, offs_d, n_mask, d_mask, stride_n):
    tile = tl.load(ptr + offs_n[:, None].to(tl.int64) * stride_n + offs_d[None, :],
                   mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    return tl.where(tile > 0, tile, 0.0).to(tile.dtype)


@triton.jit
def _kv_partial_kernel(
    k_ptr, v_ptr, kv_ptr, ks_ptr,
    N, H, chunk, S,
    stride_kb, stride_kn, stride_vb, stride_vn,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, FP32_INPUT: tl.constexpr,
):
    bh = tl.program_id(0)  # fastest: neighbouring programs read neighbouring heads of one token row
    s = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    column = (bh % H) * HEAD_DIM
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    k_base = k_ptr + b * stride_kb + column
    v_base = v_ptr + b * stride_vb + column

    kv = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    ks = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = s * chunk
    end = tl.minimum(start + chunk, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        k = _relu_tile(k_base, offs_n, offs_d, n_mask, d_mask, stride_kn)
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        # 16-bit products are exact in fp32, so the tensor cores' fp32 accumulation is the fp32
        # product the reference takes; fp32 input must not drop to tf32.
        if FP32_INPUT:
            kv = tl.dot(tl.trans(k), v, kv, input_precision="ieee")
        else:
            kv = tl.dot(tl.trans(k), v, kv)
        ks += tl.sum(k.to(tl.float32), axis=0)

    part = bh * S + s
    square = offs_d[:, None] * BLOCK_D + offs_d[None, :]
    tl.store(kv_ptr + part * BLOCK_D * BLOCK_D + square, kv)
    tl.store(ks_ptr + part * BLOCK_D + offs_d, ks)


@triton.jit
def _attend_kernel(
    q_ptr, kv_ptr, ks_ptr, o_ptr,
    N, H, chunk, S,
    stride_qb, stride_qn, stride_ob, stride_on,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BIAS_COLUMN: tl.constexpr, PAD: tl.constexpr,
):
    bh = tl.program_id(0)
    s = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    column = (bh % H) * HEAD_DIM
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM

    square = offs_d[:, None] * BLOCK_D + offs_d[None, :]
    kv = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    ks = tl.zeros([BLOCK_D], dtype=tl.float32)
    for part in range(bh * S, bh * S + S):
        kv += tl.load(kv_ptr + part * BLOCK_D * BLOCK_D + square)
        ks += tl.load(ks_ptr + part * BLOCK_D + offs_d)

    q_base = q_ptr + b * stride_qb + column
    o_base = o_ptr + b * stride_ob + column
    start = s * chunk
    end = tl.minimum(start + chunk, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        q = _relu_tile(q_base, offs_n, offs_d, n_mask, d_mask, stride_qn).to(tl.float32)
        numerator = tl.dot(q, kv, input_precision=DOT_PRECISION)
        denominator = tl.sum(q * ks[None, :], axis=1)
        out = numerator / (denominator[:, None] + _EPS)
        out = tl.minimum(tl.maximum(out, -_FP16_MAX), _FP16_MAX)
        tl.store(o_base + offs_n[:, None].to(tl.int64) * stride_on + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=n_mask[:, None] & d_mask[None, :])
        if BIAS_COLUMN:  # noqa: SIM102 (a compile-time test: without the column, no code at all)
            if bh % H == H - 1:  # the last head's columns end where the bias's column begins
                offs_p = tl.arange(0, PAD)
                ones = tl.where(offs_p == 0, 1.0, 0.0)[None, :] + tl.zeros([BLOCK_N, PAD], dtype=tl.float32)
                tl.store(o_base + HEAD_DIM + offs_n[:, None].to(tl.int64) * stride_on + offs_p[None, :],
                         ones.to(o_ptr.dtype.element_ty), mask=n_mask[:, None])


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
    splits: int | None = None, dot_precision: str = "tf32x3", bias_column: bool = False,
) -> torch.Tensor:
    """Fused `linear_attention_reference`: q, k, v [B, N, H·d] with unit channel stride (any token
    and batch strides) → a new [B, N, H·d] tensor in q's dtype; with `bias_column`,
    [B, N, H·d + BIAS_COLUMNS], each row's extra columns (1, 0, …, 0) (see the module's docstring).

    `splits` (how many slices of N) defaults to enough programs for ~8 per SM. `dot_precision` is
    Triton's for the fp32 q·(KᵀV) product: "tf32x3" (three tensor-core passes, fp32-accurate:
    0.31 ms at the 1.6B 4096² shape on an H100, with the launch settings before the ones below)
    or "ieee" (the FMA units: 0.39 ms, likewise).
    """
    if not use_triton(q):
        out = linear_attention_reference(q, k, v, heads)
        if not bias_column:
            return out
        ones = torch.zeros(*out.shape[:-1], BIAS_COLUMNS, dtype=out.dtype, device=out.device)
        ones[..., 0] = 1
        return torch.cat([out, ones], dim=-1)
    batch, tokens, channels = q.shape
    if channels % heads:
        raise ValueError(f"{channels} channels do not split into {heads} heads")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape != q.shape or t.stride(-1) != 1:
            raise ValueError(f"{name} {tuple(t.shape)} must be {tuple(q.shape)} with unit channel stride")
    head_dim = channels // heads
    block_d = max(16, triton.next_power_of_2(head_dim))
    # Tokens a loop step: 128 for KᵀV, 64 for the output (whose fp32 tiles take more registers).
    # With ~8 programs an SM and four stages these measured fastest of 90 settings each on an H100
    # (1.6B, 2 × 16384 tokens: 0.150 → 0.131 ms for KᵀV, 0.153 → 0.136 ms for the output).
    kv_block_n, out_block_n = (16, 16) if INTERPRET else (128, 64)
    if splits is None:
        splits = triton.cdiv(8 * multiprocessors(q), batch * heads)
    splits = max(1, min(splits, triton.cdiv(tokens, kv_block_n)))
    chunk = triton.cdiv(triton.cdiv(tokens, splits), kv_block_n) * kv_block_n
    splits = triton.cdiv(tokens, chunk)

    kv = torch.empty(batch * heads, splits, block_d, block_d, dtype=torch.float32, device=q.device)
    ks = torch.empty(batch * heads, splits, block_d, dtype=torch.float32, device=q.device)
    out = torch.empty(batch, tokens, channels + (BIAS_COLUMNS if bias_column else 0), dtype=q.dtype, device=q.device)
    grid = (batch * heads, splits)
    _kv_partial_kernel[grid](
        k, v, kv, ks, tokens, heads, chunk, splits,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=kv_block_n, FP32_INPUT=q.dtype == torch.float32,
        num_warps=4, num_stages=4, enable_fp_fusion=True,
    )
    _attend_kernel[grid](
        q, kv, ks, out, tokens, heads, chunk, splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=out_block_n, DOT_PRECISION=dot_precision,
        BIAS_COLUMN=bias_column, PAD=BIAS_COLUMNS, num_warps=4, num_stages=4, enable_fp_fusion=True,
    )
    return out
