"""INT8 GEMM speed at the SANA DiT's real shapes: Triton W8A8 vs FP16 matmul (and cuBLAS int8).

For each width (1152: 0.6B, 2240: 1.6B), token count (a CFG batch of 2 images at 1024², 2K, 4K →
M = 2×1024 … 2×16384) and layer shape (attention QKV and output C→C, Mix-FFN expand C→5C i.e.
2×2.5C, project 2.5C→C) it

  1. checks that the Triton GEMM's int32 accumulators equal torch._int_mm's exactly, and that its
     fused epilogue matches the reference dequantization;
  2. times, in CUDA graphs as the sampling loop runs (warm-up first, which also runs the
     autotuner; median of --iters replays): the Triton int8 GEMM with its epilogue (the TMA kernel
     on Hopper, and the pointer kernel beside it), torch._int_mm (cuBLAS int8, int32 out, no
     epilogue), FP16 F.linear (cuBLAS), the per-token quantizer, and the whole W8A8 linear
     (quantize + GEMM);
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


def layer_shapes(width: int) -> list[tuple[str, int, int, int]]:
    """(name, N, K, GEMMs of this shape per DiT block) of each quantized GEMM in one block."""
    hidden = int(2.5 * width)
    return [
        ("attn q/k/v/out, cross q/out", width, width, 6),
        ("ffn expand (C→5C)", 2 * hidden, width, 1),
        ("ffn project (2.5C→C)", width, hidden, 1),
    ]


def graph_ms(fn, warmup: int, iters: int, calls: int = 10) -> float:
    """Milliseconds per call, as the sampling loop runs them: `calls` back to back in one CUDA graph
    (no launch gaps, no Python), the median of `iters` timed replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):  # also runs the autotuners, outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def bench_shape(kernels, m: int, n: int, k: int, warmup: int, iters: int) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    weight = torch.randn(n, k, device="cuda", dtype=torch.float16) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    w_q, w_scale = ref.quantize_per_channel(weight)
    a_q, a_scale = kernels.quantize_tokens(x)

    acc = ref.int8_matmul_reference(a_q, w_q)  # torch._int_mm
    want = ref.dequantize_epilogue(acc, a_scale, w_scale, bias, torch.float16)
    tma = kernels._use_tma(a_q, w_q)
    exact = {
        "tma" if tma else "pointer": torch.equal(kernels.int8_matmul(a_q, w_q), acc),
        "pointer": torch.equal(kernels.int8_matmul(a_q, w_q, tma=False), acc),
    }
    out = kernels.int8_gemm(a_q, a_scale, w_q, w_scale, bias, torch.float16)
    epilogue_equal = torch.equal(out, want)

    flops = 2 * m * n * k
    times = {
        "triton_int8_gemm": graph_ms(lambda: kernels.int8_gemm(a_q, a_scale, w_q, w_scale, bias, torch.float16),
                                     warmup, iters),
        "triton_int8_gemm_pointer": graph_ms(
            lambda: kernels.int8_gemm(a_q, a_scale, w_q, w_scale, bias, torch.float16, tma=False), warmup, iters),
        "cublas_int8_mm": graph_ms(lambda: torch._int_mm(a_q, w_q.t()), warmup, iters),
        "fp16_linear": graph_ms(lambda: F.linear(x, weight, bias), warmup, iters),
        "quantize_tokens": graph_ms(lambda: kernels.quantize_tokens(x), warmup, iters),
        "w8a8_linear": graph_ms(
            lambda: kernels.int8_gemm(*kernels.quantize_tokens(x), w_q, w_scale, bias, torch.float16), warmup, iters
        ),
    }
    kernel = kernels._int8_gemm_tma_kernel if tma else kernels._int8_gemm_kernel
    return {
        "M": m,
        "N": n,
        "K": k,
        "kernel": "tma" if tma else "pointer",
        "int32_exact": exact,
        "epilogue_equal": epilogue_equal,
        "ms": times,
        "tera_ops_per_s": {name: flops / (ms * 1e-3) / 1e12 for name, ms in times.items()
                           if name != "quantize_tokens"},
        "quantize_gb_per_s": m * k * 3 / (times["quantize_tokens"] * 1e-3) / 1e9,  # fp16 in, int8 out
        "triton_config": str(getattr(kernel, "best_config", None)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS), help="latent tokens per image")
    parser.add_argument("--batch", type=int, default=2, help="images per GEMM (2 = one image with CFG)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_int8_gemm needs a CUDA GPU")

    from quant import kernels  # Triton: imported only once we know there is a GPU

    torch.manual_seed(0)
    rows, blocks = [], []
    header = (
        f"{'width':>5} {'layer':<28} {'M':>6} {'N':>6} {'K':>5} {'exact':>5} | "
        f"{'int8 TOPS':>9} {'(ptr)':>6} {'cuBLAS i8':>9} {'fp16 TF':>8} {'gemm ×':>6} | "
        f"{'quant GB/s':>10} {'w8a8 lin ×':>10}"
    )
    print(header)
    print("-" * len(header))
    for width in args.widths:
        for tokens in args.tokens:
            m = args.batch * tokens
            block = {"width": width, "M": m, "fp16_ms": 0.0, "int8_gemm_ms": 0.0, "w8a8_linear_ms": 0.0}
            for name, n, k, per_block in layer_shapes(width):
                r = bench_shape(kernels, m, n, k, args.warmup, args.iters)
                r.update(width=width, layer=name, tokens_per_image=tokens, per_block=per_block)
                rows.append(r)
                ms, tops = r["ms"], r["tera_ops_per_s"]
                block["fp16_ms"] += per_block * ms["fp16_linear"]
                block["int8_gemm_ms"] += per_block * ms["triton_int8_gemm"]
                block["w8a8_linear_ms"] += per_block * ms["w8a8_linear"]
                exact = all(r["int32_exact"].values()) and r["epilogue_equal"]
                print(
                    f"{width:>5} {name:<28} {m:>6} {n:>6} {k:>5} {'yes' if exact else 'NO':>5} | "
                    f"{tops['triton_int8_gemm']:>9.0f} {tops['triton_int8_gemm_pointer']:>6.0f} "
                    f"{tops['cublas_int8_mm']:>9.0f} {tops['fp16_linear']:>8.0f} "
                    f"{ms['fp16_linear'] / ms['triton_int8_gemm']:>6.2f} | "
                    f"{r['quantize_gb_per_s']:>10.0f} {ms['fp16_linear'] / ms['w8a8_linear']:>10.2f}",
                    flush=True,
                )
                torch.cuda.empty_cache()
            block["gemm_speedup"] = block["fp16_ms"] / block["int8_gemm_ms"]
            block["linear_speedup"] = block["fp16_ms"] / block["w8a8_linear_ms"]
            blocks.append(block)

    print("\nOne DiT block's quantized GEMMs (6 C→C, expand, project), FP16 F.linear vs W8A8:")
    print(f"{'width':>5} {'M':>6} | {'fp16 ms':>8} {'int8 gemm ms':>12} {'×':>5} | {'w8a8 linear ms':>14} {'×':>5}")
    for b in blocks:
        print(f"{b['width']:>5} {b['M']:>6} | {b['fp16_ms']:>8.3f} {b['int8_gemm_ms']:>12.3f} {b['gemm_speedup']:>5.2f} | "
              f"{b['w8a8_linear_ms']:>14.3f} {b['linear_speedup']:>5.2f}")

    import triton

    result = {
        "device": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "warmup": args.warmup,
        "iters": args.iters,
        "timing": "10 calls captured in one CUDA graph, CUDA events around each replay, median per call",
        "rows": rows,
        "blocks": blocks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if not all(all(r["int32_exact"].values()) and r["epilogue_equal"] for r in rows):
        sys.exit("the Triton GEMM differs from torch._int_mm and the reference epilogue")


if __name__ == "__main__":
    main()
