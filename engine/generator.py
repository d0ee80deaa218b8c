"""The Generator: turns a GenerationRequest into images, telling its caller as it goes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import torch

from . import events
from .model import SanaModel
from .preview import LatentPreviewer, load_or_fit_previewer, to_pil
from .request import GenerationRequest
from .runner import DenoiseRunner
from .solver import make_solver
from .text_encoder import PromptCache, trim_padding
from .tiling import decode_auto

EventSink = Callable[[events.Event], None]


class Generator:
    """Runs requests on one loaded model. Not thread-safe: one generation at a time.

    `cache_dir` holds what is derived from a model (the fitted preview map) when the model's own
    folder is read-only. `offload_text_encoder` parks the text encoder in CPU memory once the
    prompts are encoded (a prompt already in the cache needs no encoder at all). With previews on,
    each step's preview is the fitted latent-to-RGB map of the x0 estimate (one pixel per latent
    pixel, nearly free); `full_preview_every` = k > 0 makes every k-th one a full DC-AE decode of
    it instead, at the image's size (never the last step's: the finished image is decoded next).
    """

    def __init__(
        self, model: SanaModel, cache_dir: Path | None = None, previews: bool = True, tiling: str = "auto",
        offload_text_encoder: bool = False, full_preview_every: int = 0,
    ):
        self.model = model
        self.cache_dir = cache_dir
        self.previews = previews
        self.tiling = tiling  # DC-AE decode: "auto" tiles only when one pass would not fit
        self.offload_text_encoder = offload_text_encoder
        self.full_preview_every = full_preview_every
        self.prompt_cache = PromptCache()
        self._previewer: LatentPreviewer | None = None
        self._runner = DenoiseRunner(model.dit)

    def generate(
        self,
        request: GenerationRequest,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> list:
        """Images for `request` (PIL), or [] when cancelled. Emits Failed and re-raises on error."""
        emit = on_event or (lambda event: None)
        try:
            return self._generate(request.with_seed(), emit, cancel or threading.Event())
        except Exception as error:
            emit(events.Failed(error))
            raise

    @torch.inference_mode()
    def _generate(self, request: GenerationRequest, emit: EventSink, cancel: threading.Event) -> list:
        model = self.model
        start = time.perf_counter()
        if model.precision != request.precision:
            model.set_precision(request.precision)
        solver = make_solver(request.solver, model.scheduler_config, request.steps)
        emit(events.Started(request, len(solver)))

        text, mask = self._text_batch(request)
        if self.offload_text_encoder:
            model.text_encoder.park()
        latents = self._initial_noise(request)
        dtype = model.dit_dtype
        text = text.to(dtype)
        guidance = request.guidance_scale if request.uses_guidance else None
        timestep_scale = model.dit_config.timestep_scale
        previewer = self._preview_map() if self.previews else None
        # the runner replays a CUDA graph per shape; a new DiT object or state drops stale graphs
        runner = self._runner.bind(model.dit)
        if runner.prepares(latents):
            emit(events.Preparing(time.perf_counter() - start))

        for index, (timestep, sigma) in enumerate(zip(solver.timesteps, solver.sigmas)):
            if cancel.is_set():
                emit(events.Cancelled(index))
                return []
            velocity = runner.velocity(latents, timestep * timestep_scale, text, mask, guidance)
            preview = self._preview(previewer, latents[0] - sigma * velocity[0], index + 1, len(solver))
            latents = solver.step(velocity, latents)
            emit(events.Step(index + 1, len(solver), preview, time.perf_counter() - start))

        if cancel.is_set():
            emit(events.Cancelled(len(solver)))
            return []
        emit(events.Decoding(time.perf_counter() - start))
        images = self.decode(latents)
        metadata = {
            "request": request.to_dict(),
            "model": model.name,
            "precision": model.precision_name,
            "seconds": round(time.perf_counter() - start, 3),
        }
        emit(events.Finished(images, metadata))
        return images

    def decode(self, latents: torch.Tensor) -> list:
        dcae = self.model.dcae
        parameter = next(dcae.parameters())
        scaled = latents.to(parameter.dtype) / dcae.config.scaling_factor
        return to_pil(decode_auto(dcae, scaled, self.tiling))

    def _text_batch(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """[uncond × n, cond × n] as diffusers' SanaPipeline stacks them; cond × n without guidance."""
        encoder, n = self.model.text_encoder, request.num_images
        text, mask = self.prompt_cache.get(encoder, request.prompt, with_instruction=True)
        texts, masks = [text.expand(n, -1, -1)], [mask.expand(n, -1)]
        if request.uses_guidance:
            negative, negative_mask = self.prompt_cache.get(encoder, request.negative_prompt, with_instruction=False)
            texts.insert(0, negative.expand(n, -1, -1))
            masks.insert(0, negative_mask.expand(n, -1))
        return trim_padding(torch.cat(texts), torch.cat(masks))

    def _initial_noise(self, request: GenerationRequest) -> torch.Tensor:
        # diffusers' SanaPipeline convention, so a seed gives the same image in both: one CPU
        # generator, float32 normal noise of the whole batch, then moved to the device.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        channels = self.model.dit_config.in_channels
        shape = (request.num_images, channels, request.height // 32, request.width // 32)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.model.device)

    def _preview(self, previewer: LatentPreviewer | None, x0: torch.Tensor, step: int, steps: int):
        """The preview of step `step` of `steps` from the x0 estimate of the first image, or None."""
        if previewer is None:
            return None
        every = self.full_preview_every
        if every > 0 and step % every == 0 and step < steps:
            return self.decode(x0[None])[0]
        return previewer(x0)

    def _preview_map(self) -> LatentPreviewer:
        if self._previewer is None:
            dcae = self.model.dcae
            self._previewer = load_or_fit_previewer(self.model.path, self.cache_dir, dcae, dcae.config.scaling_factor)
        return self._previewer
