"""DC-AE, SANA's deep-compression autoencoder (arXiv 2410.10733): 32× down, 32 latent channels.

Shallow stages are ResBlocks; deep stages are EfficientViT blocks (ReLU linear attention over
q/k/v that are also aggregated by 5×5 depthwise convs, then a GLU MBConv). Every change of
resolution or width adds a parameter-free space-to-channel shortcut to a conv ("residual
autoencoding", the paper's first idea), so each stage only learns a residual.

Parameter names and shapes are diffusers' `AutoencoderDC`, so a published `vae/` folder loads
strictly; `engine/original_dcae.py` maps the original mit-han-lab checkpoint onto these names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

RES_BLOCK, VIT_BLOCK = "ResBlock", "EfficientViTBlock"

# What `AutoencoderDC` assumes for a key its config.json leaves out (older published files lack
# the last three), so a missing key means here what it means to diffusers.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": RES_BLOCK,
    "decoder_block_types": RES_BLOCK,
    "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
    "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
    "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "upsample_block_type": "pixel_shuffle",
    "downsample_block_type": "pixel_unshuffle",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "encoder_out_shortcut": True,
    "decoder_in_shortcut": True,
    "decoder_conv_act_fn": "relu",
    "scaling_factor": 1.0,
}

# The one value of each switch that the published SANA DC-AE (f32c32-sana-1.0) uses; diffusers
# spells the strided-conv downsample both "Conv" and "conv". Anything else is refused, not guessed.
SUPPORTED_SWITCHES: dict[str, tuple[Any, ...]] = {
    "downsample_block_type": ("Conv", "conv"),
    "upsample_block_type": ("interpolate",),
    "decoder_norm_types": ("rms_norm",),
    "decoder_act_fns": ("silu",),
    "encoder_out_shortcut": (True,),
    "decoder_in_shortcut": (True,),
    "decoder_conv_act_fn": ("relu",),
}


@dataclass(frozen=True)
class DCAEConfig:
    """diffusers' AutoencoderDC config.json, one field per key; per-stage values as tuples."""

    in_channels: int
    latent_channels: int
    attention_head_dim: int
    encoder_block_types: tuple[str, ...]
    decoder_block_types: tuple[str, ...]
    encoder_block_out_channels: tuple[int, ...]
    decoder_block_out_channels: tuple[int, ...]
    encoder_layers_per_block: tuple[int, ...]
    decoder_layers_per_block: tuple[int, ...]
    encoder_qkv_multiscales: tuple[tuple[int, ...], ...]
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...]
    upsample_block_type: str
    downsample_block_type: str
    decoder_norm_types: tuple[str, ...]
    decoder_act_fns: tuple[str, ...]
    encoder_out_shortcut: bool
    decoder_in_shortcut: bool
    decoder_conv_act_fn: str
    scaling_factor: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DCAEConfig:
        """Read a config.json dict. Keys starting with "_" are diffusers' bookkeeping and skipped;
        an unknown key or an unsupported value raises ConfigError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if not k.startswith("_") and k not in known)
        if unknown:
            raise ConfigError(f"DC-AE config: unknown keys {unknown}; known keys are {sorted(known)}")
        values = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in data.items() if k in known}}
        for side in ("encoder", "decoder"):
            stages = values[f"{side}_block_out_channels"]
            if not isinstance(stages, (list, tuple)):
                raise ConfigError(f"DC-AE config: {side}_block_out_channels must be a list, got {stages!r}")
            for key in (f"{side}_block_types", f"{side}_layers_per_block", f"{side}_qkv_multiscales"):
                values[key] = _per_stage(key, values[key], len(stages))
            values[f"{side}_block_out_channels"] = tuple(stages)
            values[f"{side}_qkv_multiscales"] = tuple(
                tuple(k) if isinstance(k, (list, tuple)) else k for k in values[f"{side}_qkv_multiscales"]
            )
        for key in ("decoder_norm_types", "decoder_act_fns"):
            values[key] = _per_stage(key, values[key], len(values["decoder_block_out_channels"]))
        return cls(**values)

    def __post_init__(self):
        for key in ("in_channels", "latent_channels", "attention_head_dim"):
            _check(_is_positive_int(getattr(self, key)), key, "a positive integer")
        _check(isinstance(self.scaling_factor, (int, float)) and not isinstance(self.scaling_factor, bool)
               and self.scaling_factor > 0, "scaling_factor", "a positive number")
        for key, allowed in SUPPORTED_SWITCHES.items():
            value = getattr(self, key)
            for item in value if isinstance(value, tuple) else (value,):
                _check(item in allowed, key, " or ".join(repr(a) for a in allowed), item)
        n = len(self.encoder_block_out_channels)
        _check(len(self.decoder_block_out_channels) == n, "decoder_block_out_channels",
               f"as many stages as the encoder's ({n})", list(self.decoder_block_out_channels))
        for side in ("encoder", "decoder"):
            self._check_side(side)

    def _check_side(self, side: str) -> None:
        widths = getattr(self, f"{side}_block_out_channels")
        kinds, depths = getattr(self, f"{side}_block_types"), getattr(self, f"{side}_layers_per_block")
        scales = getattr(self, f"{side}_qkv_multiscales")
        per_stage = [f"{side}_block_types", f"{side}_layers_per_block", f"{side}_qkv_multiscales"]
        if side == "decoder":
            per_stage += ["decoder_norm_types", "decoder_act_fns"]
        for key in per_stage:
            _check(isinstance(getattr(self, key), tuple) and len(getattr(self, key)) == len(widths), key,
                   f"a tuple with one entry per stage ({len(widths)})", getattr(self, key))
        for width, kind, depth, kernels in zip(widths, kinds, depths, scales):
            _check(_is_positive_int(width), f"{side}_block_out_channels", "positive integers", width)
            _check(kind in (RES_BLOCK, VIT_BLOCK), f"{side}_block_types",
                   f"{RES_BLOCK!r} or {VIT_BLOCK!r}", kind)
            # A stage of depth 0 swaps conv_in/conv_out for (un)shuffle convs: the f32c32-in/mix
            # models, not SANA's.
            _check(_is_positive_int(depth), f"{side}_layers_per_block", "at least 1 layer per stage", depth)
            if kind == RES_BLOCK:
                _check(kernels == (), f"{side}_qkv_multiscales", "[] for a ResBlock stage", kernels)
            else:
                _check(isinstance(kernels, tuple) and all(_is_positive_int(k) and k % 2 for k in kernels),
                       f"{side}_qkv_multiscales", "a list of odd kernel sizes", kernels)
                _check(width % self.attention_head_dim == 0, f"{side}_block_out_channels",
                       f"a multiple of attention_head_dim ({self.attention_head_dim}) for {VIT_BLOCK}", width)
        # Between stages i and i+1 the shortcut averages (down) or repeats (up) groups of
        # 4·width[i] / width[i+1] channels.
        for shallow, deep in zip(widths[:-1], widths[1:]):
            _check((4 * shallow) % deep == 0, f"{side}_block_out_channels",
                   "each width a divisor of 4× the width before it", list(widths))
        _check(widths[-1] % self.latent_channels == 0, f"{side}_block_out_channels",
               f"a last width that is a multiple of latent_channels ({self.latent_channels})", widths[-1])

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.encoder_block_out_channels) - 1)


def _per_stage(key: str, value: Any, stages: int) -> tuple:
    if isinstance(value, str):
        return (value,) * stages
    if not isinstance(value, (list, tuple)) or len(value) != stages:
        raise ConfigError(
            f"DC-AE config: {key} must list one value for each of the {stages} stages, got {value!r}"
        )
    return tuple(value)


def _check(ok: bool, key: str, allowed: str, *got: Any) -> None:
    if not ok:
        value = f"{got[0]!r}" if got else "this value"
        raise ConfigError(f"DC-AE config: {key} = {value} is not supported; allowed: {allowed}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channels of an NCHW map, with a bias (efficientvit's TritonRMSNorm2d)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x = (x32 * torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True) + self.eps)).to(x.dtype)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ResBlock(nn.Module):
    """3×3 conv, SiLU, 3×3 conv, RMSNorm, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = ChannelRMSNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(F.silu(self.conv1(x))))


class MultiScaleAggregation(nn.Module):
    """q/k/v seen through a k×k window: a depthwise conv, then a 1×1 conv within each head."""

    def __init__(self, channels: int, heads: int, kernel_size: int):
        super().__init__()
        self.proj_in = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
        )
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=heads, bias=False)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(qkv))


class MultiScaleLinearAttention(nn.Module):
    """EfficientViT's LiteMLA: ReLU linear attention over the plain and the aggregated q/k/v."""

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], eps: float = 1e-15):
        super().__init__()
        self.head_dim, self.eps = head_dim, eps
        inner = channels  # heads × head_dim, with one head per head_dim channels
        # diffusers' three names for the three thirds of the original fused 1×1 qkv conv.
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(
            MultiScaleAggregation(3 * inner, 3 * (inner // head_dim), k) for k in kernel_sizes
        )
        self.to_out = nn.Linear(inner * (1 + len(kernel_sizes)), channels, bias=False)
        self.norm_out = ChannelRMSNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        pixels = x.movedim(1, -1)
        qkv = torch.cat([self.to_q(pixels), self.to_k(pixels), self.to_v(pixels)], dim=-1).movedim(-1, 1)
        qkv = torch.cat([qkv, *(aggregate(qkv) for aggregate in self.to_qkv_multiscale)], dim=1)
        # Each head is 3·head_dim consecutive channels holding its own q, k, v: efficientvit's layout,
        # which does not line up with the to_q/to_k/to_v split.
        # fp32: k·v and its normalizer sum over every pixel (262k at 4K), too many for bf16's 8 bits.
        q, k, v = qkv.float().reshape(batch, -1, 3 * self.head_dim, height * width).chunk(3, dim=2)
        out = relu_linear_attention(F.relu(q), F.relu(k), v, self.eps)
        out = out.to(x.dtype).reshape(batch, -1, height, width)
        return x + self.norm_out(self.to_out(out.movedim(1, -1)).movedim(-1, 1))


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """out_i = Σ_j (q_i·k_j) v_j / Σ_j (q_i·k_j) for [B, heads, d, N] inputs, in O(N)."""
    # A row of ones under v makes the same two matmuls also produce the normalizer Σ_j q_i·k_j.
    v = F.pad(v, (0, 0, 0, 1), value=1.0)
    out = (v @ k.transpose(-1, -2)) @ q
    return out[:, :, :-1] / (out[:, :, -1:] + eps)


class GLUMBConv(nn.Module):
    """1×1 expand to 2×4C, SiLU, 3×3 depthwise, x·SiLU(gate), 1×1 project, RMSNorm, plus the input."""

    def __init__(self, channels: int, expand: int = 4):
        super().__init__()
        hidden = expand * channels
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = ChannelRMSNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.conv_depth(F.silu(self.conv_inverted(x))).chunk(2, dim=1)
        return x + self.norm(self.conv_point(h * F.silu(gate)))


class EfficientViTBlock(nn.Module):
    """Global context (linear attention), then local mixing (GLUMBConv); each residual."""

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        self.attn = MultiScaleLinearAttention(channels, head_dim, kernel_sizes)
        self.conv_out = GLUMBConv(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.attn(x))


class DownBlock(nn.Module):
    """Stride-2 conv plus the shortcut: pixel-unshuffle, then average groups of channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.group = 4 * in_channels // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + F.pixel_unshuffle(x, 2).unflatten(1, (-1, self.group)).mean(dim=2)


class UpBlock(nn.Module):
    """Nearest ×2 then conv, plus the shortcut: repeat each channel, then pixel-shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.repeats = 4 * out_channels // in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest")) + shortcut


def _stage_blocks(config: DCAEConfig, side: str, stage: int) -> list[nn.Module]:
    """The ResBlocks or EfficientViT blocks of one stage, without its resampling block."""
    channels = getattr(config, f"{side}_block_out_channels")[stage]
    depth = getattr(config, f"{side}_layers_per_block")[stage]
    if getattr(config, f"{side}_block_types")[stage] == RES_BLOCK:
        return [ResBlock(channels) for _ in range(depth)]
    kernel_sizes = getattr(config, f"{side}_qkv_multiscales")[stage]
    return [EfficientViTBlock(channels, config.attention_head_dim, kernel_sizes) for _ in range(depth)]


class Encoder(nn.Module):
    def __init__(self, config: DCAEConfig):
        super().__init__()
        widths = config.encoder_block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        stages = []
        for i in range(len(widths)):
            blocks = _stage_blocks(config, "encoder", i)
            if i + 1 < len(widths):
                blocks.append(DownBlock(widths[i], widths[i + 1]))
            stages.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = nn.Conv2d(widths[-1], config.latent_channels, 3, padding=1)
        self.out_group = widths[-1] // config.latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        return self.conv_out(x) + x.unflatten(1, (-1, self.out_group)).mean(dim=2)


class Decoder(nn.Module):
    def __init__(self, config: DCAEConfig):
        super().__init__()
        widths = config.decoder_block_out_channels
        self.conv_in = nn.Conv2d(config.latent_channels, widths[-1], 3, padding=1)
        self.in_repeats = widths[-1] // config.latent_channels
        stages = []  # stage i works at the resolution of encoder stage i; run deepest first
        for i in range(len(widths)):
            blocks = [UpBlock(widths[i + 1], widths[i])] if i + 1 < len(widths) else []
            stages.append(nn.Sequential(*blocks, *_stage_blocks(config, "decoder", i)))
        self.up_blocks = nn.ModuleList(stages)
        self.norm_out = ChannelRMSNorm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z) + z.repeat_interleave(self.in_repeats, dim=1)
        for stage in reversed(self.up_blocks):
            x = stage(x)
        return self.conv_out(F.relu(self.norm_out(x)))


class DCAE(nn.Module):
    """The autoencoder. Latents are raw: the caller multiplies by `scaling_factor` for the DiT."""

    def __init__(self, config: DCAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1], H and W multiples of 32 → [B, latent_channels, H/32, W/32]."""
        f = self.config.spatial_compression
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {f} on each side")
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, latent_channels, h, w] → [B, 3, 32h, 32w], roughly in [-1, 1]."""
        return self.decoder(latents)
