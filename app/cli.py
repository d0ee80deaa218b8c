"""The command line: a thin front door over the engine, like the window.

`sana-studio generate …` renders and saves; `sana-studio` alone opens the window. Bad input ends
with one line naming the problem and a non-zero exit, before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from engine import events
from engine.errors import OutputError, SanaStudioError
from engine.request import PRECISIONS, SOLVERS, GenerationRequest

from .capabilities import suggested_guidance

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sana-studio", description="SANA text-to-image on your own machine.")
    parser.add_argument("--model", help="model folder for the window (default: the last used, or the demo model)")
    commands = parser.add_subparsers(dest="command")
    generate = commands.add_parser("generate", help="render images from a prompt and save them")
    generate.add_argument("--model", help="model folder in the diffusers layout (default: the bundled demo model)")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--width", type=int, default=None, help="pixels, a multiple of 32 (default: the model's native size)")
    generate.add_argument("--height", type=int, default=None, help="pixels, a multiple of 32 (default: the model's native size)")
    generate.add_argument("--steps", type=int, default=20)
    generate.add_argument("--guidance", type=float, default=None,
                          help="classifier-free guidance scale (default: the model's own: SANA's 4.5, or the demo model's)")
    generate.add_argument("--seed", type=int, default=None, help="default: a random seed, printed and saved")
    generate.add_argument("--num-images", type=int, default=1)
    generate.add_argument("--solver", choices=SOLVERS, default="dpm")
    generate.add_argument("--precision", choices=PRECISIONS, default="auto")
    generate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    generate.add_argument("--text-encoder-8bit", action="store_true",
                          help="Gemma-2 with 8-bit weights (bitsandbytes, CUDA only): about 2.5 GB less memory")
    generate.add_argument("--output", required=True, help="FILE.png (.jpg/.webp too); several images get -1, -2, …")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return generate(args)
    from app.gui import run  # Qt is imported only when the window is wanted

    return run(model_path=args.model)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"sana-studio: error: {message}", file=sys.stderr)
    return code


def generate(args: argparse.Namespace) -> int:
    from engine.image_io import numbered_paths, save_image

    try:
        model_path = Path(args.model) if args.model else default_model_path()
        request = GenerationRequest(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            width=args.width or 1024,
            height=args.height or 1024,
            steps=args.steps,
            guidance_scale=suggested_guidance(model_path) if args.guidance is None else args.guidance,
            seed=args.seed,
            num_images=args.num_images,
            solver=args.solver,
            precision=args.precision,
        ).with_seed()
        outputs = numbered_paths(args.output, request.num_images)
        check_writable(outputs)
    except SanaStudioError as error:
        return fail(str(error))

    from engine.generator import Generator
    from engine.model import load_model

    cancel = threading.Event()
    try:
        model = load_model(model_path, device=args.device, precision=args.precision,
                           on_progress=lambda message: print(message, file=sys.stderr),
                           text_encoder_8bit=args.text_encoder_8bit)
        if args.width is None and args.height is None and model.native_size != 1024:
            request = request.replace(width=model.native_size, height=model.native_size)
        images = Generator(model, previews=False).generate(request, on_event=print_progress, cancel=cancel)
        written = [save_image(image, path, request, model.name, model.precision_name)
                   for image, path in zip(images, outputs)]
    except KeyboardInterrupt:
        return fail("interrupted; nothing was written", EXIT_INTERRUPTED)
    except SanaStudioError as error:
        return fail(str(error), EXIT_FAILED)
    except Exception as error:  # an engine failure still ends in one line, not a traceback
        if type(error).__name__ == "OutOfMemoryError":
            return fail("the GPU ran out of memory; try a smaller size, --precision int8, or --device cpu", EXIT_FAILED)
        return fail(f"{type(error).__name__}: {error}", EXIT_FAILED)
    for path in written:
        print(path)
    print(f"seed {request.seed}", file=sys.stderr)
    return 0


def default_model_path() -> Path:
    try:
        from engine.demo import demo_model_path
    except ImportError:
        raise SanaStudioError("--model is required: no demo model is bundled in this build") from None
    return demo_model_path()


def check_writable(paths: list[Path]) -> None:
    """Fail before the run, not after it, when an output cannot be written."""
    for path in paths:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise OutputError(f"--output {path}: the file name must end in {', '.join(IMAGE_SUFFIXES)}")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError(f"--output {path}: the folder {folder} does not exist")
        if path.is_dir():
            raise OutputError(f"--output {path}: is a folder, not a file name")
        try:  # a real probe: permission bits say nothing for root or a read-only mount
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise OutputError(f"--output {path}: the folder {folder} is not writable ({error.strerror})") from None


def print_progress(event: events.Event) -> None:
    if isinstance(event, events.Started):
        print(f"seed {event.request.seed}, {event.total_steps} steps", file=sys.stderr)
    elif isinstance(event, events.Preparing):
        print("preparing the GPU for this size (the first run at a size takes longer)", file=sys.stderr)
    elif isinstance(event, events.Step):
        rate = event.index / event.elapsed if event.elapsed > 0 else 0.0
        end = "\n" if event.index == event.total or not sys.stderr.isatty() else "\r"
        print(f"step {event.index}/{event.total}  {rate:.2f} it/s", end=end, file=sys.stderr, flush=True)
    elif isinstance(event, events.Decoding):
        print("decoding", file=sys.stderr)
