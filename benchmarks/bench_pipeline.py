"""Speed and memory of the engine, stage by stage, against diffusers: `python benchmarks/bench_pipeline.py`.

Every part is built with random weights at the published configurations: our DiT and DC-AE and,
where diffusers is installed, its SanaTransformer2DModel and AutoencoderDC holding the very same
tensors. For each model × image size × precision it measures

  dit       one model call of a denoising step: the CFG batch of 2, guidance combined
  sample    the whole Flow-DPM-Solver loop (--steps) with classifier-free guidance
  decode    the DC-AE decode of one image, in one pass and tiled, ours and diffusers'
            (its enable_tiling), each with its PSNR against diffusers' one pass
  encode    Gemma-2-2B (transformers, shared by both) on 2 prompts × 300 tokens
  pipeline  prompt → PIL image: our Generator, diffusers' SanaPipeline

Times are CUDA events around each call after a warm-up, the median of the repeats. On a GPU each
timed `dit` call follows --settle-seconds of idle, so that every precision's step starts from the
same power state (at 4096² the 1.6B keeps an H100 at its 700 W cap: a step timed right after
another row's 20-step loop runs at a lower clock, and which precision's row came after which
decided its ratio). Memory is the
weights a stage holds plus the most it allocated on top of what was already there
(torch.cuda.max_memory_allocated after a reset), so models parked on the GPU for other rows don't
count; "≤16 GiB" checks that against the laptop budget. Our fused kernels (engine.accelerate) and
CUDA graphs (engine.runner) get rows of their own, or a "not available" row when they don't
import. Random weights make noise images: the PSNR is a numerical comparison, not a quality one.

    python benchmarks/bench_pipeline.py --only dit,decode --sizes 1024 --models 0.6B --out bench.json

diffusers is a test and benchmark dependency, which is why this lives in benchmarks/ and not in
engine/: it is imported only inside the reference builders, and the rows without it still run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant import quantize_model, set_int8

from engine.dcae import DCAE, DCAEConfig
from engine.dit import DiTConfig, LinearDiT
from engine.generator import Generator
from engine.model import SanaModel
from engine.request import GenerationRequest
from engine.solver import SchedulerConfig, make_solver
from engine.text_encoder import TextEncoder, instruction_lines
from engine.tiling import PEAK_FEATURE_COPIES, decode_auto, decode_tiled, memory_budget, plan_decode

GiB = 2**30
BUDGET_BYTES = 16 * GiB  # the laptop GPU the app is made for
PSNR_GOAL_DB = 35.0  # tiled decode against diffusers' one pass (issue #6)
STAGES = ("dit", "sample", "decode", "encode", "pipeline")
IMPLS = ("ours", "ours+kernels", "ours+graphs", "ours+kernels+graphs", "diffusers")
GUIDANCE = 4.5
TEXT_TOKENS = 300
PROMPT = "a red fox sleeping in the snow at sunrise, a detailed photo"

CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "published_configs"
PUBLISHED_DITS = {
    ("0.6B", 512): "transformer_sana_600m_512px.json",
    ("0.6B", 1024): "transformer_sana_600m_1024px.json",
    ("1.6B", 512): "transformer_sana_1600m_512px.json",
    ("1.6B", 1024): "transformer_sana_1600m_1024px.json",
    ("1.6B", 2048): "transformer_sana_1600m_2kpx_bf16.json",
    ("1.6B", 4096): "transformer_sana_1600m_4kpx_bf16.json",
}
PUBLISHED_VAE = "vae_dc-ae-f32c32-sana-1.0.json"
# google/gemma-2-2b-it's config.json: the text encoder of every SANA checkpoint.
GEMMA_2_2B = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0, query_pre_attn_scalar=256, sliding_window=4096,
    pad_token_id=0, eos_token_id=1, bos_token_id=2,
)

# --tiny: the same stages on models small enough for a CPU test, shaped like tests/tiny_models.py.
TINY_DIT = dict(
    in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32, num_layers=2,
    num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
    caption_channels=32, mlp_ratio=2.5, sample_size=4, patch_size=1,
)
TINY_VAE = dict(
    in_channels=3, latent_channels=32, attention_head_dim=8,
    encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    encoder_block_out_channels=[8, 8, 16, 16, 32, 32], decoder_block_out_channels=[8, 8, 16, 16, 32, 32],
    encoder_layers_per_block=[1] * 6, decoder_layers_per_block=[1] * 6,
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]], decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types="rms_norm",
    decoder_act_fns="silu", scaling_factor=0.41407,
)
TINY_GEMMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1,
    bos_token_id=2,
)


# ---- Setup and measurement ----


@dataclass
class Setup:
    device: torch.device
    tiny: bool
    reference: bool  # diffusers is importable and wanted
    impls: tuple[str, ...]
    steps: int
    warmup: int
    repeats: int
    max_seconds: float  # fewer repeats where one run is long
    decode_tile: int | None  # the tiled decode's tile in latent pixels (None: decode_auto's choice)
    settle_seconds: float = 0.0  # idle before each timed DiT step on a GPU (see the module's docstring)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dit_dtype(self) -> torch.dtype:
        return torch.float16 if self.cuda else torch.float32

    @property
    def companion_dtype(self) -> torch.dtype:
        """DC-AE and Gemma: bf16 on a GPU (random weights overflow an fp16 DC-AE), fp32 on the CPU."""
        return torch.bfloat16 if self.cuda else torch.float32

    @property
    def float_precision(self) -> str:
        return "fp16" if self.cuda else "fp32"


@dataclass
class Measurement:
    ms: float
    peak_bytes: int | None
    output: Any = None


def resident_bytes(*modules: nn.Module | None, device_type: str | None = None) -> int:
    """Bytes of the parameters and buffers of `modules` (on `device_type` only, if given), each
    shared tensor counted once."""
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            if device_type is not None and tensor.device.type != device_type:
                continue
            key = (tensor.device, tensor.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total


def measure(setup: Setup, fn: Callable[[], Any], holds: tuple[nn.Module | None, ...], settle: float = 0.0) -> Measurement:
    """Warm up, then time `fn` (median), each timed call `settle` seconds after the last; peak = the
    most allocated at any moment, warm-up included (CUDA graphs and autotuners allocate there), less
    what other rows' models hold on the GPU: the weights of `holds` count while they are on the GPU,
    and only then (an offloaded text encoder)."""
    _free()
    if setup.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        others = torch.cuda.memory_allocated() - resident_bytes(*holds, device_type="cuda")
    start = time.perf_counter()
    for _ in range(setup.warmup):
        fn()
    _synchronize(setup)
    warm_s = (time.perf_counter() - start) / max(setup.warmup, 1)
    repeats = max(1, min(setup.repeats, math.floor(setup.max_seconds / max(warm_s, 1e-6))))
    times, output = [], None
    for _ in range(repeats):
        output = None  # the last run's output is freed before the next one allocates its own
        time.sleep(settle)
        ms, output = _timed(setup, fn)
        times.append(ms)
    peak = None
    if setup.cuda:
        peak = torch.cuda.max_memory_allocated() - others
    return Measurement(statistics.median(times), peak, output)


def _timed(setup: Setup, fn: Callable[[], Any]) -> tuple[float, Any]:
    if setup.cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        output = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), output
    start_s = time.perf_counter()
    output = fn()
    return (time.perf_counter() - start_s) * 1000, output


def _synchronize(setup: Setup) -> None:
    if setup.cuda:
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def row(stage: str, model: str, size: int, precision: str, impl: str, variant: str = "", note: str = "") -> dict:
    return dict(stage=stage, model=model, size=size, precision=precision, impl=impl, variant=variant,
                ms=None, peak_gib=None, fits_16gib=None, speedup_vs_diffusers=None, psnr_db=None, note=note)


def settle_before(setup: Setup, stage: str) -> float:
    """Seconds of idle before each timed call of a row: --settle-seconds for a DiT step on a GPU
    (a single step, measured from the power state it would start from), none otherwise (a loop's
    own steps heat the GPU as they would in use; a CPU has no power cap to wait for)."""
    return setup.settle_seconds if setup.cuda and stage == "dit" else 0.0


def run_row(setup: Setup, entry: dict, fn: Callable[[], Any], holds: tuple) -> Any:
    """Fill `entry` with the measurement of `fn`; a failure becomes the row's note, not the run's end.
    A DiT step on a GPU is timed from idle (`settle_before`)."""
    try:
        with torch.inference_mode():
            result = measure(setup, fn, holds, settle_before(setup, entry["stage"]))
    except torch.OutOfMemoryError:
        entry["note"] = "out of memory"
        _free()
        return None
    except Exception as error:  # a benchmark reports what broke and goes on with the other rows
        traceback.print_exc(file=sys.stderr)
        entry["note"] = f"failed: {type(error).__name__}: {error}"[:160]
        _free()
        return None
    entry["ms"] = round(result.ms, 2)
    if result.peak_bytes is not None:
        entry["peak_gib"] = round(result.peak_bytes / GiB, 3)
        entry["fits_16gib"] = result.peak_bytes <= BUDGET_BYTES
    print(f"  {entry['stage']} {entry['model']} {entry['size']} {entry['precision']} {entry['impl']} "
          f"{entry['variant']}: {entry['ms']} ms, {entry['peak_gib'] or '-'} GiB", flush=True)
    return result.output


def attempt(entry: dict, make: Callable[[], Any]) -> Any:
    """What `make` builds, or None with the reason in the row's note: a string it returns (a
    variant that is not available) or the error it raises."""
    try:
        made = make()
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        made = f"failed: {type(error).__name__}: {error}"[:160]
    if isinstance(made, str):
        entry["note"] = made
        return None
    return made


# ---- Building the parts ----


def _read(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def _diffusers():
    import diffusers  # the reference: a test and benchmark dependency, imported only here

    return diffusers


def _build(factory: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.device(device):
        module = factory()
    return module.to(dtype).eval().requires_grad_(False)


def _ours_from(reference: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """Our module holding the reference's very tensors (no copy): same weights, half the memory."""
    with torch.device("meta"):
        ours = build()
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return ours.eval().requires_grad_(False)


def _twin(dit: LinearDiT) -> LinearDiT:
    """Another LinearDiT over the same tensors, for a variant that swaps modules in place."""
    return _ours_from(dit, lambda: LinearDiT(dit.config))


def build_vae(setup: Setup) -> tuple[DCAE, nn.Module | None]:
    data = TINY_VAE if setup.tiny else _read(PUBLISHED_VAE)
    config = DCAEConfig.from_dict(data)
    if not setup.reference:
        return _build(lambda: DCAE(config), setup.device, setup.companion_dtype), None
    reference = _build(lambda: _diffusers().AutoencoderDC.from_config(data), setup.device, setup.companion_dtype)
    return _ours_from(reference, lambda: DCAE(config)), reference


def build_dits(setup: Setup, model: str, size: int) -> tuple[LinearDiT, nn.Module | None]:
    data = TINY_DIT if setup.tiny else _read(PUBLISHED_DITS[model, size])
    config = DiTConfig.from_dict(data)
    if not setup.reference:
        return _build(lambda: LinearDiT(config), setup.device, setup.dit_dtype), None
    reference = _build(lambda: _diffusers().SanaTransformer2DModel.from_config(data), setup.device, setup.dit_dtype)
    return _ours_from(reference, lambda: LinearDiT(config)), reference


def build_text_encoder(setup: Setup) -> TextEncoder:
    """Gemma-2 with random weights and a word-level tokenizer with Gemma's special tokens: every
    prompt is padded to the same length, so the vocabulary does not change the cost."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator([*instruction_lines(), PROMPT],
                              trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
    words.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    config = Gemma2Config(**(dict(TINY_GEMMA, vocab_size=len(tokenizer)) if setup.tiny else GEMMA_2_2B))
    model = _build(lambda: Gemma2Model(config), setup.device, setup.companion_dtype)
    return TextEncoder(model, tokenizer)


def _scheduler_file(size: int) -> str:
    return "scheduler_sana_4k.json" if size >= 4096 else "scheduler_sana.json"


def _optional(module: str, name: str):
    """engine.accelerate / engine.runner are built alongside this bench: a missing one is a row
    that says so, not a crash."""
    try:
        return getattr(__import__(f"engine.{module}", fromlist=[name]), name), None
    except (ImportError, AttributeError) as error:
        return None, f"not available yet (engine.{module}.{name}: {error})"


@dataclass
class DiTVariants:
    """Our DiT for each impl × precision (module, or why there is none), built on first use."""

    plain: LinearDiT
    _cache: dict = field(default_factory=dict)

    def get(self, impl: str, precision: str) -> LinearDiT | str:
        key = (impl.replace("+graphs", ""), precision)
        if key not in self._cache:
            self._cache[key] = self._make(*key)
        return self._cache[key]

    def _make(self, impl: str, precision: str) -> LinearDiT | str:
        if impl == "ours" and precision != "int8":
            return self.plain
        dit = _twin(self.plain)
        if precision == "int8":
            quantize_model(dit)  # W8A8 on, made from the float weights the plain DiT holds
            # as SanaModel.set_precision on a GPU: the quantized layers' 16-bit weights wait in
            # host memory (the plain DiT keeps its own references, so the other rows still run)
            set_int8(dit, True, park_float=next(dit.parameters()).is_cuda)
        if impl == "ours+kernels":
            accelerate_dit, missing = _optional("accelerate", "accelerate_dit")
            if missing:
                return missing
            report = accelerate_dit(dit)
            if getattr(report, "skipped_because", None):
                return f"not available: {report.skipped_because}"
        return dit


def velocity_call(setup: Setup, dit: LinearDiT, graphs: bool) -> Callable | str:
    """(latents, t, text, mask) → guided velocity as the Generator's loop gets it: through
    engine.runner (which encodes the prompt once, not every step), replaying CUDA graphs or eager."""
    if graphs and not setup.cuda:
        return "not available: CUDA graphs need a GPU"
    runner_class, missing = _optional("runner", "DenoiseRunner")
    if missing:
        return missing
    runner = runner_class(dit, graphs=graphs)
    return lambda latents, t, text, mask: runner.velocity(latents, t, text, mask, GUIDANCE)


def reference_call(reference: nn.Module) -> Callable:
    """The same step through diffusers' transformer, as SanaPipeline's loop makes it."""
    dtype = reference.dtype

    def call(latents, t, text, mask):
        timestep = torch.as_tensor(t, device=latents.device).expand(2 * latents.shape[0])
        velocity = reference(torch.cat([latents, latents]).to(dtype), encoder_hidden_states=text,
                             encoder_attention_mask=mask, timestep=timestep, return_dict=False)[0].float()
        unconditional, conditional = velocity.chunk(2)
        return unconditional + GUIDANCE * (conditional - unconditional)

    return call


# ---- The stages ----


def bench_decode(setup: Setup, vae: DCAE, reference: nn.Module | None, size: int, rows: list) -> None:
    f = vae.config.spatial_compression
    dtype = next(vae.parameters()).dtype
    generator = torch.Generator().manual_seed(5)
    latents = (torch.randn(1, vae.config.latent_channels, size // f, size // f, generator=generator)
               / vae.config.scaling_factor).to(setup.device, dtype)
    model = "DC-AE f32c32" if not setup.tiny else "DC-AE tiny"
    outputs = {}

    def add(impl: str, variant: str, fn: Callable, note: str = "") -> dict:
        entry = row("decode", model, size, "bf16" if dtype == torch.bfloat16 else "fp32", impl, variant, note=note)
        rows.append(entry)
        out = run_row(setup, entry, fn, (vae if impl == "ours" else reference,))
        if out is not None:
            outputs[impl, variant] = out.float().cpu()
            if not torch.isfinite(outputs[impl, variant]).all():
                entry["note"] += " (non-finite pixels)"
        return entry

    one = add("ours", "one pass", lambda: vae.decode(latents))
    if one["peak_gib"] is not None:
        measured = (one["peak_gib"] * GiB - resident_bytes(vae)) / (size * size)
        model_bpp = PEAK_FEATURE_COPIES * vae.config.decoder_block_out_channels[0] * _itemsize(dtype)
        one["note"] = f"{measured:.0f} B/px (tiling model {model_bpp:.0f}: copies {measured / model_bpp * PEAK_FEATURE_COPIES:.2f})"
    plan = plan_decode(vae, tuple(latents.shape), dtype, memory_budget(latents.device), setup.decode_tile)
    tiled_note = "one pass fits the budget" if plan.tile is None else (
        f"tiles of {plan.tile * f} px, predicted {plan.predicted_bytes / GiB:.2f} GiB + weights")
    tiled = (lambda: decode_auto(vae, latents)) if setup.decode_tile is None else (
        lambda: decode_tiled(vae, latents, tile=setup.decode_tile))
    add("ours", "tiled", tiled, tiled_note)
    if reference is not None and "diffusers" in setup.impls:
        add("diffusers", "one pass", lambda: reference.decode(latents).sample)
        if setup.tiny:  # diffusers' default 512-px tiles would not cut a tiny image
            reference.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64,
                                    tile_sample_stride_height=32, tile_sample_stride_width=32)
        else:
            reference.enable_tiling()
        try:
            add("diffusers", "tiled", lambda: reference.decode(latents).sample,
                f"{reference.tile_sample_min_height}-px tiles, stride {reference.tile_sample_stride_height}")
        finally:
            reference.disable_tiling()
    target = outputs.get(("diffusers", "one pass"))
    for entry in rows:
        key = (entry["impl"], entry["variant"])
        if entry["stage"] == "decode" and entry["size"] == size and key in outputs and target is not None:
            if key != ("diffusers", "one pass"):
                entry["psnr_db"] = round(psnr(outputs[key], target), 2)
    _free()


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR of two decoder outputs as they would be saved: [-1, 1] mapped to [0, 1] and clipped."""
    a, b = ((x.double() / 2 + 0.5).clamp(0, 1) for x in (image, target))
    mse = (a - b).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def bench_encode(setup: Setup, text_encoder: TextEncoder, rows: list) -> None:
    model = text_encoder.model
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (2, TEXT_TOKENS), generator=torch.Generator().manual_seed(6)).to(setup.device)
    mask = torch.ones_like(ids)
    name = "Gemma-2 tiny" if setup.tiny else "Gemma-2-2B"
    dtype = "bf16" if setup.cuda else "fp32"
    entry = row("encode", name, TEXT_TOKENS, dtype, "transformers", "2 prompts",
                note="the same model in both pipelines")
    rows.append(entry)
    run_row(setup, entry, lambda: model(ids, attention_mask=mask).last_hidden_state, (model,))


@dataclass
class DiTGroup:
    """One model at one size: our DiT and its variants, diffusers' twin, inputs, scheduler."""

    model: str
    size: int
    variants: DiTVariants
    reference: nn.Module | None
    scheduler: SchedulerConfig
    scheduler_data: dict
    latents: torch.Tensor  # [1, C, h, w] fp32 noise
    text: torch.Tensor  # [2, 300, caption_channels]: unconditional, conditional
    mask: torch.Tensor

    @classmethod
    def build(cls, setup: Setup, model: str, size: int) -> DiTGroup:
        ours, reference = build_dits(setup, model, size)
        config = ours.config
        generator = torch.Generator().manual_seed(7)
        latents = torch.randn(1, config.in_channels, size // 32, size // 32, generator=generator)
        text = torch.randn(2, TEXT_TOKENS, config.caption_channels, generator=generator)
        mask = torch.ones(2, TEXT_TOKENS, dtype=torch.long)
        mask[0, 40:] = 0  # the unconditional prompt is short; the conditional one fills the 300 tokens
        data = _read(_scheduler_file(size))
        return cls(model, size, DiTVariants(ours), reference, SchedulerConfig.from_dict(data), data,
                   latents.to(setup.device), text.to(setup.device, setup.dit_dtype), mask.to(setup.device))

    @property
    def timestep_scale(self) -> float:
        return self.variants.plain.config.timestep_scale


def our_impls(setup: Setup) -> list[str]:
    return [impl for impl in IMPLS if impl.startswith("ours") and impl in setup.impls]


def bench_dit_and_sample(setup: Setup, group: DiTGroup, stages: set, precisions: list, rows: list) -> None:
    inputs = (group.text, group.mask)
    probe_t = 500.0 * group.timestep_scale

    def sample(call: Callable) -> Callable:
        def run():
            solver = make_solver("dpm", group.scheduler, setup.steps)
            x = group.latents.clone()
            for timestep in solver.timesteps:
                x = solver.step(call(x, timestep * group.timestep_scale, *inputs), x)
            return x

        return run

    def sample_reference() -> torch.Tensor:
        schedule = _diffusers().DPMSolverMultistepScheduler.from_config(group.scheduler_data)
        schedule.set_timesteps(setup.steps, device=setup.device)
        call, x = reference_call(group.reference), group.latents.clone()
        for timestep in schedule.timesteps:
            x = schedule.step(call(x, timestep * group.timestep_scale, *inputs), timestep, x, return_dict=False)[0]
        return x

    for precision in precisions:
        for impl in our_impls(setup):
            for stage in ("dit", "sample"):
                if stage not in stages:
                    continue
                entry = row(stage, group.model, group.size, precision, impl,
                            f"{setup.steps} steps" if stage == "sample" else "")
                rows.append(entry)
                dit = attempt(entry, lambda: group.variants.get(impl, precision))
                # a call of its own per row, so that a CUDA graph's capture counts in that row's peak
                call = dit and attempt(entry, lambda: velocity_call(setup, dit, graphs="graphs" in impl))
                if call is None:
                    continue
                fn = (lambda c=call: c(group.latents, probe_t, *inputs)) if stage == "dit" else sample(call)
                run_row(setup, entry, fn, (dit,))
                del call, fn
    if group.reference is not None and "diffusers" in setup.impls:
        ref_call = reference_call(group.reference)
        for stage in ("dit", "sample"):
            if stage in stages:
                entry = row(stage, group.model, group.size, setup.float_precision, "diffusers",
                            f"{setup.steps} steps" if stage == "sample" else "")
                rows.append(entry)
                fn = (lambda: ref_call(group.latents, probe_t, *inputs)) if stage == "dit" else sample_reference
                run_row(setup, entry, fn, (group.reference,))
    _free()


def bench_pipeline(setup: Setup, group: DiTGroup, vae: DCAE, vae_reference: nn.Module | None,
                   text_encoder: TextEncoder, precisions: list, rows: list) -> None:
    for precision in precisions:
        for impl, offload in (("ours", False), ("ours+kernels", False), ("ours+kernels", True)):
            if impl not in setup.impls:
                continue
            entry = row("pipeline", group.model, group.size, precision, impl,
                        f"{setup.steps} steps" + (", offload" if offload else ""),
                        note="decode: auto tiling" + ("; text encoder parked in CPU memory after encoding"
                                                      if offload else ""))
            rows.append(entry)
            dit = attempt(entry, lambda: group.variants.get(impl, precision))
            if dit is None:
                continue
            sana = SanaModel(name=f"bench-{group.model}", path=Path("."), device=setup.device, dit=dit, dcae=vae,
                             text_encoder=text_encoder, scheduler_config=group.scheduler,
                             checkpoint_dtype=setup.dit_dtype, precision=precision)
            generator = Generator(sana, previews=False, offload_text_encoder=offload)
            request = GenerationRequest(prompt=PROMPT, width=group.size, height=group.size, steps=setup.steps,
                                        guidance_scale=GUIDANCE, seed=0, precision=precision)

            def run(g=generator, r=request):
                g.prompt_cache.clear()  # every run encodes its prompts, as a first run does
                return g.generate(r)

            run_row(setup, entry, run, (dit, vae, text_encoder.model))
    if group.reference is not None and vae_reference is not None and "diffusers" in setup.impls:
        entry = row("pipeline", group.model, group.size, setup.float_precision, "diffusers", f"{setup.steps} steps",
                    note="SanaPipeline, one-pass decode")
        rows.append(entry)
        diffusers = _diffusers()
        text_encoder.model.to(setup.device)  # an offloaded row before this one parked it in CPU memory
        pipe = diffusers.SanaPipeline(
            tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, vae=vae_reference,
            transformer=group.reference,
            scheduler=diffusers.DPMSolverMultistepScheduler.from_config(group.scheduler_data),
        )
        pipe.set_progress_bar_config(disable=True)
        run_row(setup, entry, lambda: pipe(
            prompt=PROMPT, negative_prompt="", height=group.size, width=group.size,
            num_inference_steps=setup.steps, guidance_scale=GUIDANCE,
            generator=torch.Generator(setup.device).manual_seed(0), use_resolution_binning=False,
            clean_caption=False, max_sequence_length=TEXT_TOKENS,
        ).images, (group.reference, vae_reference, text_encoder.model))
    _free()


# ---- Report ----


def add_ratios(rows: list) -> None:
    """speedup_vs_diffusers = diffusers' time / ours, for the same stage, model, size and variant."""
    reference = {(r["stage"], r["model"], r["size"], r["variant"]): r["ms"]
                 for r in rows if r["impl"] == "diffusers" and r["ms"]}
    for entry in rows:
        ref_ms = reference.get((entry["stage"], entry["model"], entry["size"], entry["variant"]))
        if entry["impl"] != "diffusers" and entry["ms"] and ref_ms:
            entry["speedup_vs_diffusers"] = round(ref_ms / entry["ms"], 2)


def checks(rows: list) -> dict:
    """The issue's goals, read off the rows: the tiled decode's PSNR and the 16 GiB budget."""
    tiled = [r for r in rows if r["stage"] == "decode" and r["impl"] == "ours" and r["variant"] == "tiled"
             and r.get("psnr_db") is not None]
    pipelines = [r for r in rows if r["stage"] == "pipeline" and r["impl"] != "diffusers" and r["peak_gib"]]
    return {
        "tiled_decode_psnr_db": {r["size"]: r["psnr_db"] for r in tiled},
        "tiled_decode_psnr_goal_met": all(r["psnr_db"] >= PSNR_GOAL_DB for r in tiled) if tiled else None,
        "pipelines_within_16gib": {f'{r["model"]} {r["size"]} {r["precision"]} {r["impl"]}': r["fits_16gib"]
                                   for r in pipelines},
    }


COLUMNS = [("stage", 8), ("model", 13), ("size", 5), ("precision", 9), ("impl", 19), ("variant", 9),
           ("ms", 9), ("peak_gib", 8), ("fits_16gib", 6), ("speedup_vs_diffusers", 7), ("psnr_db", 6)]
HEADERS = {"peak_gib": "GiB", "fits_16gib": "≤16G", "speedup_vs_diffusers": "×diff", "psnr_db": "PSNR"}


def format_table(rows: list) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = [" ".join(HEADERS.get(name, name).ljust(width) for name, width in COLUMNS) + " note"]
    for entry in rows:
        lines.append(" ".join(cell(entry.get(name)).ljust(width) for name, width in COLUMNS) + " " + entry["note"])
    return "\n".join(lines)


# ---- Command line ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sana-studio bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(STAGES), help=f"stages, comma-separated: {', '.join(STAGES)}")
    parser.add_argument("--sizes", default=None, help="image sides in pixels (default: 1024,4096; --tiny: 64,128)")
    parser.add_argument("--models", default=None, help="0.6B, 1.6B (default: both; --tiny: tiny)")
    parser.add_argument("--precisions", default=None, help="fp16 (fp32 on the CPU) and/or int8 (default: both)")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"implementations: {', '.join(IMPLS)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="fewer repeats where runs are long")
    parser.add_argument("--decode-tile", type=int, default=None,
                        help="tile side of the tiled decode, latent pixels (default: from free memory; --tiny: 1)")
    parser.add_argument("--settle-seconds", type=float, default=1.0,
                        help="idle before each timed DiT step on a GPU, so every step starts from the same power state")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--no-reference", action="store_true", help="skip diffusers even where it is installed")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: a smoke test that runs on a CPU")
    parser.add_argument("--out", default="bench.json", help="where to write every number as JSON")
    return parser


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stages = set(_split(args.only))
    unknown = stages - set(STAGES) or set(_split(args.impls)) - set(IMPLS)
    if unknown:
        parser.error(f"unknown {', '.join(sorted(unknown))}; stages: {', '.join(STAGES)}; impls: {', '.join(IMPLS)}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    try:
        _diffusers()
        has_reference = not args.no_reference
    except ImportError:
        has_reference = False
    decode_tile = args.decode_tile if args.decode_tile is not None else (1 if args.tiny else None)
    if args.settle_seconds < 0:
        parser.error(f"--settle-seconds must be 0 or more, got {args.settle_seconds}")
    setup = Setup(device, args.tiny, has_reference, tuple(_split(args.impls)), args.steps, args.warmup,
                  args.repeats, args.max_seconds, decode_tile, args.settle_seconds)
    sizes = [int(s) for s in _split(args.sizes or ("64,128" if args.tiny else "1024,4096"))]
    models = _split(args.models or ("tiny" if args.tiny else "0.6B,1.6B"))
    float_precision = setup.float_precision
    precisions = [float_precision if p in ("fp16", "fp32") else p
                  for p in _split(args.precisions or f"{float_precision},int8")]

    rows: list[dict] = []
    started = time.perf_counter()

    def write(done: bool) -> dict:
        """The JSON report, rewritten after each group so that a run cut short keeps its rows."""
        add_ratios(rows)
        report = {
            "meta": {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "device": torch.cuda.get_device_name(device) if setup.cuda else platform.processor() or "cpu",
                "torch": torch.__version__,
                "diffusers": _version("diffusers") if has_reference else None,
                "transformers": _version("transformers"),
                "args": vars(args),
                "seconds": round(time.perf_counter() - started, 1),
                "complete": done,
                "decoder_peak_model": f"{PEAK_FEATURE_COPIES} × width[0] × dtype size bytes per output pixel",
            },
            "checks": checks(rows),
            "rows": rows,
        }
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        return report

    vae, vae_reference = build_vae(setup) if stages & {"decode", "pipeline"} else (None, None)
    if "decode" in stages:
        for size in sizes:
            bench_decode(setup, vae, vae_reference, size, rows)
            write(False)
    text_encoder = build_text_encoder(setup) if stages & {"encode", "pipeline"} else None
    if "encode" in stages:
        bench_encode(setup, text_encoder, rows)
    for model in models:
        for size in sizes:
            if not stages & {"dit", "sample", "pipeline"}:
                break
            if not setup.tiny and (model, size) not in PUBLISHED_DITS:
                rows.append(row("dit", model, size, "-", "-", note="no published configuration"))
                continue
            group = DiTGroup.build(setup, model, size)
            if stages & {"dit", "sample"}:
                bench_dit_and_sample(setup, group, stages, precisions, rows)
            if "pipeline" in stages:
                bench_pipeline(setup, group, vae, vae_reference, text_encoder, precisions, rows)
            del group
            _free()
            write(False)
    report = write(True)
    print(format_table(rows))
    print(json.dumps(report["checks"], indent=1))
    print(f"wrote {args.out} ({report['meta']['seconds']} s)")
    return 0


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


if __name__ == "__main__":
    sys.exit(main())
