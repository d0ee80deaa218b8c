"""INT8 vs FP16 for the whole DiT step at the published 1.6B (and 0.6B) configuration, on CUDA.

Random weights (seeded). For each configuration and resolution it prints and writes to --out:
  * one DiT step (CFG batch of 2, guidance combined) in FP16 and in W8A8 as the Generator runs it:
    fused blocks (engine.accelerate) replayed from a CUDA graph (engine.runner); CUDA events,
    warm-up first, median;
  * the relative error of the velocity, INT8 vs FP16, for the whole policy and for each layer
    class of the policy alone (self-attention QKV, self-attention output, cross-attention Q/out,
    Mix-FFN convs) — the evidence the layer policy is judged on.

    python benchmarks/bench_int8_dit.py --out int8_dit.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.accelerate import accelerate_dit  # noqa: E402
from engine.dit import DiTConfig, LinearDiT  # noqa: E402
from engine.runner import DenoiseRunner  # noqa: E402
from quant import QuantPolicy, dequantize_model, quantize_model, set_int8  # noqa: E402

_BLOCK = r"transformer_blocks\.\d+\."
LAYER_CLASSES = {
    "self-attn qkv": (_BLOCK + r"attn1\.(to_q|to_k|to_v)",),
    "self-attn out": (_BLOCK + r"attn1\.to_out\.0",),
    "cross-attn q/out": (_BLOCK + r"attn2\.(to_q|to_out\.0)",),
    "mix-ffn 1x1 convs": (_BLOCK + r"ff\.(conv_inverted|conv_point)",),
}


def median_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def build(config_file: str) -> LinearDiT:
    data = json.loads((ROOT / "engine" / "published_configs" / config_file).read_text())
    torch.manual_seed(0)
    model = LinearDiT(DiTConfig.from_dict(data))
    return model.to("cuda", torch.float16).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="transformer_sana_1600m_1024px.json:1024,transformer_sana_1600m_4kpx_bf16.json:4096")
    parser.add_argument("--out", type=Path, default=Path("int8_dit.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_int8_dit: needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    for item in args.configs.split(","):
        config_file, side = item.split(":")
        side = int(side)
        model = build(config_file)
        g = torch.Generator("cuda").manual_seed(1)
        latent = side // 32
        x = torch.randn(2, 32, latent, latent, device="cuda", generator=g).half()
        text = torch.randn(2, 300, model.config.caption_channels, device="cuda", generator=g).half()
        mask = torch.ones(2, 300, dtype=torch.long, device="cuda")
        mask[0, 60:] = 0
        t = torch.tensor([700.0, 700.0], device="cuda")
        with torch.inference_mode():
            reference = model(x, t, text, mask)
            errors = {}
            for name, patterns in LAYER_CLASSES.items():
                quantize_model(model, QuantPolicy(int8=patterns))
                errors[name] = relative_error(model(x, t, text, mask), reference)
                dequantize_model(model)
            report = quantize_model(model)
            set_int8(model, True)
            errors["whole policy"] = relative_error(model(x, t, text, mask), reference)
            set_int8(model, False)
            back = relative_error(model(x, t, text, mask), reference)
            print(f"    {accelerate_dit(model)}", flush=True)
            fused_error = relative_error(model(x, t, text, mask), reference)
            step = {}
            for precision in ("fp16", "int8"):
                set_int8(model, precision == "int8")
                runner = DenoiseRunner(model)  # a CUDA graph per shape, captured on the first call
                step[precision] = median_ms(lambda r=runner: r.velocity(x[:1].float(), 700.0, text, mask, 4.5))
            fp16_ms, int8_ms = step["fp16"], step["int8"]
        row = {
            "config": config_file, "side": side, "fp16_step_ms": fp16_ms, "int8_step_ms": int8_ms,
            "speedup": fp16_ms / int8_ms, "relative_error": errors, "float_again_error": back,
            "fused_fp16_error": fused_error, "timing": "fused blocks, CUDA-graph replay of the CFG step",
            "quantized_layers": len(report.quantized),
        }
        rows.append(row)
        print(f"{config_file} {side}²: fp16 {fp16_ms:.1f} ms, int8 {int8_ms:.1f} ms, ×{fp16_ms / int8_ms:.2f}; "
              f"back to float error {back:.1e}", flush=True)
        for name, value in errors.items():
            print(f"    INT8 {name:<18} relative error {value:.2e}", flush=True)
        del model
        torch.cuda.empty_cache()
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
