"""Memory-bounded DC-AE decoding that gives the one-pass image.

A one-pass decode of a 4096² image allocates 30 GiB (bf16), almost all of it in the
full-resolution stages. Cutting the latent into tiles that are decoded alone and blended does
bound memory, but it changes the image: the decoder's deep stages attend (ReLU linear attention)
over the whole picture, so a tile that sees part of it computes other colours (diffusers' tiling
lands near 18 dB PSNR from its own one-pass image with random weights).

Linear attention needs the whole image only through two small sums per head, Σ_j v_j k_jᵀ and
Σ_j k_j; everything else in the decoder is local (convolutions, per-pixel norms). So:

1. up to the last attention layer the maps are small (a 4096² image: 512 × 512 px at most),
   and each layer is applied to the whole map, tile by tile: a local layer reads a halo of its
   receptive field around each tile, an attention layer first adds up its sums over all tiles,
   then applies them tile by tile;
2. the rest (the memory-hungry high-resolution stages, convolutions only) runs on tiles of that
   last map, each read with the context its core needs through all the remaining layers and
   trimmed after every layer to what the layers after it still need, so tiles meet exactly, with
   no blending and no seam, and little is computed twice.

The result equals the one-pass decode up to floating-point summation order. How big a tile may
be comes from a measured model of the decoder's peak memory per output pixel and from the memory
the device has free; out of memory, the decode is retried with smaller tiles.

    images = decode_auto(dcae, latents / scaling_factor)   # the app's "auto" setting
    images = decode_tiled(dcae, latents, tile=32)          # 1024-px tiles (latent pixels × 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .dcae import DCAE, DCAEConfig, EfficientViTBlock, MultiScaleLinearAttention, ResBlock, UpBlock

MODES = ("auto", "always", "off")

# The decode's own allocations (activations, kept maps, the image), the weights aside, by the
# model below (which overestimates). Measured on an H100, bf16, 4096²: 2.9 GiB peak with the
# DC-AE's 0.58 GiB of weights, 1.22 s against 0.95 s and 30.6 GiB for one pass.
DEFAULT_MAX_BYTES = int(3.25 * 2**30)
# At its peak the decoder holds this many full-resolution copies of its first stage's feature map
# (width × dtype size bytes per output pixel): the upsampled input of the last UpBlock, its conv
# and shortcut, RMSNorm's fp32 temporaries. Measured on an H100, bf16, published f32c32 decoder:
# 1926 B/px = 7.52 copies at 512² to 4096² (engine/bench.py prints it); fp32 needs fewer copies.
PEAK_FEATURE_COPIES = 7.5
# A layer before the last attention peaks at this many copies of its input map: the attention's
# q/k/v, their 5×5 aggregates and fp32 copies (counted on the meta device; its GLU needs 32).
LAYER_PEAK_COPIES = 84
# Tile sides in latent pixels (×32 image pixels). "always" uses ALWAYS_TILE (4096²: 1.7 GiB of
# activations instead of 2.4, 10% slower); the out-of-memory retry stops at MIN_TILE.
ALWAYS_TILE = 16
MIN_TILE = 4
# Memory the device reports free is not all usable: the allocator rounds and fragments.
USABLE_FREE_FRACTION = 0.9


@dataclass(frozen=True)
class TilePlan:
    """How one decode runs: in one pass (tile None) or in tiles of `tile` latent pixels."""

    tile: int | None
    room: int  # bytes one tile of any layer may take, the maps kept whole aside
    predicted_bytes: int  # the decode's peak allocation by the memory model


def decoder_bytes_per_pixel(config: DCAEConfig, dtype: torch.dtype) -> float:
    """The decoder's peak memory per output pixel of one image (the model behind tile sizes)."""
    return PEAK_FEATURE_COPIES * config.decoder_block_out_channels[0] * _itemsize(dtype)


def plan_decode(
    dcae: DCAE, latent_shape: tuple[int, ...], dtype: torch.dtype, budget: int, tile: int | None = None
) -> TilePlan:
    """One pass when the whole image fits `budget` bytes, else the largest tiles that do (never
    below MIN_TILE); a given `tile` (latent pixels) is kept as it is."""
    images, _, h, w = latent_shape
    config = dcae.config
    f = config.spatial_compression
    per_pixel = images * decoder_bytes_per_pixel(config, dtype)
    whole = int(h * w * f * f * per_pixel)
    if tile is None and whole <= budget:
        return TilePlan(None, budget, whole)
    tail = _split(dcae)[1]
    kept = _kept_bytes(config, latent_shape, dtype, tail.down)
    room = max(budget - kept, 0)
    if tile is None:
        side = math.sqrt(room / per_pixel)  # output pixels of a tile with its context, at the peak
        tile = max(MIN_TILE, int(side - tail.pad) // f)
    if tile < 1:
        raise ValueError(f"tile must be at least 1 latent pixel, got {tile}")
    if tile >= max(h, w):
        return TilePlan(None, budget, whole)
    extent = [min(tile * f + tail.pad, side * f) for side in (h, w)]
    return TilePlan(tile, room, int(kept + extent[0] * extent[1] * per_pixel))


def memory_budget(device: torch.device, max_bytes: int | None = None) -> int:
    """Bytes a decode may allocate: the target, or less where the GPU has less free."""
    target = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if device.type != "cuda":
        return target
    free, _ = torch.cuda.mem_get_info(device)
    # Blocks PyTorch holds but no tensor uses are free to us too, though not to the driver.
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return min(target, int(USABLE_FREE_FRACTION * (free + cached)))


@torch.no_grad()
def decode_tiled(dcae: DCAE, latents: Tensor, tile: int | None = None, max_bytes: int | None = None) -> Tensor:
    """Decode [B, latent_channels, h, w] raw latents (already divided by the scaling factor) to
    [B, 3, 32h, 32w] images, the same as `dcae.decode`, allocating about `max_bytes` at most.

    `tile` is the side of the full-resolution tiles in latent pixels; None chooses it from free
    memory (one pass when the whole image fits). Out of memory, the decode is retried with tiles
    a quarter smaller, down to MIN_TILE, before the error is raised.
    """
    shape, budget = tuple(latents.shape), memory_budget(latents.device, max_bytes)
    plan = plan_decode(dcae, shape, latents.dtype, budget, tile)
    while True:
        try:
            if plan.tile is None:
                return dcae.decode(latents)
            return _decode_streaming(dcae, latents, plan.tile, plan.room)
        except torch.OutOfMemoryError:
            current = plan.tile or max(shape[-2:])
            if current <= MIN_TILE:
                raise
        # Out of the except block, the traceback's frames and the tensors they held are gone.
        if latents.is_cuda:
            torch.cuda.empty_cache()
        smaller = plan_decode(dcae, shape, latents.dtype, budget, max(MIN_TILE, current * 3 // 4))
        plan = TilePlan(smaller.tile, plan.room * 9 // 16, smaller.predicted_bytes)


def decode_auto(dcae: DCAE, latents: Tensor, mode: str = "auto", max_bytes: int | None = None) -> Tensor:
    """The app's tiling setting: "auto" tiles only when one pass would not fit the memory budget,
    "always" tiles with ALWAYS_TILE-pixel tiles (the least memory), "off" decodes in one pass
    whatever it costs. All three give the same image."""
    if mode == "off":
        with torch.no_grad():
            return dcae.decode(latents)
    if mode == "auto":
        return decode_tiled(dcae, latents, max_bytes=max_bytes)
    if mode == "always":
        return decode_tiled(dcae, latents, tile=ALWAYS_TILE, max_bytes=max_bytes)
    raise ValueError(f"tiling mode {mode!r} is not one of {', '.join(MODES)}")


# ---- The decoder as a chain of layers, each local (with a receptive-field halo) or attention ----


@dataclass(frozen=True)
class _Layer:
    apply: Callable[[Tensor], Tensor]
    halo: int  # input pixels of context one output pixel depends on (0 for attention's own sums)
    scale: int = 1  # output pixels per input pixel along a side
    width: int = 0  # channels of its input, for the memory model
    attention: MultiScaleLinearAttention | None = None  # set for a global layer


@dataclass(frozen=True)
class _Tail:
    layers: tuple[_Layer, ...]  # the local layers after the last attention
    down: int  # output pixels per pixel of the map they start from, along a side
    pad: int  # output pixels of context around a tile's core where the tail's memory peaks


def _layers(dcae: DCAE) -> list[_Layer]:
    """The decoder's forward (engine.dcae.Decoder.forward), layer by layer."""
    decoder = dcae.decoder
    layers = [_Layer(lambda z: decoder.conv_in(z) + z.repeat_interleave(decoder.in_repeats, dim=1),
                     _radius(decoder.conv_in), width=decoder.conv_in.out_channels)]
    for stage in reversed(decoder.up_blocks):
        for block in stage:
            if isinstance(block, UpBlock):  # nearest ×2 then a conv at the doubled size
                layers.append(_Layer(block, math.ceil(_radius(block.conv) / 2), 2, block.conv.in_channels))
            elif isinstance(block, ResBlock):
                layers.append(_Layer(block, _radius(block.conv1) + _radius(block.conv2), 1, block.conv1.in_channels))
            elif isinstance(block, EfficientViTBlock):
                width = block.attn.to_q.in_features
                layers.append(_Layer(block.attn, 0, 1, width, attention=block.attn))
                layers.append(_Layer(block.conv_out, _radius(block.conv_out.conv_depth), 1, width))
            else:
                raise TypeError(f"tiled decoding does not know the DC-AE block {type(block).__name__}")
    tail = _Layer(lambda x: decoder.conv_out(F.relu(decoder.norm_out(x))), _radius(decoder.conv_out), 1,
                  decoder.conv_out.in_channels)
    return [*layers, tail]


def _split(dcae: DCAE) -> tuple[list[_Layer], _Tail]:
    """The layers up to the last attention, run map by map, and the local tail after them."""
    layers = _layers(dcae)
    last = max((i for i, layer in enumerate(layers) if layer.attention is not None), default=-1)
    head, tail = layers[: last + 1], tuple(layers[last + 1 :])
    down = dcae.config.spatial_compression // math.prod(layer.scale for layer in head)
    # The peak is in the layers at or next to full resolution: their context, in output pixels.
    pad, reach = 0, down
    for layer, need in zip(tail, _context_needs(tail)):
        if reach <= 2:
            pad = max(pad, 2 * need * reach)
        reach //= layer.scale
    return head, _Tail(tail, down, pad)


def _context_needs(layers: tuple[_Layer, ...] | list[_Layer]) -> list[int]:
    """Per layer, the pixels of context around a tile its input needs for exact outputs after all
    of `layers`; one more entry, 0, for the output."""
    needs = [0]
    for layer in reversed(layers):
        needs.insert(0, layer.halo + math.ceil(needs[0] / layer.scale))
    return needs


def _radius(conv: torch.nn.Conv2d) -> int:
    return max(conv.kernel_size) // 2


def _decode_streaming(dcae: DCAE, latents: Tensor, tile: int, room: int) -> Tensor:
    head, tail = _split(dcae)
    x, down = latents, dcae.config.spatial_compression
    for layer in head:
        # Tiles as large as `room` allows by this layer's own memory model, and never smaller
        # than the image area of the tail's tiles.
        per_pixel = x.shape[0] * LAYER_PEAK_COPIES * layer.width * x.element_size()
        core = max(math.isqrt(int(room // per_pixel)), tile * dcae.config.spatial_compression // down, 1)
        down //= layer.scale
        if layer.attention is not None:
            x = _attend_in_tiles(layer.attention, x, core)
        else:
            x = _chain_in_tiles((layer,), x, core)
    return _chain_in_tiles(tail.layers, x, max(1, tile * dcae.config.spatial_compression // tail.down))


def _tiles(height: int, width: int, core: int):
    """(top, bottom, left, right) of the fewest near-equal tiles of at most core × core."""
    rows, cols = math.ceil(height / core), math.ceil(width / core)
    for i in range(rows):
        for j in range(cols):
            yield (i * height // rows, (i + 1) * height // rows, j * width // cols, (j + 1) * width // cols)


def _chain_in_tiles(layers: tuple[_Layer, ...], x: Tensor, core: int) -> Tensor:
    """The local `layers`, one after the other, on x, tile by tile. Each tile is read with the
    context its core needs through all of them and trimmed after each layer to what the layers
    after it still need, so that only its core is left, exactly as in one pass. Where a tile meets
    the image's edge, the layers' own zero padding is the one-pass padding: nothing to trim."""
    _, _, height, width = x.shape
    if core >= max(height, width):
        for layer in layers:
            x = layer.apply(x)
        return x
    needs = _context_needs(layers)
    scale = math.prod(layer.scale for layer in layers)
    out = None
    for top, bottom, left, right in _tiles(height, width, core):
        context = [min(needs[0], top), min(needs[0], height - bottom), min(needs[0], left), min(needs[0], width - right)]
        y = x[:, :, top - context[0] : bottom + context[1], left - context[2] : right + context[3]]
        for layer, need in zip(layers, needs[1:]):
            y = layer.apply(y)
            grown = [side * layer.scale for side in context]
            context = [min(side, need) for side in grown]
            cut = [g - c for g, c in zip(grown, context)]  # at least the layer's own halo, scaled
            y = y[:, :, cut[0] : y.shape[-2] - cut[1], cut[2] : y.shape[-1] - cut[3]]
        if out is None:
            out = y.new_empty(x.shape[0], y.shape[1], height * scale, width * scale)
        out[:, :, top * scale : bottom * scale, left * scale : right * scale] = y
        del y
    return out


def _qkv(attn: MultiScaleLinearAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ReLU(q), ReLU(k), v as [B, heads, head_dim, h, w] in fp32, as MultiScaleLinearAttention makes them."""
    batch, _, height, width = x.shape
    pixels = x.movedim(1, -1)
    qkv = torch.cat([attn.to_q(pixels), attn.to_k(pixels), attn.to_v(pixels)], dim=-1).movedim(-1, 1)
    qkv = torch.cat([qkv, *(aggregate(qkv) for aggregate in attn.to_qkv_multiscale)], dim=1)
    q, k, v = qkv.float().reshape(batch, -1, 3 * attn.head_dim, height, width).chunk(3, dim=2)
    return F.relu(q), F.relu(k), v


def _attend_in_tiles(attn: MultiScaleLinearAttention, x: Tensor, core: int) -> Tensor:
    """attn(x) for a map too large for one pass: the sums over all pixels first, tile by tile,
    then each tile's output from its own queries and those sums."""
    _, _, height, width = x.shape
    if core >= max(height, width):
        return attn(x)
    halo = max((_radius(a.proj_in) for a in attn.to_qkv_multiscale), default=0)
    sums = None  # [B, heads, head_dim + 1, head_dim]: Σ_j (v_j; 1) k_jᵀ
    for top, bottom, left, right in _tiles(height, width, core):
        t, l = max(top - halo, 0), max(left - halo, 0)
        window = x[:, :, t : min(bottom + halo, height), l : min(right + halo, width)]
        _, k, v = (part[..., top - t : bottom - t, left - l : right - l].flatten(-2) for part in _qkv(attn, window))
        partial = F.pad(v, (0, 0, 0, 1), value=1.0) @ k.transpose(-1, -2)
        sums = partial if sums is None else sums + partial

    def apply(window: Tensor) -> Tensor:
        q = _qkv(attn, window)[0]
        batch, _, _, h, w = q.shape
        out = sums @ q.flatten(-2)
        out = (out[:, :, :-1] / (out[:, :, -1:] + attn.eps)).to(window.dtype).reshape(batch, -1, h, w)
        return window + attn.norm_out(attn.to_out(out.movedim(1, -1)).movedim(-1, 1))

    return _chain_in_tiles((_Layer(apply, halo),), x, core)


def _kept_bytes(config: DCAEConfig, latent_shape: tuple[int, ...], dtype: torch.dtype, down: int) -> int:
    """What a tiled decode keeps whole: the image, and a layer's input and output maps, at most
    twice the largest map of the stages before the tail."""
    images, _, h, w = latent_shape
    f = config.spatial_compression
    image = images * config.in_channels * h * w * f * f
    widths = config.decoder_block_out_channels
    largest = max(widths[s] * (h * f >> s) * (w * f >> s) for s in range(int(math.log2(down)), len(widths)))
    return (image + 2 * images * largest) * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
