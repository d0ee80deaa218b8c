"""W8A8 arithmetic in plain torch: the definition of every quantized op, and the tests' oracle.

The scheme is the paper's edge deployment: activations int8 per token and weights int8 per output
channel, both symmetric (no zero point, so the GEMM is a plain int8×int8 dot), accumulated in int32,
and turned back to floating point only once, in the GEMM's epilogue:

    out[m, n] = acc[m, n] · a_scale[m] · w_scale[n] + bias[n],   acc = Σ_k a_q[m, k] · w_q[n, k]

The Triton kernels in `kernels.py` compute exactly these formulas, op for op in the same order, so
that the quantized integers they produce match these functions bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

QMAX = 127  # symmetric range −127..127: −128 is left unused so that negation never overflows
# A row whose absmax is below this is treated as if its absmax were this: its scale stays finite
# (127/absmax would overflow fp32 for denormal rows) and a zero row quantizes to zeros.
MIN_ABSMAX = 1e-12
# Adding then subtracting 1.5·2^23 rounds any |y| < 2^22 to the nearest integer, ties to even,
# exactly like torch.round; the kernels use this because libdevice's rint has no interpreter.
ROUND_MAGIC = 12582912.0
# The largest finite fp16: SANA clips its self-attention's output to it (the reference's own
# guard against fp16 overflow), and every fused path that takes over that clip uses this one value.
FP16_MAX = 65504.0


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    absmax = x.abs().amax(dim=-1, keepdim=True).clamp_min(MIN_ABSMAX)
    # Tensor ÷ tensor, both ways: a Python number on either side lets torch multiply by a
    # reciprocal instead (`127 / t` is t.reciprocal() · 127; CUDA's `t / 127` is t · (1/127)),
    # two roundings where the kernels' division has one, which moves values sitting on a
    # rounding boundary by a step.
    qmax = torch.full_like(absmax, QMAX)
    scale = absmax / qmax
    q = torch.round(x * (qmax / absmax)).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic quantization of each token (last dim = channels).

    Returns (q int8 [..., K], scale fp32 [..., 1]) with x ≈ q · scale and |x − q·scale| ≤ scale/2.
    """
    return _quantize_rows(x)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of a weight [N, K] per output channel: (q int8 [N, K], scale fp32 [N])."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    q, scale = _quantize_rows(weight)
    return q, scale.squeeze(1)


def int8_matmul_reference(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact int32 product a [M, K] · w [N, K]ᵀ of two int8 matrices (w in nn.Linear's layout)."""
    if a.dtype != torch.int8 or w.dtype != torch.int8:
        raise TypeError(f"int8 operands expected, got {a.dtype} and {w.dtype}")
    m, k = a.shape
    n = w.shape[0]
    if m > 16 and k % 8 == 0 and n % 8 == 0:  # torch._int_mm's constraints (its CUDA path's, the stricter)
        return torch._int_mm(a, w.t())
    if a.is_cuda:
        # CUDA has no integer matmul; float64 is still exact: every product is an integer ≤ 127²
        # and every partial sum stays far below 2^53.
        return (a.double() @ w.double().t()).to(torch.int32)
    return (a.long() @ w.long().t()).to(torch.int32)


def dequantize_epilogue(
    acc: torch.Tensor,
    a_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """acc int32 [M, N] · a_scale [M, 1] · w_scale [N] (+ bias [N]), computed in fp32, cast to out_dtype."""
    out = acc.float() * a_scale.float() * w_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


class GatedResidual(NamedTuple):
    """A residual add after a projection, done in the projection's GEMM epilogue: the output is
    x + gate · branch (the branch, rounded to the output dtype, first clipped to ±65504 where
    `clamp`), computed in fp32 — what a SANA block does behind its self-attention and its Mix-FFN.
    x [M, N] is the residual stream; gate [G, N] one row per sample, row m taking row m // (M / G)
    (G = 1: one for all), plus `gate_base` [N] where given (an AdaLN gate is table row +
    modulation row: both are handed over as they lie, so no kernel runs to add them)."""

    x: torch.Tensor
    gate: torch.Tensor
    clamp: bool = False
    gate_base: torch.Tensor | None = None


class QuantizedTokens(NamedTuple):
    """An activation already quantized per token, as a producer kernel hands it to a W8A8 layer:
    values int8 [..., K], scale fp32 [..., 1], one scale a token (what `quantize_per_token` gives)."""

    values: torch.Tensor
    scale: torch.Tensor


def gated_residual_epilogue(branch: torch.Tensor, residual: GatedResidual) -> torch.Tensor:
    """residual.x + gate · branch in fp32 (see `GatedResidual`), cast to branch's dtype."""
    value = branch.float()
    if residual.clamp:
        value = value.clamp(-FP16_MAX, FP16_MAX)
    rows, groups = branch.shape[0], residual.gate.shape[0]
    gate = residual.gate.float()
    if residual.gate_base is not None:
        gate = residual.gate_base.float() + gate
    gate = gate.repeat_interleave(rows // groups, dim=0)
    return (residual.x.float() + gate * value).to(branch.dtype)


# ---- Pre-ops that a fused kernel applies while it reads the activation anyway ----


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN-single modulation x·(1 + scale) + shift in fp32.

    x is [B, T, C]; shift and scale hold one row per sample ([B, C] or diffusers' [B, 1, C]), or one
    row for all samples.
    """
    channels = x.shape[-1]
    shift, scale = shift.reshape(-1, 1, channels), scale.reshape(-1, 1, channels)
    return x.float() * (1 + scale.float()) + shift.float()


def glu(x: torch.Tensor) -> torch.Tensor:
    """Mix-FFN's gate x·SiLU(gate) in fp32, where the gate is the second half of the channels."""
    value, gate = x.float().chunk(2, dim=-1)
    return value * torch.nn.functional.silu(gate)


def quantize_modulated_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
    return quantize_per_token(modulate(x, shift, scale))


def quantize_glu_reference(x: torch.Tensor):
    return quantize_per_token(glu(x))
