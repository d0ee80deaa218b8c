"""Train the demo model from nothing on one GPU: the DC-AE first, then the DiT with its text encoder.

1. Autoencoder. Random scenes are drawn on the GPU each step; loss = L1 + L2 with object pixels
   weighted up, + an L1 on image gradients (keeps edges sharp), with a little noise on the
   latents so the decoder also draws clean shapes from the DiT's slightly-off latents. Then the scaling factor is measured
   (1 / std of the latents), as SANA's 0.41407 was.
2. DiT + Gemma, with the autoencoder frozen: latents computed on the fly; rectified flow,
   x_σ = (1 − σ)·x0 + σ·ε, target v = ε − x0, timestep σ·1000, σ logit-normal then shifted by the
   scheduler's own flow shift (as SANA trains). Captions (now and then with an object's size or
   position left unsaid, as people type them) go through the engine's
   `TextEncoder.encode` (instruction prefix, BOS + last 299 tokens), so inference reads the text
   exactly as training did; one caption in ten is replaced by "" encoded without the instruction,
   which is how the engine encodes the negative prompt for classifier-free guidance. The exported
   weights are an EMA of the DiT's and Gemma's.
3. Export the EMA weights to <out>/demo_model, then load that folder with `engine.model.load_model`
   and judge held-out captions through the engine's Generator; the scores go to the log.

bf16 autocast on CUDA, AdamW, linear warm-up then cosine decay. `--compile` runs the DiT and the
autoencoder under torch.compile: on an H100 the autoencoder's step goes from 6.5 to 11.9 steps/s
and the DiT step from ~295 to ~208 ms (its text path made cheap first: the step is bound by the
host's kernel launches), for about 2.4 + 1.3 minutes of compiling. The shipped weights used it;
it stays opt-in because compiling needs a working compiler toolchain on the machine.
Seeded: the scenes, the noise and the initial weights each come from their own seeded stream,
saved in the checkpoint, so a resumed run continues exactly as an uninterrupted one would.

    python3 -m training.demo.train --device cuda --out out/demo --compile
    python3 -m training.demo.train --quick --device cpu --out /tmp/demo-quick

The first is the shipped weights' plan (its step counts are the defaults below): about 19.5 minutes
on an H100. Where one command may run 10 minutes at most, add `--stop-after-minutes 8.5` and run
the same command until it exits with status 0 (three times).

`--minutes` sizes any stage whose steps are not given from its measured speed (during warm-up,
so the run is the same as one given those step counts: the log records them). That speed varies
from run to run on the same GPU (the DiT's from 5.4 to 7.2 steps a second), and so do the step
counts it picks and the weights: for other GPUs, not for reproducing the shipped model.
`--stop-after-minutes` (counted in this invocation) checkpoints, exports what it has, and exits
with status 3; the same command then resumes. Exit status 0 means trained, exported and judged.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.dcae import DCAE, DCAEConfig
from engine.devices import resolve_device
from engine.dit import DiTConfig, LinearDiT
from engine.text_encoder import TextEncoder, instruction_lines

from .presets import PRESETS
from .scenes import PALETTE, loose_caption, render_scenes, sample_scene
from .tokenizer import SPECIAL_TOKENS, train_tokenizer

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.json"
MODEL_FOLDER = "demo_model"
RESUME_EXIT = 3
CALIBRATION_STEPS = (50, 150)  # timed for --minutes: inside the warm-up, well after compiling and autotuning
AE_SHARE = 0.4  # of --minutes, when both stages are sized from it: the shapes are only as sharp as its decoder
EVAL_GUIDANCES = (1.0, 1.5, 4.5)  # the demo's own guidance (engine/demo.py), and SANA's
OBJECT_WEIGHT = 10.0  # autoencoder loss weight of object pixels against background pixels


@dataclass(frozen=True)
class Plan:
    """Everything that decides the weights; stored in the checkpoint and the log."""

    preset: str = "demo"
    seed: int = 0
    ae_steps: int | None = 3486  # the shipped weights' counts; None: sized from --minutes
    ae_batch: int = 64
    ae_lr: float = 6e-4
    latent_noise: float = 0.1  # × the latents' std, during autoencoder training
    dit_steps: int | None = 3645
    batch: int = 256
    lr: float = 5e-4
    # Gemma learns at a tenth of the DiT's rate: at the full rate, the DiT's early pull toward one
    # average image drags every caption to the same embedding and the text stops mattering.
    text_lr_scale: float = 0.1
    weight_decay: float = 0.01
    warmup: int = 200
    caption_dropout: float = 0.1
    unsaid: float = 0.15  # chance a caption leaves out an object's size, and apart its position
    ema_decay: float = 0.995  # a short run is still improving at its end: average its last ~200 steps
    flow_shift: float = 2.0  # written to the scheduler config: training and sampling share it
    grad_clip: float = 1.0


QUICK = {"preset": "quick", "ae_steps": 3, "ae_batch": 2, "dit_steps": 3, "batch": 3, "warmup": 30}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    run = Run(args)
    return run.go()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="work folder: checkpoint, log, model")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps: a CPU smoke run")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ae-steps", type=int)
    parser.add_argument("--ae-batch", type=int)
    parser.add_argument("--dit-steps", type=int)
    parser.add_argument("--batch", type=int, help="DiT batch size")
    parser.add_argument("--lr", type=float, help="DiT and text encoder learning rate")
    parser.add_argument("--minutes", type=float, help="size the stages whose steps are not given to this many minutes")
    parser.add_argument("--stop-after-minutes", type=float,
                        help="after this many minutes of training in this invocation: checkpoint, export, exit 3")
    parser.add_argument("--log-every", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--eval-captions", type=int, default=None, help="held-out captions judged at the end (0: none)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT and the autoencoder (CUDA only; off by default)")
    args = parser.parse_args(argv)
    base = Plan(**QUICK) if args.quick else Plan()
    given = {
        "seed": args.seed, "ae_steps": args.ae_steps, "ae_batch": args.ae_batch,
        "dit_steps": args.dit_steps, "batch": args.batch, "lr": args.lr,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if args.minutes is not None:
        changes.setdefault("ae_steps", None)
        changes.setdefault("dit_steps", None)
    args.plan = dataclasses.replace(base, **changes)
    if args.minutes is not None and args.plan.warmup < CALIBRATION_STEPS[1]:
        parser.error(f"--minutes times warm-up steps {CALIBRATION_STEPS}; the warm-up has only {args.plan.warmup}")
    if args.log_every is None:
        args.log_every = 1 if args.quick else 50
    if args.eval_captions is None:
        args.eval_captions = 1 if args.quick else 16
    return args


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out: Path = args.out
        self.device = resolve_device(args.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
            # cuDNN's attention builds a graph per new shape, ~4 ms of CPU a call; the caption lengths
            # change every step, so it missed every time (measured on the H100: the step was CPU-bound).
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint_path = self.out / CHECKPOINT
        if checkpoint_path.is_file():
            self._resume(torch.load(checkpoint_path, map_location="cpu", weights_only=True))
        else:
            self._start(args.plan)

    # ----------------------------------------------------------------------------- setup

    def _start(self, plan: Plan) -> None:
        self.plan = plan
        self.preset = PRESETS[plan.preset]
        self.tokenizer = train_tokenizer("\n".join(instruction_lines()), plan.seed)
        self._build()
        self.stage, self.step, self.minutes, self.stage_started = "ae", 0, 0.0, 0.0
        self.scaling_factor = 1.0
        self.log: dict = {"plan": dataclasses.asdict(plan), "ae": [], "dit": []}
        self.scene_rng = random.Random(plan.seed)
        self.noise = torch.Generator(self.device).manual_seed(plan.seed)

    def _build(self) -> None:
        torch.manual_seed(self.plan.seed)
        from transformers import Gemma2Config, Gemma2Model

        self.dcae = DCAE(DCAEConfig.from_dict({**self.preset.vae, "scaling_factor": 1.0})).to(self.device)
        self.dit = LinearDiT(DiTConfig.from_dict(self.preset.dit)).to(self.device)
        initialize_dit(self.dit)
        gemma_config = Gemma2Config(vocab_size=len(self.tokenizer), use_cache=False, **self.preset.text_encoder)
        self.gemma = Gemma2Model(gemma_config).to(self.device)
        initialize_gemma(self.gemma)
        self.text = TextEncoder(self.gemma, self.tokenizer)
        self.caption_tokens = CaptionTokenizer(self.text)
        self.ae_optimizer = _adamw({self.dcae: 1.0}, self.plan.ae_lr, 0.0, self.cuda)
        self.dit_optimizer = _adamw({self.dit: 1.0, self.gemma: self.plan.text_lr_scale}, self.plan.lr,
                                    self.plan.weight_decay, self.cuda)
        self.ema_dit = copy.deepcopy(self.dit).requires_grad_(False)
        self.ema_gemma = copy.deepcopy(self.gemma).requires_grad_(False)
        compiled = torch.compile if self.cuda and self.args.compile else (lambda f: f)
        self.dit_forward = compiled(self.dit)
        self.encode_images, self.decode_latents = compiled(self.dcae.encode), compiled(self.dcae.decode)

    def _resume(self, state: dict) -> None:
        self.plan = Plan(**{"unsaid": 0.0, **state["plan"]})  # checkpoints from before `unsaid` said everything
        given = self.args.plan
        for key in ("ae_steps", "dit_steps"):  # sized by --minutes in the first run: keep them
            if getattr(given, key) is None:
                given = dataclasses.replace(given, **{key: getattr(self.plan, key)})
        if given != self.plan:
            diff = {k: (v, getattr(given, k)) for k, v in dataclasses.asdict(self.plan).items() if getattr(given, k) != v}
            raise SystemExit(
                f"{self.out / CHECKPOINT} was made with other settings {diff} (saved, asked); "
                f"run with the saved ones or use another --out"
            )
        self.preset = PRESETS[self.plan.preset]
        self.tokenizer = tokenizer_from_json(state["tokenizer"])
        self._build()
        self.dcae.load_state_dict(state["dcae"])
        self.dit.load_state_dict(state["dit"])
        self.gemma.load_state_dict(state["gemma"])
        self.ema_dit.load_state_dict(state["ema_dit"])
        self.ema_gemma.load_state_dict(state["ema_gemma"])
        self.ae_optimizer.load_state_dict(state["ae_optimizer"])
        self.dit_optimizer.load_state_dict(state["dit_optimizer"])
        self.stage, self.step, self.minutes = state["stage"], state["step"], state["minutes"]
        self.stage_started = state["stage_started"]
        self._set_scaling_factor(state["scaling_factor"])
        self.log = json.loads(state["log"])
        self.scene_rng = random.Random()
        self.scene_rng.setstate(_python_rng_state(state["scene_rng"]))
        self.noise = torch.Generator(self.device)
        self.noise.set_state(state["noise_rng"])
        print(f"resumed {self.out / CHECKPOINT}: stage {self.stage}, step {self.step}, {self.minutes:.2f} min so far")

    def _set_scaling_factor(self, value: float) -> None:
        self.scaling_factor = float(value)
        self.dcae.config = dataclasses.replace(self.dcae.config, scaling_factor=self.scaling_factor)

    # ------------------------------------------------------------------------------ run

    def go(self) -> int:
        self.resumed_at = self.minutes  # --stop-after-minutes counts this invocation's minutes only
        print(f"device {self.device}, plan {dataclasses.asdict(self.plan)}")
        print(f"parameters: DiT {_millions(self.dit)}M, DC-AE {_millions(self.dcae)}M, Gemma {_millions(self.gemma)}M")
        if self.stage == "ae" and not self._train("ae"):
            return self._pause()
        if self.stage == "scale":
            self._set_scaling_factor(self._measure_scaling_factor())
            self.log["scaling_factor"] = self.scaling_factor
            print(f"scaling factor {self.scaling_factor:.5f}")
            self._judge_autoencoder()
            self.stage, self.step = "dit", 0
            self._save()
        if self.stage == "dit" and not self._train("dit"):
            return self._pause()
        self.stage = "done"
        self._save()
        folder = self._export()
        if self.args.eval_captions:
            self._evaluate(folder)
        self._write_log()
        print(f"done in {self.minutes:.2f} training minutes; model in {folder}")
        return 0

    def _pause(self) -> int:
        self._save()
        folder = self._export()
        print(f"stopped after {self.minutes:.2f} min at stage {self.stage} step {self.step}; "
              f"checkpoint saved, partial model in {folder}; run the same command again to continue")
        return RESUME_EXIT

    def _train(self, stage: str) -> bool:
        """Run `stage` to its last step; False if --stop-after-minutes cut it short."""
        step_fn = self._ae_step if stage == "ae" else self._dit_step
        steps_key = f"{stage}_steps"
        for model in [self.dcae] if stage == "ae" else [self.dit, self.gemma]:
            model.train()
        if self.step == 0:
            self.stage_started = self.minutes
        running, count = None, 0
        segment_start, segment_step = time.perf_counter(), self.step

        def minutes_now() -> float:
            return self.minutes + (time.perf_counter() - segment_start) / 60

        while getattr(self.plan, steps_key) is None or self.step < getattr(self.plan, steps_key):
            total = getattr(self.plan, steps_key)
            # Until the stage is sized, the schedule is still in warm-up, which does not depend on it.
            loss = step_fn(total or self.plan.warmup)
            running = loss.detach() if running is None else running + loss.detach()
            count += 1
            self.step += 1
            if total is None:
                self._calibrate(stage, self.step - segment_step, minutes_now())
                total = getattr(self.plan, steps_key)
            if self.step % self.args.log_every == 0 or self.step == total:
                mean = (running / count).item()
                running, count = None, 0
                rate = (self.step - segment_step) / max(1e-9, time.perf_counter() - segment_start)
                left = ((total or self.step) - self.step) / max(rate, 1e-9) / 60
                print(f"[{stage}] step {self.step}/{total or '?'}  loss {mean:.4f}  {rate:.2f} steps/s  "
                      f"{minutes_now():.2f} min  (stage ends in ~{left:.1f} min)", flush=True)
                self.log[stage].append({"step": self.step, "loss": round(mean, 5), "minutes": round(minutes_now(), 3)})
                self._write_log()
            limit = self.args.stop_after_minutes
            this_run = minutes_now() - self.resumed_at
            if limit is not None and this_run >= limit and (total is None or self.step < total):
                self.minutes = minutes_now()
                return False
            if self.step % self.args.checkpoint_every == 0:
                self.minutes = minutes_now()
                segment_start, segment_step = time.perf_counter(), self.step
                self._save()
        self.minutes = minutes_now()
        self.stage, self.step = ("scale", 0) if stage == "ae" else ("done", self.step)
        self._save()
        return True

    def _calibrate(self, stage: str, segment_steps: int, minutes: float) -> None:
        """With --minutes: time steps 5..25 of this run, then fix the stage's step count."""
        first, last = CALIBRATION_STEPS
        if segment_steps == first:
            self._sync()
            self._calibration_start = time.perf_counter()
        elif segment_steps == last:
            self._sync()
            per_step = (time.perf_counter() - self._calibration_start) / (last - first)
            budget = self.args.minutes * AE_SHARE if stage == "ae" else self.args.minutes - self.stage_started
            left = (budget - (minutes - self.stage_started)) * 60
            steps = max(self.plan.warmup, self.step + int(left / per_step))
            self.plan = dataclasses.replace(self.plan, **{f"{stage}_steps": steps})
            self.log["plan"] = dataclasses.asdict(self.plan)
            print(f"sized {stage}_steps = {steps} ({1 / per_step:.2f} steps/s for {budget:.1f} min)", flush=True)

    def _ae_step(self, total: int) -> torch.Tensor:
        plan = self.plan
        scenes = [sample_scene(self.scene_rng) for _ in range(plan.ae_batch)]
        images = render_scenes(scenes, self.preset.image_size, self.scene_rng, self.device)
        with self._autocast():
            latents = self.encode_images(images)
            noise = torch.randn(latents.shape, generator=self.noise, device=self.device)
            latents = latents + plan.latent_noise * latents.detach().float().std() * noise
            reconstruction = self.decode_latents(latents)
        loss = reconstruction_loss(reconstruction.float(), images, background_colours(scenes).to(self.device))
        self._update(loss, self.ae_optimizer, [self.dcae], plan.ae_lr, total)
        return loss

    def _dit_step(self, total: int) -> torch.Tensor:
        plan = self.plan
        scenes = [sample_scene(self.scene_rng) for _ in range(plan.batch)]
        dropped = [self.scene_rng.random() < plan.caption_dropout for _ in scenes]
        images = render_scenes(scenes, self.preset.image_size, self.scene_rng, self.device)
        with torch.no_grad(), self._autocast():
            x0 = self.encode_images(images).float() * self.scaling_factor
        sigma = self.scheduler_sigmas(plan.batch)
        noise = torch.randn(x0.shape, generator=self.noise, device=self.device)
        s = sigma[:, None, None, None]
        noisy = (1 - s) * x0 + s * noise
        with self._autocast():
            text, mask = self._caption_batch([loose_caption(sc, self.scene_rng, plan.unsaid) for sc in scenes], dropped)
            velocity = self.dit_forward(noisy, sigma * 1000, text, mask)
        loss = F.mse_loss(velocity.float(), noise - x0)
        self._update(loss, self.dit_optimizer, [self.dit, self.gemma], plan.lr, total)
        with torch.no_grad():
            decay = min(plan.ema_decay, (1 + self.step) / (10 + self.step))
            for ema, model in ((self.ema_dit, self.dit), (self.ema_gemma, self.gemma)):
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        return loss

    def scheduler_sigmas(self, batch: int) -> torch.Tensor:
        """σ ~ logit-normal(0, 1), then the scheduler's flow shift s·σ / (1 + (s − 1)·σ)."""
        u = torch.sigmoid(torch.randn(batch, generator=self.noise, device=self.device))
        s = self.plan.flow_shift
        return s * u / (1 + (s - 1) * u)

    def _caption_batch(self, captions: list[str], dropped: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, 300, H] and mask [B, 300]: captions, and "" without the instruction where dropped."""
        kept = [i for i, d in enumerate(dropped) if not d]
        empties = [i for i, d in enumerate(dropped) if d]
        parts = []
        if kept:
            parts.append(embed_captions_with_grad(self.text, self.caption_tokens, [captions[i] for i in kept]))
        if empties:
            text, mask = encode_with_grad(self.text, [""], with_instruction=False)
            parts.append((text.expand(len(empties), -1, -1), mask.expand(len(empties), -1)))
        back = torch.argsort(torch.tensor(kept + empties, device=self.device))  # to the captions' order
        return torch.cat([t for t, _ in parts])[back], torch.cat([m for _, m in parts])[back]

    def _update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, models: list[nn.Module],
                base_lr: float, total: int) -> None:
        lr = base_lr * learning_rate_factor(self.step, self.plan.warmup, total)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in models for p in m.parameters()], self.plan.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _measure_scaling_factor(self) -> float:
        """1 / std of the latents of fresh scenes (SANA's 0.41407 is that number for its DC-AE)."""
        self.dcae.eval()
        rng = random.Random(f"scaling-{self.plan.seed}")
        latents = []
        for _ in range(8):
            scenes = [sample_scene(rng) for _ in range(self.plan.ae_batch)]
            with self._autocast():
                latents.append(self.dcae.encode(render_scenes(scenes, self.preset.image_size, rng, self.device)).float())
        return 1.0 / torch.cat(latents).std().item()

    # ---------------------------------------------------------------------- outputs

    def _export(self) -> Path:
        from .export import export_model

        folder = self.out / MODEL_FOLDER
        training = {"plan": dataclasses.asdict(self.plan), "stage": self.stage, "step": self.step,
                    "minutes": round(self.minutes, 3)}
        export_model(folder, self.ema_dit, self.dcae, self.ema_gemma, self.tokenizer, self.plan.flow_shift, training)
        return folder

    def _judge_autoencoder(self) -> None:
        """The autoencoder's own shape score, before the DiT trains on its latents."""
        from .evaluate import judge_reconstructions

        was_training = self.dcae.training
        summary = judge_reconstructions(self.dcae.eval(), self.preset.image_size, scenes=4 if self.args.quick else 64)
        self.dcae.train(was_training)
        self.log["autoencoder_eval"] = summary
        print(f"autoencoder alone: shapes right {summary['shape_fraction']:.1%} "
              f"(by shape, right/total: {summary['shapes_right_by_shape']})", flush=True)

    def _evaluate(self, folder: Path) -> None:
        from engine.model import load_model

        from .evaluate import contact_sheet, judge_held_out, report

        model = load_model(folder, device=self.device.type, precision="fp32")  # as the CPU test runs it
        results = {}
        for guidance in EVAL_GUIDANCES:
            verdicts, images = judge_held_out(model, captions=self.args.eval_captions, guidance=guidance)
            summary = report(verdicts)
            results[str(guidance)] = summary
            print(f"held-out, guidance {guidance}: objects placed {summary['placed_fraction']:.1%}, "
                  f"shapes right {summary['shape_fraction']:.1%}, backgrounds right "
                  f"{summary['background_fraction']:.1%} ({summary['images']} images)", flush=True)
            contact_sheet(images, 8, self.out / f"held_out_guidance_{guidance:g}.png")
        self.log["eval"] = results

    def _save(self) -> None:
        state = {
            "plan": dataclasses.asdict(self.plan),
            "tokenizer": self.tokenizer.backend_tokenizer.to_str(),
            "stage": self.stage, "step": self.step, "minutes": self.minutes, "stage_started": self.stage_started,
            "scaling_factor": self.scaling_factor,
            "dcae": self.dcae.state_dict(), "dit": self.dit.state_dict(), "gemma": self.gemma.state_dict(),
            "ema_dit": self.ema_dit.state_dict(), "ema_gemma": self.ema_gemma.state_dict(),
            "ae_optimizer": self.ae_optimizer.state_dict(), "dit_optimizer": self.dit_optimizer.state_dict(),
            "log": json.dumps(self.log),
            "scene_rng": _python_rng_list(self.scene_rng.getstate()),
            "noise_rng": self.noise.get_state(),
        }
        path = self.out / CHECKPOINT
        torch.save(state, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        self._write_log()

    def _write_log(self) -> None:
        self.log["device"] = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        self.log["torch"] = torch.__version__
        self.log["scaling_factor"] = self.scaling_factor
        (self.out / LOG).write_text(json.dumps(self.log, indent=1))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def initialize_dit(dit: LinearDiT) -> None:
    """PixArt-α / SANA's initialisation: Xavier linears; N(0, 0.02) for the timestep and caption
    MLPs and the AdaLN-single projection; zero cross-attention outputs and final projection, so
    the network starts by predicting zero velocity and reads the text as soon as it helps."""
    with torch.no_grad():
        for module in dit.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(dit.patch_embed.proj.weight.view(dit.patch_embed.proj.weight.shape[0], -1))
        nn.init.zeros_(dit.patch_embed.proj.bias)
        embedder = dit.time_embed.emb["timestep_embedder"]
        for linear in (embedder.linear_1, embedder.linear_2, dit.time_embed.linear,
                       dit.caption_projection.linear_1, dit.caption_projection.linear_2):
            nn.init.normal_(linear.weight, std=0.02)
        for block in dit.transformer_blocks:
            nn.init.zeros_(block.attn2.to_out[0].weight)
            nn.init.zeros_(block.attn2.to_out[0].bias)
        nn.init.zeros_(dit.proj_out.weight)
        nn.init.zeros_(dit.proj_out.bias)


def initialize_gemma(gemma: nn.Module) -> None:
    """Token embeddings at unit scale after Gemma's ×√hidden, like the post-normed sublayer
    outputs they are summed with. At transformers' default (std 0.02, RMS 0.32 at hidden 256)
    those sublayers, mostly attending to the same instruction text, swamp which word a token is,
    and captions that differ in one colour come out nearly the same."""
    with torch.no_grad():
        nn.init.normal_(gemma.embed_tokens.weight, std=gemma.config.hidden_size**-0.5)
        gemma.embed_tokens.weight[gemma.config.pad_token_id].zero_()


class CaptionTokenizer:
    """The instruction's tokens once (`head`), then each caption's own (`tails`): together the very
    tokens of `TextEncoder.tokenize(captions, with_instruction=True)`, ~6× faster for 256 captions.

    Tokenizing the 205-token instruction again in front of each of 256 captions took 123 ms of CPU a
    step on the H100 machine; this takes 21. The byte-level pre-tokenizer splits "User Prompt:" from the
    " a" that starts every caption, and BPE merges never cross such a split, so the instruction's
    tokens followed by those of " " + caption are the tokens of the whole text
    (tests/test_demo_training.py compares the two over many captions).
    """

    def __init__(self, encoder: TextEncoder):
        probe = encoder.tokenize([""], with_instruction=True)["input_ids"]
        self.length = probe.shape[1]
        self.head = encoder.tokenizer(encoder.instruction.removesuffix(" "))["input_ids"]  # <bos> + instruction
        # A copy: transformers leaves its last call's padding and truncation set on the shared one.
        self.backend = type(encoder.tokenizer.backend_tokenizer).from_str(encoder.tokenizer.backend_tokenizer.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()
        self.pad = encoder.tokenizer.pad_token_id

    def tails(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The captions' own tokens (what follows `head`), right-padded to the longest: ids, mask."""
        tails = [t.ids for t in self.backend.encode_batch([" " + c.lower().strip() for c in captions],
                                                          add_special_tokens=False)]
        longest = max(len(t) for t in tails)
        if len(self.head) + longest > self.length:
            raise ValueError(f"a caption of {longest} tokens does not fit after the {len(self.head)}-token instruction")
        ids = torch.full((len(captions), longest), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, tail in enumerate(tails):
            ids[row, : len(tail)] = torch.tensor(tail, dtype=torch.long)
            mask[row, : len(tail)] = 1
        return ids, mask


def encode_with_grad(encoder: TextEncoder, prompts: list[str], with_instruction: bool):
    """`TextEncoder.encode` with gradients, wherever its mask is 1 (all the DiT reads): the same
    tokens, instruction and window, but Gemma runs only as far as the longest prompt of the batch.

    Prompts are padded on the right to the instruction's length + 298 tokens, so with the demo's
    205-token instruction a caption of ~20 tokens leaves ~280 of padding that Gemma would also run.
    Causal attention keeps the real tokens' states independent of the padding after them, and the
    DiT's cross-attention masks padding out, so positions past the longest prompt come back as zeros.
    """
    tokens = encoder.tokenize(prompts, with_instruction)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    length, used = ids.shape[1], int(mask.sum(1).max())  # right padding: the longest prompt's count
    hidden = encoder.model(ids[:, :used].to(encoder.device), attention_mask=mask[:, :used].to(encoder.device))
    hidden = F.pad(hidden.last_hidden_state, (0, 0, 0, length - used))
    keep = encoder.kept_positions(length)
    return hidden[:, keep], mask[:, keep].to(encoder.device)


def embed_captions_with_grad(encoder: TextEncoder, tokens: CaptionTokenizer, captions: list[str]):
    """`encode_with_grad(encoder, captions, with_instruction=True)` with the shared instruction run
    once, not per caption.

    Every caption follows the same <bos> + 205-token instruction, and attention is causal, so that
    prefix's keys, values and outputs are the same in every row: Gemma runs it once (batch 1, with
    gradients) and then only the ~20 caption tokens per row, attending to the prefix through its
    key/value cache. Same numbers where the mask is 1 (tests/test_demo_training.py).
    """
    device = encoder.device
    head = torch.tensor([tokens.head], device=device)
    tail_ids, tail_mask = tokens.tails(captions)
    rows, used = len(captions), head.shape[1] + tail_ids.shape[1]
    prefix = encoder.model(head, use_cache=True)
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(rows)
    mask = torch.cat([torch.ones(rows, head.shape[1], dtype=torch.long), tail_mask], dim=1)
    rest = encoder.model(tail_ids.to(device), attention_mask=mask.to(device), past_key_values=cache, use_cache=True)
    hidden = torch.cat([prefix.last_hidden_state.expand(rows, -1, -1), rest.last_hidden_state], dim=1)
    hidden = F.pad(hidden, (0, 0, 0, tokens.length - used))
    mask = F.pad(mask, (0, tokens.length - used))
    keep = encoder.kept_positions(tokens.length)
    return hidden[:, keep], mask[:, keep].to(device)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """L1 + L2 per pixel, objects weighted up, plus L1 on horizontal and vertical differences.

    Objects cover a few percent of an image: unweighted, an autoencoder learns the backgrounds
    long before it learns the shapes the DiT is judged on. `background` is [B, 3] in [-1, 1].
    """
    error = reconstruction - target
    on_object = (target - background[:, :, None, None]).abs().amax(dim=1, keepdim=True) > 0.02
    weight = 1 + (OBJECT_WEIGHT - 1) * on_object.float()
    pixels = ((error.abs() + error.square()) * weight).mean() / weight.mean()
    edges = sum(
        (torch.diff(reconstruction, dim=d) - torch.diff(target, dim=d)).abs().mean() for d in (-1, -2)
    )
    return pixels + 0.5 * edges


def background_colours(scenes: list) -> torch.Tensor:
    return torch.tensor([PALETTE[s.background] for s in scenes], dtype=torch.float32) / 127.5 - 1


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine from 1 to 0.1 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def tokenizer_from_json(text: str):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    pad, eos, bos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(text), bos_token=bos, eos_token=eos, pad_token=pad,
        unk_token=unk, padding_side="right",
    )


def export_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """Export a checkpoint's EMA weights as a model folder (what a finished run does itself)."""
    from .export import export_model

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    args = _parse(["--device", "cpu", "--out", str(Path(checkpoint).parent)])
    args.plan = Plan(**state["plan"])
    run = Run.__new__(Run)
    run.args, run.out, run.device, run.cuda = args, Path(checkpoint).parent, torch.device("cpu"), False
    run._resume(state)
    training = {"plan": state["plan"], "stage": state["stage"], "step": state["step"], "minutes": state["minutes"]}
    return export_model(folder, run.ema_dit, run.dcae, run.ema_gemma, run.tokenizer, run.plan.flow_shift, training)


def _adamw(lr_scales: dict[nn.Module, float], lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW over {module: its learning-rate scale}, with weight decay on matrices and convolution
    kernels only (not norms or biases)."""
    groups = []
    for module, scale in lr_scales.items():
        params = [p for p in module.parameters() if p.requires_grad]
        for chosen, decay in ([p for p in params if p.ndim >= 2], weight_decay), ([p for p in params if p.ndim < 2], 0.0):
            if chosen:
                groups.append({"params": chosen, "weight_decay": decay, "lr_scale": scale})
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused or None)


def _python_rng_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_state(saved: list) -> tuple:
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def _millions(module: nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


if __name__ == "__main__":
    sys.exit(main())
