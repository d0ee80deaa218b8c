"""The original NVlabs/Sana single-file DiT checkpoint (`.pth`, its `state_dict`) in our names.

Our names are diffusers' (see dit.py). The mapping is data: a table per place in the network, and
the two fused projections that the original stores as one tensor (self-attention qkv, cross-attention
kv), split along their output dimension. Facts from diffusers' scripts/convert_sana_to_diffusers.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from .dit import DiTConfig
from .errors import CheckpointError

# original name → ours, outside the blocks
_TOP_LEVEL = {
    "x_embedder.proj.weight": "patch_embed.proj.weight",
    "x_embedder.proj.bias": "patch_embed.proj.bias",
    "t_embedder.mlp.0.weight": "time_embed.emb.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_embed.emb.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_embed.emb.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_embed.emb.timestep_embedder.linear_2.bias",
    "t_block.1.weight": "time_embed.linear.weight",
    "t_block.1.bias": "time_embed.linear.bias",
    "y_embedder.y_proj.fc1.weight": "caption_projection.linear_1.weight",
    "y_embedder.y_proj.fc1.bias": "caption_projection.linear_1.bias",
    "y_embedder.y_proj.fc2.weight": "caption_projection.linear_2.weight",
    "y_embedder.y_proj.fc2.bias": "caption_projection.linear_2.bias",
    "attention_y_norm.weight": "caption_norm.weight",
    "final_layer.scale_shift_table": "scale_shift_table",
    "final_layer.linear.weight": "proj_out.weight",
    "final_layer.linear.bias": "proj_out.bias",
}

# blocks.{i}.<original> → transformer_blocks.{i}.<ours>
_PER_BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "attn.proj.weight": "attn1.to_out.0.weight",
    "attn.proj.bias": "attn1.to_out.0.bias",
    "cross_attn.q_linear.weight": "attn2.to_q.weight",
    "cross_attn.q_linear.bias": "attn2.to_q.bias",
    "cross_attn.proj.weight": "attn2.to_out.0.weight",
    "cross_attn.proj.bias": "attn2.to_out.0.bias",
    "mlp.inverted_conv.conv.weight": "ff.conv_inverted.weight",
    "mlp.inverted_conv.conv.bias": "ff.conv_inverted.bias",
    "mlp.depth_conv.conv.weight": "ff.conv_depth.weight",
    "mlp.depth_conv.conv.bias": "ff.conv_depth.bias",
    "mlp.point_conv.conv.weight": "ff.conv_point.weight",
}

# the same, only in checkpoints with qk_norm (SANA-1.5)
_PER_BLOCK_QK_NORM = {
    "attn.q_norm.weight": "attn1.norm_q.weight",
    "attn.k_norm.weight": "attn1.norm_k.weight",
    "cross_attn.q_norm.weight": "attn2.norm_q.weight",
    "cross_attn.k_norm.weight": "attn2.norm_k.weight",
}

# one original tensor → equal parts along dim 0, in this order
_PER_BLOCK_FUSED = {
    "attn.qkv.weight": ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"),
    "cross_attn.kv_linear.weight": ("attn2.to_k.weight", "attn2.to_v.weight"),
    "cross_attn.kv_linear.bias": ("attn2.to_k.bias", "attn2.to_v.bias"),
}

# Training-time tensors with no place at inference: the learned null caption of caption dropout,
# the fixed position-embedding buffer (recomputed at run time), and the loss-weighting head.
_DROPPED = frozenset({"y_embedder.y_embedding", "pos_embed", "logvar_linear.weight", "logvar_linear.bias"})

# names only the original format has
_MARKERS = ("x_embedder.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.cross_attn.kv_linear.weight")


def looks_like_original_dit(keys: Iterable[str]) -> bool:
    """Whether these tensor names are the original NVlabs/Sana format rather than diffusers'."""
    keys = set(keys)
    return all(marker in keys for marker in _MARKERS)


def convert_original_dit(state_dict: dict[str, Tensor], config: DiTConfig) -> dict[str, Tensor]:
    """Rename (and split) an original checkpoint's tensors into LinearDiT's names.

    Raises CheckpointError naming the original keys that are unknown or missing for this config.
    Shapes are left for the loader to check against the model.
    """
    plan = _plan(config)
    unknown = sorted(state_dict.keys() - plan.keys() - _DROPPED)
    missing = sorted(plan.keys() - state_dict.keys())
    if unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} key(s): {_some(missing)}")
        if unknown:
            problems.append(f"unknown {len(unknown)} key(s): {_some(unknown)}")
        raise CheckpointError(
            f"original SANA transformer checkpoint does not match its config "
            f"({config.num_layers} layers, qk_norm={config.qk_norm!r}): {'; '.join(problems)}"
        )

    converted = {}
    for original, names in plan.items():
        tensor = state_dict[original]
        if tensor.shape[0] % len(names):
            raise CheckpointError(
                f"original key {original!r} of shape {tuple(tensor.shape)} cannot be split into "
                f"{len(names)} equal parts ({', '.join(names)})"
            )
        converted.update(zip(names, tensor.chunk(len(names), dim=0)))
    return converted


def _plan(config: DiTConfig) -> dict[str, tuple[str, ...]]:
    """Every original key this config's checkpoint has → the name(s) of ours it becomes."""
    per_block: dict[str, tuple[str, ...]] = {k: (v,) for k, v in _PER_BLOCK.items()}
    per_block |= _PER_BLOCK_FUSED
    if config.qk_norm is not None:
        per_block |= {k: (v,) for k, v in _PER_BLOCK_QK_NORM.items()}
    plan = {k: (v,) for k, v in _TOP_LEVEL.items()}
    for i in range(config.num_layers):
        for original, names in per_block.items():
            plan[f"blocks.{i}.{original}"] = tuple(f"transformer_blocks.{i}.{name}" for name in names)
    return plan


def _some(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")
