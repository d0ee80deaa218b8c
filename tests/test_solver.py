"""Flow-DPM-Solver and Flow-Euler against diffusers' schedulers: schedules and whole trajectories."""

import json
import math
import re

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from engine.errors import ConfigError, RequestError
from engine.solver import SchedulerConfig, make_solver
from resources import ROOT
from tests.numerics import rel_err

TOLERANCE = 1e-5  # relative error per step, fp32
STEPS = (1, 2, 3, 14, 20)
SHIFTS = (1.0, 3.0, 6.0)
PUBLISHED = ROOT.parent / "engine" / "published_configs"


def published(name: str) -> dict:
    return json.loads((PUBLISHED / name).read_text())


def diffusers_dpm(shift: float) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler.from_config({**published("scheduler_sana.json"), "flow_shift": shift})


def fake_velocity(x: torch.Tensor, timestep: float) -> torch.Tensor:
    """Smooth, nonlinear in x and t, so every coefficient of a step shows in the result."""
    t = timestep / 1000
    return torch.tanh(1.5 * x) * (0.5 + t) + 0.3 * torch.sin(3 * x + 2 * t) - 0.2 * x * t


def trajectories(solver, scheduler, x: torch.Tensor):
    """Yield (ours, diffusers) after each step, both driven by the same fake model."""
    ours, ref = x.clone(), x.clone()
    for ours_t, ref_t in zip(solver.timesteps, scheduler.timesteps):
        ours = solver.step(fake_velocity(ours, ours_t), ours)
        ref = scheduler.step(fake_velocity(ref, float(ref_t)), ref_t, ref).prev_sample
        yield ours, ref


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_dpm_schedule_equals_diffusers(steps, shift):
    scheduler = diffusers_dpm(shift)
    scheduler.set_timesteps(steps)
    solver = make_solver("dpm", SchedulerConfig(flow_shift=shift), steps)
    assert len(solver) == steps
    assert solver.timesteps == scheduler.timesteps.tolist()
    assert solver.sigmas == scheduler.sigmas.tolist()
    assert all(type(v) is float for v in solver.timesteps + solver.sigmas)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_euler_schedule_equals_diffusers(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    solver = make_solver("euler", SchedulerConfig(flow_shift=shift), steps)
    assert len(solver) == steps
    assert solver.timesteps == pytest.approx(scheduler.timesteps.tolist(), rel=1e-6)
    assert solver.sigmas == pytest.approx(scheduler.sigmas.tolist(), rel=1e-6, abs=0)
    assert all(type(v) is float for v in solver.timesteps + solver.sigmas)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_dpm_trajectory_matches_diffusers_at_every_step(steps, shift):
    scheduler = diffusers_dpm(shift)
    scheduler.set_timesteps(steps)
    solver = make_solver("dpm", SchedulerConfig(flow_shift=shift), steps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
    for i, (ours, ref) in enumerate(trajectories(solver, scheduler, x)):
        assert rel_err(ours, ref) < TOLERANCE, f"step {i}"


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_euler_trajectory_matches_diffusers_at_every_step(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    solver = make_solver("euler", SchedulerConfig(flow_shift=shift), steps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
    for i, (ours, ref) in enumerate(trajectories(solver, scheduler, x)):
        assert rel_err(ours, ref) < TOLERANCE, f"step {i}"


@pytest.mark.parametrize("name", ["dpm", "euler"])
def test_step_computes_in_float32_from_half_inputs(name):
    solver = make_solver(name, SchedulerConfig(flow_shift=3.0), 3)
    x = torch.randn(1, 4, 4, 4)
    for t in solver.timesteps:
        x = solver.step(fake_velocity(x, t).half(), x.half())
        assert x.dtype == torch.float32


def test_published_configs_give_their_flow_shift():
    assert SchedulerConfig.from_file(PUBLISHED / "scheduler_sana.json").flow_shift == 3.0
    assert SchedulerConfig.from_file(PUBLISHED / "scheduler_sana_4k.json").flow_shift == 6.0
    config = SchedulerConfig.from_dict(published("scheduler_sana_4k.json"))
    assert config == SchedulerConfig(flow_shift=6.0, num_train_timesteps=1000)


def test_configs_written_by_installed_diffusers_are_accepted():
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    euler = FlowMatchEulerDiscreteScheduler(shift=6.0)
    assert SchedulerConfig.from_dict(json.loads(dpm.to_json_string())).flow_shift == 3.0
    assert SchedulerConfig.from_dict(json.loads(euler.to_json_string())).flow_shift == 6.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"solver_order": 3}, "solver_order is 3; only 2 is supported"),
        ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type is 'sde-dpmsolver++'; only 'dpmsolver++' is supported"),
        ({"use_flow_sigmas": False}, "use_flow_sigmas is False; only True is supported"),
        ({"prediction_type": "epsilon"}, "prediction_type is 'epsilon'; only 'flow_prediction' is supported"),
        ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type is 'sigma_min'; only 'zero' is supported"),
        ({"solver_type": "heun"}, "solver_type is 'heun'; only 'midpoint' is supported"),
        ({"use_karras_sigmas": True}, "use_karras_sigmas is True; only False is supported"),
        ({"flow_shift": -1.0}, "flow_shift is -1.0; it must be a positive number"),
        ({"flavour": "x"}, "unknown key 'flavour' for DPMSolverMultistepScheduler; known keys: "),
        ({"_class_name": "EulerDiscreteScheduler"}, "_class_name 'EulerDiscreteScheduler' is not one of "),
    ],
)
def test_unsupported_dpm_config_value_is_a_config_error_saying_what_is_allowed(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SchedulerConfig.from_dict({**published("scheduler_sana.json"), **change})


@pytest.mark.parametrize("missing", ["flow_shift", "use_flow_sigmas", "prediction_type", "_class_name"])
def test_missing_required_dpm_key_is_a_config_error_naming_it(missing):
    data = published("scheduler_sana.json")
    del data[missing]
    with pytest.raises(ConfigError, match=missing):
        SchedulerConfig.from_dict(data)


@pytest.mark.parametrize("change", [{"use_dynamic_shifting": True}, {"stochastic_sampling": True}, {"shift": math.nan}])
def test_unsupported_euler_config_value_is_a_config_error(change):
    data = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0, **change}
    with pytest.raises(ConfigError, match=next(iter(change))):
        SchedulerConfig.from_dict(data)


def test_bad_solver_name_or_step_count_is_a_request_error():
    config = SchedulerConfig(flow_shift=3.0)
    with pytest.raises(RequestError, match="solver"):
        make_solver("heun", config, 20)
    with pytest.raises(RequestError, match="steps"):
        make_solver("dpm", config, 0)
