"""SANA's linear diffusion transformer (Linear DiT, arXiv 2410.10629).

latent → 1×1 patch embed (+ sin-cos position at 2K/4K) → N × [ReLU linear self-attention,
softmax cross-attention to the text, Mix-FFN], all modulated by one AdaLN-single timestep
embedding → final AdaLN → 1×1 projection to the velocity.

Parameter names and shapes are exactly those of diffusers' SanaTransformer2DModel, so the published
safetensors load one to one; that is why a few submodules nest oddly (`to_out.0`,
`time_embed.emb.timestep_embedder`). Nothing here is computed at construction time: the loader
builds the model on the meta device and assigns the tensors afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError


@dataclass(frozen=True)
class DiTConfig:
    """The transformer's config.json: the keys of diffusers' SanaTransformer2DModel, its defaults."""

    in_channels: int = 32
    out_channels: int | None = 32
    num_attention_heads: int = 70
    attention_head_dim: int = 32
    num_layers: int = 20
    num_cross_attention_heads: int | None = 20
    cross_attention_head_dim: int | None = 112
    cross_attention_dim: int | None = 2240
    caption_channels: int = 2304
    mlp_ratio: float = 2.5
    dropout: float = 0.0  # training only
    attention_bias: bool = False
    sample_size: int = 32  # latent side of the training resolution: the position embedding's base
    patch_size: int = 1
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale: float | None = None  # None: no position embedding (NoPE), as at 512/1024
    guidance_embeds: bool = False
    guidance_embeds_scale: float = 0.1
    qk_norm: str | None = None
    timestep_scale: float = 1.0  # applied by the caller to the timesteps, as diffusers' pipeline does

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        """Read a config.json dict: "_"-prefixed keys are metadata; unknown keys or unsupported
        values raise ConfigError naming the key and what is allowed."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = sorted(values.keys() - known)
        if unknown:
            raise ConfigError(
                f"transformer config: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        config = cls(**values)
        if config.out_channels is None:  # diffusers' meaning of a missing out_channels
            config = dataclasses.replace(config, out_channels=config.in_channels)
        config._check_supported()
        return config

    @property
    def inner_dim(self) -> int:
        """The model width D."""
        return self.num_attention_heads * self.attention_head_dim

    def _check_supported(self) -> None:
        for key, (allowed, why) in _SUPPORTED_VALUES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(
                    f"transformer config: {key}={value!r} is not supported ({why}); "
                    f"allowed: {', '.join(map(repr, allowed))}"
                )
        if self.cross_attention_dim != self.inner_dim:
            raise ConfigError(
                f"transformer config: cross_attention_dim={self.cross_attention_dim!r} must equal the "
                f"model width num_attention_heads × attention_head_dim = {self.inner_dim} "
                f"(the caption is projected to that width before it is attended to)"
            )
        if self.interpolation_scale is not None and not self.interpolation_scale > 0:
            raise ConfigError(
                f"transformer config: interpolation_scale={self.interpolation_scale!r}; "
                f"allowed: null (no position embedding) or a positive number"
            )


# What the published SANA checkpoints use; anything else is a model this file does not implement.
_SUPPORTED_VALUES: dict[str, tuple[tuple[Any, ...], str]] = {
    "patch_size": ((1,), "every published SANA checkpoint uses patch size 1"),
    "guidance_embeds": ((False,), "the guidance embedding belongs to Sana-Sprint, which is not supported"),
    "qk_norm": ((None, "rms_norm_across_heads"), "SANA-1.5 uses RMS qk-norm across heads, 1.0 none"),
    "attention_bias": ((False,), "the published linear attention has no q/k/v bias"),
    "norm_elementwise_affine": ((False,), "the published blocks use LayerNorms without affine"),
}


class PatchEmbed(nn.Module):
    """Latent [B, C, h, w] → tokens [B, h·w, D] (row-major), plus the 2-D sin-cos position
    embedding of the 2K/4K checkpoints (those at 512/1024 use none)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.in_channels, config.inner_dim, kernel_size=1)  # patch size 1
        self.base_size = config.sample_size
        self.interpolation_scale = config.interpolation_scale
        self._cached: tuple[tuple, Tensor] | None = None  # (h, w, device, dtype) → embedding

    def forward(self, latents: Tensor) -> Tensor:
        h, w = latents.shape[-2:]
        # The 1×1 conv as the linear map it is, over the tokens: they come out token-major and
        # contiguous, the bias added in the GEMM. (cuDNN's conv wrote them channel-major, added the
        # bias in a second pass, and the transpose cost a copy later: 1.45 → 0.49 ms with the
        # position embedding at 1.6B 4096² on an H100, the same values.)
        tokens = F.linear(latents.flatten(2).transpose(1, 2), self.proj.weight.flatten(1), self.proj.bias)
        if self.interpolation_scale is None:
            return tokens
        return tokens + self.position_embedding(h, w, tokens.device, tokens.dtype)

    def position_embedding(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (h, w, device, dtype)
        if self._cached is None or self._cached[0] != key:
            table = sincos_position_embedding(
                self.proj.out_channels, h, w, self.base_size, self.interpolation_scale, device
            )
            self._cached = (key, table.to(dtype))
        return self._cached[1]


def sincos_position_embedding(
    dim: int, h: int, w: int, base_size: int, interpolation_scale: float, device: torch.device
) -> Tensor:
    """The [h·w, dim] 2-D sin-cos embedding of diffusers' PatchEmbed (float64).

    Each side is stretched to span `base_size / interpolation_scale` positions whatever its
    length, so any aspect ratio sees the positions it was trained on. The first half of the
    channels encodes the column, the second the row; each half is [sin, cos] over dim/4 frequencies.
    """
    quarter = dim // 4
    omega = 10000.0 ** -(torch.arange(quarter, dtype=torch.float64, device=device) / quarter)

    def waves(length: int) -> Tensor:
        # positions in float32 as diffusers computes them, so parity does not hinge on rounding
        positions = torch.arange(length, dtype=torch.float32, device=device) / (length / base_size)
        angles = (positions / interpolation_scale).double()[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    columns = waves(w)[None, :, :].expand(h, w, -1)
    rows = waves(h)[:, None, :].expand(h, w, -1)
    return torch.cat([columns, rows], dim=-1).reshape(h * w, dim)


class TimestepEmbedding(nn.Module):
    """t in [0, 1000] → 256-channel sinusoid → MLP → D."""

    def __init__(self, dim: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.linear_1 = nn.Linear(frequencies, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, timestep: Tensor, dtype: torch.dtype) -> Tensor:
        half = self.frequencies // 2
        # diffusers' float32 op order: at t ≈ 1000 one ulp of a frequency moves the angle by 1e-4
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device)
        freqs = torch.exp(exponent / half)
        angles = timestep.float()[:, None] * freqs
        sinusoid = torch.cat([angles.cos(), angles.sin()], dim=-1)  # cos first, as the checkpoints
        return self.linear_2(F.silu(self.linear_1(sinusoid.to(dtype))))


class AdaLNSingle(nn.Module):
    """PixArt-α's adaLN-single: one timestep MLP for the whole network emits the six shift / scale /
    gate vectors; each block adds its own learned table to them."""

    def __init__(self, dim: int):
        super().__init__()
        self.emb = nn.ModuleDict({"timestep_embedder": TimestepEmbedding(dim)})  # diffusers' nesting
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, timestep: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Returns the block modulation [B, 6, D] and the embedding [B, D] for the final layer."""
        embedding = self.emb["timestep_embedder"](timestep, dtype)
        return self.linear(F.silu(embedding)).unflatten(1, (6, -1)), embedding


class CaptionProjection(nn.Module):
    """Text-encoder states → model width: Linear, tanh-GELU, Linear."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, text: Tensor) -> Tensor:
        return self.linear_2(F.gelu(self.linear_1(text), approximate="tanh"))


class RMSNorm(nn.Module):
    """RMSNorm with a weight; the mean square is taken in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        inv_rms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * inv_rms).to(x.dtype) * self.weight


class LinearSelfAttention(nn.Module):
    """ReLU linear attention: O(N) in the number of tokens."""

    def __init__(self, dim: int, heads: int, head_dim: int, qk_norm: bool):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.norm_q = RMSNorm(inner, eps=1e-5) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(inner, eps=1e-5) if qk_norm else nn.Identity()
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        q = F.relu(self.norm_q(self.to_q(x))).view(batch, tokens, self.heads, -1).transpose(1, 2)
        k = F.relu(self.norm_k(self.to_k(x))).view(batch, tokens, self.heads, -1).transpose(1, 2)
        v = self.to_v(x).view(batch, tokens, self.heads, -1).transpose(1, 2)
        # With ReLU kernels, out_i = Σ_j (q_i·k_j) v_j / Σ_j q_i·k_j = q_i (KᵀV) / q_i (Kᵀ1):
        # padding V with a column of ones makes the normalizer Kᵀ1 come out of the same product, as
        # the last column. The sums run over all N tokens, so they are accumulated in fp32.
        kv = k.float().transpose(-1, -2) @ F.pad(v.float(), (0, 1), value=1.0)  # [B, H, d, d+1]
        out = q.float() @ kv
        out = out[..., :-1] / (out[..., -1:] + 1e-15)
        out = self.to_out(out.transpose(1, 2).reshape(batch, tokens, -1).to(x.dtype))
        # Always clamp to the fp16 range: the fp16-trained checkpoints depend on this clip, so fp32
        # and bf16 runs must clip too to give the same images.
        return out.clamp(-65504.0, 65504.0)


class CrossAttention(nn.Module):
    """Softmax attention from the image tokens to the text tokens, padding masked out."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, qk_norm: bool):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(context_dim, inner)
        self.to_v = nn.Linear(context_dim, inner)
        self.norm_q = RMSNorm(inner, eps=1e-5) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(inner, eps=1e-5) if qk_norm else nn.Identity()
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def keys_values(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """The text's keys and values [B, heads, L, d]: they depend on the prompt alone."""
        k = self.norm_k(self.to_k(text)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(text).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        return k, v

    def forward(self, x: Tensor, keys_values: tuple[Tensor, Tensor], padding: TextPadding) -> Tensor:
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, *keys_values, attn_mask=padding.bias)
        return self.to_out(out.transpose(1, 2).flatten(2))


class MixFFN(nn.Module):
    """GLUMBConv: 1×1 expand to two halves, 3×3 depthwise conv (the local mixing that lets the
    model drop position embeddings), x · SiLU(gate), 1×1 project."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.conv_inverted = nn.Conv2d(dim, 2 * hidden, kernel_size=1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, kernel_size=3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, dim, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.conv_depth(F.silu(self.conv_inverted(x))).chunk(2, dim=1)
        return self.conv_point(x * F.silu(gate))


class SanaBlock(nn.Module):
    """AdaLN-modulated linear self-attention, cross-attention (no norm, no gate), AdaLN-modulated
    Mix-FFN on the token grid."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, qk_norm = config.inner_dim, config.qk_norm is not None
        self.norm_eps = config.norm_eps
        self.attn1 = LinearSelfAttention(dim, config.num_attention_heads, config.attention_head_dim, qk_norm)
        self.attn2 = CrossAttention(
            dim, config.cross_attention_dim, config.num_cross_attention_heads,
            config.cross_attention_head_dim, qk_norm,
        )
        self.ff = MixFFN(dim, config.mlp_ratio)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self, x: Tensor, modulation: Tensor, keys_values: tuple[Tensor, Tensor], padding: TextPadding, h: int, w: int
    ) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table + modulation
        ).chunk(6, dim=1)
        y = F.layer_norm(x, x.shape[-1:], eps=self.norm_eps) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn1(y)
        x = to_text_rows(x, padding)
        x = x + self.attn2(x, keys_values, padding)
        y = F.layer_norm(x, x.shape[-1:], eps=self.norm_eps) * (1 + scale_mlp) + shift_mlp
        y = self.ff(y.unflatten(1, (h, w)).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return x + gate_mlp * y


def to_text_rows(x: Tensor, padding: TextPadding) -> Tensor:
    """x [n, T, D] as one row per text row: repeated whole where the text has k·n rows. Under
    classifier-free guidance both prompts see the same latents, so the first block's
    self-attention (which reads no text) runs once on n rows and the image is doubled only before
    the first cross-attention; from then on x has the text's rows and this is a no-op."""
    rows = padding.lengths.shape[0]
    return x if x.shape[0] == rows else x.repeat(rows // x.shape[0], 1, 1)


class OutputNorm(nn.Module):
    """The final AdaLN in front of `proj_out`: LayerNorm (no affine)·(1 + scale) + shift, the rows
    `table + modulation` = (shift, scale). No parameters of its own (the DiT's `scale_shift_table`
    gives the rows); a module so that `engine/accelerate.py` can swap in its one-pass twin."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor, table: Tensor, modulation: Tensor) -> Tensor:
        shift, scale = (table + modulation).chunk(2, dim=1)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale) + shift


@dataclass
class TextPadding:
    """Which text tokens the cross-attention reads. `LinearDiT.encode_text` puts each row's tokens
    first and its padding last, so both forms below say the same: the reference adds `bias`, the
    fused path (`engine/accelerate.py`) reads only the first `lengths` keys of each row."""

    bias: Tensor  # [B, 1, 1, L]: 0 for a token, −10000 for padding
    lengths: Tensor  # [B] int32: the row's tokens; L for a row with none (the bias then masks nothing)

    @classmethod
    def of(cls, keep: Tensor, dtype: torch.dtype) -> TextPadding:
        """From a mask [B, L] (1 = token) whose tokens come first in each row."""
        # an additive −10000 rather than −inf, as diffusers: a row with every token masked stays
        # finite — and, softmax being shift-free, attends to all L, which `lengths` says as L
        bias = (keep.to(dtype)[:, None, None, :] - 1) * 10000.0
        counts = keep.sum(dim=1, dtype=torch.int32)
        return cls(bias, torch.where(counts == 0, keep.shape[1], counts).to(torch.int32))

    def copy_(self, other: TextPadding) -> TextPadding:
        self.bias.copy_(other.bias)
        self.lengths.copy_(other.lengths)
        return self


@dataclass
class TextContext:
    """What the DiT makes of the prompt alone, the same at every step of a generation: so a
    sampling loop computes it once (`LinearDiT.encode_text`) and steps with `LinearDiT.denoise`.
    At 1024² that is real work: the 0.6B's 56 small key/value GEMMs took 0.37 of a step's 6.6 ms
    of kernels on an H100."""

    keys_values: list[tuple[Tensor, Tensor]]  # per block, the cross-attention's K and V [B, heads, L, d]
    padding: TextPadding

    def copy_(self, other: TextContext) -> TextContext:
        """Overwrite these tensors in place with `other`'s (a captured CUDA graph reads them)."""
        for mine, theirs in zip(self.keys_values, other.keys_values, strict=True):
            for a, b in zip(mine, theirs, strict=True):
                a.copy_(b)
        self.padding.copy_(other.padding)
        return self


class LinearDiT(nn.Module):
    """The SANA transformer: (latents, timestep, text, text mask) → velocity."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.inner_dim
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.time_embed = AdaLNSingle(dim)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        self.caption_norm = RMSNorm(dim, eps=1e-5)
        self.transformer_blocks = nn.ModuleList(SanaBlock(config) for _ in range(config.num_layers))
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.norm_out = OutputNorm(eps=1e-6)
        self.proj_out = nn.Linear(dim, config.out_channels)

    def forward(self, latents: Tensor, timestep: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """latents [B, in, h, w], timestep [B] or [1] (one for the whole batch, as in sampling;
        0..1000, already × timestep_scale), text
        [B, L, caption_channels], text_mask [B, L] (1 = keep) → velocity [B, out, h, w] in the
        latents' dtype; the model computes in its own parameters' dtype."""
        return self.denoise(latents, timestep, self.encode_text(text, text_mask))

    def encode_text(self, text: Tensor, text_mask: Tensor) -> TextContext:
        """The prompt's part of `forward`: text [B, L, caption_channels] and its mask → per block
        the cross-attention's keys and values, and which of them are padding."""
        dtype = self.scale_shift_table.dtype
        # Each row's tokens first, its padding last (the stable order keeps a tokenizer's padded
        # rows as they are): attention does not depend on the keys' order, and the fused path
        # can then read a row's first tokens instead of masking.
        keep = (text_mask != 0).to(torch.int32)
        order = keep.argsort(dim=1, descending=True, stable=True)
        keep = keep.gather(1, order)
        text = text.gather(1, order[..., None].expand_as(text))
        text = self.caption_norm(self.caption_projection(text.to(dtype)))
        keys_values = [block.attn2.keys_values(text) for block in self.transformer_blocks]
        return TextContext(keys_values, TextPadding.of(keep, dtype))

    def denoise(self, latents: Tensor, timestep: Tensor, context: TextContext) -> Tensor:
        """`forward` with the prompt's part already computed (`encode_text`). The text may have
        k times the latents' rows: row i of the latents then stands for text rows i, n + i, …
        (classifier-free guidance hands its latents once, not twice), and the velocity has the
        text's rows; see `to_text_rows`."""
        batch, _, h, w = latents.shape
        rows = context.padding.lengths.shape[0]
        if rows % batch:
            raise ValueError(f"{batch} latents for {rows} text rows: the text's rows must be a multiple of the latents'")
        if timestep.numel() not in (1, rows):
            raise ValueError(f"{timestep.numel()} timesteps for {rows} text rows: give one, or one per text row")
        dtype = self.scale_shift_table.dtype
        x = self.patch_embed(latents.to(dtype))
        # One timestep for the batch (the sampler's case) gives one row of modulation for all:
        # computed once, and the fused blocks can fold a single gate into a weight (accelerate.py).
        # A timestep per row modulates each row its own way, so then nothing is shared.
        if timestep.numel() == 1:
            timestep = timestep.reshape(1)
        else:
            timestep = timestep.expand(rows)
            x = to_text_rows(x, context.padding)
        modulation, t_embedding = self.time_embed(timestep, dtype)
        for block, keys_values in zip(self.transformer_blocks, context.keys_values, strict=True):
            x = block(x, modulation, keys_values, context.padding, h, w)

        x = self.proj_out(self.norm_out(x, self.scale_shift_table, t_embedding[:, None]))
        return x.transpose(1, 2).unflatten(2, (h, w)).to(latents.dtype)
