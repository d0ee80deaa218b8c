"""The one object that touches the engine: it owns the model and the GPU, on its own thread.

EngineWorker is a QObject moved to a QThread. Its slots run there, one at a time, in the order
they were asked for, so a model load asked for during a run waits for the run to end. Engine
events become signals, which Qt queues to the UI thread: the window keeps turning while the
engine works. Cancel does not go through the queue (the thread is busy in the engine): each job
carries a threading.Event that the UI sets and the engine checks between steps.

Finished images are written here, before the UI hears of them, so a crash of the window cannot
lose them and a 4K PNG's compression does not stall the UI.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Callable

from PIL import Image
from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QImage

from engine import events
from engine.errors import OutputError
from engine.image_io import save_image

from .failures import describe_generation_error, describe_load_error, is_out_of_memory
from .naming import image_paths
from .settings import cache_dir
from .state import Job, ModelInfo, OutputOptions, Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    """The engine entry points the worker calls; a test may wrap one to inject a failure."""

    load_model: Callable  # (path, device=...) -> SanaModel
    generator: Callable  # (model) -> object with .generate(request, on_event=, cancel=)


def default_engine() -> Engine:
    from engine.generator import Generator
    from engine.model import load_model

    # Derived data (the fitted preview map) goes to the user cache when a model folder is read-only.
    return Engine(load_model, lambda model: Generator(model, cache_dir=cache_dir()))


@dataclass(frozen=True)
class RunOptions:
    """What the UI decided when the job left the queue."""

    output: OutputOptions
    previews: bool
    tiling: str = "auto"  # the DC-AE decode: auto / always / off
    offload_text_encoder: bool = False
    full_preview_every: int = 0  # 0: the fast preview every step; k: a full decode every k steps


class EngineWorker(QObject):
    model_loaded = Signal(object)  # ModelInfo
    model_failed = Signal(object)  # ErrorReport
    started = Signal(object, object)  # Job, request with its seed fixed
    preparing = Signal(object)  # Job: the first step readies the GPU for this size, and takes longer
    step = Signal(object, int, int, object, float)  # Job, index, total, QImage | None, elapsed
    decoding = Signal(object)  # Job
    finished = Signal(object, list)  # Job, [Result]
    cancelled = Signal(object, int)  # Job, completed steps
    failed = Signal(object, object)  # Job, ErrorReport: the job is over
    save_failed = Signal(object, object)  # Job, ErrorReport: an image stays unsaved, the job goes on

    def __init__(self, engine: Engine | None = None):
        super().__init__()
        self._engine = engine
        self._model = None
        self._generator = None

    @Slot(str, str, bool)
    def load(self, path: str, device: str, text_encoder_8bit: bool = False) -> None:
        self._model = self._generator = None  # free the old model before the new one arrives
        _free_memory()
        try:
            engine = self._engine = self._engine or default_engine()
            model = engine.load_model(path, device=device, text_encoder_8bit=text_encoder_8bit)
            self._generator = engine.generator(model)
            self._model = model
        except Exception as error:  # noqa: BLE001 - every failure becomes a banner, never a crash
            log.exception("loading the model %s failed", path)
            report = describe_load_error(error, path)
            del error
            _free_memory()
            self.model_failed.emit(report)
            return
        self.model_loaded.emit(ModelInfo(model.name, str(model.path), model.native_size, str(model.device),
                                         model.notes))

    @Slot(object, object)
    def run(self, job: Job, options: RunOptions) -> None:
        if self._generator is None:
            self.failed.emit(job, describe_generation_error(RuntimeError("no model is loaded"), job.request))
            return
        if hasattr(self._generator, "previews"):
            self._generator.previews = options.previews  # none computed when none are shown
            self._generator.tiling = options.tiling
            self._generator.offload_text_encoder = options.offload_text_encoder
            self._generator.full_preview_every = options.full_preview_every
        finished: list[events.Finished] = []
        ended: list[events.Cancelled] = []
        seeded = [job.request]

        def on_event(event) -> None:
            if isinstance(event, events.Started):
                seeded[0] = event.request
                self.started.emit(job, event.request)
            elif isinstance(event, events.Preparing):
                self.preparing.emit(job)
            elif isinstance(event, events.Step):
                preview = to_qimage(event.preview) if options.previews and event.preview is not None else None
                self.step.emit(job, event.index, event.total, preview, event.elapsed)
            elif isinstance(event, events.Decoding):
                self.decoding.emit(job)
            elif isinstance(event, events.Finished):
                finished.append(event)
            elif isinstance(event, events.Cancelled):
                ended.append(event)
                self.cancelled.emit(job, event.completed_steps)

        try:
            self._generator.generate(job.request, on_event=on_event, cancel=job.cancel)
        except Exception as error:  # noqa: BLE001
            log.exception("generation #%d failed", job.id)
            report = describe_generation_error(error, job.request)
            oom = is_out_of_memory(error)
            # The traceback's frames hold the run's tensors; drop them before freeing memory.
            error.__traceback__ = None
            del error
            if oom:
                _free_memory()
            self.failed.emit(job, report)
            return
        if finished:
            self.finished.emit(job, self._save(job, seeded[0], finished[0], options.output))
        elif not ended:
            stray = RuntimeError("the engine returned without finishing or cancelling")
            self.failed.emit(job, describe_generation_error(stray, job.request))

    def _save(self, job: Job, request, event: events.Finished, output: OutputOptions) -> list[Result]:
        model_name = event.metadata.get("model", self._model.name)
        precision = str(event.metadata.get("precision", request.precision))
        results = []
        try:
            output.folder.mkdir(parents=True, exist_ok=True)
            paths = image_paths(output.folder, output.pattern, output.suffix, request, model_name,
                                len(event.images))
        except (OSError, ValueError) as error:
            log.exception("cannot name images in %s", output.folder)
            self.save_failed.emit(job, describe_generation_error(OutputError(f"{output.folder}: {error}"), request))
            paths = [None] * len(event.images)
        for image, path in zip(event.images, paths):
            if path is not None:
                try:
                    save_image(image, path, request, model_name, precision)
                except OutputError as error:
                    log.exception("saving %s failed", path)
                    self.save_failed.emit(job, describe_generation_error(error, request))
                    path = None
            results.append(Result(to_qimage(image), path, request))
        return results


def to_qimage(image: Image.Image) -> QImage:
    rgba = image.convert("RGBA")
    data = rgba.tobytes()
    # copy(): the QImage must own its pixels, not borrow `data`, which dies with this frame.
    return QImage(data, rgba.width, rgba.height, rgba.width * 4, QImage.Format.Format_RGBA8888).copy()


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
