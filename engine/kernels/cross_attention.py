"""Cross-attention of the image tokens to each row's first `lengths[b]` text tokens, one pass.

SANA's text is at most 300 tokens, and under classifier-free guidance one row (the empty
prompt's) is much shorter than the other. A program owns BLOCK_M queries of one head of one row:
it loads them once, walks that row's real keys BLOCK_N at a time with the running-maximum softmax,
and stores the normalized output. Keys past a row's length are never read, so the padding costs
nothing and needs no mask. A head dim that is not a power of two runs as power-of-two column
chunks where that spares enough padding (72 as 64 + 16, see `head_chunks`), else padded to the next
power of two in registers only (112 → 128; masked loads).

Layouts are those the DiT hands over: q [B·L, heads, d] (the query projection's rows), k and v
[B·Lk, heads, d] (the text keys and values, each row `Lk` tokens long), out like q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import INTERPRET, use_triton

_LOG2E = 1.4426950408889634


def attend_prefix_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Softmax attention, row b's queries to its first lengths[b] keys, through a boolean mask."""
    rows, (total, heads, dim) = lengths.shape[0], q.shape
    k_len = k.shape[0] // rows
    q4, k4, v4 = (t.view(rows, -1, heads, dim).transpose(1, 2) for t in (q, k, v))
    keep = torch.arange(k_len, device=q.device) < lengths.to(q.device)[:, None]
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=keep[:, None, None, :])
    return out.transpose(1, 2).reshape(total, heads, dim)


@triton.jit
def _load_chunk(ptr, rows, row_mask, COLUMNS: tl.constexpr, FIRST: tl.constexpr, D: tl.constexpr):
    """A [rows, COLUMNS] block of head columns FIRST …, zero past D."""
    cols = FIRST + tl.arange(0, COLUMNS)
    return tl.load(ptr + rows[:, None] + cols[None, :], mask=row_mask[:, None] & (cols < D)[None, :], other=0.0)


@triton.jit
def _load_chunk_t(ptr, rows, row_mask, COLUMNS: tl.constexpr, FIRST: tl.constexpr, D: tl.constexpr):
    """`_load_chunk` transposed, [COLUMNS, rows]: the keys as the score's dot takes them."""
    cols = FIRST + tl.arange(0, COLUMNS)
    return tl.load(ptr + rows[None, :] + cols[:, None], mask=row_mask[None, :] & (cols < D)[:, None], other=0.0)


@triton.jit
def _store_chunk(ptr, rows, row_mask, acc, total, COLUMNS: tl.constexpr, FIRST: tl.constexpr, D: tl.constexpr):
    cols = FIRST + tl.arange(0, COLUMNS)
    out = acc / tl.where(total > 0, total, 1.0)[:, None]  # a row of no keys gives zeros
    tl.store(ptr + rows[:, None] + cols[None, :], out.to(ptr.dtype.element_ty),
             mask=row_mask[:, None] & (cols < D)[None, :])


@triton.jit
def _attend_prefix_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lengths_ptr, tokens, keys, qk_scale,
    HEADS: tl.constexpr, D: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, DC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head = tl.program_id(0)  # fastest: neighbouring programs read neighbouring columns of the same rows
    pid_m = tl.program_id(1)
    b = tl.program_id(2)
    length = tl.load(lengths_ptr + b)
    row: tl.constexpr = HEADS * D  # elements from one token to the next
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < tokens
    q_rows = (b * tokens + offs_m).to(tl.int64) * row
    q_head = q_ptr + head * D
    # The head's columns in up to three power-of-two chunks (see `head_chunks`), each its own dot.
    q_a = _load_chunk(q_head, q_rows, m_mask, DA, 0, D)
    if DB > 0:
        q_b = _load_chunk(q_head, q_rows, m_mask, DB, DA, D)
    if DC > 0:
        q_c = _load_chunk(q_head, q_rows, m_mask, DC, DA + DB, D)
    kv_base = (b * keys).to(tl.int64) * row + head * D
    k_head, v_head = k_ptr + kv_base, v_ptr + kv_base
    top = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running maximum of the scaled scores
    total = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of their exponentials
    acc_a = tl.zeros([BLOCK_M, DA], dtype=tl.float32)
    if DB > 0:
        acc_b = tl.zeros([BLOCK_M, DB], dtype=tl.float32)
    if DC > 0:
        acc_c = tl.zeros([BLOCK_M, DC], dtype=tl.float32)
    for start in range(0, length, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < length
        k_rows = offs_n * row
        scores = tl.dot(q_a, _load_chunk_t(k_head, k_rows, n_mask, DA, 0, D))
        if DB > 0:
            scores = tl.dot(q_b, _load_chunk_t(k_head, k_rows, n_mask, DB, DA, D), scores)
        if DC > 0:
            scores = tl.dot(q_c, _load_chunk_t(k_head, k_rows, n_mask, DC, DA + DB, D), scores)
        scores = tl.where(n_mask[None, :], scores * qk_scale, float("-inf"))  # log2 units
        new_top = tl.maximum(top, tl.max(scores, axis=1))
        rescale = tl.math.exp2(top - new_top)
        p = tl.math.exp2(scores - new_top[:, None])
        total = total * rescale + tl.sum(p, axis=1)
        p = p.to(q_ptr.dtype.element_ty)
        acc_a = tl.dot(p, _load_chunk(v_head, k_rows, n_mask, DA, 0, D), acc_a * rescale[:, None])
        if DB > 0:
            acc_b = tl.dot(p, _load_chunk(v_head, k_rows, n_mask, DB, DA, D), acc_b * rescale[:, None])
        if DC > 0:
            acc_c = tl.dot(p, _load_chunk(v_head, k_rows, n_mask, DC, DA + DB, D), acc_c * rescale[:, None])
        top = new_top
    o_head = o_ptr + head * D
    _store_chunk(o_head, q_rows, m_mask, acc_a, total, DA, 0, D)
    if DB > 0:
        _store_chunk(o_head, q_rows, m_mask, acc_b, total, DB, DA, D)
    if DC > 0:
        _store_chunk(o_head, q_rows, m_mask, acc_c, total, DC, DA + DB, D)


def head_chunks(dim: int) -> tuple[int, int, int]:
    """A head dim as up to three power-of-two column chunks of at least 16 (the dots' least width)
    where they spare at least a quarter of the padded columns, else one chunk, the next power of
    two. 72 → 64 + 16 (80 columns of products, not 128): 17.2 → 14.5 µs a call at 0.6B 1024². 112
    stays one chunk of 128: as 64 + 32 + 16 it ran 246 → 269 µs at 1.6B 4096², 19.8 → 21.2 at
    1.6B 1024² (H100, CUDA-graph replays, main and chunks alternating, 2026-12-08)."""
    whole = max(16, triton.next_power_of_2(dim))
    first = max(16, 1 << (dim.bit_length() - 1))
    rest = max(0, dim - first)
    second = 1 << (rest.bit_length() - 1) if rest >= 16 else 0
    rest -= second
    third = max(16, triton.next_power_of_2(rest)) if rest > 0 else 0
    if 4 * (first + second + third) > 3 * whole:
        return whole, 0, 0
    return first, second, third


# (BLOCK_M, BLOCK_N, warps, stages) by the head dim padded to a power of two. H100, CUDA-graph
# replays, rows of 40 and 300 keys, µs a call at 1.6B 4096² / 1.6B 1024² (head dim 112) and 0.6B
# 1024² (72). Programs in head-fastest order: 64 × 32 in 3 stages 248 / 19.1, 64 × 64 in 2 stages
# 257 / 20.4 and 14.5, in 3 stages 255 / 19.7 and 15.1, 64 × 32 in 3 stages at 0.6B 17.5;
# 128 × 64 in 8 warps 324 / 24.0 and 15.2 (2026-12-07). Row-block-fastest order, 64 × 64 in 2
# stages: 263 / 20.7 and 14.6; earlier there, 128 × 64 in 4 warps 281 / 24.9 / 19.4, 128 × 32
# 275 / 23.1 / 18.4, 128 × 128 in 8 warps 364 / 28.2 / 18.0. A max over the raw scores with the
# scale folded into the exponent's FMA, and the full key tiles unmasked, measured slower (64 × 64:
# 272 against 257). PyTorch's flash attention with per-row key counts: 279 / 28.0 / 19.7; cuDNN's,
# a call per row: 308 / 36.6 / 26.7.
TILES = {128: (64, 32, 4, 3)}
TILE = (64, 64, 4, 2)  # every other head dim


def attend_prefix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Row b's queries q [B·L, heads, d] to its first lengths[b] keys and values of k, v
    [B·Lk, heads, d] → [B·L, heads, d]; the Triton kernel for 16-bit CUDA tensors (and under the
    interpreter), else `attend_prefix_reference` (on CUDA its products would be TF32 in fp32)."""
    rows = lengths.shape[0]
    total, heads, dim = q.shape
    if total % rows or k.shape[0] % rows or k.shape[1:] != q.shape[1:] or v.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not split into {rows} rows")
    if not use_triton(q) or (q.is_cuda and q.dtype == torch.float32):
        return attend_prefix_reference(q, k, v, lengths)
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(dim))
    block_m, block_n, warps, stages = (16, 16, 1, 1) if INTERPRET else TILES.get(block_d, TILE)
    grid = (heads, triton.cdiv(total // rows, block_m), rows)
    chunk_a, chunk_b, chunk_c = head_chunks(dim)
    _attend_prefix_kernel[grid](
        q, k, v, out, lengths, total // rows, k.shape[0] // rows, dim ** -0.5 * _LOG2E,
        HEADS=heads, D=dim, DA=chunk_a, DB=chunk_b, DC=chunk_c, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=warps, num_stages=stages, enable_fp_fusion=True,
    )
    return out
