"""Applying a policy to a model: swap layers in place, switch them, swap them back.

The model code never branches on precision: it calls `self.to_q(x)` and gets W8A8 or float
depending on which layer sits there and whether its `int8` switch is on.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .linear import QuantLinear, QuantPointwiseConv
from .policy import DEFAULT_POLICY, QuantPolicy

_QUANT_LAYERS = (QuantLinear, QuantPointwiseConv)


@dataclass(frozen=True)
class QuantReport:
    """What `quantize_model` did: layer names in model order, and the memory the int8 copies take."""

    quantized: tuple[str, ...]
    kept: tuple[str, ...]  # Linear / Conv2d layers left in their float dtype
    int8_bytes: int  # int8 weights + fp32 scales, on top of the float weights

    def __str__(self) -> str:
        return (
            f"{len(self.quantized)} layers W8A8 (+{self.int8_bytes / 2**20:.1f} MiB), "
            f"{len(self.kept)} linear/conv layers kept in float"
        )


def quantize_model(model: nn.Module, policy: QuantPolicy = DEFAULT_POLICY, park_float: bool = False) -> QuantReport:
    """Swap, in place, every layer the policy names for its W8A8 twin (switched on).

    Quantize once the weights are loaded, best on the GPU (a per-channel absmax over the weights,
    milliseconds there): the int8 copy is made from the float weight where it lies, follows the
    model's later moves, and is remade by a later load_state_dict. Calling it again leaves
    already-quantized layers as they are. `park_float` parks each new layer's float weight in host
    memory as soon as its int8 copy exists (see `set_int8`), so the GPU never holds both for more
    than one layer. Raises TypeError when the policy names a layer that is neither nn.Linear nor a
    1×1 nn.Conv2d, ValueError when it names none at all.
    """
    quantized, kept, int8_bytes = [], [], 0
    for name, module in list(model.named_modules()):
        if isinstance(module, _QUANT_LAYERS):
            layer = module
        elif name and policy.wants_int8(name):
            layer = _quantized_twin(name, module)
            _replace(model, name, layer)
            if park_float:
                layer.park_float_weight()
        else:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                kept.append(name)
            continue
        quantized.append(name)
        int8_bytes += layer.weight_int8.numel() + 4 * layer.weight_scale.numel()
    if not quantized:
        raise ValueError(f"the policy {policy} names no layer of this {type(model).__name__}")
    return QuantReport(tuple(quantized), tuple(kept), int8_bytes)


def set_int8(model: nn.Module, enabled: bool, park_float: bool = False) -> int:
    """Switch every quantized layer to W8A8 (True) or back to its float forward (False).

    `park_float` (with True) moves the quantized layers' float weights to host memory while they
    run INT8 — on a GPU, the int8 copies then replace the 16-bit weights instead of sitting beside
    them (1.35 GB instead of 4.05 for the 1.6B's layers). Switching back to float puts any parked
    weight in place first. Do not park weights that another model shares (the placeholder is the
    same Parameter), and load no state_dict into a model while its weights are parked.

    Returns how many layers were switched; raises ValueError when asked for INT8 on a model that
    `quantize_model` has not touched, rather than silently running it in float.
    """
    layers = [m for m in model.modules() if isinstance(m, _QUANT_LAYERS)]
    if enabled and not layers:
        raise ValueError(f"this {type(model).__name__} has no quantized layer: call quantize_model first")
    for layer in layers:
        if enabled and park_float:
            layer.park_float_weight()
        elif not enabled:
            layer.unpark_float_weight()
        layer.int8 = enabled
    return len(layers)


def dequantize_model(model: nn.Module) -> tuple[str, ...]:
    """Put plain float layers back in place of the quantized ones (same Parameters), freeing the
    int8 copies; returns the names restored. Only needed to drop the memory: `set_int8(model,
    False)` already gives the float model's output bit for bit."""
    names = tuple(name for name, m in model.named_modules() if isinstance(m, _QUANT_LAYERS))
    for name in names:
        _replace(model, name, model.get_submodule(name).to_float())
    return names


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, layer)


def _quantized_twin(name: str, module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Linear):
        return QuantLinear.from_float(module)
    if isinstance(module, nn.Conv2d):
        return QuantPointwiseConv.from_float(module)
    raise TypeError(f"policy names {name!r}, a {type(module).__name__}; only nn.Linear and 1×1 nn.Conv2d go INT8")
