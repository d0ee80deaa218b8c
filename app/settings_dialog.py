"""The settings dialog, built from the schema: each setting's editor, its sentence, its state.

Settings the engine does not act on yet are editable and saved, and say so under their editor.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .capabilities import demo_model_path, downloaded_models, int8_unavailable_reason
from .naming import validate_pattern
from .settings import BY_NAME, Settings, default_output_dir

SECTIONS = (
    ("Model", ("model_path", "device", "precision")),
    ("Output", ("output_dir", "filename_pattern", "image_format")),
    ("Preview", ("preview_mode", "preview_every")),
    ("Memory", ("offload_text_encoder", "text_encoder_8bit", "vae_tiling")),
    ("Appearance", ("theme",)),
)


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setObjectName("settings_dialog")
        self.editors: dict[str, QWidget] = {}
        self.error = QLabel(visible=False, wordWrap=True, styleSheet="color: #e06c6c;")

        body = QWidget()
        column = QVBoxLayout(body)
        for title, names in SECTIONS:
            group = QGroupBox(title)
            form = QFormLayout(group)
            for name in names:
                setting = BY_NAME[name]
                shown, self.editors[name] = self._editor(name, settings)
                description = QLabel(setting.description, wordWrap=True)
                description.setObjectName(f"{name}_description")
                font = description.font()
                font.setPointSizeF(font.pointSizeF() * 0.9)
                description.setFont(font)
                box = QVBoxLayout()
                box.addWidget(shown)
                box.addWidget(description)
                form.addRow(_title(name), box)
            column.addWidget(group)
        column.addStretch(1)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(body)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.error)
        layout.addWidget(buttons)
        self.resize(640, 720)

    def values(self) -> dict:
        values = {}
        for name, editor in self.editors.items():
            if isinstance(editor, QComboBox):
                values[name] = editor.currentData()
            elif isinstance(editor, QCheckBox):
                values[name] = editor.isChecked()
            elif isinstance(editor, QSpinBox):
                values[name] = editor.value()
            else:
                values[name] = editor.text().strip()
        return values

    def set_value(self, name: str, value) -> None:
        editor = self.editors[name]
        if isinstance(editor, QComboBox):
            index = editor.findData(value)
            if index < 0:
                editor.addItem(str(value), value)
                index = editor.count() - 1
            editor.setCurrentIndex(index)
        elif isinstance(editor, QCheckBox):
            editor.setChecked(value)
        elif isinstance(editor, QSpinBox):
            editor.setValue(value)
        else:
            editor.setText(value)

    def accept(self) -> None:
        try:
            validate_pattern(self.values()["filename_pattern"])
        except ValueError as error:
            self.error.setText(str(error))
            self.error.show()
            return
        super().accept()

    # Editors ---------------------------------------------------------------------------------

    def _editor(self, name: str, settings: Settings) -> tuple[QWidget, QWidget]:
        """(what goes in the form, the editor that holds the value)."""
        setting, value = BY_NAME[name], settings[name]
        if name == "model_path":
            return self._model_editor(value, settings["recent_models"])
        if name == "output_dir":
            return self._folder_editor(value)
        if setting.choices:
            editor = QComboBox()
            for choice, label in setting.choices:
                editor.addItem(label, choice)
            editor.setCurrentIndex(editor.findData(value))
            if name == "precision":
                _disable_int8(editor)
        elif isinstance(setting.default, bool):
            editor = QCheckBox(checked=value)
        elif isinstance(setting.default, int):
            editor = QSpinBox(minimum=1, maximum=1000, value=value)
        else:
            editor = QLineEdit(value)
        editor.setObjectName(f"{name}_editor")
        editor.setToolTip(setting.description)
        return editor, editor

    def _model_editor(self, value: str, recent: list[str]) -> tuple[QWidget, QWidget]:
        combo = QComboBox()
        combo.setObjectName("model_path_editor")
        demo = demo_model_path()
        combo.addItem("Demo model" if demo else "Demo model (not in this build)", "")
        seen = {""}
        for path in (*recent, *downloaded_models(), value):
            if path and path not in seen:
                seen.add(path)
                combo.addItem(Path(path).name + f"  —  {path}", path)
        combo.setCurrentIndex(combo.findData(value))
        browse = QPushButton("Folder…")
        browse.clicked.connect(self._browse_model)
        return _row(combo, browse), combo

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a SANA model folder")
        if folder:
            self.set_value("model_path", folder)

    def _folder_editor(self, value: str) -> QWidget:
        edit = QLineEdit(value, placeholderText=str(default_output_dir()))
        edit.setObjectName("output_dir_editor")
        browse = QPushButton("Folder…")
        browse.clicked.connect(lambda: edit.setText(
            QFileDialog.getExistingDirectory(self, "Choose the output folder", edit.text() or edit.placeholderText())
            or edit.text()))
        return _row(edit, browse), edit


def _disable_int8(combo: QComboBox) -> None:
    reason = int8_unavailable_reason()
    if reason is None:
        return
    index = combo.findData("int8")
    model = combo.model()
    if isinstance(model, QStandardItemModel):
        model.item(index).setEnabled(False)
    combo.setItemData(index, reason, Qt.ItemDataRole.ToolTipRole)
    combo.setToolTip(reason)
    if combo.currentData() == "int8":
        combo.setCurrentIndex(combo.findData("auto"))


def _row(editor: QWidget, button: QPushButton) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(editor, 1)
    layout.addWidget(button)
    return row


def _title(name: str) -> str:
    return {
        "model_path": "Model", "device": "Device", "precision": "Precision", "output_dir": "Output folder",
        "filename_pattern": "File names", "image_format": "Format", "preview_mode": "Preview",
        "preview_every": "Full preview every", "offload_text_encoder": "Offload text encoder",
        "text_encoder_8bit": "Text encoder in 8 bits",
        "vae_tiling": "VAE tiling", "theme": "Theme",
    }[name]
