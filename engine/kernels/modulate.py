"""AdaLN around each DiT branch, fused: the modulated LayerNorm in front, the gated residual behind.

A SANA block reads its six AdaLN rows as `table[r] + modulation[:, r]` (shift, scale, gate for the
attention, then for the FFN; `table` is the block's learned [6, D], `modulation` the timestep's
[B, 6, D]). In eager PyTorch each use is four to six element-wise passes over the [B, N, D]
activations plus a small add for the rows; here each is one pass, the rows summed on the fly:

- `modulate`:        y = LayerNorm(x)·(1 + scale) + shift           (LayerNorm without affine)
- `add_modulate`:    x += branch, then y as above from the new x     (cross-attention's residual)
- `gated_residual`:  x + gate·branch, the branch optionally clamped to ±65504 (self-attention's)
- `gated_weight`:    gate·W, a projection's weight rows scaled by the gate, where one gate row
                     serves the whole batch: gate·(y Wᵀ) = y (gate·W)ᵀ (see `accelerate.Residual`);
                     its bias, gated too, rides as one more column, its input a column of ones

Both residual passes may add the branch's own bias too (`bias`): a 16-bit projection in front
then runs without it, since cuBLAS's bias epilogue costs more than the add here (see
`accelerate.unbiased`).

The DiT's final AdaLN (`OutputNorm`) is `modulate` too, with its own table's two rows (shift, scale).
All arithmetic is fp32; values are rounded to the tensor dtype once, when stored. For a W8A8
layer behind them, `modulate` and `add_modulate` hand y on quantized per token (`quantize=True`),
in the same pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from quant import QuantizedTokens, quantize_tokens
from quant.int8 import FP16_MAX
from quant.kernels import inverse_scale, store_quantized

from ._launch import multiprocessors, use_triton

SHIFT_MSA, SCALE_MSA, GATE_MSA, SHIFT_MLP, SCALE_MLP, GATE_MLP = range(6)  # the table's rows
# Columns a bias takes in a gated weight, and the ones its input brings (`linear_attention`'s
# `bias_column`): the bias and 63 zeros, so that 16-bit rows of the published widths (2240, 1152)
# stay 128-byte aligned. With 8 (16-byte rows) the attention's output rows were 4496 bytes apart
# and its head segments straddled sectors: 1.6B 4096², H100, attention with the column 317 → 285 µs
# a call, and to_out's cuBLAS GEMM 488 → 476 µs on the longer but aligned rows.
BIAS_COLUMNS = 64
_FP16_MAX = tl.constexpr(FP16_MAX)


def _row(table: torch.Tensor, modulation: torch.Tensor, row: int) -> torch.Tensor:
    """One AdaLN row per sample, [B, 1, D], exactly as `SanaBlock` takes it from `.chunk(6, dim=1)`."""
    return (table + modulation)[:, row : row + 1]


def modulate_reference(
    x: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor, shift_row: int, scale_row: int, eps: float
) -> torch.Tensor:
    """x [B, N, D] → LayerNorm(x)·(1 + scale) + shift, op for op as `SanaBlock.forward`."""
    shift, scale = _row(table, modulation, shift_row), _row(table, modulation, scale_row)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift


def add_modulate_reference(
    x: torch.Tensor, branch: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor,
    shift_row: int, scale_row: int, eps: float, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x += branch (+ bias [D], the branch's own) in place, then (x, modulate_reference(x, …))."""
    x += branch if bias is None else branch + bias
    return x, modulate_reference(x, table, modulation, shift_row, scale_row, eps)


def gated_residual_reference(
    x: torch.Tensor, branch: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor, gate_row: int,
    clamp: bool = False, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x + gate·(branch + bias) as a new tensor (bias [D], the branch's own, where given); `clamp`
    first clips the branch to ±65504, as `LinearSelfAttention` clips its output."""
    if bias is not None:
        branch = branch + bias
    if clamp:
        branch = branch.clamp(-FP16_MAX, FP16_MAX)
    return x + _row(table, modulation, gate_row) * branch


@triton.jit
def _ada_row(table_ptr, mod_ptr, sample, row, cols, col_mask, stride_tr, stride_mb, stride_mr):
    """[BLOCK_M, BLOCK_D] fp32: table[row] + modulation[sample, row] for each tile row's sample."""
    table = tl.load(table_ptr + row * stride_tr + cols, mask=col_mask, other=0.0).to(tl.float32)
    mod = tl.load(mod_ptr + sample[:, None] * stride_mb + row * stride_mr + cols[None, :],
                  mask=col_mask[None, :], other=0.0).to(tl.float32)
    return table[None, :] + mod


@triton.jit
def _normalized(x_ptr, branch_ptr, bias_ptr, offsets, cols, mask, D, eps,
                HAS_BRANCH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Rows of x (first += branch + bias, stored back, where HAS_BRANCH) → LayerNorm without
    affine, fp32. cols: the tile's [BLOCK_D] column indices."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_BRANCH:
        branch = tl.load(branch_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            branch += tl.load(bias_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        total = (x + branch).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + offsets, total, mask=mask)
        x = total.to(tl.float32)  # normalise the stored sum, as the reference does
    return _layer_norm(x, mask, D, eps)


@triton.jit
def _layer_norm(x, mask, D, eps):
    """fp32 rows → LayerNorm without affine; `mask` marks the row's real columns."""
    mean = tl.sum(x, axis=1) / D
    centred = tl.where(mask, x - mean[:, None], 0.0)
    return centred * tl.math.rsqrt(tl.sum(centred * centred, axis=1) / D + eps)[:, None]


@triton.jit
def _modulate_kernel(
    x_ptr, branch_ptr, bias_ptr, y_ptr, table_ptr, mod_ptr,
    M, T, D, eps, shift_row, scale_row,
    stride_tr, stride_mb, stride_mr,
    HAS_BRANCH: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < M
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]
    offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
    normalized = _normalized(x_ptr, branch_ptr, bias_ptr, offsets, cols, mask, D, eps, HAS_BRANCH, HAS_BIAS)
    sample = tl.minimum(rows, M - 1) // T
    shift = _ada_row(table_ptr, mod_ptr, sample, shift_row, cols, col_mask, stride_tr, stride_mb, stride_mr)
    scale = _ada_row(table_ptr, mod_ptr, sample, scale_row, cols, col_mask, stride_tr, stride_mb, stride_mr)
    tl.store(y_ptr + offsets, (normalized * (1 + scale) + shift).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ada_vector(table_ptr, mod_ptr, sample, row, cols, col_mask, stride_tr, stride_mb, stride_mr):
    """[len(cols)] fp32: table[row] + modulation[sample, row], for one sample."""
    return (tl.load(table_ptr + row * stride_tr + cols, mask=col_mask, other=0.0).to(tl.float32)
            + tl.load(mod_ptr + sample * stride_mb + row * stride_mr + cols, mask=col_mask, other=0.0).to(tl.float32))


@triton.jit
def _load_chunk(x_ptr, branch_ptr, base, cols, mask, HAS_BRANCH: tl.constexpr):
    """A chunk of a row of x and, where HAS_BRANCH, of the branch, as stored."""
    x = tl.load(x_ptr + base + cols, mask=mask, other=0.0)
    branch = x  # unused where there is no branch
    if HAS_BRANCH:
        branch = tl.load(branch_ptr + base + cols, mask=mask, other=0.0)
    return x, branch


@triton.jit
def _summed(x, branch, x_ptr, bias_ptr, base, cols, col_mask, HAS_BRANCH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A loaded chunk of x, fp32; where HAS_BRANCH, x + branch (+ bias) stored back first."""
    if HAS_BRANCH:
        branch = branch.to(tl.float32)
        if HAS_BIAS:
            branch += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        x = (x.to(tl.float32) + branch).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + base + cols, x, mask=col_mask)
    return x.to(tl.float32)  # the stored sum is what is normalised, as the reference does


@triton.jit
def _modulate_int8_kernel(
    x_ptr, branch_ptr, bias_ptr, q_ptr, s_ptr, table_ptr, mod_ptr,
    M, T, D, eps, shift_row, scale_row,
    stride_tr, stride_mb, stride_mr,
    HAS_BRANCH: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """`_modulate_kernel` handing y on per-token int8, as the quantizer would make it of the 16-bit
    y (`quantize_tokens`' arithmetic, op for op). A program walks ROWS rows of one sample (ROWS
    divides T) with its shift and scale loaded once, each row in one or two warps: a row is two
    power-of-two chunks (2240 = 2048 + 192 of 256 columns; 1152 = 1024 + 128), not one padded to
    4096, so the LayerNorm's two sums and the absmax are warp shuffles, with no barrier between
    them. The sums add the two chunks' partial sums, so y may differ in its last bit from the
    16-bit `modulate`'s, which sums the row as one."""
    first = tl.program_id(0) * ROWS
    cols_a = tl.arange(0, BLOCK_A)
    cols_b = BLOCK_A + tl.arange(0, BLOCK_B)
    mask_a = cols_a < D
    mask_b = cols_b < D
    sample = first // T
    shift_a = _ada_vector(table_ptr, mod_ptr, sample, shift_row, cols_a, mask_a, stride_tr, stride_mb, stride_mr)
    shift_b = _ada_vector(table_ptr, mod_ptr, sample, shift_row, cols_b, mask_b, stride_tr, stride_mb, stride_mr)
    scale_a = 1 + _ada_vector(table_ptr, mod_ptr, sample, scale_row, cols_a, mask_a, stride_tr, stride_mb, stride_mr)
    scale_b = 1 + _ada_vector(table_ptr, mod_ptr, sample, scale_row, cols_b, mask_b, stride_tr, stride_mb, stride_mr)
    # Each row's loads go out a row ahead, before the arithmetic of the row above, so that their
    # latency hides behind it (the last row's "next" loads are masked off).
    base = first.to(tl.int64) * D
    raw_a, raw_branch_a = _load_chunk(x_ptr, branch_ptr, base, cols_a, mask_a, HAS_BRANCH)
    raw_b, raw_branch_b = _load_chunk(x_ptr, branch_ptr, base, cols_b, mask_b, HAS_BRANCH)
    for i in range(ROWS):
        row = first + i
        base = row.to(tl.int64) * D
        ahead_a = mask_a & (cols_a * 0 + i + 1 < ROWS)  # as vectors: the interpreter rejects scalar & vector
        ahead_b = mask_b & (cols_b * 0 + i + 1 < ROWS)
        next_a, next_branch_a = _load_chunk(x_ptr, branch_ptr, base + D, cols_a, ahead_a, HAS_BRANCH)
        next_b, next_branch_b = _load_chunk(x_ptr, branch_ptr, base + D, cols_b, ahead_b, HAS_BRANCH)
        xa = _summed(raw_a, raw_branch_a, x_ptr, bias_ptr, base, cols_a, mask_a, HAS_BRANCH, HAS_BIAS)
        xb = _summed(raw_b, raw_branch_b, x_ptr, bias_ptr, base, cols_b, mask_b, HAS_BRANCH, HAS_BIAS)
        raw_a, raw_branch_a, raw_b, raw_branch_b = next_a, next_branch_a, next_b, next_branch_b
        mean = (tl.sum(xa, axis=0) + tl.sum(xb, axis=0)) / D
        ca = tl.where(mask_a, xa - mean, 0.0)
        cb = tl.where(mask_b, xb - mean, 0.0)
        rstd = tl.math.rsqrt((tl.sum(ca * ca, axis=0) + tl.sum(cb * cb, axis=0)) / D + eps)
        # the 16-bit y a separate pass would read
        ya = (ca * rstd * scale_a + shift_a).to(x_ptr.dtype.element_ty).to(tl.float32)
        yb = (cb * rstd * scale_b + shift_b).to(x_ptr.dtype.element_ty).to(tl.float32)
        token = row + tl.zeros([1], dtype=tl.int32)  # the quantizer's helpers take rows of tokens
        absmax = tl.maximum(tl.max(tl.abs(ya), axis=0), tl.max(tl.abs(yb), axis=0)) + tl.zeros([1], dtype=tl.float32)
        inv = inverse_scale(absmax, s_ptr, token, token < M)
        store_quantized(ya[None, :], inv, q_ptr, token, cols_a, token < M, D)
        store_quantized(yb[None, :], inv, q_ptr, token, cols_b, token < M, D)


@triton.jit
def _gated_residual_kernel(
    x_ptr, branch_ptr, bias_ptr, out_ptr, table_ptr, mod_ptr,
    M, T, D, gate_row,
    stride_tr, stride_mb, stride_mr,
    CLAMP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    mask = (rows < M)[:, None] & col_mask[None, :]
    offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    branch = tl.load(branch_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        branch += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if CLAMP:
        branch = tl.minimum(tl.maximum(branch, -_FP16_MAX), _FP16_MAX)
    sample = tl.minimum(rows, M - 1) // T
    gate = _ada_row(table_ptr, mod_ptr, sample, gate_row, cols, col_mask, stride_tr, stride_mb, stride_mr)
    tl.store(out_ptr + offsets, (x + gate * branch).to(out_ptr.dtype.element_ty), mask=mask)


def gated_weight_reference(
    weight: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor, gate_row: int, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """weight [N, K] with row n times the gate's element n; modulation has one sample ([1, 6, N]).
    With a bias [N]: [N, K + BIAS_COLUMNS], the gated bias in column K, zeros after it."""
    gate = table[gate_row].float() + modulation[0, gate_row].float()
    if bias is not None:
        pad = torch.zeros(weight.shape[0], BIAS_COLUMNS - 1, dtype=weight.dtype, device=weight.device)
        weight = torch.cat([weight, bias[:, None].to(weight.dtype), pad], dim=1)
    return (weight.float() * gate[:, None]).to(weight.dtype)


@triton.jit
def _gated_weight_kernel(w_ptr, bias_ptr, out_ptr, table_ptr, mod_ptr, N, K, K_OUT, gate_row, stride_tr, stride_mr,
                         HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < N
    gate = (tl.load(table_ptr + gate_row * stride_tr + rows, mask=row_mask, other=0.0).to(tl.float32)
            + tl.load(mod_ptr + gate_row * stride_mr + rows, mask=row_mask, other=0.0).to(tl.float32))
    w = tl.load(w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                mask=row_mask[:, None] & (cols < K)[None, :], other=0.0).to(tl.float32)
    if HAS_BIAS:  # column K: the bias; the columns after it: zeros (the masked load's)
        bias = tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        w = tl.where((cols == K)[None, :], bias[:, None], w)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K_OUT + cols[None, :], (w * gate[:, None]).to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (cols < K_OUT)[None, :])


def gated_weight(
    weight: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor, gate_row: int, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused `gated_weight_reference`, one pass (the gate's sum included) into a new tensor."""
    if modulation.shape[0] != 1:
        raise ValueError(f"one gate row for the whole batch is needed, got modulation {tuple(modulation.shape)}")
    if not use_triton(weight):
        return gated_weight_reference(weight, table, modulation, gate_row, bias)
    weight = weight.contiguous()
    n, k = weight.shape
    if table.dim() != 2 or table.shape[1] != n or modulation.shape[1:] != table.shape:
        raise ValueError(f"table {tuple(table.shape)} / modulation {tuple(modulation.shape)} do not fit weight {(n, k)}")
    if table.stride(-1) != 1 or modulation.stride(-1) != 1:
        raise ValueError("table and modulation need unit stride along N")
    if bias is not None and (bias.shape != (n,) or bias.stride(0) != 1):
        raise ValueError(f"bias {tuple(bias.shape)} must be [{n}] with unit stride")
    k_out = k + (BIAS_COLUMNS if bias is not None else 0)
    out = torch.empty(n, k_out, dtype=weight.dtype, device=weight.device)
    _gated_weight_kernel[(triton.cdiv(n, 16), triton.cdiv(k_out, 256))](
        weight, weight if bias is None else bias, out, table, modulation, n, k, k_out, gate_row,
        table.stride(0), modulation.stride(1), HAS_BIAS=bias is not None, BLOCK_N=16, BLOCK_K=256, num_warps=4,
        enable_fp_fusion=True,
    )
    return out


def _ada_strides(x: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor) -> tuple[int, int, int]:
    batch, _, dim = x.shape
    if (table.dim() != 2 or table.shape[1] != dim or modulation.shape[1:] != table.shape
            or modulation.shape[0] not in (1, batch)):
        raise ValueError(f"table {tuple(table.shape)} / modulation {tuple(modulation.shape)} do not fit x {tuple(x.shape)}")
    if table.stride(-1) != 1 or modulation.stride(-1) != 1:
        raise ValueError("table and modulation need unit stride along D")
    stride_mb = modulation.stride(0) if modulation.shape[0] == batch else 0
    return table.stride(0), stride_mb, modulation.stride(1)


def modulate(
    x: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor, shift_row: int, scale_row: int, eps: float,
    quantize: bool = False,
) -> torch.Tensor | QuantizedTokens:
    """Fused `modulate_reference`: x [B, N, D] → a new contiguous y [B, N, D] in x's dtype; with
    `quantize`, y per-token int8 for a W8A8 layer in the same pass (`quant.QuantizedTokens`,
    values [B, N, D], scale [B, N, 1]: `quant.quantize_tokens` of the 16-bit y)."""
    if not use_triton(x):
        y = modulate_reference(x, table, modulation, shift_row, scale_row, eps)
        return _quantized(y) if quantize else y
    x = x.contiguous()
    return _launch_modulate(x, None, None, table, modulation, shift_row, scale_row, eps, quantize)


def add_modulate(
    x: torch.Tensor, branch: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor,
    shift_row: int, scale_row: int, eps: float, quantize: bool = False, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | QuantizedTokens]:
    """Fused `add_modulate_reference`: x (contiguous, updated in place) += branch (+ bias);
    returns (x, y), y quantized as in `modulate` where asked."""
    if not use_triton(x):
        x, y = add_modulate_reference(x, branch, table, modulation, shift_row, scale_row, eps, bias)
        return x, _quantized(y) if quantize else y
    if not x.is_contiguous():
        raise ValueError("add_modulate updates x in place: it must be contiguous")
    branch = branch.reshape(x.shape).contiguous()
    return x, _launch_modulate(x, branch, _checked_bias(bias, x), table, modulation, shift_row, scale_row, eps,
                               quantize)


def _checked_bias(bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A branch's bias as the kernels read it: [D], unit stride."""
    if bias is not None and (bias.shape != x.shape[-1:] or bias.stride(0) != 1):
        raise ValueError(f"bias {tuple(bias.shape)} must be [{x.shape[-1]}] with unit stride")
    return bias


def _quantized(y: torch.Tensor) -> QuantizedTokens:
    values, scale = quantize_tokens(y)
    return QuantizedTokens(values.view(y.shape), scale.view(*y.shape[:-1], 1))


# Rows an int8 handover program walks: as many as keep at least two programs an SM, up to 8, a
# power of two dividing a sample's tokens; one warp a row, two for add_modulate's 8-row programs.
# H100, CUDA-graph replays, µs a call, modulate → int8 / add_modulate → int8, 2026-12-07:
#   2 × 16384 × 2240: 8 rows, a warp 98.7 / 212.1, two warps 118.9 / 192.3; 16 rows, a warp
#                     98.7 / 207.3; the row in one 4096-wide tile of 4 warps before: 146.3 / 214.0
#   2 × 1024 × 2240:  4 rows, a warp 9.7 / 12.7;  8 rows 15.2 / 20.2;  before 14.4 / 13.0
#   2 × 1024 × 1152:  4 rows, a warp 6.3 / 6.8;   8 rows 10.2 / 10.8;  before 7.5 / 8.8
# (the 4096-wide tile, before that: 8 rows 155 / 213, 1 row 211 / 238; modulate or add_modulate
# and then the quantizer: 193 / 277 at 2 × 16384 × 2240). The plain kernel keeps one row a program
# of 4 warps: walking rows measured slower there (126 vs 119 µs).
HANDOVER_ROWS = 8


def _handover_rows(rows: int, tokens: int, x: torch.Tensor) -> int:
    per_program = min(HANDOVER_ROWS, tokens & -tokens)  # a power of two dividing the sample's tokens
    while per_program > 1 and rows // per_program < 2 * multiprocessors(x):
        per_program //= 2
    return per_program


def _launch_modulate(x, branch, bias, table, modulation, shift_row, scale_row, eps, quantize):
    batch, tokens, dim = x.shape
    rows, block_d = batch * tokens, triton.next_power_of_2(dim)
    args = (rows, tokens, dim, eps, shift_row, scale_row, *_ada_strides(x, table, modulation))
    has_branch = branch is not None
    branch = branch if has_branch else x  # unused pointers where there is none
    has_bias = bias is not None
    bias = bias if has_bias else x
    if quantize:
        values = torch.empty(batch, tokens, dim, dtype=torch.int8, device=x.device)
        scale = torch.empty(batch, tokens, 1, dtype=torch.float32, device=x.device)
        per_program = _handover_rows(rows, tokens, x)
        block_a = 1 << (dim.bit_length() - 1)  # the row's two chunks: see the kernel
        block_b = max(16, triton.next_power_of_2(dim - block_a))
        _modulate_int8_kernel[(rows // per_program,)](
            x, branch, bias, values, scale, table, modulation, *args,
            HAS_BRANCH=has_branch, HAS_BIAS=has_bias, ROWS=per_program, BLOCK_A=block_a, BLOCK_B=block_b,
            num_warps=2 if has_branch and per_program == HANDOVER_ROWS else 1,
            enable_fp_fusion=False,  # the quantizer's arithmetic, op for op
        )
        return QuantizedTokens(values, scale)
    y = torch.empty_like(x)
    block_m = max(1, 4096 // block_d)
    _modulate_kernel[(triton.cdiv(rows, block_m),)](
        x, branch, bias, y, table, modulation, *args,
        HAS_BRANCH=has_branch, HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_D=block_d,
        # Four warps: 0.120 ms a call against eight warps' 0.148 at the 1.6B width, 2 × 16384 tokens;
        # 0.071 against 0.075 at the 0.6B width (H100, CUDA-graph timing). More rows a program
        # measured slower at the 1.6B width.
        num_warps=4, enable_fp_fusion=True,
    )
    return y


def gated_residual(
    x: torch.Tensor, branch: torch.Tensor, table: torch.Tensor, modulation: torch.Tensor, gate_row: int,
    clamp: bool = False, out: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused `gated_residual_reference`, into `out` (may be x itself) or a new contiguous tensor."""
    if not use_triton(x):
        result = gated_residual_reference(x, branch, table, modulation, gate_row, clamp, bias)
        return result if out is None else out.copy_(result)
    x = x.contiguous()
    branch = branch.reshape(x.shape).contiguous()
    if out is None:
        out = torch.empty_like(x)
    elif not out.is_contiguous() or out.shape != x.shape:
        raise ValueError(f"out must be contiguous {tuple(x.shape)}")
    bias = _checked_bias(bias, x)
    batch, tokens, dim = x.shape
    rows = batch * tokens
    block_d = min(triton.next_power_of_2(dim), 256)
    block_m = 4096 // block_d
    _gated_residual_kernel[(triton.cdiv(rows, block_m), triton.cdiv(dim, block_d))](
        x, branch, x if bias is None else bias, out, table, modulation, rows, tokens, dim, gate_row,
        *_ada_strides(x, table, modulation),
        CLAMP=clamp, HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4,
        enable_fp_fusion=True,
    )
    return out
