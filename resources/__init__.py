"""Files that ship inside the app: the instruction prefix, the demo model, icons, presets."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def resource_path(*parts: str) -> Path:
    return ROOT.joinpath(*parts)
