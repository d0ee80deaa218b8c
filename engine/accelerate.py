"""Fused CUDA twins of the DiT's blocks, swapped in by module type.

`engine/dit.py` stays the readable reference, with no `if cuda:` in it. On a CUDA GPU,
`accelerate_dit` replaces, in place, each `SanaBlock`, `LinearSelfAttention`, `CrossAttention`,
`MixFFN` and `OutputNorm` with a twin that holds the very same child modules and Parameters (so
the state_dict, `.to()`, loading and `quant/`'s swaps by name all see the model they know) and
computes the same function with the kernels of `engine/kernels/`:

- `FastSanaBlock`: the AdaLN LayerNorm + shift/scale in front of each branch is one pass
  (`modulate`); the gated residual behind the self-attention and the Mix-FFN (with the linear
  attention's ±65504 clip) lands through the branch's last projection (`Residual`: in the W8A8
  GEMM's epilogue, or folded into a 16-bit weight, else one `gated_residual` pass); the
  cross-attention's residual shares a pass with the next modulation (`add_modulate`). Eagerly
  these are ~20 launches and passes per block.
- `FastLinearSelfAttention`: the ReLU linear attention between the projections and `to_out` in two
  launches that read q, k, v where the projections left them (no transposes, no fp32 copies).
- `FastCrossAttention`: reads each row's text tokens and skips its padding, instead of masking it.
- `FastMixFFN`: SiLU → depthwise 3×3 → value·SiLU(gate) in one pass over the widest tensor.
- `FastOutputNorm`: the final AdaLN in front of `proj_out`, one `modulate` pass.

Twins call their child projections (`to_q`, `to_out`, `conv_inverted`, …) as modules, so a W8A8
`QuantLinear` / `QuantPointwiseConv` in their place (before or after this swap) runs as itself. The
one exception is a plain 1×1 `nn.Conv2d` on CUDA, which runs as the GEMM it is (see `_pointwise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quant import (
    GatedResidual,
    QuantizedTokens,
    QuantLinear,
    int8_gemm,
    quantize_tokens,
)
from quant.int8 import FP16_MAX

from .dit import (
    CrossAttention,
    LinearSelfAttention,
    MixFFN,
    OutputNorm,
    SanaBlock,
    TextPadding,
    to_text_rows,
)

try:  # no Triton (it ships for Linux x86-64 only) or one too old: accelerate_dit says so, changes nothing
    from .kernels import cross_attention, glu, linear_attention, modulate
except ImportError as error:
    _KERNELS_MISSING: ImportError | None = error
else:
    _KERNELS_MISSING = None

class _AttentionTwin(nn.Module):
    """What both attention twins hold: the reference's own projections and norms, by name."""

    def __init__(self, attn: LinearSelfAttention | CrossAttention):
        super().__init__()
        self.heads = attn.heads
        self.to_q, self.to_k, self.to_v = attn.to_q, attn.to_k, attn.to_v
        self.norm_q, self.norm_k = attn.norm_q, attn.norm_k
        self.to_out = attn.to_out


class FastLinearSelfAttention(_AttentionTwin):
    """`LinearSelfAttention` with the fused kernel between its projections and `to_out`."""

    def __init__(self, attn: LinearSelfAttention):
        super().__init__(attn)
        self._stacks: dict[str, Tensor] = {}  # see `stack_rows`

    @property
    def takes_int8(self) -> bool:
        """Whether q, k and v run as one W8A8 GEMM, so that x may come already quantized."""
        return all(isinstance(layer, QuantLinear) and layer.int8 and layer.bias is None
                   for layer in (self.to_q, self.to_k, self.to_v))

    def forward(self, x: Tensor | QuantizedTokens, residual: Residual | None = None) -> Tensor:
        """As `LinearSelfAttention.forward`, x [B, N, C] (`QuantizedTokens` of that shape where
        `takes_int8`); with a `residual`, what lands in the residual stream behind it instead
        (x + gate · the clipped output)."""
        q, k, v = self._project(x)
        q, k = self.norm_q(q), self.norm_k(k)
        if residual is None or not q.is_cuda:
            out = self.to_out(linear_attention.linear_attention(q, k, v, self.heads))
            return out.clamp(-FP16_MAX, FP16_MAX) if residual is None else residual.add(out)  # add clips
        projection, rows = self.to_out[0], q.shape[0] * q.shape[1]
        # where the gate folds into to_out's weight, its bias rides there too, on a ones column
        bias_column = projection.bias is not None and residual.folds(projection, rows)
        mixed = linear_attention.linear_attention(q, k, v, self.heads, bias_column=bias_column)
        return residual.project(projection, mixed.view(rows, -1))

    def _project(self, x: Tensor | QuantizedTokens) -> list[Tensor]:
        """q, k, v as column slices of one GEMM's output: a third of the launches, and at 1024² one
        wave of tiles fills the GPU where three would each leave it part idle (0.6B, 2 × 1024
        tokens, W8A8: 0.041 → 0.026 ms a block on an H100; FP16 gives the same bits as three
        GEMMs). In W8A8 the three also share one per-token quantization of x (or take x as the
        modulation handed it, already quantized). The published
        projections have no bias (`attention_bias` is False); with one, each runs on its own."""
        layers = (self.to_q, self.to_k, self.to_v)
        leading = (x.values if isinstance(x, QuantizedTokens) else x).shape[:-1]
        if self.takes_int8:
            self._keep_stacks("weight_int8", "weight_scale")
            weight, scale = (stack_rows(layers, name, self._stacks) for name in ("weight_int8", "weight_scale"))
            values, token_scale = (x.values, x.scale) if isinstance(x, QuantizedTokens) else quantize_tokens(x)
            qkv = int8_gemm(values.view(-1, values.shape[-1]), token_scale.view(-1, 1), weight, scale, None,
                            self.to_q.weight.dtype)
        elif any(layer.bias is not None or getattr(layer, "int8", False) for layer in layers):
            # a bias, or some switched to INT8 and some not (only a policy change mid-run does that)
            return [layer(x) for layer in layers]
        else:
            self._keep_stacks("weight")
            qkv = F.linear(x, stack_rows(layers, "weight", self._stacks))
        return list(qkv.view(*leading, -1).split([layer.out_features for layer in layers], dim=-1))

    def _keep_stacks(self, *names: str) -> None:
        """Drop the other precision's stacks: they would keep on the GPU the weights that a switch
        has parked in host memory (float) or dropped (int8)."""
        for name in set(self._stacks) - set(names):
            del self._stacks[name]


def stack_rows(layers: tuple[nn.Module, ...], name: str, stacks: dict[str, Tensor]) -> Tensor:
    """The layers' tensors `name` ([N_i, …] each) as one [ΣN_i, …] tensor, of which the layers'
    own tensors are made views: one GEMM reads all of them, at no extra memory, and each layer
    still holds its own Parameter or buffer (state_dict, loading and `quant/` see no change).
    `stacks` keeps the stack; it is built again only after one of the tensors has been replaced
    (a load, a `.to()`, a requantize)."""
    parts = [getattr(layer, name) for layer in layers]
    stacked = stacks.get(name)
    if stacked is not None and _are_its_rows(parts, stacked):
        return stacked
    with torch.inference_mode(False), torch.no_grad():
        stacked = torch.cat([part.detach() for part in parts])
    row = 0
    for layer, part in zip(layers, parts):
        view = stacked[row : row + part.shape[0]]
        if isinstance(part, nn.Parameter):
            part.data = view  # the same Parameter object, its storage now a slice of the stack
        else:
            setattr(layer, name, view)  # a buffer
        row += part.shape[0]
    stacks[name] = stacked
    return stacked


def _are_its_rows(parts: list[Tensor], stacked: Tensor) -> bool:
    """Whether `parts` are still, in order, the consecutive row blocks of `stacked`'s memory."""
    if stacked.shape[0] != sum(part.shape[0] for part in parts):
        return False
    address = stacked.data_ptr()
    for part in parts:
        if (part.data_ptr() != address or part.shape[1:] != stacked.shape[1:] or part.dtype != stacked.dtype
                or part.device != stacked.device or not part.is_contiguous()):
            return False
        address += part.numel() * part.element_size()
    return True


class FastCrossAttention(_AttentionTwin):
    """`CrossAttention` that reads each row's first `padding.lengths` text tokens instead of adding
    a mask over all of them (`kernels.cross_attention`), where a mask sends PyTorch's attention to
    a slower kernel (1.6B 4096², rows of 40 and 300 tokens, an H100: 0.30 ms a call against 0.49
    masked; the CFG step 178.8 → 176.4 ms FP16 at 1.6B 4096², 6.39 → 6.14 ms at 0.6B 1024²).
    The Triton kernel took over from PyTorch's flash attention with per-row key counts
    (`seqused_k`), at 263 against 279 µs a call at 1.6B 4096², 20.6 against 28.0 at 1.6B 1024²
    and 14.5 against 19.7 at 0.6B 1024² (H100, CUDA-graph replays); its tiles by head dim since:
    248 and 19.1 at 1.6B (kernels.cross_attention.TILES)."""

    def keys_values(self, text: Tensor) -> tuple[Tensor, Tensor]:
        return CrossAttention.keys_values(self, text)

    def forward(self, x: Tensor, keys_values: tuple[Tensor, Tensor], padding: TextPadding) -> Tensor:
        branch, bias = self.branch_and_bias(x, keys_values, padding)
        return branch if bias is None else branch + bias

    def branch_and_bias(
        self, x: Tensor, keys_values: tuple[Tensor, Tensor], padding: TextPadding
    ) -> tuple[Tensor, Tensor | None]:
        """`forward` as (output without to_out's bias, that bias) where to_out is a 16-bit Linear,
        for the residual pass behind to add (see `unbiased`); else (output, None)."""
        batch, tokens, _ = x.shape
        q = self.norm_q(self.to_q(x)).view(batch * tokens, self.heads, -1)
        # [B, heads, L, d] views of [B, L, heads, d] memory: as [B·L, heads, d], no copy
        k, v = (t.transpose(1, 2).reshape(-1, self.heads, t.shape[-1]) for t in keys_values)
        out = cross_attention.attend_prefix(q, k, v, padding.lengths)
        return unbiased(self.to_out[0], out.view(batch, tokens, -1))


def unbiased(layer: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
    """(layer(tokens) without its bias, the bias) for a 16-bit Linear with one on CUDA, so that
    the residual pass behind the GEMM adds the bias instead of cuBLAS's epilogue, as the Mix-FFN's
    expansion leaves its bias to conv_glu (see glu's docstring). 0.6B 1024² FP16 20-step
    sampling, H100, old/new/new/old: 118.34 / 117.61 / 117.70 / 118.18 ms. (layer(tokens), None)
    for anything else."""
    if (not tokens.is_cuda or not isinstance(layer, nn.Linear) or getattr(layer, "int8", False)
            or layer.bias is None):
        return layer(tokens), None  # W8A8's epilogue adds its bias at no cost
    return F.linear(tokens, layer.weight), layer.bias


class FastMixFFN(nn.Module):
    """`MixFFN` with SiLU, the depthwise conv and the gating fused. NCHW in and out, any memory
    layout in; channels-last out (the DiT's tokens-major layout)."""

    def __init__(self, ff: MixFFN):
        super().__init__()
        self.conv_inverted, self.conv_depth, self.conv_point = ff.conv_inverted, ff.conv_depth, ff.conv_point

    @property
    def takes_int8(self) -> bool:
        """Whether the expansion runs W8A8, so that x may come already quantized."""
        return getattr(self.conv_inverted, "int8", False)

    def forward(self, x: Tensor | QuantizedTokens, residual: Residual | None = None) -> Tensor:
        """As `MixFFN.forward`: x NCHW (`QuantizedTokens` of shape [B, h, w, C] where
        `takes_int8`); with a `residual` ([B, h·w, C] tokens), what lands in the residual stream
        behind it instead (x + gate · the output, as tokens)."""
        # where the expansion runs as a 16-bit cuBLAS GEMM, conv_glu adds its bias (glu's docstring)
        defer = _runs_as_float_gemm(self.conv_inverted, x) and self.conv_inverted.bias is not None
        hidden = _pointwise(self.conv_inverted, x, with_bias=not defer)
        mixed = glu.conv_glu(hidden, self.conv_depth.weight, self.conv_depth.bias,
                             self.conv_inverted.bias if defer else None)
        if residual is None or not mixed.is_cuda:
            out = _pointwise(self.conv_point, mixed)
            return out if residual is None else residual.add(out.flatten(2).transpose(1, 2))
        # conv_glu leaves channels-last memory: the tokens are a view
        return residual.project(self.conv_point, mixed.permute(0, 2, 3, 1).reshape(-1, mixed.shape[1]))


def _runs_as_float_gemm(conv: nn.Module, x: Tensor | QuantizedTokens) -> bool:
    """Whether `_pointwise` runs `conv` as a 16-bit cuBLAS GEMM of its own (so `with_bias` counts)."""
    return isinstance(x, Tensor) and x.is_cuda and not getattr(conv, "int8", False)


def _pointwise(conv: nn.Module, x: Tensor | QuantizedTokens, with_bias: bool = True) -> Tensor:
    """A 1×1 conv of NCHW x. A plain nn.Conv2d runs as the GEMM it is, over the tokens of x's
    channels-last memory: cuBLAS took 2.65 ms where cuDNN's 1×1 conv took 3.46 ms for the 1.6B
    expansion at 4096² (H100). The tokens go in as one 2-D matrix, so the bias is added in the
    GEMM's epilogue (cuDNN's 1×1 conv added it in a separate pass: 1 ms a block at 4096²), or left
    to the caller without `with_bias`. A W8A8 layer switched to float runs the same way; switched
    to INT8 it runs itself, as does anything on the CPU (`with_bias` applies only where
    `_runs_as_float_gemm`). Tokens already quantized ([B, H, W, C]) go straight to the W8A8 GEMM."""
    if isinstance(x, QuantizedTokens):
        batch, height, width, channels = x.values.shape
        tokens = conv.gemm(x.values.view(-1, channels), x.scale.view(-1, 1))
        return tokens.view(batch, height, width, -1).permute(0, 3, 1, 2)
    if not _runs_as_float_gemm(conv, x):
        return conv(x)
    batch, channels, height, width = x.shape
    pixels = x.permute(0, 2, 3, 1)
    if not pixels.is_contiguous():
        pixels = pixels.contiguous()
    tokens = F.linear(pixels.view(-1, channels), conv.weight.flatten(1), conv.bias if with_bias else None)
    return tokens.view(batch, height, width, -1).permute(0, 3, 1, 2)


# Tokens per weight input from which a 16-bit projection takes its gate folded into the weight.
# CFG step, H100, interleaved with the code before: at 1.6B 4096² (2 × 16384 tokens; Mix-FFN
# projection 5.9 tokens an input, to_out 14.6) folding both gained 0.3% over folding the Mix-FFN's
# alone while the self-attention's residual still went out of place (torch.addmm copying x first),
# 1.3% once in place (172.3 → 170.2 ms); at 0.6B 1024² (to_out, 1.8 tokens an input) folding cost
# 3.5% (6.17 → 6.38 ms).
FOLD_ROWS_PER_INPUT = 4


@dataclass
class Residual:
    """Where a branch of a block lands: x += gate · branch (the branch first clipped to ±65504
    where `clamp`), the gate the AdaLN row `row` of table + modulation. x: [B, T, D], contiguous,
    the block's residual stream, updated in place (see `FastSanaBlock.forward`)."""

    x: Tensor
    table: Tensor
    modulation: Tensor
    row: int
    clamp: bool = False

    def add(self, branch: Tensor, bias: Tensor | None = None) -> Tensor:
        """The branch computed on its own (its projection's bias not yet added, where given),
        then one `gated_residual` pass."""
        return modulate.gated_residual(self.x, branch, self.table, self.modulation, self.row,
                                       clamp=self.clamp, out=self.x, bias=bias)

    def folds(self, layer: nn.Module, rows: int) -> bool:
        """Whether `project` folds the gate into the 16-bit weight of `layer` for `rows` tokens:
        one gate row for the batch (one timestep), and at least FOLD_ROWS_PER_INPUT tokens per
        input of the weight. Folding moves the weight (2·N·K) and has cuBLAS read x, to save the
        residual pass (3·M·N); see FOLD_ROWS_PER_INPUT for where that measured a gain."""
        return (not getattr(layer, "int8", False) and self.modulation.shape[0] == 1
                and rows >= FOLD_ROWS_PER_INPUT * layer.weight.flatten(1).shape[1])

    def project(self, layer: nn.Module, tokens: Tensor) -> Tensor:
        """x + gate · layer(tokens) for the branch's last projection (a Linear or 1×1 conv; tokens
        [B·T, K] on CUDA), without the branch ever being a tensor of its own where the layer
        allows. Each way saves the `gated_residual` pass: two of the four passes over [B, T, D]
        that a projection and its residual make (~0.1 ms a call at 1.6B 4096² on an H100).

        - W8A8: the GEMM's epilogue adds the branch into x (`quant.GatedResidual`).
        - 16-bit where `folds`: the gate scales the weight's rows (gate · (y Wᵀ) = y (gate·W)ᵀ)
          and cuBLAS adds the product to x in fp32. A bias rides in the weight as one more
          column, where the tokens carry `linear_attention`'s ones column ([B·T, K +
          BIAS_COLUMNS]; without it, the next way). The ±65504 clip guards a branch's cast to
          fp16; folded, the branch never is a 16-bit tensor, so there is nothing to clip.
        - Otherwise the projection, then `add`."""
        rows = tokens.shape[0]
        if getattr(layer, "int8", False):
            # the gate as the table row plus each sample's modulation row, both read where they lie
            gate = GatedResidual(self.x.view(rows, -1), self.modulation[:, self.row], self.clamp, self.table[self.row])
            layer.gemm(*quantize_tokens(tokens), residual=gate, out=self.x.view(rows, -1))
            return self.x
        weight = layer.weight.flatten(1)
        bias_columns = 0 if layer.bias is None else modulate.BIAS_COLUMNS
        if self.folds(layer, rows) and tokens.shape[1] == weight.shape[1] + bias_columns:
            gated = modulate.gated_weight(weight, self.table, self.modulation, self.row, layer.bias)
            self.x.view(rows, -1).addmm_(tokens, gated.t())
            return self.x
        return self.add(F.linear(tokens, weight).view(self.x.shape), layer.bias)


class FastSanaBlock(nn.Module):
    """`SanaBlock` with its AdaLN modulations and gated residuals fused into single passes."""

    def __init__(self, block: SanaBlock):
        super().__init__()
        self.norm_eps = block.norm_eps
        self.attn1, self.attn2, self.ff = block.attn1, block.attn2, block.ff
        self.scale_shift_table = block.scale_shift_table

    def forward(
        self, x: Tensor, modulation: Tensor, keys_values: tuple[Tensor, Tensor], padding: TextPadding, h: int, w: int
    ) -> Tensor:
        """As `SanaBlock.forward`, but x, the residual stream, is updated in place and returned:
        `LinearDiT.denoise` hands each block a tensor that nothing else holds (x = block(x, …)).
        A new tensor per branch cost a copy where cuBLAS adds into x (`torch.addmm` copies its
        input first: 96 µs a block at 1.6B 4096² on an H100)."""
        ada = (self.scale_shift_table, modulation)
        x = x.contiguous()  # a no-op for what `LinearDiT` hands over; the kernels need it
        # In W8A8 the modulations hand their branch y already quantized per token
        y = modulate.modulate(x, *ada, modulate.SHIFT_MSA, modulate.SCALE_MSA, self.norm_eps,
                              quantize=self.attn1.takes_int8)
        x = self.attn1(y, Residual(x, *ada, modulate.GATE_MSA, clamp=True))
        x = to_text_rows(x, padding)
        branch, bias = self.attn2.branch_and_bias(x, keys_values, padding)
        x, y = modulate.add_modulate(x, branch, *ada, modulate.SHIFT_MLP, modulate.SCALE_MLP, self.norm_eps,
                                     quantize=self.ff.takes_int8, bias=bias)
        if isinstance(y, QuantizedTokens):
            y = QuantizedTokens(y.values.unflatten(1, (h, w)), y.scale)
        else:
            y = y.unflatten(1, (h, w)).permute(0, 3, 1, 2)
        return self.ff(y, Residual(x, *ada, modulate.GATE_MLP))


class FastOutputNorm(nn.Module):
    """`OutputNorm` in one pass: `modulate` with the final table's two rows (eagerly, the
    LayerNorm, the scale and the shift took three: 0.54 → 0.12 ms at 1.6B 4096² on an H100)."""

    def __init__(self, norm: OutputNorm):
        super().__init__()
        self.eps = norm.eps

    def forward(self, x: Tensor, table: Tensor, modulation: Tensor) -> Tensor:
        rows = modulation.expand(-1, table.shape[0], -1)  # one timestep row for both, as a view
        return modulate.modulate(x, table, rows, 0, 1, self.eps)


# Reference module type → its fused twin, built from (and sharing everything with) the original.
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    SanaBlock: FastSanaBlock,
    LinearSelfAttention: FastLinearSelfAttention,
    CrossAttention: FastCrossAttention,
    MixFFN: FastMixFFN,
    OutputNorm: FastOutputNorm,
}


@dataclass(frozen=True)
class AccelerationReport:
    """What `accelerate_dit` did: the modules now fused (by name), or why it left the model alone."""

    swapped: tuple[str, ...]
    fused_total: int  # modules running fused afterwards, swapped now or earlier
    skipped_because: str | None = None

    def __str__(self) -> str:
        if self.skipped_because:
            return f"DiT not accelerated: {self.skipped_because}"
        return f"DiT accelerated: {self.fused_total} fused modules ({len(self.swapped)} swapped now)"


def accelerate_dit(dit: nn.Module) -> AccelerationReport:
    """On a CUDA GPU (compute capability 8.0+, with Triton), swap the fused twins into `dit` in
    place; calling it again is a no-op. Anywhere else, change nothing and say why."""
    reason = fused_kernels_unavailable(next(dit.parameters()).device)
    return swap_in_twins(dit) if reason is None else AccelerationReport((), 0, reason)


def fused_kernels_unavailable(device: torch.device) -> str | None:
    """Why the fused kernels cannot run on `device`, or None where they can."""
    if device.type != "cuda":
        return f"it runs on {device.type}; the fused kernels are CUDA-only"
    if _KERNELS_MISSING is not None:
        return f"Triton cannot be used: {_KERNELS_MISSING}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "the GPU predates Ampere (compute capability 8.0)"
    return None


def swap_in_twins(dit: nn.Module) -> AccelerationReport:
    """The swap itself, whatever the device: on CPU tensors the twins run the kernels' plain-torch
    references, which is how the tests check the wiring without a GPU."""
    swapped = []
    # Names are resolved at replacement time: a block's twin is in place before its children swap.
    for name, module in list(dit.named_modules()):
        twin = TWINS.get(type(module))
        if twin is not None:
            parent, _, child = name.rpartition(".")
            setattr(dit.get_submodule(parent), child, twin(module))
            swapped.append(name)
    fused = sum(isinstance(m, tuple(TWINS.values())) for m in dit.modules())
    return AccelerationReport(tuple(swapped), fused)
