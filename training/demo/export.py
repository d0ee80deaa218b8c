"""Write trained demo weights in the published diffusers layout, so `load_model` reads them as it
reads any SANA checkpoint (and diffusers' SanaPipeline could too):

    model_index.json            SanaPipeline and its five components
    transformer/                config.json + diffusion_pytorch_model.safetensors
    vae/                        config.json + diffusion_pytorch_model.safetensors
    text_encoder/               Gemma2Model.save_pretrained (config.json + model.safetensors)
    tokenizer/                  the fast tokenizer's save_pretrained
    scheduler/                  scheduler_config.json: Flow-DPM-Solver with the demo's flow shift

Weights are written in fp16, except a tensor that fp16 cannot hold (beyond its range), which
stays fp32; the engine casts on load. diffusers itself is not needed: the configs are written
the way diffusers 0.42 writes them.

    python3 -m training.demo.export out/demo/checkpoint.pt resources/demo_model
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engine.dcae import DCAE
from engine.demo import GUIDANCE
from engine.dit import LinearDiT

DIFFUSERS_VERSION = "0.42.1"  # the version whose files the engine is tested against
FP16_MAX = 65504.0

# DPMSolverMultistepScheduler in its flow configuration, every key as diffusers 0.42.1 writes it;
# only flow_shift is the model's own.
SCHEDULER_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": float("-inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "time_shift_type": "exponential",
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_dynamic_shifting": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}

MODEL_CARD = """\
# Sana Studio demo model

A tiny SANA (linear DiT, DC-AE f32c32, Gemma-2 text encoder) trained from scratch by
`training/demo/train.py` on procedurally drawn scenes: one to three flat shapes (circle, square,
triangle, star) in eight named colours, small or large, on the left, right, top, bottom or in the
center, on a named background colour. It draws 256×256 images of prompts such as

    a large red circle on the left and a small blue square on the right, on a yellow background

or, leaving sizes and places unsaid, "a red circle on a blue background" — and nothing else. It is
not a published SANA checkpoint; it exists so that a fresh install works offline and the tests
have a real model to run.

It draws best at a low guidance ({guidance:g}, what Sana Studio uses for it; engine/demo.py has
the figures): more guidance rounds its squares and fills in its stars.
"""


def export_model(
    folder: Path,
    dit: LinearDiT,
    dcae: DCAE,
    text_model: nn.Module,
    tokenizer,
    flow_shift: float,
    training: dict | None = None,
) -> Path:
    """Write the five component folders and model_index.json into `folder`; returns `folder`.

    `training`, when given, is stored as `training.json` beside them (how the weights were made).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "model_index.json", {
        "_class_name": "SanaPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "text_encoder": ["transformers", type(text_model).__name__],
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "transformer": ["diffusers", "SanaTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderDC"],
    })
    _write_component(folder / "transformer", "SanaTransformer2DModel", dataclasses.asdict(dit.config), dit)
    _write_component(folder / "vae", "AutoencoderDC", _lists(dataclasses.asdict(dcae.config)), dcae)
    text_copy = copy.deepcopy(text_model).to("cpu")
    text_copy.load_state_dict({name: _storage(t) for name, t in text_copy.state_dict().items()}, assign=True)
    text_copy.save_pretrained(folder / "text_encoder")  # safetensors, transformers' default
    tokenizer.save_pretrained(folder / "tokenizer")
    _write_json(folder / "scheduler" / "scheduler_config.json", {**SCHEDULER_CONFIG, "flow_shift": float(flow_shift)})
    (folder / "README.md").write_text(MODEL_CARD.format(guidance=GUIDANCE), encoding="utf-8")
    if training is not None:
        _write_json(folder / "training.json", training)
    return folder


def _write_component(folder: Path, class_name: str, config: dict, module: nn.Module) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **config})
    tensors = {name: _storage(t).contiguous() for name, t in module.state_dict().items()}
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))


def _storage(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 for shipping, unless the values do not fit in fp16."""
    tensor = tensor.detach().to("cpu")
    if not tensor.is_floating_point():
        return tensor
    if tensor.numel() and tensor.float().abs().max() >= FP16_MAX:
        return tensor.float()
    return tensor.half()


def _lists(value):
    """Tuples → lists all the way down, as JSON and diffusers' configs have them."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan: diffusers writes lambda_min_clipped as -Infinity, and its reader expects that.
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    from .train import export_checkpoint

    parser = argparse.ArgumentParser(description="Export a demo training checkpoint as a model folder.")
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt written by training.demo.train")
    parser.add_argument("folder", type=Path, help="where to write the model folder")
    args = parser.parse_args(argv)
    export_checkpoint(args.checkpoint, args.folder)
    print(f"wrote {args.folder}")


if __name__ == "__main__":
    main()
