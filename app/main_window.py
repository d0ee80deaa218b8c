"""The main window: the request form, the queue, the canvas, the gallery, and the banner.

The window sends intents to the Session and redraws from the AppState's signals; it never
calls the engine. Keyboard: Ctrl+Enter generates, Esc cancels, Ctrl+S saves the shown image
as…, Ctrl+, opens the settings; dropping an image restores the settings stored in it. Edit ▸
Models… (and the banner's "Download a model…") opens the model manager.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QImage, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.aspect_ratios import closest_preset, snap
from engine.errors import OutputError, RequestError
from engine.image_io import read_request_fields, save_image, write_atomically
from engine.request import MIN_SIDE, GenerationRequest

from . import capabilities, failures, theme
from .banner import Banner
from .canvas import Canvas
from .capabilities import int8_unavailable_reason
from .gallery import Gallery
from .model_manager_dialog import ModelManagerDialog
from .naming import IMAGE_SUFFIXES
from .request_form import RequestForm
from .session import Session
from .settings import config_dir
from .settings_dialog import SettingsDialog
from .state import Job, Progress, Result

log = logging.getLogger(__name__)

DOWNLOAD_MODEL = "download_model"  # the banner's remedy that opens the model manager
DEMO_NOTICE = ("This is the demo model: it draws simple coloured shapes, named with a size and a place, "
               "like “a large red circle on the left, on a blue background”. Download a real SANA model "
               "for real pictures.")


class MainWindow(QMainWindow):
    def __init__(self, session: Session):
        super().__init__()
        self.session, self.state, self.settings = session, session.state, session.settings
        self.setWindowTitle("Sana Studio")
        self.setAcceptDrops(True)
        self.shown_result: Result | None = None  # the finished image on the canvas, if any
        self.shown_path: Path | None = None  # the file the canvas shows, if any
        self._last_report: failures.ErrorReport | None = None  # what the banner's buttons act on
        self._models_dialog: ModelManagerDialog | None = None  # one, kept: a download outlives its closing

        self.form = RequestForm()
        self.generate_button = QPushButton("Generate", objectName="generate_button")
        self.cancel_button = QPushButton("Cancel", objectName="cancel_button", enabled=False)
        self.queue = QListWidget(objectName="queue")
        self.queue.setMaximumHeight(120)
        self.remove_button = QPushButton("Remove from queue", enabled=False)
        self.banner = Banner()
        self.canvas = Canvas()
        self.progress = QProgressBar(objectName="progress", textVisible=True)
        self.progress.setFormat("")
        self.gallery = Gallery()
        self.model_label = QLabel()
        self._build_layout()
        self._build_actions()

        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.remove_button.clicked.connect(self.remove_selected)
        self.queue.itemSelectionChanged.connect(self._update_queue_buttons)
        remove = QAction("Remove from queue", self.queue, shortcut=QKeySequence.StandardKey.Delete,
                         shortcutContext=Qt.ShortcutContext.WidgetShortcut)
        remove.triggered.connect(self.remove_selected)
        self.queue.addAction(remove)
        self.banner.acted.connect(self._remedy)
        self.banner.dismissed.connect(self._on_banner_dismissed)
        self.gallery.activated_path.connect(self.show_file)
        self.gallery.reuse_requested.connect(self._restore_fields)
        self.gallery.notice.connect(lambda text, level: self.banner.show_message(text, level))

        self.state.model_changed.connect(self._on_model_changed)
        self.state.queue_changed.connect(self._on_queue_changed)
        self.state.job_started.connect(self._on_job_started)
        self.state.progress_changed.connect(self._on_progress)
        self.state.preview_changed.connect(lambda image: self.canvas.show_image(image, preview=True))
        self.state.preparing.connect(
            lambda: self.progress.setFormat("Preparing the GPU for this size (the first run at a size takes longer)…"))
        self.state.decoding.connect(lambda: self.progress.setFormat("Decoding…"))
        self.state.job_finished.connect(self._on_job_finished)
        self.state.job_cancelled.connect(self._on_job_cancelled)
        self.state.error_raised.connect(self.show_error)

        self.form.set_fields(self.settings["form"])
        self.gallery.set_folder(self.settings.output_dir())
        self._restore_geometry()
        self._on_model_changed()

    # Layout -----------------------------------------------------------------------------------

    def _build_layout(self) -> None:
        controls = QWidget(objectName="controls")
        column = QVBoxLayout(controls)
        column.addWidget(self.form, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button, 1)
        buttons.addWidget(self.cancel_button)
        column.addLayout(buttons)
        column.addWidget(QLabel("Queue"))
        column.addWidget(self.queue)
        column.addWidget(self.remove_button)

        zoom = QHBoxLayout()
        for label, tip, zoom_to in (("Fit", "Fit the image to the view (Ctrl+0)", None),
                                    ("100%", "Actual pixels (Ctrl+1)", 1.0)):
            button = QToolButton(text=label, toolTip=tip)
            button.clicked.connect(lambda _=False, z=zoom_to: self.canvas.set_zoom(z))
            zoom.addWidget(button)
        for label, direction in (("−", -1), ("+", 1)):
            button = QToolButton(text=label, toolTip="Zoom (Ctrl+wheel)")
            button.clicked.connect(lambda _=False, d=direction: self.canvas.zoom_by(d))
            zoom.addWidget(button)
        zoom.addStretch(1)
        centre = QWidget()
        middle = QVBoxLayout(centre)
        middle.addWidget(self.banner)
        middle.addWidget(self.canvas, 1)
        middle.addLayout(zoom)
        middle.addWidget(self.progress)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(controls)
        self.splitter.addWidget(centre)
        self.splitter.addWidget(self.gallery)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([340, 720, 360])
        self.setCentralWidget(self.splitter)
        self.statusBar().addPermanentWidget(self.model_label)
        self.resize(1420, 860)

    def _build_actions(self) -> None:
        def action(menu, text, slot, *keys) -> QAction:
            act = QAction(text, self)
            act.setShortcuts([QKeySequence(k) for k in keys])
            act.triggered.connect(slot)
            menu.addAction(act)
            self.addAction(act)  # shortcuts work with the menu bar hidden too
            return act

        file_menu = self.menuBar().addMenu("&File")
        self.generate_action = action(file_menu, "Generate", self.generate, "Ctrl+Return", "Ctrl+Enter")
        self.cancel_action = action(file_menu, "Cancel", self.cancel, "Esc")
        file_menu.addSeparator()
        action(file_menu, "Save image as…", self.save_as, "Ctrl+S")
        action(file_menu, "Restore settings from image…", self.open_image, "Ctrl+O")
        file_menu.addSeparator()
        action(file_menu, "Quit", self.close, "Ctrl+Q")
        edit_menu = self.menuBar().addMenu("&Edit")
        action(edit_menu, "Models…", self.open_models)
        action(edit_menu, "Settings…", self.open_settings, "Ctrl+,")
        view_menu = self.menuBar().addMenu("&View")
        action(view_menu, "Fit", lambda: self.canvas.set_zoom(None), "Ctrl+0")
        action(view_menu, "Actual pixels", lambda: self.canvas.set_zoom(1.0), "Ctrl+1")
        action(view_menu, "Zoom in", lambda: self.canvas.zoom_by(1), "Ctrl+=", "Ctrl++")
        action(view_menu, "Zoom out", lambda: self.canvas.zoom_by(-1), "Ctrl+-")

    # Intents ----------------------------------------------------------------------------------

    def start(self, model_path: str | None = None) -> None:
        """Load `model_path`, else the last used model, else the demo model."""
        self.load_model(model_path or self.settings["model_path"] or capabilities.demo_model_path() or "")

    def load_model(self, path: str) -> None:
        if path:
            self.settings.remember_model(path if not capabilities.is_demo_model(path) else "")
        self.session.load_model(path)

    def open_models(self) -> ModelManagerDialog:
        """Show the model manager (the same one each time, so a running download stays in view)."""
        if self._models_dialog is None:
            self._models_dialog = ModelManagerDialog(self)
            self._models_dialog.model_chosen.connect(self.use_model)
        self._models_dialog.refresh()
        self._models_dialog.show()
        self._models_dialog.raise_()
        self._models_dialog.activateWindow()
        return self._models_dialog

    def use_model(self, path: str) -> None:
        """Switch to the model folder `path`, as choosing it in the settings dialog does."""
        self.apply_settings({"model_path": path})

    def generate(self) -> Job | None:
        try:
            request = self.form.request(self.state.last_seed)
        except RequestError as error:
            self.banner.show_message(f"{error}. Fix that field and generate again.", "warning")
            return None
        self.settings["form"] = self.form.fields()
        self._save_settings()
        return self.session.submit(request)

    def cancel(self) -> None:
        self.session.cancel()

    def remove_selected(self) -> None:
        for item in self.queue.selectedItems():
            job_id = item.data(Qt.ItemDataRole.UserRole)
            if job_id is not None:
                self.session.remove(job_id)

    def save_as(self) -> Path | None:
        if self.shown_result is None and self.shown_path is None:
            self.banner.show_message("There is no finished image to save yet.", "info")
            return None
        source = self.shown_path or (self.shown_result.path if self.shown_result else None)
        suggestion = str(source) if source else str(self.settings.output_dir() / "image.png")
        target, _ = QFileDialog.getSaveFileName(self, "Save image as", suggestion,
                                                "Images (*.png *.jpg *.jpeg *.webp)")
        if not target:
            return None
        target = Path(target)
        if target.suffix.lower() not in IMAGE_SUFFIXES:
            target = target.with_suffix(".png")
        try:
            self._write_copy(source, target)
        except OutputError as error:
            self.banner.show_message(f"Could not save: {error}.", "error")
            return None
        self.statusBar().showMessage(f"Saved {target}", 5000)
        return target

    def open_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Restore settings from image", str(self.settings.output_dir()),
                                              "Images (*.png *.jpg *.jpeg *.webp)")
        if path:
            self.restore_from_image(Path(path))

    def restore_from_image(self, path: Path) -> bool:
        """Set every field from the settings stored in an image (ours, or an A1111 PNG)."""
        try:
            fields = read_request_fields(path)
        except (OSError, ValueError) as error:
            self.banner.show_message(f"Could not read {path.name}: {error}.", "error")
            return False
        if not fields:
            self.banner.show_message(f"{path.name} holds no generation settings (neither Sana Studio's nor "
                                     f"A1111's 'parameters').", "warning")
            return False
        self._restore_fields(fields, source=path.name)
        self.show_file(path)
        return True

    def open_settings(self) -> bool:
        dialog = SettingsDialog(self.settings, self)
        if not dialog.exec():
            return False
        self.apply_settings(dialog.values())
        return True

    def apply_settings(self, values: dict) -> None:
        before = self.settings.values()
        for name, value in values.items():
            self.settings[name] = value
        self._save_settings()
        if values.get("theme", before["theme"]) != before["theme"]:
            theme.apply(QApplication.instance(), self.settings["theme"])
        if self.settings["output_dir"] != before["output_dir"]:
            self.gallery.set_folder(self.settings.output_dir())
        reload_keys = ("model_path", "device", "text_encoder_8bit")
        if any(self.settings[key] != before[key] for key in reload_keys) \
                or self.state.model_status in ("none", "failed"):
            self.start()

    def show_error(self, report: failures.ErrorReport) -> None:
        actions = [self._remedy_button(key, report) for key in report.remedies]
        topic = "model" if report.kind in ("model", "device") else ""
        self.banner.show_message(report.summary, "error", report.details, actions, topic=topic)
        self._last_report = report

    def show_file(self, path: Path) -> None:
        image = QImage(str(path))
        if image.isNull():
            return
        self.shown_path, self.shown_result = path, None
        self.canvas.show_image(image)

    # State → widgets ----------------------------------------------------------------------------

    def _on_model_changed(self) -> None:
        state = self.state
        if state.model_status == "ready":
            self.model_label.setText(f"{state.model.name} · {state.model.native_size} px · {state.model.device}")
            self.form.set_native_size(state.model.native_size)
            self.form.suggest_guidance(capabilities.suggested_guidance(state.model.path))
            if state.model.notes:
                self.banner.show_message("Loaded with a change: " + "; ".join(state.model.notes) + ".", "warning",
                                         topic="model")
            elif capabilities.is_demo_model(state.model.path) and not self.settings["demo_notice_dismissed"]:
                self.banner.show_message(DEMO_NOTICE, "info", actions=[self._remedy_button(DOWNLOAD_MODEL)],
                                         topic="demo")
            elif self.banner.topic in ("model", "demo"):  # the problem it reported is solved
                self.banner.dismiss()
        elif state.model_status == "loading":
            self.model_label.setText("Loading the model…")
        elif state.model_status == "unloaded":
            self.model_label.setText("")
        elif state.model_status == "none":
            self.model_label.setText("No model")
            self.banner.show_message(
                "No model is loaded: this build has no demo model. Download a SANA model, or choose a model "
                "folder (diffusers layout).", "warning",
                actions=[self._remedy_button(DOWNLOAD_MODEL), self._remedy_button(failures.CHOOSE_MODEL)],
                topic="model")
        else:
            self.model_label.setText("No model (loading failed)")
        usable = state.model_status in ("ready", "loading")
        tip = "" if usable else "Load a model first: Edit ▸ Settings (Ctrl+,)"
        self.generate_button.setEnabled(usable)
        self.generate_action.setEnabled(usable)
        self.generate_button.setToolTip(tip or "Generate (Ctrl+Enter); while busy, adds to the queue")

    def _on_queue_changed(self) -> None:
        self.queue.clear()
        jobs = ([(self.state.current, True)] if self.state.current else []) + [(j, False) for j in self.state.pending]
        for job, running in jobs:
            item = QListWidgetItem(("▶ " if running else "") + job.label)
            item.setToolTip(f"seed {job.request.seed}, {job.request.steps} steps\n{job.request.prompt}")
            if not running:
                item.setData(Qt.ItemDataRole.UserRole, job.id)
            else:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
            self.queue.addItem(item)
        self.cancel_button.setEnabled(self.state.busy)
        self.cancel_action.setEnabled(self.state.busy)
        self.generate_button.setText("Add to queue" if self.state.busy else "Generate")
        self._update_queue_buttons()

    def _update_queue_buttons(self) -> None:
        self.remove_button.setEnabled(bool(self.queue.selectedItems()))

    def _on_job_started(self, job: Job) -> None:
        self.progress.setRange(0, job.request.steps)
        self.progress.setValue(0)
        self.progress.setFormat(f"Starting #{job.id} (seed {job.request.seed})…")
        self.statusBar().showMessage(f"#{job.id}: seed {job.request.seed}")

    def _on_progress(self, progress: Progress) -> None:
        self.progress.setRange(0, progress.total)
        self.progress.setValue(progress.step)
        self.progress.setFormat(progress.text)

    def _on_job_finished(self, job: Job, results: list[Result]) -> None:
        for result in reversed(results):
            if result.path is not None:
                self.gallery.add(result.path, result.image)
        if results:
            self.shown_result, self.shown_path = results[0], results[0].path
            self.canvas.show_image(results[0].image)
        saved = sum(result.path is not None for result in results)
        unsaved = f", {len(results) - saved} NOT saved (Ctrl+S)" if saved < len(results) else ""
        self.progress.setFormat(f"#{job.id} done: {saved} image{'s' * (saved != 1)} saved{unsaved}")

    def _on_job_cancelled(self, job: Job, completed_steps: int) -> None:
        self.progress.setFormat(f"#{job.id} cancelled after {completed_steps} steps; nothing was saved")

    # Remedies -----------------------------------------------------------------------------------

    def _remedy_button(self, key: str, report: failures.ErrorReport | None = None) -> tuple:
        request = report.request if report else None
        if key == failures.SMALLER and request is not None:
            width, height = self._smaller(request)
            return key, f"Retry at {width}×{height}", True, ""
        if key == failures.INT8:
            reason = int8_unavailable_reason()
            return key, "Retry in INT8", reason is None, reason or ""
        if key in (failures.TILING, failures.OFFLOAD):
            label = "Retry with VAE tiling" if key == failures.TILING else "Retry with the text encoder offloaded"
            return key, label, True, ""
        labels = {failures.RETRY: "Retry", failures.SETTINGS: "Settings…",
                  failures.CHOOSE_MODEL: "Choose a model folder…", DOWNLOAD_MODEL: "Download a model…"}
        return key, labels[key], True, ""

    def _remedy(self, key: str) -> None:
        report = self._last_report
        request: GenerationRequest | None = report.request if report else None
        self.banner.dismiss()
        if key == DOWNLOAD_MODEL:
            self.open_models()
            return
        if key == failures.CHOOSE_MODEL:
            folder = QFileDialog.getExistingDirectory(self, "Choose a SANA model folder")
            if folder:
                self.load_model(folder)
            return
        if key == failures.SETTINGS or request is None:
            self.open_settings()
            return
        if key == failures.SMALLER:
            width, height = self._smaller(request)
            request = request.replace(width=width, height=height)
        elif key == failures.INT8:
            self.settings["precision"] = "int8"
        elif key == failures.TILING:
            self.settings["vae_tiling"] = "always"
        elif key == failures.OFFLOAD:
            self.settings["offload_text_encoder"] = True
        self._save_settings()
        self.session.submit(request)

    def _on_banner_dismissed(self, topic: str) -> None:
        if topic == "demo":  # read once is enough: it does not come back at the next start
            self.settings["demo_notice_dismissed"] = True
            self._save_settings()

    def _smaller(self, request: GenerationRequest) -> tuple[int, int]:
        """Down to the model's native size first (its trained shape nearest this one), then by 3/4."""
        native = self.state.model.native_size if self.state.model else 1024
        if max(request.width, request.height) > native:
            preset = closest_preset(native, request.width, request.height)
            return preset.width, preset.height
        return max(MIN_SIDE, snap(request.width * 3 // 4)), max(MIN_SIDE, snap(request.height * 3 // 4))

    # Files ------------------------------------------------------------------------------------

    def _restore_fields(self, fields: dict, source: str = "the image") -> None:
        notes = self.form.set_fields(fields)
        text = f"Settings restored from {source}."
        if notes:
            text += " Adjusted: " + "; ".join(notes) + "."
        self.banner.show_message(text, "warning" if notes else "info")

    def _write_copy(self, source: Path | None, target: Path) -> None:
        if source is not None and source.is_file() and source.suffix.lower() == target.suffix.lower():
            data = source.read_bytes()  # the same format: the file as written, metadata and all
            write_atomically(target, lambda handle: handle.write(data))
            return
        if self.shown_result is not None:
            image, request = _to_pil(self.shown_result.image), self.shown_result.request
        else:
            image = Image.open(source)
            image.load()
            try:
                request = GenerationRequest.from_dict(read_request_fields(source))
            except (RequestError, TypeError):
                request = None
        if request is None:
            write_atomically(target, lambda handle: image.save(handle, format=_format(target)))
            return
        model = self.state.model.name if self.state.model else ""
        save_image(image, target, request, model, request.precision)

    def dragEnterEvent(self, event) -> None:
        if _dropped_image(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        path = _dropped_image(event.mimeData())
        if path:
            event.acceptProposedAction()
            self.restore_from_image(path)

    # Window state -------------------------------------------------------------------------------

    def _window_settings(self) -> QSettings:
        return QSettings(str(config_dir() / "window.ini"), QSettings.Format.IniFormat)

    def _restore_geometry(self) -> None:
        stored = self._window_settings()
        if stored.value("geometry") is not None:
            self.restoreGeometry(stored.value("geometry"))
        if stored.value("splitter") is not None:
            self.splitter.restoreState(stored.value("splitter"))

    def _save_settings(self) -> None:
        try:
            self.settings.save()
        except OutputError as error:
            log.warning("cannot save settings: %s", error)
            self.banner.show_message(f"Could not save the settings: {error}.", "warning")

    def closeEvent(self, event) -> None:
        config_dir().mkdir(parents=True, exist_ok=True)
        stored = self._window_settings()
        stored.setValue("geometry", self.saveGeometry())
        stored.setValue("splitter", self.splitter.saveState())
        stored.sync()
        self.settings["form"] = self.form.fields()
        self._save_settings()
        if self._models_dialog is not None:
            self._models_dialog.shutdown()
        self.session.shutdown()
        self.gallery.wait_for_thumbnails()
        super().closeEvent(event)


def _dropped_image(mime) -> Path | None:
    for url in mime.urls() if mime.hasUrls() else []:
        path = Path(url.toLocalFile())
        if url.isLocalFile() and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            return path
    return None


def _to_pil(image: QImage) -> Image.Image:
    rgba = image.convertToFormat(QImage.Format.Format_RGBA8888)
    return Image.frombytes("RGBA", (rgba.width(), rgba.height()), bytes(rgba.constBits()), "raw", "RGBA",
                           rgba.bytesPerLine()).convert("RGB")


def _format(path: Path) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[path.suffix.lower()]
