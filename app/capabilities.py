"""What this install can do, asked of the engine rather than assumed: INT8, the demo model."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from engine.request import GenerationRequest

from .settings import models_dir

log = logging.getLogger(__name__)


def int8_unavailable_reason() -> str | None:
    """None when INT8 can run here, else the sentence the disabled INT8 choice shows."""
    import torch

    if not torch.cuda.is_available():
        return "INT8 (W8A8) needs a CUDA GPU; this machine has none."
    try:
        importlib.import_module("quant")
    except ImportError as error:
        return f"INT8 needs the quant package, which does not import here ({error})."
    return None


def demo_model_path() -> str | None:
    """The bundled demo model, or None in a build without it."""
    try:
        from engine.demo import demo_model_path as bundled
    except ImportError:
        return None
    try:
        path = bundled()
    except Exception as error:  # noqa: BLE001 - a broken bundle must not stop the window
        log.warning("the demo model is not usable: %s", error)
        return None
    return str(path) if path else None


def is_demo_model(path: str | Path) -> bool:
    demo = demo_model_path()
    return demo is not None and Path(path).resolve() == Path(demo).resolve()


def suggested_guidance(path: str | Path) -> float:
    """The guidance a model draws best at: SANA's 4.5, or the demo's own (engine/demo.py says why)."""
    if is_demo_model(path):
        from engine.demo import GUIDANCE

        return GUIDANCE
    return GenerationRequest.guidance_scale


def downloaded_models() -> list[str]:
    """Model folders under the user data dir, where the model manager puts downloads."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if (p / "model_index.json").is_file())
