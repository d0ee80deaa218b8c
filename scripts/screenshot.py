"""Make docs/screenshot.png: the main window after one generation, rendered offscreen.

    python scripts/screenshot.py [--model FOLDER] [--prompt TEXT] [--output docs/screenshot.png]

The model is --model, else the bundled demo model, else a tiny random model built on the spot
(which needs the test dependencies and draws noise, not a picture). The window runs with its own
temporary config, pictures and log folders, so the user's settings and gallery stay untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SIZE = (1440, 900)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="SANA model folder (default: the demo model, else a tiny random one)")
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, warm light, film photograph")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="sana-screenshot-"))
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        os.environ[name] = str(scratch / name.lower())
    os.environ["XDG_PICTURES_DIR"] = str(scratch / "pictures")

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app import gui, theme
    from app.capabilities import demo_model_path
    from app.settings import Settings

    app = QApplication.instance() or QApplication(sys.argv)
    model = args.model or demo_model_path() or str(_tiny_model(scratch / "tiny-sana"))
    settings = Settings.load()
    theme.apply(app, settings["theme"])
    window = gui.create_window(settings)
    window.resize(*SIZE)
    window.show()

    outcome: list[str] = []
    loop = QEventLoop()
    window.state.job_finished.connect(lambda *_: (outcome.append("done"), loop.quit()))
    window.state.error_raised.connect(lambda report: (outcome.append(report.summary), loop.quit()))

    def generate_when_ready() -> None:
        if window.state.model_status == "ready":
            native = window.state.model.native_size
            window.form.set_fields({"prompt": args.prompt, "width": native, "height": native,
                                    "steps": args.steps, "seed": 20241016})
            window.generate()

    window.state.model_changed.connect(generate_when_ready)
    QTimer.singleShot(600_000, loop.quit)
    window.start(model)
    loop.exec()
    if outcome != ["done"]:
        print(f"screenshot: the generation did not finish: {outcome or 'timed out'}", file=sys.stderr)
        window.close()
        return 1

    app.processEvents()
    window.gallery.wait_for_thumbnails()
    app.processEvents()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(args.output))
    window.close()
    print(args.output)
    return 0


def _tiny_model(folder: Path) -> Path:
    print("screenshot: no --model and no demo model; building a tiny random model (it draws noise)",
          file=sys.stderr)
    from tests.tiny_models import save_tiny_pipeline

    save_tiny_pipeline(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
