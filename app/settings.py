"""The user's settings: one declared schema, stored as versioned JSON in the user config dir.

Every setting is declared once below with its default and the sentence the settings dialog shows.

A file from an older version goes through `MIGRATIONS`; a damaged file is set aside and the
defaults are used, because a settings file must never keep the app from starting.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from engine.image_io import write_atomically

from .naming import validate_pattern

log = logging.getLogger(__name__)

APP_NAME = "sana-studio"
SETTINGS_VERSION = 1

# version N -> function turning a version-N `values` dict into a version N+1 one.
MIGRATIONS: dict[int, Any] = {}

@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    description: str
    choices: tuple[tuple[Any, str], ...] = ()  # (stored value, label shown)

    def accepts(self, value) -> bool:
        if self.choices:
            return value in [choice for choice, _ in self.choices]
        if isinstance(self.default, bool):
            return isinstance(value, bool)
        if isinstance(self.default, int):
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return isinstance(value, type(self.default))

    def label_of(self, value) -> str:
        return dict(self.choices).get(value, str(value))


SCHEMA = (
    Setting("model_path", "", "The model folder to load at start. Empty: the bundled demo model."),
    Setting("recent_models", [], "Model folders opened before, newest first."),
    Setting(
        "precision", "auto",
        "FP16 runs the transformer in 16 bits on a GPU (FP32 on the CPU). INT8 (W8A8) runs its "
        "large matrix products in 8 bits on a CUDA GPU: about 1.3× as fast at 4096², about "
        "the same at 1024², and those weights take half the GPU memory (0.5 GB less for the "
        "0.6B model, 1.35 GB for the 1.6B): their 16-bit copies wait in system memory, so "
        "switching back reads nothing from disk.",
        choices=(("auto", "FP16 (FP32 on the CPU)"), ("int8", "INT8 (W8A8)")),
    ),
    Setting(
        "device", "auto", "Where the model runs.",
        choices=(("auto", "Automatic (the GPU if there is one)"), ("cuda", "GPU (CUDA)"), ("cpu", "CPU")),
    ),
    Setting("output_dir", "", "Where every finished image is written. Empty: Pictures/Sana Studio."),
    Setting(
        "filename_pattern", "{date}-{counter}-{seed}",
        "File name of each image, from {date} {time} {seed} {counter} {prompt} {model} {width} "
        "{height} {steps}.",
    ),
    Setting(
        "image_format", "png",
        "PNG keeps every setting in the file (drop it on the window to restore them); JPEG and "
        "WebP keep them in EXIF.",
        choices=(("png", "PNG"), ("jpg", "JPEG"), ("webp", "WebP")),
    ),
    Setting(
        "preview_mode", "fast",
        "Fast: a cheap latent-to-RGB preview every step. Full: besides that, a full decode every k "
        "steps (slower: each is a DC-AE decode). Off: no preview.",
        choices=(("fast", "Fast, every step"), ("full", "Full decode every k steps"), ("off", "Off")),
    ),
    Setting("preview_every", 5, "k, the steps between full-decode previews."),
    Setting(
        "offload_text_encoder", False,
        "Move the text encoder off the GPU once the prompt is encoded, to free memory for the image.",
    ),
    Setting(
        "text_encoder_8bit", False,
        "Load the text encoder (Gemma-2) with 8-bit weights on a CUDA GPU: about 2.5 GB less memory. "
        "Applies when the model is next loaded.",
    ),
    Setting(
        "vae_tiling", "auto",
        "Decode large images in tiles to bound memory. Auto tiles only when the image needs it.",
        choices=(("auto", "Automatic"), ("always", "Always"), ("off", "Off")),
    ),
    Setting(
        "theme", "dark", "How the window looks.",
        choices=(("dark", "Dark"), ("light", "Light"), ("system", "Like the system")),
    ),
    Setting("form", {}, "The request fields last used, restored at start."),
    Setting("demo_notice_dismissed", False, "The note that the demo model only draws shapes was dismissed."),
)
BY_NAME = {setting.name: setting for setting in SCHEMA}


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def log_dir() -> Path:
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def models_dir() -> Path:
    """Where downloaded models live (one folder each, in the diffusers layout)."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "models"


def default_output_dir() -> Path:
    return Path(platformdirs.user_pictures_dir()) / "Sana Studio"


class Settings:
    """The current values; `save()` writes them. Invalid values are refused by name."""

    def __init__(self, path: Path | None = None, values: dict | None = None):
        self.path = path or config_dir() / "settings.json"
        self._values = {s.name: copy.deepcopy(s.default) for s in SCHEMA}
        for name, value in (values or {}).items():
            self[name] = value

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        settings = cls(path)
        if not settings.path.is_file():
            return settings
        try:
            data = json.loads(settings.path.read_text(encoding="utf-8"))
            values = migrate(data)
        except (OSError, ValueError) as error:
            aside = settings.path.with_suffix(".json.bad")
            log.warning("settings file %s unreadable (%s); moved to %s, using defaults",
                        settings.path, error, aside)
            settings.path.replace(aside)
            return settings
        for name, value in values.items():
            try:
                settings[name] = value
            except (KeyError, ValueError) as error:
                log.warning("settings file %s: %s; using the default", settings.path, error)
        return settings

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": SETTINGS_VERSION, "values": self._values}, indent=2, ensure_ascii=False)
        write_atomically(self.path, lambda handle: handle.write(text.encode("utf-8")))

    def __getitem__(self, name: str):
        return copy.deepcopy(self._values[name])

    def __setitem__(self, name: str, value) -> None:
        setting = BY_NAME.get(name)
        if setting is None:
            raise KeyError(f"{name}: unknown setting; known: {', '.join(BY_NAME)}")
        if not setting.accepts(value):
            allowed = ", ".join(repr(c) for c, _ in setting.choices) or type(setting.default).__name__
            raise ValueError(f"{name}: {value!r} is not allowed ({allowed})")
        if name == "filename_pattern":
            validate_pattern(value)
        self._values[name] = copy.deepcopy(value)

    def values(self) -> dict:
        return copy.deepcopy(self._values)

    def output_dir(self) -> Path:
        return Path(self._values["output_dir"]).expanduser() if self._values["output_dir"] else default_output_dir()

    def remember_model(self, path: str) -> None:
        recent = [p for p in self._values["recent_models"] if p != path]
        self._values["model_path"] = path
        self._values["recent_models"] = [path, *recent][:10]


def migrate(data: dict) -> dict:
    """The `values` of a settings file, brought up to SETTINGS_VERSION."""
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
        raise ValueError("not a settings file (no 'values' object)")
    version, values = data.get("version", 1), data["values"]
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        # Written by a newer app: keep what this version understands rather than losing it all.
        log.warning("settings version %r is newer than %d; reading what is known", version, SETTINGS_VERSION)
        return {k: v for k, v in values.items() if k in BY_NAME}
    while version < SETTINGS_VERSION:
        values = MIGRATIONS[version](values)
        version += 1
    return values
