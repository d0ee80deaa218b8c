"""The bundled demo model on the CPU: 256² in 20 steps, end to end, as the app runs it.

Loads the model with `engine.model.load_model` (timed), then generates --runs images through the
engine's Generator, each from a new held-out caption (so every run pays for its text encoding)
and a new seed, with classifier-free guidance at SANA's 4.5 (the demo's own, 1.5, costs the same:
any guidance above 1 runs the unconditional half of each step too). From the Generator's own
events it splits each run into: prompt encoding and setup (up to the first step, less one step),
the DiT steps, and the DC-AE decode. Prints a table (medians) and writes every number as JSON.

    python benchmarks/bench_demo_cpu.py
    python benchmarks/bench_demo_cpu.py --model out/demo/demo_model --runs 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.checkpoint import find_weight_files, read_headers
from engine.demo import demo_model_path
from engine.generator import Generator
from engine.model import load_model
from engine.request import GenerationRequest
from training.demo.scenes import held_out_scenes

COMPONENTS = ("transformer", "vae", "text_encoder")


def component_sizes(folder: Path) -> dict[str, dict[str, float]]:
    sizes = {}
    for name in COMPONENTS:
        files = find_weight_files(folder / name)
        infos = read_headers(files).values()
        sizes[name] = {
            "parameters_m": sum(torch.Size(i.shape).numel() for i in infos) / 1e6,
            "megabytes": sum(f.stat().st_size for f in files) / 1e6,
        }
    return sizes


def one_run(generator: Generator, request: GenerationRequest) -> dict[str, float]:
    stamps: list[tuple[str, float]] = []
    start = time.perf_counter()
    generator.generate(request, on_event=lambda e: stamps.append((type(e).__name__, time.perf_counter())))
    total = time.perf_counter() - start
    started = next(t for name, t in stamps if name == "Started")
    steps = [t for name, t in stamps if name == "Step"]
    decoding = next(t for name, t in stamps if name == "Decoding")
    finished = next(t for name, t in stamps if name == "Finished")
    step = statistics.median(b - a for a, b in itertools.pairwise(steps)) if len(steps) > 1 else steps[0] - started
    return {
        "total_s": total,
        "encode_and_setup_s": (steps[0] - started) - step,
        "dit_steps_s": (steps[-1] - steps[0]) + step,
        "dit_step_s": step,
        "decode_s": finished - decoding,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled demo model)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu-demo-256.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or demo_model_path()

    start = time.perf_counter()
    model = load_model(folder, device="cpu")
    load_s = time.perf_counter() - start
    generator = Generator(model, previews=True)
    # One untimed warm-up run: first calls allocate, and the preview map may be fitted once.
    generator.generate(GenerationRequest("a small red circle in the center, on a white background",
                                         width=args.size, height=args.size, steps=2, seed=0))
    captions = [s.caption() for s in held_out_scenes(args.runs)]
    runs = []
    for seed, caption in enumerate(captions):
        request = GenerationRequest(caption, width=args.size, height=args.size, steps=args.steps,
                                    guidance_scale=args.guidance, seed=seed)
        runs.append({"prompt": caption, "seed": seed, **one_run(generator, request)})

    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key.endswith("_s")}
    sizes = component_sizes(folder)
    print(f"\n{folder}  ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{args.size}², {args.steps} steps, guidance {args.guidance}, median of {args.runs})")
    print(f"{'component':<14}{'params (M)':>12}{'MB on disk':>12}")
    for name, size in sizes.items():
        print(f"{name:<14}{size['parameters_m']:>12.2f}{size['megabytes']:>12.2f}")
    print(f"{'all':<14}{sum(s['parameters_m'] for s in sizes.values()):>12.2f}"
          f"{sum(s['megabytes'] for s in sizes.values()):>12.2f}\n")
    print(f"{'phase':<22}{'seconds':>10}")
    print(f"{'load model':<22}{load_s:>10.3f}")
    for key, label in (("encode_and_setup_s", "encode prompt + setup"), ("dit_step_s", "one DiT step (CFG)"),
                       ("dit_steps_s", f"{args.steps} DiT steps"), ("decode_s", "DC-AE decode"),
                       ("total_s", "generate, end to end")):
        print(f"{label:<22}{medians[key]:>10.3f}")

    result = {
        "model": str(folder), "machine": platform.platform(), "processor": platform.processor(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "size": args.size,
        "steps": args.steps, "guidance": args.guidance, "load_s": load_s, "components": sizes,
        "median": medians, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
