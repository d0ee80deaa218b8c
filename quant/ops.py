"""The W8A8 ops the modules call: Triton on CUDA, the plain-torch reference everywhere else.

Every function here returns the same numbers on both paths (see `kernels.py` for the one ulp-level
exception), so CPU tests of the modules stand for the GPU too. A GPU older than Ampere, or a CUDA
machine without Triton, runs the reference, whose int32 GEMM is still cuBLAS's int8 GEMM there
(`torch._int_mm`).
"""

from __future__ import annotations

import functools

import torch

from . import int8 as ref


@functools.cache
def _triton_kernels(device_index: int):
    if torch.cuda.get_device_capability(device_index) < (8, 0):
        return None  # Triton's int8 tensor-core dot starts at Ampere
    try:
        from . import kernels
    except ImportError:  # no Triton (Linux x86-64 only) or one too old: the reference serves CUDA too
        return None
    return kernels


def _kernels_for(t: torch.Tensor):
    return _triton_kernels(t.device.index) if t.is_cuda else None


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 of x [..., K]: (q int8 [M, K], scale fp32 [M, 1]), M = x.numel() / K."""
    kernels = _kernels_for(x)
    if kernels is not None:
        return kernels.quantize_tokens(x)
    q, s = ref.quantize_per_token(x)
    return q.reshape(-1, q.shape[-1]), s.reshape(-1, 1)


def quantize_modulated(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
    """Per-token int8 of the AdaLN-modulated x·(1 + scale) + shift, in one pass over x [B, T, C].

    shift/scale: one C-row per sample ([B, C] or [B, 1, C]). Returns (q [B·T, C], scale [B·T, 1]).
    """
    kernels = _kernels_for(x)
    if kernels is not None:
        return kernels.quantize_tokens(x, kernels.PRE_MODULATE, shift, scale)
    q, s = ref.quantize_modulated_reference(x, shift, scale)
    return q.reshape(-1, q.shape[-1]), s.reshape(-1, 1)


def quantize_glu(x: torch.Tensor):
    """Per-token int8 of Mix-FFN's x[..., :C]·SiLU(x[..., C:]), in one pass over x [..., 2C].

    Returns (q [M, C], scale [M, 1]).
    """
    kernels = _kernels_for(x)
    if kernels is not None:
        return kernels.quantize_tokens(x, kernels.PRE_GLU)
    q, s = ref.quantize_glu_reference(x)
    return q.reshape(-1, q.shape[-1]), s.reshape(-1, 1)


def int8_gemm(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    residual: ref.GatedResidual | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantized a_q [M, K] · w_q [N, K]ᵀ → [M, N] in out_dtype (int32 accumulate, fused
    epilogue); with a `residual`, x + gate · that (see `GatedResidual`), into `out` where given
    (which may be `residual.x`)."""
    kernels = _kernels_for(a_q)
    if kernels is not None:
        return kernels.int8_gemm(a_q, a_scale, w_q, w_scale, bias, out_dtype, residual=residual, out=out)
    result = ref.dequantize_epilogue(ref.int8_matmul_reference(a_q, w_q), a_scale, w_scale, bias, out_dtype)
    if residual is not None:
        result = ref.gated_residual_epilogue(result, residual)
    return result if out is None else out.copy_(result)
