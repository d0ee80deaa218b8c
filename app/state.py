"""What the window shows, in one object with signals: the model, the queue, the run in progress.

Widgets observe this state and never change it themselves; they send intents to the Session,
which updates the state as the worker reports. Everything here lives on the UI thread.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from engine.request import GenerationRequest


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    native_size: int
    device: str
    notes: tuple[str, ...] = ()  # what loading chose differently from the settings, and why


@dataclass(frozen=True)
class OutputOptions:
    folder: Path
    pattern: str
    suffix: str  # ".png", ".jpg", ".webp"


_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """One Generate press: a request and, once it runs, the means to cancel it."""

    request: GenerationRequest
    id: int = field(default_factory=lambda: next(_ids))
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def label(self) -> str:
        prompt = " ".join(self.request.prompt.split())
        prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
        count = f" ×{self.request.num_images}" if self.request.num_images > 1 else ""
        return f"#{self.id}  {self.request.width}×{self.request.height}{count}  {prompt or '(empty prompt)'}"


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    elapsed: float  # seconds since the run started
    first_step_elapsed: float = 0.0  # when step 1 ended: prompt encoding is not a step

    @property
    def rate(self) -> float:
        """Steps per second, measured over the steps after the first (which pays for warm-up)."""
        if self.step > 1 and self.elapsed > self.first_step_elapsed:
            return (self.step - 1) / (self.elapsed - self.first_step_elapsed)
        return self.step / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        return (self.total - self.step) / self.rate if self.rate > 0 else 0.0

    @property
    def text(self) -> str:
        return f"Step {self.step}/{self.total} · {self.rate:.2f} it/s · ETA {_duration(self.eta)}"


@dataclass(frozen=True)
class Result:
    image: QImage
    path: Path | None  # None when saving failed: the image is still here for "Save as"
    request: GenerationRequest


class AppState(QObject):
    model_changed = Signal()  # model / model_status
    queue_changed = Signal()  # pending / current
    job_started = Signal(object)  # Job
    progress_changed = Signal(object)  # Progress
    preview_changed = Signal(QImage)
    preparing = Signal()  # the first step readies the GPU for this size
    decoding = Signal()
    job_finished = Signal(object, list)  # Job, [Result]
    job_cancelled = Signal(object, int)  # Job, completed steps
    error_raised = Signal(object)  # ErrorReport

    def __init__(self):
        super().__init__()
        self.model: ModelInfo | None = None
        # "unloaded" (nothing asked yet), "none" (no model to load), "loading", "ready", "failed"
        self.model_status = "unloaded"
        self.pending: list[Job] = []
        self.current: Job | None = None
        self.last_seed: int | None = None

    @property
    def busy(self) -> bool:
        return self.current is not None

    def set_model(self, status: str, model: ModelInfo | None = None) -> None:
        self.model_status, self.model = status, model
        self.model_changed.emit()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
