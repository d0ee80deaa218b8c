"""The quantized layers: drop-in nn.Linear / 1×1 nn.Conv2d that run W8A8 or their float self.

Memory and the INT8 ↔ FP16 switch: each layer keeps its float weight and bias — the very
Parameters of the layer it was built from, so the model's state_dict keys and values do not change
— beside an int8 copy of the weight and its fp32 scales. `int8` flips between generations without
reading the checkpoint again, and the float path is the original layer's own forward, bit for bit.
The int8 copy is half the float weight's bytes, for the quantized layers only (about 0.5 GB for
the 0.6B DiT and 1.35 GB for the 1.6B one, beside 1.2 and 3.2 GB of fp16 weights). While a layer
runs INT8 it does not read its float weight, so that can wait in host memory
(`park_float_weight`, which `set_int8(..., park_float=True)` does for a whole model): the GPU then
holds the int8 copy instead of the 16-bit weight, not beside it, and switching back copies the
weight up again. The int8 buffers are derived data: they are not saved in the state_dict and are
recomputed whenever one is loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from .int8 import GatedResidual, quantize_per_channel
from .ops import int8_gemm, quantize_tokens


def _requantize_after_load(module, incompatible_keys):
    module.requantize()


class _Int8Weight:
    """What both layers share: the int8 weight [N, K], its per-channel scale [N], the switch."""

    int8: bool
    weight: nn.Parameter
    _parked: torch.Tensor | None = None  # the float weight, in host memory, while parked

    def _init_int8(self, out_features: int, in_features: int, device) -> None:
        self.int8 = True
        self.register_buffer(
            "weight_int8", torch.empty(out_features, in_features, dtype=torch.int8, device=device), persistent=False
        )
        self.register_buffer("weight_scale", torch.empty(out_features, device=device), persistent=False)
        self.register_load_state_dict_post_hook(_requantize_after_load)

    @torch.no_grad()
    def requantize(self) -> None:
        """Recompute the int8 weight from the float one (done on build and after load_state_dict)."""
        self.weight_int8, self.weight_scale = quantize_per_channel(self.weight.reshape(self.weight.shape[0], -1))

    @property
    def parked(self) -> bool:
        return self._parked is not None

    def park_float_weight(self) -> None:
        """Move the float weight to host memory; the Parameter keeps an empty placeholder of its
        dtype and device (so `.to()` still moves and casts it), and the layer runs INT8 only."""
        if self._parked is None:
            # ordinary tensors even inside `torch.inference_mode()` (where the Generator switches):
            # an inference tensor in a Parameter would refuse a later in-place load
            with torch.inference_mode(False), torch.no_grad():
                self._parked = self.weight.detach().to("cpu")
                self.weight.data = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device)

    def unpark_float_weight(self) -> None:
        """Put the float weight back, where and in what dtype the placeholder now is."""
        if self._parked is not None:
            with torch.inference_mode(False), torch.no_grad():
                self.weight.data = self._parked.to(device=self.weight.device, dtype=self.weight.dtype)
            self._parked = None

    def _float_forward_allowed(self) -> None:
        if self._parked is not None:
            raise RuntimeError("this layer's float weight is parked in host memory: switch it back with "
                               "set_int8(model, False), which puts it in place, before running it in float")

    def gemm(
        self, a_q: torch.Tensor, a_scale: torch.Tensor, residual: GatedResidual | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The W8A8 GEMM on an activation already quantized per token — e.g. once for Q, K and V:
        a_q int8 [M, K], a_scale [M, 1] → [M, N]; with a `residual`, added to it in the epilogue
        (see `GatedResidual`), into `out` where given."""
        return int8_gemm(a_q, a_scale, self.weight_int8, self.weight_scale, self.bias, self.weight.dtype,
                         residual=residual, out=out)

    def _apply(self, fn, recurse=True):
        scale = self.weight_scale
        super()._apply(fn, recurse)
        # The scale follows the device but stays fp32 when the model is cast to 16 bits: an fp16
        # scale would round it, and underflow it for layers with small weights.
        self.weight_scale = scale.to(self.weight_scale.device)
        return self

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8={self.int8}"


class QuantLinear(_Int8Weight, nn.Linear):
    """nn.Linear computing W8A8 (per-token int8 input, per-channel int8 weight) while `int8` is set.

    Output dtype is the float weight's dtype. Build it with `QuantLinear.from_float(linear)`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_int8(out_features, in_features, device)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> QuantLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.train(linear.training)
        layer.requantize()
        return layer

    def to_float(self) -> nn.Linear:
        """The plain nn.Linear again, holding the same Parameters (no copy; a parked weight is
        put back first)."""
        self.unpark_float_weight()
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.int8:
            self._float_forward_allowed()
            return super().forward(x)
        return self.gemm(*quantize_tokens(x)).reshape(*x.shape[:-1], self.out_features)


class QuantPointwiseConv(_Int8Weight, nn.Conv2d):
    """A 1×1 nn.Conv2d (Mix-FFN's expand and project) computed as a W8A8 GEMM over tokens.

    A 1×1 conv is a linear layer applied to every pixel, so the GEMM runs tokens-major: [B·H·W, C]
    times the weight [N, C]ᵀ. Input is NCHW of any memory layout; the quantizer reads the channels
    of each pixel through strides, so neither NCHW nor channels-last input is copied. The output is
    NCHW in channels-last memory (a view of the tokens-major GEMM result): the DiT's very next steps
    (depthwise conv, or the flatten back to tokens) take it without a copy either.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias, device=device, dtype=dtype)
        self._init_int8(out_channels, in_channels, device)

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> QuantPointwiseConv:
        is_pointwise = (
            conv.kernel_size == (1, 1)
            and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid")
            and conv.dilation == (1, 1)
            and conv.groups == 1
        )
        if not is_pointwise:
            raise ValueError(f"only a 1×1, stride-1, unpadded, ungrouped Conv2d is a GEMM; got {conv}")
        layer = cls(conv.in_channels, conv.out_channels, conv.bias is not None, device="meta")
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        layer.requantize()
        return layer

    def to_float(self) -> nn.Conv2d:
        """The plain 1×1 nn.Conv2d again, holding the same Parameters (no copy; a parked weight is
        put back first)."""
        self.unpark_float_weight()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 1, bias=self.bias is not None, device="meta")
        conv.weight, conv.bias = self.weight, self.bias
        return conv.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.int8:
            self._float_forward_allowed()
            return super().forward(x)
        batch, channels, height, width = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return self.gemm(*quantize_tokens(tokens)).view(batch, height, width, -1).permute(0, 3, 1, 2)
