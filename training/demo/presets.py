"""The demo model's sizes, as the config.json files of its three parts will say them.

Same architecture as the published SANA checkpoints, scaled down: the DiT keeps SANA's head dim
32, linear self-attention, Mix-FFN ratio 2.5, AdaLN-single and cross-attention, without position
embedding; the DC-AE keeps 32× compression, 32 latent channels, ResBlocks in the three shallow
stages and EfficientViT blocks (5×5 multi-scale linear attention) in the three deep ones; the text
encoder is a Gemma-2 decoder. "demo" is the shipped model (256², ~22M parameters, ~44 MB in fp16);
"quick" is the smallest that exercises every block, for a CPU smoke run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STAGES = 6  # 2^5 = 32× compression
BLOCK_TYPES = ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3
MULTISCALES = [[], [], [], [5], [5], [5]]


@dataclass(frozen=True)
class Preset:
    image_size: int
    dit: dict[str, Any]  # SanaTransformer2DModel config keys
    vae: dict[str, Any]  # AutoencoderDC config keys, less scaling_factor (measured after training)
    text_encoder: dict[str, Any]  # Gemma2Config keys, less vocab_size (the tokenizer's)


def _dit(width_heads: int, layers: int, cross_heads: int, text_hidden: int, image_size: int) -> dict[str, Any]:
    width = 32 * width_heads
    return {
        "in_channels": 32, "out_channels": 32,
        "num_attention_heads": width_heads, "attention_head_dim": 32, "num_layers": layers,
        "num_cross_attention_heads": cross_heads, "cross_attention_head_dim": width // cross_heads,
        "cross_attention_dim": width, "caption_channels": text_hidden, "mlp_ratio": 2.5,
        "sample_size": image_size // 32, "patch_size": 1, "interpolation_scale": None,
        "norm_elementwise_affine": False, "norm_eps": 1e-6, "attention_bias": False, "dropout": 0.0,
        "qk_norm": None, "guidance_embeds": False, "guidance_embeds_scale": 0.1, "timestep_scale": 1.0,
    }


def _vae(encoder_widths: list[int], decoder_widths: list[int], encoder_layers: list[int],
         decoder_layers: list[int], head_dim: int) -> dict[str, Any]:
    return {
        "in_channels": 3, "latent_channels": 32, "attention_head_dim": head_dim,
        "encoder_block_types": BLOCK_TYPES, "decoder_block_types": BLOCK_TYPES,
        "encoder_block_out_channels": encoder_widths, "decoder_block_out_channels": decoder_widths,
        "encoder_layers_per_block": encoder_layers, "decoder_layers_per_block": decoder_layers,
        "encoder_qkv_multiscales": MULTISCALES, "decoder_qkv_multiscales": MULTISCALES,
        "upsample_block_type": "interpolate", "downsample_block_type": "Conv",
        "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu",
        "encoder_out_shortcut": True, "decoder_in_shortcut": True, "decoder_conv_act_fn": "relu",
    }


def _gemma(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, Any]:
    head_dim = hidden // heads
    # Gemma-2's own settings (logit soft-capping, tanh-GELU, alternating sliding/global layers)
    # except the sizes; query_pre_attn_scalar is the head dim, as in gemma-2-2b (256 = its head dim).
    return {
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "intermediate_size": intermediate,
        "query_pre_attn_scalar": head_dim, "max_position_embeddings": 1024,
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }


PRESETS = {
    # The decoder gets the capacity (it draws the edges); the encoder only has to summarise flat
    # shapes. CPU cost at 256², 20 steps with guidance: see benchmarks/bench_demo_cpu.py.
    "demo": Preset(
        image_size=256,
        dit=_dit(width_heads=8, layers=12, cross_heads=4, text_hidden=256, image_size=256),
        vae=_vae([16, 32, 64, 128, 128, 128], [32, 64, 128, 128, 128, 128],
                 [1, 1, 1, 1, 1, 1], [1, 2, 2, 2, 2, 2], head_dim=32),
        text_encoder=_gemma(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=1024),
    ),
    "quick": Preset(
        image_size=64,
        dit=_dit(width_heads=2, layers=2, cross_heads=2, text_hidden=32, image_size=64),
        vae=_vae([8, 8, 16, 16, 32, 32], [8, 8, 16, 16, 32, 32], [1] * STAGES, [1] * STAGES, head_dim=8),
        text_encoder=_gemma(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64),
    ),
}
