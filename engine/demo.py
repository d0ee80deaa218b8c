"""The demo model that ships in resources/: a tiny SANA trained on drawn shapes (training/demo).

It loads through `load_model` like any checkpoint; this module only says where it is and what
it can draw, so a fresh install has a model that works offline.
"""

from __future__ import annotations

from pathlib import Path

from resources import resource_path

from .errors import CheckpointError

DEMO_FOLDER = "demo_model"
# What the demo understands: one to three shapes with size, colour and position, on a background.
EXAMPLE_PROMPT = "a large red circle on the left and a small blue square on the right, on a yellow background"
# The guidance the demo draws best at. Held-out shapes right, measured on the CPU with the shipped
# weights: 79% at 1.0 (no classifier-free guidance), 84% at 1.5, 82% at 2.0, 79% at 3.0, 68% at
# SANA's 4.5 — more guidance rounds this small model's squares into circles and fills in its stars'
# points; colours, places and backgrounds are right at every one.
GUIDANCE = 1.5


def demo_model_path() -> Path:
    """The bundled demo model's folder; CheckpointError if this install does not have it."""
    path = resource_path(DEMO_FOLDER)
    if not (path / "model_index.json").is_file():
        raise CheckpointError(
            f"{path}: the bundled demo model is missing from this installation "
            f"(it is made by `python3 -m training.demo.train` and copied to resources/{DEMO_FOLDER}); "
            f"choose another model folder"
        )
    return path
