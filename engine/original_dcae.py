"""The original mit-han-lab DC-AE checkpoint (efficientvit's names) mapped onto ours (diffusers').

`mit-han-lab/dc-ae-f32c32-sana-1.0` ships a `model.safetensors` whose names follow efficientvit's
module tree: every op of a stage is a `ResidualBlock(main=…)` in an `OpSequential` (`op_list`),
every conv a `ConvLayer` (`.conv`, `.norm`). The renaming is the tables below; the only reshapes
are the fused 1×1 qkv conv, cut into diffusers' to_q/to_k/to_v thirds, and the 1×1 convs that
diffusers holds as Linear weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from .dcae import DCAE, DCAEConfig
from .errors import CheckpointError

# Modules outside the stages, by exact original path.
STEM = {
    "encoder.project_in.conv": "encoder.conv_in",
    "encoder.project_out.main.op_list.0.conv": "encoder.conv_out",  # main of the averaging shortcut
    "decoder.project_in.main.conv": "decoder.conv_in",  # main of the duplicating shortcut
    "decoder.project_out.op_list.0": "decoder.norm_out",
    "decoder.project_out.op_list.2.conv": "decoder.conv_out",  # op_list.1 is the ReLU
}

STAGE = re.compile(r"(encoder|decoder)\.stages\.(\d+)\.op_list\.(\d+)\.(.+)")
STAGE_LIST = {"encoder": "down_blocks", "decoder": "up_blocks"}

# Modules inside one op of a stage: (original path, our path) as full-match patterns.
IN_OP = [
    # ResBlock
    (r"main\.conv1\.conv", "conv1"),
    (r"main\.conv2\.conv", "conv2"),
    (r"main\.conv2\.norm", "norm"),
    # EfficientViT block: LiteMLA (context) then GLUMBConv (local)
    (r"context_module\.main\.qkv\.conv", "attn.to_qkv"),
    (r"context_module\.main\.aggreg\.(\d+)\.0", r"attn.to_qkv_multiscale.\1.proj_in"),
    (r"context_module\.main\.aggreg\.(\d+)\.1", r"attn.to_qkv_multiscale.\1.proj_out"),
    (r"context_module\.main\.proj\.conv", "attn.to_out"),
    (r"context_module\.main\.proj\.norm", "attn.norm_out"),
    (r"local_module\.main\.inverted_conv\.conv", "conv_out.conv_inverted"),
    (r"local_module\.main\.depth_conv\.conv", "conv_out.conv_depth"),
    (r"local_module\.main\.point_conv\.conv", "conv_out.conv_point"),
    (r"local_module\.main\.point_conv\.norm", "conv_out.norm"),
    # Stride-2 ConvLayer (encoder) and InterpolateConv's ConvLayer (decoder), each beside its shortcut
    (r"main\.conv", "conv"),
    (r"main\.conv\.conv", "conv"),
]

# The fused qkv conv's output channels, in thirds, are diffusers' to_q, to_k, to_v.
SPLIT = {"to_qkv": ("to_q", "to_k", "to_v")}
# 1×1 convs that diffusers holds as nn.Linear: [out, in, 1, 1] → [out, in].
AS_LINEAR = {"to_q", "to_k", "to_v", "to_out"}

ORIGINAL_PREFIXES = ("encoder.project_in.", "encoder.stages.", "decoder.stages.", "decoder.project_out.")


def looks_like_original_dcae(keys: Iterable[str]) -> bool:
    """True for efficientvit's names; diffusers' names never start with these prefixes."""
    return any(key.startswith(ORIGINAL_PREFIXES) for key in keys)


def convert_original_dcae(state_dict: dict[str, torch.Tensor], config: DCAEConfig) -> dict[str, torch.Tensor]:
    """Rename (and cut/reshape) an original checkpoint into DCAE's names.

    Raises CheckpointError naming every original tensor with no place in the model, and every
    model tensor left without a value or given the wrong shape.
    """
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in DCAE(config).state_dict().items()}
    converted: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unknown = []
    for key, tensor in state_dict.items():
        name = _rename(key)
        if name is None:
            unknown.append(key)
            continue
        for part, value in _reshape(name, tensor):
            converted[part], source[part] = value, key
    unexpected = sorted({source[n] for n in converted if n not in expected})
    missing = sorted(set(expected) - set(converted))
    misshaped = [
        f"{source[n]} gives {n} shape {list(converted[n].shape)}, the config needs {list(expected[n])}"
        for n in sorted(set(converted) & set(expected))
        if tuple(converted[n].shape) != expected[n]
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} tensors with unknown names: {_some(sorted(unknown))}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the config has no place for: {_some(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} model tensors missing (diffusers names): {_some(missing)}")
    problems += misshaped[:5]
    if problems:
        raise CheckpointError(f"original DC-AE checkpoint does not match the config: {'; '.join(problems)}")
    return {name: converted[name] for name in expected}


def _rename(key: str) -> str | None:
    module, _, leaf = key.rpartition(".")
    if module in STEM:
        return f"{STEM[module]}.{leaf}"
    stage = STAGE.fullmatch(module)
    if stage is None:
        return None
    side, stage_index, op_index, inner = stage.groups()
    for pattern, ours in IN_OP:
        found = re.fullmatch(pattern, inner)
        if found:
            return f"{side}.{STAGE_LIST[side]}.{stage_index}.{op_index}.{found.expand(ours)}.{leaf}"
    return None


def _reshape(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    module, _, leaf = name.rpartition(".")
    parent, _, last = module.rpartition(".")
    if last in SPLIT:
        thirds = zip(SPLIT[last], tensor.chunk(3, dim=0))
        return [(f"{parent}.{part}.{leaf}", _as_linear(t)) for part, t in thirds]
    return [(name, _as_linear(tensor) if last in AS_LINEAR else tensor)]


def _as_linear(weight: torch.Tensor) -> torch.Tensor:
    return weight.flatten(1) if weight.dim() == 4 else weight


def _some(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
