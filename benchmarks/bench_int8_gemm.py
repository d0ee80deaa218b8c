"""INT8 GEMM speed at the SANA DiT's real shapes: Triton W8A8 vs FP16 matmul (and cuBLAS int8).

For each width (1152: 0.6B, 2240: 1.6B), token count (a CFG batch of 2 images at 1024², 2K, 4K →
M = 2×1024 … 2×16384) and layer shape (attention QKV and output C→C, Mix-FFN expand C→5C i.e.
2×2.5C, project 2.5C→C) it

  1. checks that the Triton GEMM's int32 accumulators equal torch._int_mm's exactly, and that its
     fused epilogue matches the reference dequantization;
  2. times, with CUDA events (warm-up first, which also runs the autotuner; median of --iters):
     the Triton int8 GEMM with its epilogue, torch._int_mm (cuBLAS int8, int32 out, no epilogue),
     FP16 torch.matmul, and the whole W8A8 linear (per-token quantize + GEMM) against F.linear;
  3. prints a table and writes every number to --out as JSON.

    python benchmarks/bench_int8_gemm.py --out results/int8_gemm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant import int8 as ref  # noqa: E402

WIDTHS = (1152, 2240)
TOKENS = (1024, 4096, 16384)  # latent 32², 64², 128²: 1024², 2K, 4K images


def layer_shapes(width: int) -> list[tuple[str, int, int]]:
    """(name, N, K) of each quantized GEMM in one DiT block."""
    hidden = int(2.5 * width)
    return [
        ("attn qkv (C→C)", width, width),
        ("attn out (C→C)", width, width),
        ("ffn expand (C→5C)", 2 * hidden, width),
        ("ffn project (2.5C→C)", width, hidden),
    ]


def median_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def bench_shape(kernels, m: int, n: int, k: int, warmup: int, iters: int) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.float16) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    w_q, w_scale = ref.quantize_per_channel(weight)
    a_q, a_scale = kernels.quantize_tokens(x)

    acc = kernels.int8_matmul(a_q, w_q)
    exact = torch.equal(acc, ref.int8_matmul_reference(a_q, w_q))
    out = kernels.int8_gemm(a_q, a_scale, w_q, w_scale, bias, torch.float16)
    want = ref.dequantize_epilogue(acc, a_scale, w_scale, bias, torch.float16)
    epilogue_rel_err = ((out.float() - want.float()).norm() / want.float().norm()).item()

    flops = 2 * m * n * k
    times = {
        "triton_int8_gemm": median_ms(lambda: kernels.int8_gemm(a_q, a_scale, w_q, w_scale, bias, torch.float16), warmup, iters),
        "cublas_int8_mm": median_ms(lambda: torch._int_mm(a_q, w_q.t()), warmup, iters),
        "fp16_matmul": median_ms(lambda: torch.matmul(x, weight.t()), warmup, iters),
        "w8a8_linear": median_ms(
            lambda: kernels.int8_gemm(*kernels.quantize_tokens(x), w_q, w_scale, bias, torch.float16), warmup, iters
        ),
        "fp16_linear": median_ms(lambda: F.linear(x, weight, bias), warmup, iters),
    }
    return {
        "M": m,
        "N": n,
        "K": k,
        "int32_exact": exact,
        "epilogue_rel_err": epilogue_rel_err,
        "ms": times,
        "tera_ops_per_s": {name: flops / (ms * 1e-3) / 1e12 for name, ms in times.items()},
        "triton_config": str(getattr(kernels._int8_gemm_kernel, "best_config", None)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS), help="latent tokens per image")
    parser.add_argument("--batch", type=int, default=2, help="images per GEMM (2 = one image with CFG)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_int8_gemm needs a CUDA GPU")

    from quant import kernels  # Triton: imported only once we know there is a GPU

    torch.manual_seed(0)
    rows = []
    header = (
        f"{'width':>5} {'layer':<21} {'M':>6} {'N':>6} {'K':>5} {'exact':>5} | "
        f"{'int8 TOPS':>9} {'cuBLAS i8':>9} {'fp16 TF':>8} {'gemm ×':>6} | "
        f"{'w8a8 lin ms':>11} {'fp16 lin ms':>11} {'lin ×':>5}"
    )
    print(header)
    print("-" * len(header))
    for width in args.widths:
        for tokens in args.tokens:
            m = args.batch * tokens
            for name, n, k in layer_shapes(width):
                r = bench_shape(kernels, m, n, k, args.warmup, args.iters)
                r.update(width=width, layer=name, tokens_per_image=tokens)
                rows.append(r)
                ms, tops = r["ms"], r["tera_ops_per_s"]
                print(
                    f"{width:>5} {name:<21} {m:>6} {n:>6} {k:>5} {'yes' if r['int32_exact'] else 'NO':>5} | "
                    f"{tops['triton_int8_gemm']:>9.1f} {tops['cublas_int8_mm']:>9.1f} {tops['fp16_matmul']:>8.1f} "
                    f"{ms['fp16_matmul'] / ms['triton_int8_gemm']:>6.2f} | "
                    f"{ms['w8a8_linear']:>11.3f} {ms['fp16_linear']:>11.3f} {ms['fp16_linear'] / ms['w8a8_linear']:>5.2f}",
                    flush=True,
                )
                torch.cuda.empty_cache()

    import triton

    result = {
        "device": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "warmup": args.warmup,
        "iters": args.iters,
        "timing": "CUDA events, median",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if not all(r["int32_exact"] for r in rows):
        sys.exit("the Triton int32 accumulators differ from torch._int_mm")


if __name__ == "__main__":
    main()
