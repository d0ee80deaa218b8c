"""The sampling loop's model call, replayed from CUDA graphs.

One denoising step asks the DiT for a velocity: under classifier-free guidance for the latents
with both texts (unconditional first; the DiT doubles the latents only after its first
self-attention, which reads no text), then uncond + scale·(cond − uncond). The 0.6B DiT at 1024²
launches ~600 kernels per step, each only microseconds of work, so from Python the step is bound
by launching (~40 ms on an H100, accelerated or not). On CUDA the runner therefore captures that
whole call once per (shapes, dtype, guidance on/off) as a CUDA graph, and each step only fills
the graph's input buffers (latents, the timestep as a device tensor, the guidance scale) and
replays it: 7.3 ms, with no host synchronization. The solver's step stays outside: a few
element-wise launches whose coefficients change every step, which the replay's queue hides.

The prompt's part of the DiT (`LinearDiT.encode_text`: the caption projection and every block's
text keys and values) is the same at every step, so it runs once per prompt, outside the graph,
and the graph reads its result: a new prompt is a new `text` or `mask` tensor (the runner tells
them apart by identity, and never reads them again once encoded, so change neither in place).

On the CPU, or with `graphs=False`, the call runs eagerly, as the plain loop would.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dit import TextContext


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    latents: Tensor  # the static inputs the graph reads …
    timestep: Tensor
    context: TextContext
    guidance_scale: Tensor
    velocity: Tensor  # … and the output it writes
    keep_alive: object  # tensors read by the graph that the model may drop (its position table)
    prompt: tuple  # the (text, mask) whose encoding `context` holds now; () after `bind`: encode anew


class DenoiseRunner:
    """`velocity(latents, timestep, text, mask, guidance_scale)` for one DiT, graphs cached inside.

    A graph bakes in where every weight lies and which modules are in place. After anything that
    changes the DiT (a dtype switch, `quantize_model`, `set_int8`, `accelerate_dit`, a load), call
    `bind(dit)`, which drops the stale graphs; it is cheap to call once per generation.
    """

    def __init__(self, dit: nn.Module, graphs: bool | None = None, max_graphs: int = 4):
        self.dit = dit
        self.max_graphs = max_graphs
        self._graphs_wanted = graphs
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pool = None
        self._fingerprint = _fingerprint(dit)
        self._encoded: tuple = ()  # the eager path's last (text, mask, its TextContext)

    @property
    def uses_graphs(self) -> bool:
        if self._graphs_wanted is not None:
            return self._graphs_wanted
        return next(self.dit.parameters()).is_cuda

    def bind(self, dit: nn.Module) -> DenoiseRunner:
        """Point the runner at `dit` as it is now; graphs captured for another state are dropped,
        and every prompt is encoded anew (the weights may have been loaded in place)."""
        fingerprint = _fingerprint(dit)
        if dit is not self.dit or fingerprint != self._fingerprint:
            self.forget()
            self.dit, self._fingerprint = dit, fingerprint
        self._encoded = ()
        for captured in self._graphs.values():
            captured.prompt = ()
        return self

    def forget(self) -> None:
        """Drop every captured graph and the memory pool they share."""
        self._graphs.clear()
        self._pool = None
        self._encoded = ()

    def prepares(self, latents: Tensor) -> bool:
        """Whether `velocity` readies the GPU for these latents first: a graph captured for a size
        no graph has, warming up on the way, which is when Triton compiles its kernels and tunes
        the GEMMs for the new token count. A slow call, worth telling. (A new prompt length at a
        known size captures a graph too, but tunes nothing.)"""
        return self.uses_graphs and latents.is_cuda and self._new_size(latents)

    def _new_size(self, latents: Tensor) -> bool:
        size = _size_key(latents)
        return all(key[0] != size for key in self._graphs)

    @torch.inference_mode()
    def velocity(
        self, latents: Tensor, timestep: float, text: Tensor, mask: Tensor, guidance_scale: float | None = None
    ) -> Tensor:
        """latents [n, C, h, w] (fp32, the solver's sample), timestep (already × the config's
        timestep_scale), text [2n or n, L, C_text] in the DiT's dtype and its mask (uncond first),
        guidance_scale (None: no guidance) → the guided velocity, fp32 [n, C, h, w]."""
        if not (self.uses_graphs and latents.is_cuda):
            if not _holds(self._encoded[:2], text, mask):
                self._encoded = (text, mask, self.dit.encode_text(text, mask))
            return self._forward(latents, timestep, self._encoded[2], guidance_scale)
        guided = guidance_scale is not None
        key = _graph_key(latents, text, mask, guided)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(key, latents, timestep, text, mask, guidance_scale)
        else:
            self._graphs.move_to_end(key)
        if not _holds(captured.prompt, text, mask):
            captured.context.copy_(self.dit.encode_text(text, mask))
            captured.prompt = (text, mask)
        captured.latents.copy_(latents)
        captured.timestep.fill_(timestep)
        if guided:
            captured.guidance_scale.fill_(guidance_scale)
        captured.graph.replay()
        return captured.velocity.clone()  # the buffer is overwritten by the next replay

    def _forward(
        self, latents: Tensor, timestep: float | Tensor, context: TextContext,
        guidance_scale: float | Tensor | None,
    ) -> Tensor:
        """The model call with the prompt already encoded: the plain loop's velocity (the latents
        twice, through `LinearDiT.forward`) up to the rows of the first self-attention, which
        run once here instead of twice."""
        guided = guidance_scale is not None
        dtype = next(self.dit.parameters()).dtype
        if isinstance(timestep, Tensor):
            t = timestep
        else:
            t = torch.full((1,), timestep, device=latents.device)  # one for the whole batch
        # the latents once for both prompts: the DiT doubles them after its first self-attention
        velocity = self.dit.denoise(latents.to(dtype), t, context).float()
        if guided:
            unconditional, conditional = velocity.chunk(2)
            velocity = unconditional + guidance_scale * (conditional - unconditional)
        return velocity

    def _capture(self, key, latents, timestep, text, mask, guidance_scale) -> _Captured:
        guided = guidance_scale is not None
        static_latents = latents.clone()
        static_context = self.dit.encode_text(text, mask)
        static_t = torch.full((1,), timestep, device=latents.device)
        static_scale = torch.full((), guidance_scale if guided else 1.0, device=latents.device)

        def call() -> Tensor:
            return self._forward(static_latents, static_t, static_context, static_scale if guided else None)

        # Warm up on a side stream, as PyTorch's graph docs do: Triton compiles, cuBLAS picks its
        # kernels and the position table is built before capture, not inside it.
        side = torch.cuda.Stream(device=latents.device)
        side.wait_stream(torch.cuda.current_stream(latents.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                call()
        torch.cuda.current_stream(latents.device).wait_stream(side)

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            velocity = call()
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        captured = _Captured(graph, static_latents, static_t, static_context, static_scale, velocity,
                             _position_table(self.dit, latents), (text, mask))
        self._graphs[key] = captured
        return captured


def _graph_key(latents: Tensor, text: Tensor, mask: Tensor, guided: bool) -> tuple:
    """What a captured graph is specific to: the shapes, dtypes and device it was captured with."""
    return _size_key(latents), tuple(text.shape), text.dtype, tuple(mask.shape), mask.dtype, guided


def _size_key(latents: Tensor) -> tuple:
    return tuple(latents.shape), latents.dtype, latents.device


def _holds(prompt: tuple, text: Tensor, mask: Tensor) -> bool:
    """Whether `prompt` is these very (text, mask) tensors: a new prompt comes as new tensors."""
    return len(prompt) == 2 and prompt[0] is text and prompt[1] is mask


def _fingerprint(dit: nn.Module) -> tuple:
    """What a captured graph depends on: which modules are in place, their int8 switches, and
    where each weight and buffer lies."""
    modules = tuple((id(m), getattr(m, "int8", None)) for m in dit.modules())
    tensors = tuple((t.data_ptr(), t.dtype) for t in itertools.chain(dit.parameters(), dit.buffers()))
    return modules + tensors


def _position_table(dit: nn.Module, latents: Tensor) -> Tensor | None:
    """The 2K/4K DiT's cached position table for this size: the graph reads it where it lay at
    capture, and the model drops it when another size comes, so the graph's entry keeps it alive."""
    embed = getattr(dit, "patch_embed", None)
    if embed is None or getattr(embed, "interpolation_scale", None) is None:
        return None
    h, w = latents.shape[-2:]
    return embed.position_embedding(h, w, latents.device, next(dit.parameters()).dtype)
