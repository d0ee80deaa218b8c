"""Where the window's intents meet the engine worker: load a model, queue, run, cancel.

The Session owns the worker's thread and the queue. A job leaves the queue only when the worker
is free and a model is ready, so the queue stays editable until the last moment; the settings
that decide how a job runs (precision, output folder, previews) are read at that moment too.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QThread, Signal

from engine.request import GenerationRequest

from .settings import Settings
from .state import AppState, Job, ModelInfo, OutputOptions, Progress
from .worker import Engine, EngineWorker, RunOptions

log = logging.getLogger(__name__)


class Session(QObject):
    # Signals into the worker's thread: Qt queues them because the worker lives there.
    _load_requested = Signal(str, str, bool)
    _run_requested = Signal(object, object)

    def __init__(self, settings: Settings, state: AppState | None = None, engine: Engine | None = None):
        super().__init__()
        self.settings = settings
        self.state = state or AppState()
        self._thread = QThread()
        self._thread.setObjectName("sana-engine")
        self._worker = EngineWorker(engine)
        self._worker.moveToThread(self._thread)
        self._load_requested.connect(self._worker.load)
        self._run_requested.connect(self._worker.run)
        self._worker.model_loaded.connect(self._on_model_loaded)
        self._worker.model_failed.connect(self._on_model_failed)
        self._worker.started.connect(self._on_started)
        self._worker.step.connect(self._on_step)
        self._worker.preparing.connect(lambda job: self.state.preparing.emit())
        self._worker.decoding.connect(lambda job: self.state.decoding.emit())
        self._worker.finished.connect(self._on_finished)
        self._worker.cancelled.connect(self._on_cancelled)
        self._worker.failed.connect(self._on_failed)
        self._worker.save_failed.connect(lambda job, report: self.state.error_raised.emit(report))
        self._first_step_elapsed = 0.0
        self._thread.start()

    # Intents -----------------------------------------------------------------------------------

    def load_model(self, path: str | None) -> None:
        if not path:
            self.state.set_model("none")
            return
        self.state.set_model("loading")
        self._load_requested.emit(str(path), self.settings["device"], self.settings["text_encoder_8bit"])

    def submit(self, request: GenerationRequest) -> Job:
        """Queue a request; its seed is fixed now, so the queue shows what will run."""
        job = Job(request.with_seed())
        self.state.last_seed = job.request.seed
        self.state.pending.append(job)
        self.state.queue_changed.emit()
        self._dispatch()
        return job

    def remove(self, job_id: int) -> bool:
        """Take a job out of the queue before it runs (a running job is cancelled instead)."""
        kept = [job for job in self.state.pending if job.id != job_id]
        if len(kept) == len(self.state.pending):
            return False
        self.state.pending[:] = kept
        self.state.queue_changed.emit()
        return True

    def cancel(self) -> None:
        if self.state.current is not None:
            self.state.current.cancel.set()

    def shutdown(self) -> None:
        """Cancel the run, drop the queue and end the worker's thread; safe to call twice."""
        self.state.pending.clear()
        self.cancel()
        self._thread.quit()
        self._thread.wait()

    # Worker reports ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.state.current is not None or not self.state.pending or self.state.model_status != "ready":
            return
        job = self.state.pending.pop(0)
        job.request = job.request.replace(precision=self.settings["precision"])
        self.state.current = job
        self.state.queue_changed.emit()
        suffix = "." + self.settings["image_format"]
        output = OutputOptions(self.settings.output_dir(), self.settings["filename_pattern"], suffix)
        self._run_requested.emit(job, RunOptions(output, previews=self.settings["preview_mode"] != "off",
                                                 tiling=self.settings["vae_tiling"],
                                                 offload_text_encoder=self.settings["offload_text_encoder"],
                                                 full_preview_every=self.settings["preview_every"]
                                                 if self.settings["preview_mode"] == "full" else 0))

    def _on_model_loaded(self, info: ModelInfo) -> None:
        self.state.set_model("ready", info)
        self._dispatch()

    def _on_model_failed(self, report) -> None:
        self.state.set_model("failed")
        self.state.error_raised.emit(report)

    def _on_started(self, job: Job, request: GenerationRequest) -> None:
        self.state.job_started.emit(job)

    def _on_step(self, job: Job, index: int, total: int, preview, elapsed: float) -> None:
        if index == 1:
            self._first_step_elapsed = elapsed
        self.state.progress_changed.emit(Progress(index, total, elapsed, self._first_step_elapsed))
        if preview is not None:
            self.state.preview_changed.emit(preview)

    def _on_finished(self, job: Job, results: list) -> None:
        self.state.job_finished.emit(job, results)
        self._end(job)

    def _on_cancelled(self, job: Job, completed_steps: int) -> None:
        self.state.job_cancelled.emit(job, completed_steps)
        self._end(job)

    def _on_failed(self, job: Job, report) -> None:
        self.state.error_raised.emit(report)
        self._end(job)

    def _end(self, job: Job) -> None:
        if self.state.current is job:
            self.state.current = None
            self.state.queue_changed.emit()
        self._dispatch()
