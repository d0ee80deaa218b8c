"""Which layers of the DiT run W8A8: the whole policy, as data.

Names are the diffusers / published-checkpoint module names (`transformer_blocks.N.attn1.to_q`),
matched whole (`re.fullmatch`) against `model.named_modules()`.

INT8 (the paper's edge deployment) — the GEMMs over all image tokens, where the time goes:
  * self-attention Q, K, V and output projections (`attn1.to_q/to_k/to_v/to_out.0`);
  * cross-attention query and output projections (`attn2.to_q`, `attn2.to_out.0`);
  * Mix-FFN's 1×1 expand and project convs (`ff.conv_inverted`, `ff.conv_point`).
16-bit — everything else:
  * cross-attention key/value (`attn2.to_k/to_v`): the paper keeps them; they run over ~300 text
    tokens, so int8 would save nothing, while the caption features carry outlier channels;
  * the norms and the linear-attention products themselves (not module weights at all);
  * the timestep and caption embedders and the AdaLN modulation: a handful of rows per step, no
    speed to gain, and their error would reach every block;
  * the depthwise `ff.conv_depth` (memory-bound, no GEMM) and the final `proj_out` (32 outputs that
    are the velocity itself).
Anything further (e.g. keeping the first and last blocks 16-bit) is a fidelity measurement's call:
add it to `keep`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class QuantPolicy:
    """`int8`: name patterns of the layers to quantize; `keep`: patterns that stay 16-bit anyway."""

    int8: tuple[str, ...]
    keep: tuple[str, ...] = ()

    def __post_init__(self):
        for pattern in self.int8 + self.keep:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"policy pattern {pattern!r} is not a regular expression: {e}") from None

    def wants_int8(self, name: str) -> bool:
        return any(re.fullmatch(p, name) for p in self.int8) and not any(re.fullmatch(p, name) for p in self.keep)


_BLOCK = r"transformer_blocks\.\d+\."

DEFAULT_POLICY = QuantPolicy(
    int8=(
        _BLOCK + r"attn1\.(to_q|to_k|to_v|to_out\.0)",
        _BLOCK + r"attn2\.(to_q|to_out\.0)",
        _BLOCK + r"ff\.(conv_inverted|conv_point)",
    ),
)
