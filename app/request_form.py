"""The fields of a request: prompt, negative prompt, size, steps, guidance, sampler, seed, count.

The form turns its fields into a GenerationRequest (which validates them) and back from the
fields stored in an image or in the settings; it knows nothing of the engine or the queue.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QRegularExpression, Qt, Signal
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.aspect_ratios import closest_preset, presets, snap
from engine.errors import RequestError
from engine.image_io import SOLVER_NAMES
from engine.request import (
    LATENT_STRIDE,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    GenerationRequest,
)

SEED_MODES = (("random", "Random each time"), ("fixed", "Fixed"), ("reuse", "Reuse last"))
CUSTOM = "custom"


class RequestForm(QWidget):
    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.native_size = 1024
        self.prompt = QPlainTextEdit(placeholderText="Describe the image… (Ctrl+Enter generates)")
        self.negative_toggle = QToolButton(text="Negative prompt", checkable=True,
                                           toolButtonStyle=Qt.ToolButtonStyle.ToolButtonTextBesideIcon,
                                           arrowType=Qt.ArrowType.RightArrow)
        self.negative = QPlainTextEdit(placeholderText="What the image should not show", visible=False)
        self.negative.setMaximumHeight(80)
        for editor in (self.prompt, self.negative):
            editor.setTabChangesFocus(True)
            editor.setAcceptDrops(False)  # a dropped image restores settings (the window takes it)

        self.size = QComboBox()
        self.width_box = _side_box()
        self.height_box = _side_box()
        self.steps = QSpinBox(minimum=1, maximum=MAX_STEPS, value=20)
        self.suggested_guidance = GenerationRequest.guidance_scale
        self.guidance = QDoubleSpinBox(minimum=0.0, maximum=MAX_GUIDANCE, singleStep=0.5, decimals=1,
                                       value=self.suggested_guidance)
        self.solver = QComboBox()
        for key, name in SOLVER_NAMES.items():
            self.solver.addItem(name, key)
        self.seed_mode = QComboBox()
        for key, label in SEED_MODES:
            self.seed_mode.addItem(label, key)
        self.seed = QLineEdit(placeholderText="random")
        self.seed.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,19}")))
        self.num_images = QSpinBox(minimum=1, maximum=MAX_IMAGES, value=1)

        size_row = QHBoxLayout()
        size_row.addWidget(self.width_box)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_box)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed_mode)
        seed_row.addWidget(self.seed, 1)
        form = QFormLayout()
        form.addRow("Size", self.size)
        form.addRow("", size_row)
        form.addRow("Steps", self.steps)
        form.addRow("Guidance", self.guidance)
        form.addRow("Sampler", self.solver)
        form.addRow("Seed", seed_row)
        form.addRow("Images", self.num_images)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt, 1)
        layout.addWidget(self.negative_toggle)
        layout.addWidget(self.negative)
        layout.addLayout(form)

        self.negative_toggle.toggled.connect(self._show_negative)
        self.size.activated.connect(self._preset_chosen)
        for box in (self.width_box, self.height_box):
            box.valueChanged.connect(self._side_changed)
            box.editingFinished.connect(lambda box=box: box.setValue(snap(box.value())))
        self.seed_mode.currentIndexChanged.connect(self._seed_mode_changed)
        self.set_native_size(self.native_size)
        self._seed_mode_changed()

    # The request ----------------------------------------------------------------------------

    def request(self, last_seed: int | None = None) -> GenerationRequest:
        """The request the fields describe; RequestError names a field that is out of range."""
        return GenerationRequest(
            prompt=self.prompt.toPlainText().strip(),
            negative_prompt=self.negative.toPlainText().strip(),
            width=snap(self.width_box.value()),
            height=snap(self.height_box.value()),
            steps=self.steps.value(),
            guidance_scale=self.guidance.value(),
            seed=self._seed(last_seed),
            num_images=self.num_images.value(),
            solver=self.solver.currentData(),
        )

    def fields(self) -> dict:
        """Everything the user set, for the settings file (so a restart brings it back). A guidance
        that is the model's own is left out: after a restart it follows whichever model loads."""
        fields = {
            "prompt": self.prompt.toPlainText(),
            "negative_prompt": self.negative.toPlainText(),
            "width": self.width_box.value(),
            "height": self.height_box.value(),
            "steps": self.steps.value(),
            "guidance_scale": self.guidance.value(),
            "solver": self.solver.currentData(),
            "seed_mode": self.seed_mode.currentData(),
            "seed": int(self.seed.text()) if self.seed.text() else None,
            "num_images": self.num_images.value(),
        }
        if fields["guidance_scale"] == self.suggested_guidance:
            del fields["guidance_scale"]
        return fields

    def set_fields(self, fields: dict) -> list[str]:
        """Fill the fields present in `fields` (from an image or the settings).

        A seed means "this exact image", so it switches the seed to Fixed. Returns notes on values
        that had to change to be valid here (an A1111 size that is not a multiple of 32, …).
        """
        notes = []
        if isinstance(fields.get("prompt"), str):
            self.prompt.setPlainText(fields["prompt"])
        if isinstance(fields.get("negative_prompt"), str):
            self.negative.setPlainText(fields["negative_prompt"])
            self.negative_toggle.setChecked(bool(fields["negative_prompt"]))
        if isinstance(fields.get("width"), int) and isinstance(fields.get("height"), int):
            width, height = snap(fields["width"]), snap(fields["height"])
            if (width, height) != (fields["width"], fields["height"]):
                notes.append(f"size {fields['width']}×{fields['height']} became {width}×{height} "
                             f"(sides are multiples of {LATENT_STRIDE} from {MIN_SIDE} to {MAX_SIDE})")
            self._set_size(width, height)
        for key, box in (("steps", self.steps), ("num_images", self.num_images)):
            if isinstance(fields.get(key), int):
                if not box.minimum() <= fields[key] <= box.maximum():
                    notes.append(f"{key} {fields[key]} is outside {box.minimum()}..{box.maximum()}")
                box.setValue(fields[key])
        if isinstance(fields.get("guidance_scale"), (int, float)):
            self.guidance.setValue(float(fields["guidance_scale"]))
        if fields.get("solver") in SOLVER_NAMES:
            self.solver.setCurrentIndex(self.solver.findData(fields["solver"]))
        if "seed_mode" in fields:
            self._set_seed_mode(fields["seed_mode"] if fields["seed_mode"] in dict(SEED_MODES) else "random")
        if isinstance(fields.get("seed"), int) and 0 <= fields["seed"] <= MAX_SEED:
            self.seed.setText(str(fields["seed"]))
            if "seed_mode" not in fields:
                self._set_seed_mode("fixed")
        self.changed.emit()
        return notes

    def suggest_guidance(self, guidance: float) -> None:
        """The loaded model's own guidance, unless the user has chosen one (the box no longer holds
        the last suggestion)."""
        if self.guidance.value() == self.suggested_guidance:
            self.guidance.setValue(guidance)
        self.suggested_guidance = guidance

    # Size -----------------------------------------------------------------------------------

    def set_native_size(self, native_size: int) -> None:
        """Offer the model's trained sizes; keep the current shape where the new list has it."""
        was_custom = self.size.currentData() == CUSTOM
        width, height = self.width_box.value(), self.height_box.value()
        self.native_size = native_size
        self.size.clear()
        for preset in presets(native_size):
            self.size.addItem(f"{preset.label}   {_ratio(preset.width, preset.height)}",
                              _key(preset.width, preset.height))
        self.size.addItem("Custom", CUSTOM)
        if was_custom:
            self._set_size(width, height)
        else:
            best = closest_preset(native_size, width, height)
            self._set_size(best.width, best.height)

    def _set_size(self, width: int, height: int) -> None:
        for box, value in ((self.width_box, width), (self.height_box, height)):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self._side_changed()

    def _preset_chosen(self, index: int) -> None:
        data = self.size.itemData(index)
        if data != CUSTOM:
            self._set_size(*map(int, data.split("x")))

    def _side_changed(self) -> None:
        index = self.size.findData(_key(self.width_box.value(), self.height_box.value()))
        self.size.setCurrentIndex(index if index >= 0 else self.size.findData(CUSTOM))
        self.changed.emit()

    # Seed -----------------------------------------------------------------------------------

    def _seed(self, last_seed: int | None) -> int | None:
        mode = self.seed_mode.currentData()
        if mode == "fixed":
            if not self.seed.text():
                raise RequestError("seed", "empty; type a number or choose Random each time")
            return int(self.seed.text())
        if mode == "reuse":
            return last_seed
        return None

    def _set_seed_mode(self, mode: str) -> None:
        self.seed_mode.setCurrentIndex(self.seed_mode.findData(mode))

    def _seed_mode_changed(self) -> None:
        mode = self.seed_mode.currentData()
        self.seed.setEnabled(mode == "fixed")
        self.seed.setPlaceholderText({"random": "random", "reuse": "the last seed", "fixed": "a number"}[mode])

    def _show_negative(self, shown: bool) -> None:
        self.negative.setVisible(shown)
        self.negative_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)


def _side_box() -> QSpinBox:
    return QSpinBox(minimum=MIN_SIDE, maximum=MAX_SIDE, singleStep=LATENT_STRIDE, suffix=" px")


def _key(width: int, height: int) -> str:
    return f"{width}x{height}"


def _ratio(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"
