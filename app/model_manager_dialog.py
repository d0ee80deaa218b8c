"""The model manager: the published SANA models, the installed ones, download, import, remove, use.

A download runs on a thread of the dialog's own, not on the engine worker's, so a 10 GB transfer
never holds up a generation. It survives closing the dialog (the window keeps one dialog, which
closing only hides) and ends, cancelled, when the window closes. Cancel is a threading.Event the
manager checks between received pieces; the partial files stay, so downloading again resumes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.catalog import CATALOG
from engine.model_manager import (
    DownloadCancelled,
    DownloadProgress,
    HubAccessError,
    HubUnreachableError,
    InstalledModel,
    ModelManager,
    NotEnoughSpaceError,
    human_size,
)

from .settings import models_dir

log = logging.getLogger(__name__)

ROLE = Qt.ItemDataRole.UserRole


class _Download(QObject):
    """ModelManager.download on the dialog's thread; its reports are queued to the UI thread."""

    progress = Signal(object)  # DownloadProgress
    installed = Signal(object)  # InstalledModel
    failed = Signal(object)  # the exception, DownloadCancelled included

    def __init__(self, manager: ModelManager, name: str, cancel: threading.Event):
        super().__init__()
        self.manager, self.name, self.cancel = manager, name, cancel

    @Slot()
    def run(self) -> None:
        try:
            model = self.manager.download(self.name, self.progress.emit, self.cancel)
        except Exception as error:  # noqa: BLE001 - every failure becomes the dialog's error line
            if not isinstance(error, DownloadCancelled):
                log.warning("downloading %s failed: %s", self.name, error)
            error.__traceback__ = None
            self.failed.emit(error)
            return
        self.installed.emit(model)


class ModelManagerDialog(QDialog):
    """`model_chosen(path)` asks the window to switch to an installed model."""

    model_chosen = Signal(str)

    def __init__(self, parent=None, folder: Path | None = None):
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.setObjectName("model_manager_dialog")
        self.folder = folder or models_dir()
        self.manager = self._manager()
        self._thread: QThread | None = None
        self._job: _Download | None = None
        self._cancel = threading.Event()
        self.downloading_name = ""

        self.available = QTreeWidget(objectName="available", rootIsDecorated=False)
        self.available.setHeaderLabels(["Published model", "Download", "Native size"])
        self.license = QLabel(wordWrap=True, openExternalLinks=True, objectName="license")
        self.download_button = QPushButton("Download", objectName="download_button")
        self.installed = QTreeWidget(objectName="installed", rootIsDecorated=False)
        self.installed.setHeaderLabels(["Installed model", "Size on disk", "Source"])
        self.use_button = QPushButton("Use this model", objectName="use_button")
        self.import_button = QPushButton("Import folder…", objectName="import_button")
        self.remove_button = QPushButton("Remove", objectName="remove_button")
        self.progress = QProgressBar(objectName="progress", textVisible=True, visible=False)
        self.progress.setRange(0, 1000)  # permille: byte counts overflow a QProgressBar's int
        self.cancel_button = QPushButton("Cancel", objectName="cancel_button", visible=False)
        self.error = QLabel(objectName="error", visible=False, wordWrap=True, styleSheet="color: #e06c6c;",
                            textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
        self.token_edit = QLineEdit(objectName="token_edit", echoMode=QLineEdit.EchoMode.Password,
                                    placeholderText="hf_… (a Hugging Face access token)")
        self.retry_button = QPushButton("Download with this token", objectName="retry_button")
        self.token_row = _row(QLabel("Token"), self.token_edit, self.retry_button)
        self.token_row.hide()
        self._build_layout()

        self.available.itemSelectionChanged.connect(self._update_buttons)
        self.installed.itemSelectionChanged.connect(self._update_buttons)
        self.available.itemDoubleClicked.connect(lambda *_: self.download())
        self.installed.itemDoubleClicked.connect(lambda *_: self.use_selected())
        self.download_button.clicked.connect(lambda: self.download())
        self.cancel_button.clicked.connect(self.cancel_download)
        self.import_button.clicked.connect(lambda: self.import_folder())
        self.remove_button.clicked.connect(lambda: self.remove())
        self.use_button.clicked.connect(self.use_selected)
        self.retry_button.clicked.connect(self._retry_with_token)
        self._fill_available()
        self.refresh()

    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.addWidget(self.available, 2)
        layout.addWidget(self.license)
        layout.addWidget(_row(self.download_button, stretch_first=True))
        layout.addWidget(self.progress)
        layout.addWidget(_row(self.cancel_button, stretch_first=True))
        layout.addWidget(self.error)
        layout.addWidget(self.token_row)
        layout.addWidget(self.installed, 1)
        layout.addWidget(_row(self.import_button, self.remove_button, self.use_button, stretch_first=True))
        self.resize(720, 620)

    # Lists ------------------------------------------------------------------------------------

    def _fill_available(self) -> None:
        self.available.clear()
        for model in self.manager.available():
            item = QTreeWidgetItem([model.title, f"≈ {model.download_gb:g} GB", f"{model.native_size} px"])
            item.setData(0, ROLE, model.name)
            item.setToolTip(0, model.repo_id)
            self.available.addTopLevelItem(item)
        self.available.resizeColumnToContents(0)

    def refresh(self) -> None:
        """Read the installed models again (the folder is the truth, not a list kept here)."""
        selected = self._selected(self.installed)
        self.installed.clear()
        for model in self.manager.installed():
            source = {"download": "downloaded", "import": "imported", "folder": "in the models folder"}[model.source]
            if not model.ready:
                source += " (gone)" if model.source == "import" else " (incomplete)"
            item = QTreeWidgetItem([model.name, human_size(model.size_bytes), source])
            item.setData(0, ROLE, model)
            item.setToolTip(0, str(model.path))
            self.installed.addTopLevelItem(item)
            if selected is not None and model.name == selected.name:
                item.setSelected(True)
        self.installed.resizeColumnToContents(0)
        self._update_buttons()

    def installed_names(self, ready_only: bool = True) -> list[str]:
        return [self.installed.topLevelItem(i).data(0, ROLE).name for i in range(self.installed.topLevelItemCount())
                if self.installed.topLevelItem(i).data(0, ROLE).ready or not ready_only]

    def select(self, name: str) -> None:
        """Select `name` in whichever list has it (the installed one first)."""
        for tree in (self.installed, self.available):
            for i in range(tree.topLevelItemCount()):
                item = tree.topLevelItem(i)
                value = item.data(0, ROLE)
                if (value.name if isinstance(value, InstalledModel) else value) == name:
                    tree.setCurrentItem(item)
                    return

    def _selected(self, tree: QTreeWidget):
        items = tree.selectedItems()
        return items[0].data(0, ROLE) if items else None

    def _update_buttons(self) -> None:
        published = self._selected(self.available)
        model = self._selected(self.installed)
        if published:
            self.license.setText(_license_text(published, self.manager))
        busy = self._thread is not None
        self.download_button.setEnabled(bool(published) and not busy)
        self.retry_button.setEnabled(not busy)
        self.use_button.setEnabled(model is not None and model.ready)
        self.remove_button.setEnabled(model is not None and model.name != self.downloading_name)

    # Download ---------------------------------------------------------------------------------

    @property
    def downloading(self) -> bool:
        return self._thread is not None

    def download(self, name: str | None = None) -> bool:
        """Start downloading `name` (default: the selected published model); False if one is running."""
        name = name or self._selected(self.available)
        if not name or self._thread is not None:
            return False
        self._say("")
        self.token_row.hide()
        self._cancel = threading.Event()
        self.downloading_name = name
        self._thread = QThread(self)
        self._thread.setObjectName(f"download-{name}")
        self._job = _Download(self.manager, name, self._cancel)
        self._job.moveToThread(self._thread)
        self._thread.started.connect(self._job.run)
        self._thread.finished.connect(self._job.deleteLater)
        self._job.progress.connect(self._on_progress)
        self._job.installed.connect(self._on_installed)
        self._job.failed.connect(self._on_failed)
        self.progress.setValue(0)
        self.progress.setFormat(f"{name}: asking the hub…")
        self.progress.show()
        self.cancel_button.setEnabled(True)
        self.cancel_button.show()
        self._thread.start()
        self._update_buttons()
        return True

    def cancel_download(self) -> None:
        if self._thread is not None:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.progress.setFormat(f"{self.downloading_name}: cancelling…")

    def shutdown(self) -> None:
        """Cancel a running download and wait for its thread; the window calls this as it closes."""
        if self._thread is not None:
            self._cancel.set()
            self._thread.quit()  # the event loop ends once run() returns
            self._thread.wait()
            self._end()

    def _on_progress(self, event: DownloadProgress) -> None:
        if self._thread is None:  # a report still queued when the download ended
            return
        self.progress.setValue(int(1000 * event.done_bytes / event.total_bytes) if event.total_bytes else 0)
        self.progress.setFormat(progress_text(event))

    def _on_installed(self, model: InstalledModel) -> None:
        self._end()
        self.progress.setValue(1000)
        self.progress.setFormat(f"{model.name}: installed ({human_size(model.size_bytes)})")
        self.refresh()
        self.select(model.name)

    def _on_failed(self, error: Exception) -> None:
        name = self.downloading_name
        self._end()
        self.refresh()
        if isinstance(error, DownloadCancelled):
            self.progress.setFormat(f"{name}: cancelled; downloading it again resumes where it stopped")
            return
        self.progress.hide()
        if isinstance(error, HubUnreachableError):
            self._say(f"Offline: {error}.")
        elif isinstance(error, HubAccessError):
            self._say(f"{error}.")
            self.token_row.show()
            self.token_edit.setFocus()
        elif isinstance(error, NotEnoughSpaceError):
            self._say(f"Not enough disk space for {name}: {human_size(error.needed)} needed, "
                      f"{human_size(error.free)} free in {self.folder}.")
        else:
            self._say(f"Download of {name} failed: {_one_line(error)}")

    def _end(self) -> None:
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait()
            self._thread.deleteLater()
        self._thread = self._job = None
        self.downloading_name = ""
        self.cancel_button.hide()
        self._update_buttons()

    def _retry_with_token(self) -> None:
        token = self.token_edit.text().strip()
        if not token:
            self._say("Paste a Hugging Face token that has accepted the model's license first.")
            return
        self.manager = self._manager(token)
        self.download(self._selected(self.available))

    # Import, remove, use ----------------------------------------------------------------------

    def import_folder(self, path: str | None = None) -> InstalledModel | None:
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Import a SANA model folder (diffusers layout)")
            if not path:
                return None
        try:
            model = self.manager.import_folder(path)
        except Exception as error:  # noqa: BLE001 - a folder that is not a model is the user's to fix
            self._say(f"Cannot import {Path(path).name}: {_one_line(error)}")
            return None
        self._say("")
        self.refresh()
        self.select(model.name)
        return model

    def remove(self, name: str | None = None) -> bool:
        model = self._selected(self.installed) if name is None else None
        name = name or (model.name if model else "")
        if not name or name == self.downloading_name:
            return False
        model = model or next((m for m in self.manager.installed() if m.name == name), None)
        question = (f"Forget the imported model “{name}”? Its folder {model.path} stays on disk."
                    if model and model.source == "import" else
                    f"Delete “{name}” and its files ({human_size(model.size_bytes) if model else '?'}) "
                    f"from {self.folder}?")
        answer = QMessageBox.question(self, "Remove model", question)
        if answer != QMessageBox.StandardButton.Yes:
            return False
        try:
            self.manager.remove(name)
        except Exception as error:  # noqa: BLE001
            self._say(_one_line(error))
            return False
        self._say("")
        self.refresh()
        return True

    def use_selected(self) -> None:
        model = self._selected(self.installed)
        if model is not None and model.ready:
            self.model_chosen.emit(str(model.path))

    # Pieces -----------------------------------------------------------------------------------

    def _manager(self, token: str | None = None) -> ModelManager:
        # CATALOG is read here, at call time, so a test can publish its own tiny model.
        return ModelManager(self.folder, token=token, catalog=CATALOG)

    def _say(self, text: str) -> None:
        self.error.setText(text)
        self.error.setVisible(bool(text))


def progress_text(event: DownloadProgress) -> str:
    """"sana-1.6b-1024: 1.2 GB of 9.7 GB · 45.0 MB/s · 3 min 9 s left" (or what is being verified)."""
    if event.verifying:
        return f"{event.model}: checking {event.file}…"
    text = f"{event.model}: {human_size(event.done_bytes)} of {human_size(event.total_bytes)}"
    if event.speed > 0:
        text += f" · {human_size(event.speed)}/s"
    if event.eta is not None:
        text += f" · {duration(event.eta)} left"
    return text


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _license_text(name: str, manager: ModelManager) -> str:
    model = next(m for m in manager.available() if m.name == name)
    return f'<a href="{model.page_url}">{model.repo_id}</a> — {model.license}'


def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _row(*widgets: QWidget, stretch_first: bool = False) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    if stretch_first:
        layout.addStretch(1)
    for widget in widgets:
        layout.addWidget(widget, 0 if stretch_first or not isinstance(widget, QLineEdit) else 1)
    return row
