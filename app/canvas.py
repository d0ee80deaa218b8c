"""The image being made: the live preview at each step, then the final image; fit, 100 % or zoom."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QLabel, QScrollArea, QSizePolicy

ZOOM_STEPS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0)


class Canvas(QScrollArea):
    """Shows one QImage. `zoom` is None to fit the view, else a scale factor (1.0 = 100 %)."""

    zoom_changed = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image: QImage | None = None
        self.is_preview = False
        self.zoom: float | None = None
        self._view = QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        self._view.setText("Type a prompt and press Ctrl+Enter.")
        self._view.setObjectName("canvas_view")
        # In fit mode the pixmap follows the view; it must never hold the view open.
        self._view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setWidget(self._view)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWidgetResizable(True)

    def show_image(self, image: QImage, preview: bool = False) -> None:
        self.image, self.is_preview = image, preview
        self._refresh()

    def clear(self, text: str = "") -> None:
        self.image = None
        self._view.clear()
        self._view.setText(text)

    def set_zoom(self, zoom: float | None) -> None:
        self.zoom = zoom
        self.setWidgetResizable(zoom is None)
        self._refresh()
        self.zoom_changed.emit(zoom)

    def zoom_by(self, direction: int) -> None:
        current = self.zoom if self.zoom is not None else self._fit_scale()
        if direction > 0:
            target = next((z for z in ZOOM_STEPS if z > current + 1e-6), ZOOM_STEPS[-1])
        else:
            target = next((z for z in reversed(ZOOM_STEPS) if z < current - 1e-6), ZOOM_STEPS[0])
        self.set_zoom(target)

    def displayed_size(self):
        pixmap = self._view.pixmap()
        return None if pixmap is None or pixmap.isNull() else pixmap.size()

    def _fit_scale(self) -> float:
        if self.image is None or self.image.isNull():
            return 1.0
        area = self.viewport().size()
        return min(area.width() / self.image.width(), area.height() / self.image.height())

    def _refresh(self) -> None:
        if self.image is None or self.image.isNull():
            return
        scale = self._fit_scale() if self.zoom is None else self.zoom
        size = self.image.size() * max(scale, 1e-3)
        # Previews are latent-sized (1/32 of the image): smooth scaling turns blocks into a blur
        # that reads as "forming"; a final image at an integer zoom should show its pixels.
        smooth = self.is_preview or scale < 1.0
        mode = Qt.TransformationMode.SmoothTransformation if smooth else Qt.TransformationMode.FastTransformation
        pixmap = QPixmap.fromImage(self.image.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, mode))
        self._view.setPixmap(pixmap)
        if self.zoom is not None:
            self._view.resize(pixmap.size())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.zoom is None:
            self._refresh()

    def wheelEvent(self, event) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom_by(1 if event.angleDelta().y() > 0 else -1)
        else:
            super().wheelEvent(event)
