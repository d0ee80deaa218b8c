"""W8A8 INT8 for the SANA DiT: int8 per-token activations × int8 per-channel weights, int32
accumulate, dequantized in the GEMM's epilogue; the layers a policy names are swapped in place.

    report = quantize_model(dit)          # DEFAULT_POLICY: attention and Mix-FFN GEMMs
    set_int8(dit, False)                  # this generation in float, bit for bit, no disk read
    set_int8(dit, True, park_float=True)  # INT8 again, the float weights waiting in host memory

`int8.py` defines the arithmetic in plain torch (the reference and test oracle), `kernels.py`
computes it in Triton on CUDA (where `triton_support.py` finds a Triton that can build it, for
`engine`'s kernels too), `ops.py` picks one, `linear.py` holds the layers, `policy.py` says
which layers, `swap.py` applies it. Nothing here imports `engine`.
"""

from .int8 import (
    GatedResidual,
    QuantizedTokens,
    dequantize_epilogue,
    gated_residual_epilogue,
    int8_matmul_reference,
    quantize_per_channel,
    quantize_per_token,
)
from .linear import QuantLinear, QuantPointwiseConv
from .ops import int8_gemm, quantize_glu, quantize_modulated, quantize_tokens
from .policy import DEFAULT_POLICY, QuantPolicy
from .swap import QuantReport, dequantize_model, quantize_model, set_int8

__all__ = [
    "DEFAULT_POLICY",
    "GatedResidual",
    "QuantLinear",
    "QuantPointwiseConv",
    "QuantPolicy",
    "QuantReport",
    "QuantizedTokens",
    "dequantize_epilogue",
    "dequantize_model",
    "gated_residual_epilogue",
    "int8_gemm",
    "int8_matmul_reference",
    "quantize_glu",
    "quantize_model",
    "quantize_modulated",
    "quantize_per_channel",
    "quantize_per_token",
    "quantize_tokens",
    "set_int8",
]
