"""Each numpy sampler against diffusers' sampler of the same name, over whole runs."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from dbunet.errors import InputError
from dbunet.schedulers import NoiseSchedule, make_scheduler

DIFFUSERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm++": DPMSolverMultistepScheduler}

SCHEDULES = {
    "sd": NoiseSchedule(),  # Stable Diffusion 1.x: scaled_linear, leading, offset 1
    "linspace": NoiseSchedule(timestep_spacing="linspace", steps_offset=0),
    "trailing-linear": NoiseSchedule(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", timestep_spacing="trailing", steps_offset=0
    ),
}


def _diffusers(name: str, schedule: NoiseSchedule):
    cfg = schedule.to_diffusers()
    if name == "ddim":
        cfg |= {"set_alpha_to_one": schedule.set_alpha_to_one, "clip_sample": schedule.clip_sample}
    return DIFFUSERS[name].from_config(cfg)


def _run_both(name, schedule, steps, model_output):
    """Run our sampler and diffusers' side by side; return (worst abs diff, max |x|, final x)."""
    ours, ref = make_scheduler(name, schedule), _diffusers(name, schedule)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 4, 8, 8)) * ours.init_noise_sigma).astype(np.float32)
    x_ref = torch.from_numpy(x.copy())
    worst, largest = 0.0, float(np.abs(x).max())
    for i, t in enumerate(ref.timesteps):
        scaled = ours.scale_model_input(x, i)
        scaled_ref = ref.scale_model_input(x_ref, t)
        worst = max(worst, float(np.abs(scaled - scaled_ref.numpy()).max()))
        eps = model_output(scaled, rng)  # fed identically to both samplers
        x = ours.step(eps, i, x)
        x_ref = ref.step(torch.from_numpy(eps), t, x_ref).prev_sample
        worst = max(worst, float(np.abs(x - x_ref.numpy()).max()))
        largest = max(largest, float(np.abs(x).max()))
    return worst, largest, x


def _denoiser_like(scaled, rng):
    # A random stand-in for a trained denoiser: its prediction tracks the (scaled) sample, as a
    # real noise prediction does, plus random error. Trajectories then stay in the data range.
    return (scaled + 0.3 * rng.standard_normal(scaled.shape)).astype(np.float32)


def _pure_noise(scaled, rng):
    return rng.standard_normal(scaled.shape).astype(np.float32)


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("name", list(DIFFUSERS))
@pytest.mark.parametrize("steps", [1, 4, 25, 50])
def test_matches_diffusers_over_full_run(name, schedule_name, steps):
    worst, largest, x = _run_both(name, SCHEDULES[schedule_name], steps, _denoiser_like)
    assert np.isfinite(x).all()
    assert worst <= 1e-5, f"{name}/{schedule_name}/{steps}: max abs diff {worst:.3g} at |x| <= {largest:.3g}"


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("name", list(DIFFUSERS))
def test_matches_diffusers_on_uncorrelated_outputs(name, schedule_name):
    # Uncorrelated outputs drive |x| to the hundreds, where one float32 step is already above
    # 1e-5; there the two implementations must agree to a few float32 ulps (relative bound).
    worst, largest, _ = _run_both(name, SCHEDULES[schedule_name], 25, _pure_noise)
    assert worst <= 2e-6 * max(1.0, largest), f"max abs diff {worst:.3g} at |x| <= {largest:.3g}"


@pytest.mark.parametrize("name", list(DIFFUSERS))
def test_add_noise_matches_diffusers(name):
    schedule = SCHEDULES["sd"]
    ours, ref = make_scheduler(name, schedule), _diffusers(name, schedule)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 3, 4, 4)).astype(np.float32), rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    for i in (0, 3, 9):
        got = ours.add_noise(x0, noise, i)
        want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), ref.timesteps[i : i + 1]).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5])
def test_bad_step_counts_fail_before_sampling(bad):
    with pytest.raises(InputError, match="steps"):
        make_scheduler("ddim").set_timesteps(bad)


def test_unknown_scheduler_lists_valid_names():
    with pytest.raises(InputError, match="ddim, euler, dpm"):
        make_scheduler("pndm")
