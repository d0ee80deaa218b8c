"""Flow-DPM-Solver and Flow-Euler: the sampling loops' arithmetic, on the rectified flow.

The DiT predicts the velocity v = noise − x0 of x_σ = (1 − σ)·x0 + σ·noise, so one model call gives
the data estimate x0 = x_σ − σ·v. Sigmas run from ≈1 down to 0, bent toward the noisy end by the
checkpoint's flow shift s: σ' = s·σ / (1 + (s − 1)·σ).

- Flow-Euler follows v: x_next = x + (σ_next − σ)·v.
- Flow-DPM-Solver is DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095) written with α = 1 − σ:
  an exponential integrator in λ = log(α/σ) on the x0 estimates, second order from the previous
  step's x0 (midpoint rule), first order on the first and the last step.

Every step's coefficients are python floats computed once, so a step never reads back from the
device. The schedules match diffusers' DPMSolverMultistepScheduler(use_flow_sigmas=True,
prediction_type="flow_prediction") and FlowMatchEulerDiscreteScheduler, which the tests check.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from .errors import ConfigError, RequestError
from .request import SOLVERS

# Keys of a published scheduler_config.json, per class, with the one value we implement. Most
# are diffusers' defaults for features we don't run; those still have to hold the default, since
# another value could change the schedule. Besides these, the flow shift and num_train_timesteps
# are read from the file.
_FIXED = {
    "DPMSolverMultistepScheduler": {
        "use_flow_sigmas": True,
        "prediction_type": "flow_prediction",
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "final_sigmas_type": "zero",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "rescale_betas_zero_snr": False,
    },
    "FlowMatchEulerDiscreteScheduler": {
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "time_shift_type": "exponential",
        "stochastic_sampling": False,
    },
}
_SHIFT_KEY = {"DPMSolverMultistepScheduler": "flow_shift", "FlowMatchEulerDiscreteScheduler": "shift"}
# Keys that must be present: the flow shift has to come from the model, and diffusers' defaults
# for use_flow_sigmas and prediction_type are the non-flow ones, so their absence means "not flow".
_REQUIRED = {
    "DPMSolverMultistepScheduler": ("flow_shift", "use_flow_sigmas", "prediction_type"),
    "FlowMatchEulerDiscreteScheduler": ("shift",),
}


@dataclass(frozen=True)
class SchedulerConfig:
    """What a checkpoint's scheduler config says about sampling: the flow shift and the training grid."""

    flow_shift: float
    num_train_timesteps: int = 1000

    @classmethod
    def from_dict(cls, data: dict) -> "SchedulerConfig":
        """From a diffusers scheduler_config.json. Raises ConfigError on anything we don't implement."""
        kind = data.get("_class_name")
        if kind not in _FIXED:
            raise ConfigError(f"scheduler config: _class_name {kind!r} is not one of {', '.join(_FIXED)}")
        fixed, shift_key = _FIXED[kind], _SHIFT_KEY[kind]
        for key, value in data.items():
            if key.startswith("_") or key in (shift_key, "num_train_timesteps"):
                continue
            if key not in fixed:
                allowed = ", ".join(sorted([*fixed, shift_key, "num_train_timesteps"]))
                raise ConfigError(f"scheduler config: unknown key {key!r} for {kind}; known keys: {allowed}")
            if value != fixed[key]:
                raise ConfigError(f"scheduler config: {key} is {value!r}; only {fixed[key]!r} is supported")
        for key in _REQUIRED[kind]:
            if key not in data:
                wanted = f"only {fixed[key]!r} is supported" if key in fixed else "the model's config must give it"
                raise ConfigError(f"scheduler config: {key} is missing; {wanted}")
        shift, steps = data[shift_key], data.get("num_train_timesteps", 1000)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < math.inf:
            raise ConfigError(f"scheduler config: {shift_key} is {shift!r}; it must be a positive number")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"scheduler config: num_train_timesteps is {steps!r}; it must be a positive integer")
        return cls(flow_shift=float(shift), num_train_timesteps=steps)

    @classmethod
    def from_file(cls, path: Path) -> "SchedulerConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))  # accepts diffusers' -Infinity
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: cannot read the scheduler config ({error})") from error
        try:
            return cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error

    def shifted(self, sigma: np.ndarray) -> np.ndarray:
        s = self.flow_shift
        return s * sigma / (1 + (s - 1) * sigma)


class Solver:
    """One sampling run: `timesteps[i]` goes to the DiT, then `step(velocity, sample)` moves on.

    `sigmas` has steps + 1 entries, the last 0. `step` takes and returns float32 whatever the
    model's dtype, and keeps the state a multistep method needs; build a new solver per run.
    """

    def __init__(self, timesteps: list[float], sigmas: list[float]):
        self.timesteps = timesteps
        self.sigmas = sigmas
        self._index = 0

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, velocity: Tensor, sample: Tensor) -> Tensor:
        raise NotImplementedError


class FlowEuler(Solver):
    def __init__(self, config: SchedulerConfig, steps: int):
        n = config.num_train_timesteps
        # diffusers' grid runs linearly from σ = 1 to the smallest training sigma, already shifted
        # (in float32), and is then shifted again. Kept for parity with FlowMatchEulerDiscreteScheduler.
        smallest = float(config.shifted(np.float32(1 / n)))
        sigmas = np.float32(config.shifted(np.linspace(n, smallest * n, steps) / n))
        super().__init__((sigmas * np.float32(n)).tolist(), [*sigmas.tolist(), 0.0])
        self._dt = [after - before for before, after in zip(self.sigmas, self.sigmas[1:])]

    def step(self, velocity: Tensor, sample: Tensor) -> Tensor:
        dt = self._dt[self._index]
        self._index += 1
        return sample.float() + dt * velocity.float()


class FlowDPMSolver(Solver):
    def __init__(self, config: SchedulerConfig, steps: int):
        n = config.num_train_timesteps
        # The same numpy expressions as diffusers: it truncates timesteps to integers, so a
        # rounding difference here could move one by a whole unit.
        sigmas = np.flip(config.shifted(1.0 - np.linspace(1.0, 1 / n, steps + 1)))[:-1]
        timesteps = [float(t) for t in (sigmas * n).astype(np.int64)]
        super().__init__(timesteps, [*np.float32(sigmas).tolist(), 0.0])
        self._coefficients = self._plan(self.sigmas)
        self._previous_x0: Tensor | None = None

    @staticmethod
    def _plan(sigmas: list[float]) -> list[tuple[float, float, float, float]]:
        """Per step i: (σ_i, a, b, c) with x_{i+1} = a·x_i + b·x0_i + c·x0_{i−1}."""
        steps = len(sigmas) - 1
        lam = [math.log((1 - s) / s) for s in sigmas[:-1]]  # λ = log(α/σ); +∞ at the final σ = 0
        plan = []
        for i in range(steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            h = lam[i + 1] - lam[i] if i + 1 < steps else math.inf
            a, b, c = sigma_next / sigma, (1 - sigma_next) * -math.expm1(-h), 0.0  # DPM-Solver++(1)
            if 0 < i < steps - 1:
                # Midpoint rule on the x0 trend, D1 = (x0_i − x0_{i−1}) / r with r = h_{i−1} / h_i.
                r = (lam[i] - lam[i - 1]) / h
                b, c = b * (1 + 0.5 / r), -b * 0.5 / r
            plan.append((sigma, a, b, c))
        return plan

    def step(self, velocity: Tensor, sample: Tensor) -> Tensor:
        sigma, a, b, c = self._coefficients[self._index]
        self._index += 1
        sample = sample.float()
        x0 = sample - sigma * velocity.float()
        out = a * sample + b * x0
        if c:
            out = out + c * self._previous_x0
        self._previous_x0 = x0
        return out


def make_solver(name: str, config: SchedulerConfig, steps: int) -> Solver:
    """A fresh solver for one run: `name` is "dpm" (Flow-DPM-Solver) or "euler" (Flow-Euler)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise RequestError("steps", f"{steps!r} must be a positive integer")
    if name == "dpm":
        return FlowDPMSolver(config, steps)
    if name == "euler":
        return FlowEuler(config, steps)
    raise RequestError("solver", f"{name!r} is not one of {', '.join(SOLVERS)}")
