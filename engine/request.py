"""What the user asks for: one validated, immutable request.

Validation lives here so that the CLI, the window and the tests all get the same message for the
same mistake, before any model is touched.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass

from .errors import RequestError

LATENT_STRIDE = 32  # DC-AE f32: one latent pixel per 32×32 image pixels
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
MAX_IMAGES = 16
MAX_SEED = 2**63 - 1
SOLVERS = ("dpm", "euler")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def random_seed() -> int:
    return secrets.randbelow(2**32)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Raises RequestError naming the field on any value out of range.

    `seed=None` means "pick one": `with_seed()` fixes it before a run so that the saved metadata
    always reproduces the image.
    """

    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 20
    guidance_scale: float = 4.5
    seed: int | None = None
    num_images: int = 1
    solver: str = "dpm"
    precision: str = "auto"

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise RequestError("prompt", "must be text")
        if not isinstance(self.negative_prompt, str):
            raise RequestError("negative_prompt", "must be text")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or not MIN_SIDE <= value <= MAX_SIDE:
                raise RequestError(name, f"{value!r} is outside {MIN_SIDE}..{MAX_SIDE} pixels")
            if value % LATENT_STRIDE:
                raise RequestError(name, f"{value} is not a multiple of {LATENT_STRIDE}")
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise RequestError("steps", f"{self.steps!r} is outside 1..{MAX_STEPS}")
        if (
            not isinstance(self.guidance_scale, (int, float))
            or isinstance(self.guidance_scale, bool)
            or not 0.0 <= self.guidance_scale <= MAX_GUIDANCE
        ):
            raise RequestError("guidance_scale", f"{self.guidance_scale!r} is outside 0..{MAX_GUIDANCE:g}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise RequestError("seed", f"{self.seed!r} is outside 0..{MAX_SEED}")
        if not _is_int(self.num_images) or not 1 <= self.num_images <= MAX_IMAGES:
            raise RequestError("num_images", f"{self.num_images!r} is outside 1..{MAX_IMAGES}")
        if self.solver not in SOLVERS:
            raise RequestError("solver", f"{self.solver!r} is not one of {', '.join(SOLVERS)}")
        if self.precision not in PRECISIONS:
            raise RequestError("precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @property
    def uses_guidance(self) -> bool:
        # diffusers' rule: guidance 1.0 or below runs the conditional pass alone.
        return self.guidance_scale > 1.0

    def with_seed(self) -> GenerationRequest:
        return self if self.seed is not None else dataclasses.replace(self, seed=random_seed())

    def replace(self, **changes) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> GenerationRequest:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise RequestError(unknown[0], f"unknown field; allowed: {', '.join(sorted(fields))}")
        return cls(**data)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
