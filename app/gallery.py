"""The results of this and earlier runs, read back from the output folder, newest first.

The folder is the truth: the gallery lists what is on disk, so images from earlier sessions
appear, and a deleted file goes to the trash. Thumbnails are decoded on Qt's thread pool; a 4K
PNG takes a quarter of a second to decode and there may be hundreds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from PySide6.QtCore import QFile, QObject, QProcess, QSize, Qt, QThreadPool, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QIcon, QImage, QImageReader, QPixmap
from PySide6.QtWidgets import QListView, QListWidget, QListWidgetItem, QMenu, QMessageBox

from engine.image_io import read_request_fields

from .naming import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

THUMBNAIL = 160
MAX_LISTED = 1000
PATH_ROLE = Qt.ItemDataRole.UserRole


class _Thumbnails(QObject):
    ready = Signal(str, QImage)  # emitted from a pool thread, delivered on the UI thread


class Gallery(QListWidget):
    activated_path = Signal(object)  # Path: show it on the canvas
    reuse_requested = Signal(dict)  # request fields read from the file
    notice = Signal(str, str)  # text, level

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("gallery")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setSpacing(4)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.folder: Path | None = None
        self._thumbnails = _Thumbnails(self)
        self._thumbnails.ready.connect(self._set_thumbnail)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)  # the engine wants the cores more than the thumbnails do
        self.customContextMenuRequested.connect(self._menu)
        self.currentItemChanged.connect(lambda item, _: item and self.activated_path.emit(self.path_of(item)))
        self.itemDoubleClicked.connect(lambda item: self.open(self.path_of(item)))

    def set_folder(self, folder: Path) -> None:
        self.folder = folder
        self.clear()
        try:
            files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError:
            files = []
        for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)[:MAX_LISTED]:
            self._append(path)

    def add(self, path: Path, image: QImage | None = None) -> None:
        """A new result: first in the list, its thumbnail from the image already in memory."""
        if self.folder is not None and path.parent != self.folder:
            return
        item = self._item(path)
        self.insertItem(0, item)
        if image is not None:
            item.setIcon(QIcon(QPixmap.fromImage(_thumbnail_of(image))))
        else:
            self._load_thumbnail(path)

    def paths(self) -> list[Path]:
        return [self.path_of(self.item(i)) for i in range(self.count())]

    def path_of(self, item: QListWidgetItem) -> Path:
        return Path(item.data(PATH_ROLE))

    def wait_for_thumbnails(self) -> None:
        self._pool.waitForDone()

    # Actions on one file -----------------------------------------------------------------------

    def open(self, path: Path) -> None:
        open_externally(QUrl.fromLocalFile(str(path)))

    def copy_image(self, path: Path) -> None:
        QGuiApplication.clipboard().setImage(QImage(str(path)))

    def copy_prompt(self, path: Path) -> None:
        QGuiApplication.clipboard().setText(self._fields(path).get("prompt", ""))

    def reuse(self, path: Path) -> None:
        fields = self._fields(path)
        if fields:
            self.reuse_requested.emit(fields)
        else:
            self.notice.emit(f"{path.name} holds no generation settings.", "warning")

    def show_in_folder(self, path: Path) -> None:
        # Select the file where the platform's file manager can; elsewhere open its folder.
        if sys.platform == "win32":
            QProcess.startDetached("explorer", [f"/select,{path}"])
        elif sys.platform == "darwin":
            QProcess.startDetached("open", ["-R", str(path)])
        else:
            open_externally(QUrl.fromLocalFile(str(path.parent)))

    def delete(self, path: Path) -> bool:
        if not QFile.moveToTrash(str(path)):
            answer = QMessageBox.question(self, "Delete image", f"{path.name} cannot go to the trash. "
                                          f"Delete it for good?")
            if answer != QMessageBox.StandardButton.Yes:
                return False
            try:
                path.unlink()
            except OSError as error:
                self.notice.emit(f"Could not delete {path.name}: {error.strerror}.", "error")
                return False
        for i in range(self.count()):
            if self.path_of(self.item(i)) == path:
                self.takeItem(i)
                break
        return True

    # Internals ---------------------------------------------------------------------------------

    def _append(self, path: Path) -> None:
        self.addItem(self._item(path))
        self._load_thumbnail(path)

    def _item(self, path: Path) -> QListWidgetItem:
        item = QListWidgetItem(path.stem[:24])
        item.setData(PATH_ROLE, str(path))
        item.setToolTip(str(path))
        item.setSizeHint(QSize(THUMBNAIL + 12, THUMBNAIL + 28))
        return item

    def _load_thumbnail(self, path: Path) -> None:
        signal = self._thumbnails.ready

        def load() -> None:
            reader = QImageReader(str(path))
            reader.setAutoTransform(True)
            image = reader.read()
            if not image.isNull():
                signal.emit(str(path), _thumbnail_of(image))

        self._pool.start(load)

    def _set_thumbnail(self, path: str, image: QImage) -> None:
        for i in range(self.count()):
            item = self.item(i)
            if item.data(PATH_ROLE) == path:
                item.setIcon(QIcon(QPixmap.fromImage(image)))
                return

    def _fields(self, path: Path) -> dict:
        try:
            return read_request_fields(path)
        except (OSError, ValueError) as error:
            log.warning("cannot read settings from %s: %s", path, error)
            return {}

    def _menu(self, position) -> None:
        item = self.itemAt(position)
        if item is None:
            return
        path = self.path_of(item)
        menu = QMenu(self)
        for label, action in (
            ("Open", self.open), ("Copy image", self.copy_image), ("Copy prompt", self.copy_prompt),
            ("Reuse settings", self.reuse), ("Show in folder", self.show_in_folder), ("Delete", self.delete),
        ):
            menu.addAction(label, lambda action=action: action(path))
        menu.exec(self.viewport().mapToGlobal(position))


def _thumbnail_of(image: QImage) -> QImage:
    return image.scaled(THUMBNAIL, THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio,
                        Qt.TransformationMode.SmoothTransformation)


def open_externally(url: QUrl) -> None:
    if not QDesktopServices.openUrl(url):
        log.warning("no application opens %s", url.toString())
