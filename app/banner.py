"""The strip above the canvas that says what went wrong and what to do, with the details folded."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
)

COLORS = {"error": "#8f2d2d", "warning": "#7a5a12", "info": "#24507a"}


class Banner(QFrame):
    """One message at a time; actions are (key, label, enabled, tooltip) and come back as `acted`."""

    acted = Signal(str)
    dismissed = Signal(str)  # the topic of a message the user closed (not one the window cleared)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("banner")
        self.level = self.topic = ""
        self.message = QLabel(wordWrap=True, textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_button = QToolButton(text="Details", checkable=True)
        self.close_button = QToolButton(text="✕", toolTip="Dismiss")
        self.details = QPlainTextEdit(readOnly=True, visible=False)
        self.details.setMaximumHeight(180)
        self._actions = QHBoxLayout()
        self._actions.addStretch(1)

        top = QHBoxLayout()
        top.addWidget(self.message, 1)
        top.addWidget(self.details_button)
        top.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.addLayout(top)
        layout.addLayout(self._actions)
        layout.addWidget(self.details)

        self.details_button.toggled.connect(self.details.setVisible)
        self.close_button.clicked.connect(self._close)
        self.hide()

    def show_message(self, text: str, level: str = "error", details: str = "", actions=(), topic: str = "") -> None:
        """`topic` names what the message is about, so the window can clear it once that is fixed."""
        self.level, self.topic = level, topic
        self.message.setText(text)
        self.setStyleSheet(f"#banner {{ background: {COLORS[level]}; border-radius: 4px; }}"
                           f"#banner QLabel {{ color: white; }}")
        self.details.setPlainText(details)
        self.details_button.setVisible(bool(details))
        self.details_button.setChecked(False)
        while self._actions.count() > 1:
            self._actions.takeAt(0).widget().deleteLater()
        for key, label, enabled, tooltip in actions:
            button = QPushButton(label, enabled=enabled, toolTip=tooltip)
            button.setObjectName(f"banner_action_{key}")
            button.clicked.connect(lambda _=False, key=key: self.acted.emit(key))
            self._actions.insertWidget(self._actions.count() - 1, button)
        self.show()

    def action_buttons(self) -> dict[str, QPushButton]:
        buttons = (self._actions.itemAt(i).widget() for i in range(self._actions.count() - 1))
        return {b.objectName().removeprefix("banner_action_"): b for b in buttons}

    def dismiss(self) -> None:
        self.level = self.topic = ""
        self.hide()

    def _close(self) -> None:
        topic = self.topic
        self.dismiss()
        self.dismissed.emit(topic)
