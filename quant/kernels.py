"""Triton kernels for W8A8: the per-token quantizer (with optional fused pre-op) and the int8 GEMM,
whose epilogue can also add its result, gated, into a residual stream (`int8.GatedResidual`).

Each kernel computes the formula of its reference in `int8.py`, op for op and in the same order,
and is compiled without FMA contraction (`enable_fp_fusion=False`), so the quantized integers and
the int32 accumulators match the reference bit for bit. The one exception is the GLU pre-op: its
SiLU goes through the GPU's exp, which may differ from torch's in the last ulp and so move a value
that sits on a rounding boundary by one quantization step.

The module imports Triton at import time; `ops.py` imports it only when a CUDA tensor arrives, so
CPU-only installs never need Triton. Under `TRITON_INTERPRET=1` both kernels run on CPU tensors
(the tests use that on small shapes).
"""

from __future__ import annotations

import functools

from .triton_support import require_triton

require_triton()  # before Triton's own imports below: a too old release fails here, saying why

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from . import int8 as ref  # noqa: E402

_QMAX = tl.constexpr(float(ref.QMAX))
_MIN_ABSMAX = tl.constexpr(ref.MIN_ABSMAX)
_ROUND_MAGIC = tl.constexpr(ref.ROUND_MAGIC)
_FP16_MAX = tl.constexpr(ref.FP16_MAX)

PRE_NONE, PRE_MODULATE, PRE_GLU = 0, 1, 2
ONE_PASS_MAX_CHANNELS = 8192
_INTERPRET = triton.knobs.runtime.interpret

# ---------------------------------------------------------------------------------------------
# Per-token quantization, optionally fused with the op that produces the activation.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_pre_op(
    x_ptr, shift_ptr, scale_ptr, b, offs_t, offs_c, t_mask, C,
    stride_xb, stride_xt, stride_xc, stride_mb,
    PRE_OP: tl.constexpr,
):
    """A [BLOCK_T, BLOCK_C] fp32 tile of the activation after the pre-op; zero outside the tensor."""
    c_mask = offs_c < C
    mask = t_mask[:, None] & c_mask[None, :]
    rows = x_ptr + b * stride_xb + offs_t[:, None] * stride_xt
    x = tl.load(rows + offs_c[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
    if PRE_OP == 1:  # PRE_MODULATE: AdaLN, one (shift, scale) row per sample
        shift = tl.load(shift_ptr + b * stride_mb + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + b * stride_mb + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        x = x * (1 + scale[None, :]) + shift[None, :]
    elif PRE_OP == 2:  # PRE_GLU: the gate is the same token's channel C further on
        gate = tl.load(rows + (offs_c[None, :] + C) * stride_xc, mask=mask, other=0.0).to(tl.float32)
        x = x * tl.math.div_rn(gate, 1 + tl.exp(-gate))
    return x


@triton.jit
def inverse_scale(absmax, s_ptr, token, t_mask):
    """Store each token's scale, absmax / 127; return 127 / absmax, what its values are multiplied by."""
    absmax = tl.maximum(absmax, _MIN_ABSMAX)
    tl.store(s_ptr + token, tl.math.div_rn(absmax, _QMAX), mask=t_mask)
    return tl.math.div_rn(tl.zeros_like(absmax) + _QMAX, absmax)


@triton.jit
def store_quantized(v, inv, q_ptr, token, offs_c, t_mask, C):
    """v · inv rounded to the nearest integer, ties to even as torch.round, stored as int8."""
    y = v * inv[:, None]
    y = (y + _ROUND_MAGIC) - _ROUND_MAGIC
    q = tl.minimum(tl.maximum(y, -_QMAX), _QMAX).to(tl.int8)
    tl.store(q_ptr + token[:, None] * C + offs_c[None, :], q, mask=t_mask[:, None] & (offs_c < C)[None, :])


@triton.jit
def _quantize_tokens_kernel(
    x_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr,
    T, C,
    stride_xb, stride_xt, stride_xc, stride_mb,
    PRE_OP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, ONE_PASS: tl.constexpr,
):
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    token = b * T + offs_t

    if ONE_PASS:  # the whole row fits one tile (BLOCK_C ≥ C): read once, quantize from registers
        offs_c = tl.arange(0, BLOCK_C)
        v = _load_pre_op(x_ptr, shift_ptr, scale_ptr, b, offs_t, offs_c, t_mask, C,
                         stride_xb, stride_xt, stride_xc, stride_mb, PRE_OP)
        inv = inverse_scale(tl.max(tl.abs(v), axis=1), s_ptr, token, t_mask)
        store_quantized(v, inv, q_ptr, token, offs_c, t_mask, C)
    else:
        # Wider rows: two passes (absmax, then quantize); the second read of a BLOCK_T × C tile
        # mostly hits L2.
        absmax = tl.zeros([BLOCK_T], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            v = _load_pre_op(x_ptr, shift_ptr, scale_ptr, b, offs_t, offs_c, t_mask, C,
                             stride_xb, stride_xt, stride_xc, stride_mb, PRE_OP)
            absmax = tl.maximum(absmax, tl.max(tl.abs(v), axis=1))
        inv = inverse_scale(absmax, s_ptr, token, t_mask)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            v = _load_pre_op(x_ptr, shift_ptr, scale_ptr, b, offs_t, offs_c, t_mask, C,
                             stride_xb, stride_xt, stride_xc, stride_mb, PRE_OP)
            store_quantized(v, inv, q_ptr, token, offs_c, t_mask, C)


def quantize_tokens(
    x: torch.Tensor,
    pre_op: int = PRE_NONE,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    one_pass: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 of x [B, T, Cin] or [M, Cin] (any strides): (q int8 [M, C], scale fp32 [M, 1]).

    pre_op PRE_MODULATE applies x·(1 + scale) + shift (shift/scale: one C-row per sample, or one for
    all); PRE_GLU applies x[..., :C]·SiLU(x[..., C:]) with C = Cin/2. M = B·T. `one_pass` (default:
    whenever a row fits one tile) reads each row once; the tests force either path.
    """
    x3 = x if x.dim() == 3 else x.reshape(1, -1, x.shape[-1])
    if pre_op != PRE_MODULATE and x3.stride(0) == x3.shape[1] * x3.stride(1):
        x3 = x3.reshape(1, -1, x3.shape[-1])  # one token axis where it is free: the grid's batch axis stops at 65535
    batch, tokens, c_in = x3.shape
    channels = c_in // 2 if pre_op == PRE_GLU else c_in
    if pre_op == PRE_GLU and c_in % 2:
        raise ValueError(f"GLU needs an even channel count, got {c_in}")
    stride_mb = 0
    if pre_op == PRE_MODULATE:
        shift, scale = shift.reshape(-1, channels).contiguous(), scale.reshape(-1, channels).contiguous()
        if shift.shape[0] not in (1, batch) or scale.shape != shift.shape:
            raise ValueError(f"shift/scale {tuple(shift.shape)} do not fit x {tuple(x3.shape)}")
        stride_mb = channels if shift.shape[0] == batch else 0
    else:
        shift = scale = x3  # unused pointers

    q = torch.empty(batch * tokens, channels, dtype=torch.int8, device=x.device)
    s = torch.empty(batch * tokens, 1, dtype=torch.float32, device=x.device)
    channels_first = x3.stride(1) == 1 and x3.stride(2) != 1
    if one_pass is None:
        # Every DiT width (up to 2.5 × 2240 = 5600 at the Mix-FFN's projection) fits in one tile:
        # one read of the activation instead of two.
        one_pass = not channels_first and triton.next_power_of_2(channels) <= ONE_PASS_MAX_CHANNELS
    if one_pass:
        # One token a program, four warps: at every DiT width this measured fastest or within 1% of
        # it on an H100 (2240 channels × 32768 tokens: 0.076 ms, where two tokens in eight warps
        # took 0.086), the token's row masked out to the next power of two.
        block_c = triton.next_power_of_2(channels)
        block_t = 1
    elif channels_first:
        block_t, block_c = 64, 32  # channels-first (NCHW) input: coalesce along tokens
    else:
        block_c = min(triton.next_power_of_2(channels), 512)
        block_t = max(1, 4096 // block_c)
    grid = (triton.cdiv(tokens, block_t), batch)
    _quantize_tokens_kernel[grid](
        x3, shift, scale, q, s,
        tokens, channels,
        x3.stride(0), x3.stride(1), x3.stride(2), stride_mb,
        PRE_OP=pre_op, BLOCK_T=block_t, BLOCK_C=block_c, ONE_PASS=one_pass,
        num_warps=4, enable_fp_fusion=False,
    )
    return q, s


# ---------------------------------------------------------------------------------------------
# int8 × int8 → int32 GEMM, dequantized in the epilogue.
# ---------------------------------------------------------------------------------------------


def _gemm_configs() -> list[triton.Config]:
    if _INTERPRET:
        # One small tile so that the tests' odd shapes cross block edges in M, N and K.
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)]
    # (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps). Shared memory per CTA is (BM + BN)·BK·stages
    # bytes: the first three (131–147 KB) are for A100/H100, the rest fit the ~100 KB of Ada and
    # consumer Ampere; the autotuner skips any config a device cannot hold.
    tiles = [
        (128, 256, 128, 3, 8),
        (256, 128, 128, 3, 8),
        (128, 128, 128, 4, 8),
        (128, 128, 64, 4, 4),
        (64, 128, 128, 4, 4),
        (128, 64, 128, 4, 4),
        (64, 64, 128, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=st, num_warps=w)
        for bm, bn, bk, st, w in tiles
    ]


@triton.jit
def _dequantize(acc, a_scale, w_scale_ptr, bias_ptr, offs_n, N, out_dtype: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The epilogue's arithmetic: the int32 tile dequantized (+ bias) and rounded to the output
    dtype, ties to even; a_scale is the tile rows' [BLOCK_M]."""
    w_scale = tl.load(w_scale_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    out = acc.to(tl.float32) * a_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    return out.to(out_dtype, fp_downcast_rounding="rtne")


@triton.jit
def _add_to_residual(branch, off_m, offs_m, off_n, offs_n, M, N, r_ptr, stride_rm, gate_ptr, stride_gate, base_ptr,
                     rows_per_gate, HAS_BASE: tl.constexpr, CLAMP: tl.constexpr, R_TMA: tl.constexpr):
    """`int8.gated_residual_epilogue` of a tile (rows off_m …, columns off_n …): x + gate · branch
    (clipped first where CLAMP), fp32, rounded to branch's dtype. A tile spans at most two gate
    rows (the launcher sees to it), so the gate is two [BLOCK_N] vectors, not a [BLOCK_M, BLOCK_N]
    gather. With R_TMA, r_ptr is a descriptor of x, whose block is the tile's, and x arrives
    through the TMA (1.6B 4096², H100: to_out 375 → 365 µs, the Mix-FFN's projection 804 → 796)."""
    n_mask = offs_n < N
    value = branch.to(tl.float32)
    if CLAMP:
        value = tl.minimum(tl.maximum(value, -_FP16_MAX), _FP16_MAX)
    first = off_m // rows_per_gate
    last = tl.minimum(off_m + offs_m.shape[0] - 1, M - 1) // rows_per_gate
    gate_first = tl.load(gate_ptr + first * stride_gate + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    gate_last = tl.load(gate_ptr + last * stride_gate + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_BASE:
        base = tl.load(base_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        gate_first, gate_last = base + gate_first, base + gate_last
    gate = tl.where((offs_m // rows_per_gate == first)[:, None], gate_first[None, :], gate_last[None, :])
    if R_TMA:
        x = r_ptr.load([off_m, off_n])
    else:
        mask = (offs_m < M)[:, None] & n_mask[None, :]
        x = tl.load(r_ptr + offs_m[:, None].to(tl.int64) * stride_rm + offs_n[None, :], mask=mask, other=0.0)
    return (x.to(tl.float32) + gate * value).to(branch.dtype, fp_downcast_rounding="rtne")


@triton.jit
def _finish(acc, a_scale, off_m, offs_m, off_n, offs_n, M, N, w_scale_ptr, bias_ptr, r_ptr, stride_rm, gate_ptr,
            stride_gate, base_ptr, rows_per_gate, out_dtype: tl.constexpr, HAS_BIAS: tl.constexpr,
            RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, CLAMP: tl.constexpr, R_TMA: tl.constexpr):
    """The whole epilogue of a tile: `_dequantize`, then `_add_to_residual` where RESIDUAL."""
    out = _dequantize(acc, a_scale, w_scale_ptr, bias_ptr, offs_n, N, out_dtype, HAS_BIAS)
    if RESIDUAL:
        out = _add_to_residual(out, off_m, offs_m, off_n, offs_n, M, N, r_ptr, stride_rm, gate_ptr, stride_gate,
                               base_ptr, rows_per_gate, HAS_BASE, CLAMP, R_TMA)
    return out


@triton.jit
def _store_tile(
    acc, off_m, offs_m, off_n, offs_n, M, N, c_ptr, stride_cm, stride_cn, a_scale_ptr, w_scale_ptr, bias_ptr,
    r_ptr, stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr,
    CLAMP: tl.constexpr,
):
    """The epilogue through pointers (the Ampere/Ada kernel's, and the Hopper kernel's where the
    TMA cannot address the output): the int32 tile as it is, or `_finish`ed."""
    c_mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    if EPILOGUE:
        a_scale = tl.load(a_scale_ptr + offs_m, mask=offs_m < M, other=0.0).to(tl.float32)
        out = _finish(acc, a_scale, off_m, offs_m, off_n, offs_n, M, N, w_scale_ptr, bias_ptr, r_ptr, stride_rm,
                      gate_ptr, stride_gate, base_ptr, rows_per_gate, c_ptr.dtype.element_ty, HAS_BIAS, RESIDUAL,
                      HAS_BASE, CLAMP, False)
        tl.store(c_ptrs, out, mask=c_mask)
    else:
        tl.store(c_ptrs, acc, mask=c_mask)


@triton.autotune(configs=_gemm_configs(), key=["M", "N", "K", "RESIDUAL"], restore_value=["c_ptr"])
@triton.jit
def _int8_gemm_kernel(
    a_ptr, w_ptr, c_ptr, a_scale_ptr, w_scale_ptr, bias_ptr, r_ptr, gate_ptr, base_ptr,
    M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn, stride_rm, stride_gate, rows_per_gate,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr,
    CLAMP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row-blocks share each weight column-block while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    # Rows/columns past the edge wrap around (their results are never stored), so only K is masked.
    offs_am = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_wn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_wn[None, :].to(tl.int64) * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
        w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    _store_tile(acc, pid_m * BLOCK_M, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N,
                pid_n * BLOCK_N + tl.arange(0, BLOCK_N), M, N,
                c_ptr, stride_cm, stride_cn, a_scale_ptr, w_scale_ptr, bias_ptr,
                r_ptr, stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate,
                EPILOGUE, HAS_BIAS, RESIDUAL, HAS_BASE, CLAMP)


# The Hopper kernel: operands arrive through the tensor-memory accelerator (TMA), which also
# zero-fills the tile edges, so the inner loop has no masks and no address arithmetic, and the
# grid is persistent (one program per SM walking the tiles), so tile n+1's loads overlap tile n's
# epilogue, and the epilogue leaves through the TMA too (see TMA_STORE below). At the 1.6B DiT's
# 4096² shapes on an H100: 1005–1020 TOPS, where the pointer kernel above gives 889–908
# (benchmarks/results/h100-int8-gemm.json). Storing through the TMA instead of from registers
# made one 1.6B block's GEMMs 5% faster at 4096² in a side-by-side lab (4.44 → 4.21 ms).
# Measured and left out (1.6B 4096² shapes, H100, CUDA-graph replays, µs a call idle / after 0.8 s
# back-to-back, 2026-12-07), so that nobody builds them again:
# - the epilogue is already hidden: the main loop alone (256 × 128 × 128, 3 stages, flattened,
#   its epilogue never run) took 957 / 985 at the q, k, v projection, the whole autotuned kernel
#   836 / 940;
# - two programs an SM (128 × 128 tiles in 4 warps, 2–4 stages, one's epilogue beside the other's
#   MMAs): 344–407 / 345–415 at 2240 → 2240 against 304 / 328, and the INT8 CFG step unchanged
#   (121.6–122.2 ms against 121.5–123.0);
# - N = 2240 (17.5 tiles of 128) walking its half-full last column in half-width tiles after the
#   full ones, so that no program walks 18 tiles where 17.1 would do: 309 / 323 against 305 / 326.
# For scale: cuBLAS's FP8 GEMM (`torch._scaled_mm`, row-wise scales) gives 1038 / 983 TOPS at the
# q, k, v projection, this kernel 1179 / 1049, cuBLAS FP16 765 / 680 TFLOPS.


def _set_descriptor_blocks(nargs: dict) -> None:
    nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]
    if nargs["c_desc"] is not None:
        nargs["c_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_N"] // nargs["SUBTILE"]]
        if nargs["r_desc"] is not None:
            nargs["r_desc"].block_shape = nargs["c_desc"].block_shape


def _tma_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "FLATTEN": False,
                               "WARP_SPECIALIZE": False, "SUBTILE": 4}, num_warps=4,
                              pre_hook=_set_descriptor_blocks)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "FLATTEN": flatten,
                       "WARP_SPECIALIZE": ws, "SUBTILE": pieces},
                      num_stages=st, num_warps=w, pre_hook=_set_descriptor_blocks)
        for bm, bn, bk, st, w, flatten, ws, pieces in TMA_TILES
    ]


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps, flatten, warp-specialize, pieces): the configs that
# won at least one of the DiT's GEMM shapes on an H100 (CUDA-graph timing; BLOCK_K = 256 in two
# stages, 64 in four, and 128 × 128 tiles in eight warps won none). Flattening the tile and K loops
# lets the next tile's loads start during this one's epilogue. `pieces` (SUBTILE) stores the
# epilogue in that many column slices, so its staging buffer takes that fraction of the shared
# memory. 128 × 256 flattened (the last two) won the 1.6B 4096² projections onto the residual
# stream: 32768 × 5600 → 2240 697 µs (765 with the residual epilogue) against 729 (789) for the
# best above, 2240 → 2240 303 (372) against 311 (380).
# Four stages of 256 × 128 (the first) fit beside the plain epilogue only (224 of the 227 KB; the
# autotuner skips it where it does not fit) and won the fused q, k, v projection: 32768 × 2240 →
# 6720 869 µs against 917 for the best of the rest. In four pieces (the second) they fit beside the
# residual epilogue too, and won the Mix-FFN's projection: 32768 × 5600 → 2240, 735 µs against 767
# (under a second of back-to-back calls, where the 700 W limit holds the clock down, both ~820).
# Ranking them after 0.8 s of back-to-back calls instead of from idle, as 20-step sampling runs
# them, changes little (H100, 2026-12-07, µs a call sustained): the q, k, v projection keeps its
# pick (937–944 in two trials; the next config 952), the attention's output with the residual is
# a tie within 1% (388–391), and only 2240 → 2240 without a residual moves, 128 × 256 flattened
# 318 against the pick's 328: 2 × 10 µs of a ~123 ms INT8 step, so the autotuner ranks from idle.
TMA_TILES = [
    (256, 128, 128, 4, 8, True, False, 2),
    (256, 128, 128, 4, 8, True, False, 4),
    (256, 128, 128, 3, 8, True, True, 2),
    (256, 128, 128, 3, 8, True, False, 2),
    (256, 128, 128, 3, 8, False, False, 2),
    (256, 128, 128, 3, 8, False, False, 1),
    (128, 256, 128, 3, 8, False, False, 2),
    (128, 128, 128, 4, 4, True, False, 2),
    (64, 256, 128, 4, 4, True, False, 2),
    (128, 256, 128, 3, 8, True, True, 2),
    (128, 256, 128, 3, 8, True, False, 2),
]


@triton.jit
def _tile_position(tile, num_m, num_n, GROUP_M: tl.constexpr):
    group = GROUP_M * num_n
    first_m = (tile // group) * GROUP_M
    group_m = min(num_m - first_m, GROUP_M)
    return first_m + (tile % group) % group_m, (tile % group) // group_m


@triton.jit
def _halves(tile):
    """A [rows, n] tile as its left and right [rows, n/2] halves."""
    rows: tl.constexpr = tile.shape[0]
    width: tl.constexpr = tile.shape[1]
    return tl.split(tl.permute(tl.reshape(tile, (rows, 2, width // 2)), (0, 2, 1)))


@triton.jit
def _finish_through(c_desc, piece, col, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr, r_desc, stride_rm,
                    gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype: tl.constexpr, HAS_BIAS: tl.constexpr,
                    RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, CLAMP: tl.constexpr, R_TMA: tl.constexpr):
    """`_finish` a piece of the tile (its columns col …) and store it through the TMA."""
    offs_n = col + tl.arange(0, piece.shape[1])
    c_desc.store([off_m, col], _finish(piece, a_scale, off_m, offs_m, col, offs_n, M, N, w_scale_ptr, bias_ptr, r_desc,
                                       stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype, HAS_BIAS,
                                       RESIDUAL, HAS_BASE, CLAMP, R_TMA))


@triton.jit
def _finish_pieces(c_desc, half, col, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr, r_desc, stride_rm,
                   gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype: tl.constexpr, HAS_BIAS: tl.constexpr,
                   RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, CLAMP: tl.constexpr, R_TMA: tl.constexpr,
                   PIECES: tl.constexpr):
    """`_finish_through` half of a tile, whole (PIECES 1) or as its two halves (PIECES 2)."""
    if PIECES == 1:
        _finish_through(c_desc, half, col, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr, r_desc, stride_rm,
                        gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype, HAS_BIAS, RESIDUAL, HAS_BASE, CLAMP,
                        R_TMA)
    else:
        first, second = _halves(half)
        _finish_through(c_desc, first, col, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr, r_desc, stride_rm,
                        gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype, HAS_BIAS, RESIDUAL, HAS_BASE, CLAMP,
                        R_TMA)
        _finish_through(c_desc, second, col + half.shape[1] // 2, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr,
                        r_desc, stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype, HAS_BIAS, RESIDUAL,
                        HAS_BASE, CLAMP, R_TMA)


# Keyed on the epilogue too: the residual one holds more registers, and may want another tile.
# The output is restored after each timed trial: a residual epilogue may write into its own input.
@triton.autotune(configs=_tma_configs(), key=["M", "N", "K", "TMA_STORE", "RESIDUAL"], restore_value=["c_ptr"])
@triton.jit
def _int8_gemm_tma_kernel(
    a_desc, w_desc, c_desc, c_ptr, a_scale_ptr, w_scale_ptr, bias_ptr, r_ptr, r_desc, gate_ptr, base_ptr,
    M, N, K, stride_cm, stride_rm, stride_gate, rows_per_gate, programs,
    EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr,
    CLAMP: tl.constexpr,
    TMA_STORE: tl.constexpr, R_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, SUBTILE: tl.constexpr,
):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_m * num_n, programs, flatten=FLATTEN,
                         warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = _tile_position(tile, num_m, num_n, GROUP_M)
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([off_m, k * BLOCK_K])
            w = w_desc.load([off_n, k * BLOCK_K])
            acc = tl.dot(a, w.T, acc, out_dtype=tl.int32)
        if TMA_STORE:
            # The tile leaves through shared memory and the TMA, which clips the edges, so the
            # next tile's MMAs start while it is written; in SUBTILE pieces, each staged in turn.
            offs_m = off_m + tl.arange(0, BLOCK_M)
            a_scale = tl.load(a_scale_ptr + offs_m, mask=offs_m < M, other=0.0).to(tl.float32)
            dtype: tl.constexpr = c_ptr.dtype.element_ty
            if SUBTILE == 1:
                _finish_through(c_desc, acc, off_n, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr, r_desc,
                                stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype, HAS_BIAS, RESIDUAL,
                                HAS_BASE, CLAMP, R_TMA)
            else:
                left, right = _halves(acc)
                halves_pieces: tl.constexpr = SUBTILE // 2
                _finish_pieces(c_desc, left, off_n, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr, r_desc,
                               stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype, HAS_BIAS, RESIDUAL,
                               HAS_BASE, CLAMP, R_TMA, halves_pieces)
                _finish_pieces(c_desc, right, off_n + BLOCK_N // 2, a_scale, off_m, offs_m, M, N, w_scale_ptr, bias_ptr,
                               r_desc, stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate, dtype, HAS_BIAS,
                               RESIDUAL, HAS_BASE, CLAMP, R_TMA, halves_pieces)
        else:
            _store_tile(acc, off_m, off_m + tl.arange(0, BLOCK_M), off_n, off_n + tl.arange(0, BLOCK_N), M, N,
                        c_ptr, stride_cm, 1, a_scale_ptr, w_scale_ptr, bias_ptr,
                        r_ptr, stride_rm, gate_ptr, stride_gate, base_ptr, rows_per_gate,
                        EPILOGUE, HAS_BIAS, RESIDUAL, HAS_BASE, CLAMP)


_MAX_BLOCK_M = max(config.kwargs["BLOCK_M"] for config in _gemm_configs() + _tma_configs())


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _has_tma(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)  # Hopper and newer


def _tma_fits(t: torch.Tensor) -> bool:
    """TMA reads rows whose start addresses are 16-byte aligned, elements contiguous."""
    return t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0


def _use_tma(a: torch.Tensor, w: torch.Tensor) -> bool:
    if not (_tma_fits(a) and _tma_fits(w)):
        return False
    return _INTERPRET or _has_tma(a.device.index)


def _launch_gemm(a, w, out, a_scale, w_scale, bias, epilogue: bool, tma: bool | None = None,
                 residual: ref.GatedResidual | None = None) -> torch.Tensor:
    """`tma`: None picks the kernel for the GPU (TMA on Hopper and newer, where the operands'
    alignment allows it); the tests force either one."""
    if a.dtype != torch.int8 or w.dtype != torch.int8:
        raise TypeError(f"int8 operands expected, got {a.dtype} and {w.dtype}")
    (m, k), (n, k_w) = a.shape, w.shape
    if k != k_w:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, w is {tuple(w.shape)}")
    r_ptr, gate, base, stride_rm, rows_per_gate = out, a_scale, None, 0, 1  # unused without a residual
    if residual is not None:
        r_ptr, gate, base = residual.x, residual.gate, residual.gate_base
        groups = gate.shape[0]
        if r_ptr.shape != (m, n) or r_ptr.stride(1) != 1 or gate.shape[1:] != (n,) or m % groups:
            raise ValueError(f"residual {tuple(r_ptr.shape)} / gate {tuple(gate.shape)} do not fit the [{m}, {n}] output")
        if gate.stride(1) != 1 or (base is not None and (base.shape != (n,) or base.stride(0) != 1)):
            raise ValueError("the gate rows (and their base) need unit stride along N")
        stride_rm, rows_per_gate = r_ptr.stride(0), m // groups
        if groups > 1 and rows_per_gate < _MAX_BLOCK_M:
            # samples shorter than a tile: the epilogue's two gate rows a tile would not do
            result = _launch_gemm(a, w, torch.empty_like(out), a_scale, w_scale, bias, epilogue, tma)
            return out.copy_(ref.gated_residual_epilogue(result, residual))
    flags = {"EPILOGUE": epilogue, "HAS_BIAS": bias is not None, "RESIDUAL": residual is not None,
             "HAS_BASE": base is not None, "CLAMP": residual is not None and residual.clamp}
    base = gate if base is None else base
    if tma is None:
        tma = _use_tma(a, w)
    if tma:
        # Block shapes are placeholders: each config's pre-hook sets its own before launch.
        a_desc = TensorDescriptor.from_tensor(a, [16, 16])
        w_desc = TensorDescriptor.from_tensor(w, [16, 16])
        # The dequantized tile goes out through the TMA where the output's rows allow it; the
        # int32 tile (the tests' exactness check) as it is.
        c_desc = TensorDescriptor.from_tensor(out, [16, 16]) if epilogue and _tma_fits(out) else None
        # so does the residual stream's tile where it goes that way (x is the output, as a rule)
        r_desc = None
        if c_desc is not None and residual is not None and _tma_fits(residual.x):
            r_desc = TensorDescriptor.from_tensor(residual.x, [16, 16])
        programs = 4 if _INTERPRET else _multiprocessors(a.device.index)

        def grid(meta):
            return (min(programs, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)

        _int8_gemm_tma_kernel[grid](
            a_desc, w_desc, c_desc, out, a_scale, w_scale, bias, r_ptr, r_desc, gate, base,
            m, n, k, out.stride(0), stride_rm, gate.stride(0), rows_per_gate, programs,
            TMA_STORE=c_desc is not None, R_TMA=r_desc is not None, enable_fp_fusion=False, **flags,
        )
        return out
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
    _int8_gemm_kernel[grid](
        a, w, out, a_scale, w_scale, bias, r_ptr, gate, base,
        m, n, k,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        stride_rm, gate.stride(0), rows_per_gate,
        enable_fp_fusion=False, **flags,
    )
    return out


def int8_matmul(a: torch.Tensor, w: torch.Tensor, tma: bool | None = None) -> torch.Tensor:
    """Exact int32 a [M, K] · w [N, K]ᵀ: the GEMM without its epilogue (the tests' exactness check)."""
    out = torch.empty(a.shape[0], w.shape[0], dtype=torch.int32, device=a.device)
    return _launch_gemm(a, w, out, a, w, None, epilogue=False, tma=tma)


def int8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    tma: bool | None = None,
    residual: ref.GatedResidual | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """a [M, K] int8 with a_scale [M, 1], w [N, K] int8 with w_scale [N] → [M, N] in out_dtype,
    into `out` where given (it may be `residual.x` itself: each tile reads its rows of x before
    writing them). With a `residual`, what is stored is `int8.gated_residual_epilogue`."""
    if out is None:
        out = torch.empty(a.shape[0], w.shape[0], dtype=out_dtype, device=a.device)
    elif out.shape != (a.shape[0], w.shape[0]) or out.dtype != out_dtype or out.stride(1) != 1:
        raise ValueError(f"out must be [{a.shape[0]}, {w.shape[0]}] {out_dtype} with unit stride along N")
    return _launch_gemm(a, w, out, a_scale.contiguous(), w_scale.contiguous(), bias, epilogue=True, tma=tma,
                        residual=residual)
