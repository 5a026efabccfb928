"""Each numpy sampler against diffusers' sampler of the same name, over whole runs."""

import json

import numpy as np
import pytest
import torch
from diffusers_samplers import CLASSES, NAMES, OPTIONS, diffusers_sampler, diffusers_sampler_of
from step_noise import step_noise_from

from dbunet.errors import ConfigError, InputError
from dbunet.schedulers import NoiseSchedule, make_scheduler
from dbunet.schedulers.table import COLUMN, ROW, generic_update

SCHEDULES = {
    "sd": NoiseSchedule(),  # Stable Diffusion 1.x: scaled_linear, leading, offset 1
    "linspace": NoiseSchedule(timestep_spacing="linspace", steps_offset=0),
    "trailing-linear": NoiseSchedule(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", timestep_spacing="trailing", steps_offset=0
    ),
    # the refiner's: DDIM clips x0 to [-1, 1]
    "clipped": NoiseSchedule(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True),
    # SD 2.x (768 px): a v-prediction model; and v with trailing spacing
    "v-sd2": NoiseSchedule(prediction_type="v_prediction"),
    "v-trailing": NoiseSchedule(prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=0),
    # a folder's config that names no spacing: DDIM leading, Euler and DPM-Solver linspace, as in diffusers
    "unnamed-spacing": NoiseSchedule(timestep_spacing=None),
    # Karras sigmas (DDIM has no such option and ignores it, in diffusers too): between the steps' ends, and
    # between a range the config gives, with v prediction and trailing spacing
    "karras": NoiseSchedule(use_karras_sigmas=True),
    "karras-range-v": NoiseSchedule(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0,
                                    prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=0),
}


def assert_same_timesteps(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal, within 2e-4 of a timestep for fractional ones: diffusers computes the training sigmas with torch's pow,
    which rounds 190 of SD's 1000 one float32 ulp away from a square root, and the timesteps Karras sigmas map back
    to through their logarithms (Euler keeps them fractional) move by up to 6.1e-5 (measured on an AVX-512 EPYC over
    1-59 steps, every spacing, both beta schedules). Twice that allows for torch's and numpy's vector kernels rounding
    another ulp apart on another CPU; the UNet's timestep embedding turns it into as many radians at most. Whole
    timesteps are 1 apart, so theirs must be equal."""
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4)


def fresh_noise(sampler, index, shape, rng) -> np.ndarray | None:
    """The standard normal draw a stochastic sampler adds (scaled) after step `index`; None where it draws none."""
    return None if sampler.noise_scale(index) is None else rng.standard_normal(shape).astype(np.float32)


def diffusers_step(ref, eps, t, x, noise: np.ndarray | None):
    """diffusers' step() with `noise` as the draw of a stochastic sampler (its randn_tensor replaced for the call)."""
    if noise is None:
        return ref.step(eps, t, x).prev_sample
    with step_noise_from(lambda *a, **k: torch.from_numpy(noise).to(x.dtype)):
        return ref.step(eps, t, x).prev_sample


def our_step(sampler, eps, i, x, noise: np.ndarray | None) -> np.ndarray:
    """Our numpy step() and, for a stochastic sampler, its scaled noise (added by the run's loop)."""
    x = sampler.step(eps, i, x)
    return x if noise is None else x + np.float32(sampler.noise_scale(i)) * noise


def _diffusers(name: str, schedule: NoiseSchedule):
    cfg = schedule.to_diffusers()
    if name == "ddim":
        cfg |= {"set_alpha_to_one": schedule.set_alpha_to_one, "clip_sample": schedule.clip_sample}
    return diffusers_sampler(name, cfg)


def _run_both(name, schedule, steps, model_output):
    """Run our sampler, diffusers' in float32 and diffusers' in float64 side by side, fed the same outputs.

    Our generic update driven by the sampler's coefficient table runs alongside too, from the same start.
    Returns (worst |ours - diffusers_f32|, worst |table - ours|, the float32 trajectory's own rounding error
    max |diffusers_f32 - diffusers_f64|, max |x|, final x). Each float32 step rounds a few ulps away
    from exact arithmetic, and the trajectory amplifies early roundings (DDIM on a linear schedule by
    sqrt(alpha_bar_end / alpha_bar_start), ~160x), so two correct float32 implementations differ by
    roughly their rounding error, which depends on the CPU's vector kernels: measured, not fixed.
    """
    ours, ref = make_scheduler(name, schedule), _diffusers(name, schedule)
    ref64 = _diffusers(name, schedule)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    ref64.set_timesteps(steps)
    assert_same_timesteps(ours.timesteps, ref.timesteps.numpy())
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 4, 8, 8)) * ours.init_noise_sigma).astype(np.float32)
    x_ref, x_64 = torch.from_numpy(x.copy()), torch.from_numpy(x.astype(np.float64))
    table, x_tab, x0_prev, history = ours.table(), x.copy(), np.zeros_like(x), ours.history()
    worst, worst_table, rounding, largest = 0.0, 0.0, 0.0, float(np.abs(x).max())
    for i, t in enumerate(ref.timesteps):
        scaled = ours.scale_model_input(x, i)
        scaled_ref = ref.scale_model_input(x_ref, t)
        ref64.scale_model_input(x_64, t)  # (keeps diffusers' step index in step)
        worst = max(worst, float(np.abs(scaled - scaled_ref.numpy()).max()))
        eps = model_output(scaled, rng)  # fed identically to all three
        noise = fresh_noise(ours, i, x.shape, rng)  # a stochastic sampler's, the same draw for all three
        # c_in * x rounds twice where scale_model_input divides once: 2.5 float32 ulps
        np.testing.assert_allclose(table[i, COLUMN["c_in"]] * x_tab, ours.scale_model_input(x_tab, i), rtol=3e-7)
        x_in = x_tab
        x_tab, x0_prev = generic_update(table[i], x_tab, eps, x0_prev)
        if history is not None:  # PNDM's earlier outputs, through x0_prev (as the run's loop does)
            x0_prev = history(i, x_in, x0_prev)
        if noise is not None:
            x_tab = x_tab + np.float32(ours.noise_scale(i)) * noise
        x = our_step(ours, eps, i, x, noise)
        worst_table = max(worst_table, float(np.abs(x_tab - x).max()))
        x_ref = diffusers_step(ref, torch.from_numpy(eps), t, x_ref, noise)
        x_64 = diffusers_step(ref64, torch.from_numpy(eps.astype(np.float64)), t, x_64, noise)
        worst = max(worst, float(np.abs(x - x_ref.numpy()).max()))
        rounding = max(rounding, float((x_ref.double() - x_64).abs().max()))
        largest = max(largest, float(np.abs(x).max()))
    return worst, worst_table, rounding, largest, x


def _denoiser_like(scaled, rng):
    # A random stand-in for a trained denoiser: its prediction tracks the (scaled) sample, as a
    # real noise prediction does, plus random error. Trajectories then stay in the data range.
    return (scaled + 0.3 * rng.standard_normal(scaled.shape)).astype(np.float32)


def _pure_noise(scaled, rng):
    return rng.standard_normal(scaled.shape).astype(np.float32)


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 4, 25, 50])
def test_matches_diffusers_over_full_run(name, schedule_name, steps):
    worst, _, rounding, largest, x = _run_both(name, SCHEDULES[schedule_name], steps, _denoiser_like)
    assert np.isfinite(x).all()
    # Measured (AMD EPYC, AVX-512, diffusers 0.42): worst <= 3.2x the float32 rounding error of diffusers' own
    # run over all 36 cases (dpm++/sd/50: its 2nd-order term divides by r; largest absolute: ddim/trailing-linear/50,
    # 9.4e-5 at |x| ~ 4, 1.3x its rounding); exact agreement where both round alike. A flat 1e-5 held on a CPU
    # whose kernels round as numpy does, not here. A wrong coefficient is off by >= 1e-3 relative.
    bound = max(1e-5, 8 * rounding)
    assert worst <= bound, (f"{name}/{schedule_name}/{steps}: max abs diff {worst:.3g} > {bound:.3g} "
                            f"at |x| <= {largest:.3g}")


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 4, 25, 50])
def test_coefficient_table_reproduces_step(name, schedule_name, steps):
    """The generic update (what the step graphs compute) with the sampler's rows equals its numpy step()
    over whole runs, within the same float32 bar as step() against diffusers: measured <= 2.0x the
    rounding error of diffusers' float32 run (largest: ddim/trailing-linear/50, 9.6e-5 at |x| ~ 4)."""
    _, worst_table, rounding, largest, _ = _run_both(name, SCHEDULES[schedule_name], steps, _denoiser_like)
    bound = max(1e-5, 8 * rounding)
    assert worst_table <= bound, f"max abs diff {worst_table:.3g} > {bound:.3g} at |x| <= {largest:.3g}"


def test_table_rows_carry_timestep_guidance_and_box_schedule():
    sampler = make_scheduler("dpm++")
    sampler.set_timesteps(6)
    table = sampler.table(guidance_scale=7.5, box_steps=2)
    assert table.shape == (6, len(ROW)) and table.dtype == np.float32
    np.testing.assert_array_equal(table[:, COLUMN["timestep"]], sampler.timesteps.astype(np.float32))
    np.testing.assert_array_equal(table[:, COLUMN["guidance"]], 7.5)
    np.testing.assert_array_equal(table[:, COLUMN["box_scale"]], [1, 1, 0, 0, 0, 0])
    # DPM-Solver++(2M): first order on the first and the last step (no x0_prev term), second order between
    assert table[0, COLUMN["v"]] == 0 and table[-1, COLUMN["v"]] == 0 and (table[1:-1, COLUMN["v"]] != 0).all()
    # a run that starts part-way (SDXL's refiner, as diffusers' set_begin_index) has no x0 before its first step:
    # first order there, the same rows after it
    late, whole = sampler.table(start=3), sampler.table()[3:]
    assert late[0, COLUMN["v"]] == 0 and whole[0, COLUMN["v"]] != 0
    np.testing.assert_array_equal(late[1:], whole[1:])
    for name in ("ddim", "euler"):  # one-step samplers: the same rows
        sampler = make_scheduler(name)
        sampler.set_timesteps(6)
        np.testing.assert_array_equal(sampler.table(start=4), sampler.table()[4:])


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("name", NAMES)
def test_matches_diffusers_on_uncorrelated_outputs(name, schedule_name):
    # Uncorrelated outputs drive |x| to the hundreds, where one float32 step is already above
    # 1e-5; there the two implementations must agree to a few float32 ulps (relative bound).
    worst, _, rounding, largest, _ = _run_both(name, SCHEDULES[schedule_name], 25, _pure_noise)
    bound = max(2e-6 * max(1.0, largest), 8 * rounding)  # measured: <= 0.42 of this bound
    assert worst <= bound, f"max abs diff {worst:.3g} > {bound:.3g} at |x| <= {largest:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_matches_diffusers(name):
    schedule = SCHEDULES["sd"]
    ours, ref = make_scheduler(name, schedule), _diffusers(name, schedule)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 2, 3, 4, 4)).astype(np.float32)
    for i in (0, 3, 9):
        got = ours.add_noise(x0, noise, i)
        want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), ref.timesteps[i : i + 1]).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_lcm_takes_at_most_its_distillation_s_steps():
    """LCM picks its steps from the distillation's schedule (original_inference_steps, 50 by default); diffusers
    raises a ValueError past it, the plan says how many it takes."""
    with pytest.raises(InputError, match=r"lcm takes at most 50 steps with this schedule \(its steps are picked from "
                                         r"the distillation's original_inference_steps, 50\), got 51"):
        make_scheduler("lcm").plan(51)
    assert len(make_scheduler("lcm", NoiseSchedule(original_inference_steps=8)).plan(8)) == 8
    with pytest.raises(InputError, match="lcm takes at most 8 steps"):
        make_scheduler("lcm", NoiseSchedule(original_inference_steps=8)).plan(9)


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5])
def test_bad_step_counts_fail_before_sampling(bad):
    with pytest.raises(InputError, match="steps"):
        make_scheduler("ddim").set_timesteps(bad)


def test_unknown_scheduler_lists_valid_names():
    with pytest.raises(InputError, match="ddim, euler, euler-a, dpm"):
        make_scheduler("unipc")


def test_a_diffusers_scheduler_config_is_honoured_or_refused_by_name():
    sd15_pndm = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                 "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                 "clip_sample": False}
    # SD 1.5's own file names no timestep_spacing: each sampler then takes its diffusers default
    assert NoiseSchedule.from_diffusers(sd15_pndm) == NoiseSchedule(timestep_spacing=None)
    v = NoiseSchedule.from_diffusers({**sd15_pndm, "prediction_type": "v_prediction", "timestep_spacing": "trailing"})
    assert (v.prediction_type, v.timestep_spacing) == ("v_prediction", "trailing")
    # what the UNet was trained with: refused, whatever the sampler
    for bad, word in [({"prediction_type": "sample"}, "prediction_type"),
                      ({"trained_betas": [0.1] * 1000}, "trained_betas"),
                      ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
                      ({"timestep_type": "continuous"}, "timestep_type"),
                      ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule")]:
        with pytest.raises(ConfigError, match=f"cannot honour .*{word}"):
            NoiseSchedule.from_diffusers({**sd15_pndm, **bad})
    # a sampler's own options: listed where dbunet's sampler lacks them, a key no table knows refused
    dpm = {**sd15_pndm, "_class_name": "DPMSolverMultistepScheduler"}
    schedule = NoiseSchedule.from_diffusers(dpm)
    assert schedule.unfollowed_options(dpm) == []
    assert schedule.unfollowed_options({**dpm, "use_exponential_sigmas": True, "solver_order": 3,
                                        "thresholding": True}) \
        == ["thresholding=True", "use_exponential_sigmas=True", "solver_order=3"]
    # SDE DPM-Solver++ is followed by a sampler of its own (dpm++-sde); the first DPM-Solver's SDE form is not
    assert schedule.unfollowed_options({**dpm, "algorithm_type": "sde-dpmsolver++"}) == []
    assert schedule.unfollowed_options({**dpm, "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}) \
        == ["final_sigmas_type='sigma_min'", "algorithm_type='sde-dpmsolver'"]
    # Karras sigmas and their range are followed (read into the schedule); a range alone changes nothing
    euler = {**sd15_pndm, "_class_name": "EulerDiscreteScheduler", "sigma_min": 0.0292, "sigma_max": 14.6146}
    assert schedule.unfollowed_options(euler) == []
    assert schedule.unfollowed_options({**euler, "use_karras_sigmas": True}) == []
    karras = NoiseSchedule.from_diffusers({**euler, "use_karras_sigmas": True})
    assert (karras.use_karras_sigmas, karras.sigma_min, karras.sigma_max) == (True, 0.0292, 14.6146)
    for bad, said in [({"sigma_min": 0.0}, "sigma_min must lie in"),
                      ({"sigma_max": 0.01}, "need sigma_min < sigma_max"),
                      ({"use_karras_sigmas": "true"}, "use_karras_sigmas must be true or false")]:
        with pytest.raises(ConfigError, match=said):
            NoiseSchedule.from_diffusers({**euler, "use_karras_sigmas": True, **bad})
    with pytest.raises(ConfigError, match=r"cannot honour unknown keys \['mystery'\]"):
        schedule.unfollowed_options({**dpm, "mystery": 1})


@pytest.mark.parametrize(("name", "options"), [(name, {}) for name in NAMES] + [
    # DPM-Solver's last step is first order whenever its final sigma is zero: these two change nothing then
    ("dpm++", {"lower_order_final": False, "euler_at_final": True}),
    ("dpm++", {"lambda_min_clipped": -5.1}),  # below every timestep's: clips nothing
    ("euler", {"sigma_min": 0.0292, "sigma_max": 14.6146}),  # Karras sigmas' range, unused without them
    # Karras sigmas, the most common community setting (DPM++ 2M Karras), and with a range of their own
    ("dpm++", {"use_karras_sigmas": True}),
    ("dpm++-sde", {"use_karras_sigmas": True}),  # "DPM++ 2M SDE Karras"
    ("euler", {"use_karras_sigmas": True}),
    ("euler", {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 12.0}),
    # a range past both ends of the training sigmas (0.029..14.6): the timesteps held at 0 and 999
    ("euler", {"use_karras_sigmas": True, "sigma_min": 0.01, "sigma_max": 20.0}),
])
def test_a_config_the_installed_diffusers_saves_for_each_sampler_is_followed_whole(name, options):
    """Every key diffusers writes for DDIM, Euler and DPM-Solver is known, at a value dbunet's sampler follows, and
    that sampler walks the same steps. Before, DPM-Solver's file was refused for keys it did not know: diffusers
    0.32 added use_flow_sigmas and flow_shift, 0.35 (the floor) use_dynamic_shifting and time_shift_type, so every
    DPM-Solver folder saved by a supported diffusers was. A release that adds another fails here, where the tables
    alone are read (an export reads it at the installed class's default meanwhile: tests/models/test_sd_folder.py).
    Options that change nothing in diffusers are not said either."""
    ref = diffusers_sampler_of(name, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                               **options)
    config = json.loads(ref.to_json_string())  # what save_pretrained writes, -Infinity included
    schedule = NoiseSchedule.from_diffusers(config)
    assert schedule.unfollowed_options(config) == []
    ours = make_scheduler(name, schedule)
    ours.set_timesteps(7)
    ref.set_timesteps(7)
    assert_same_timesteps(ours.timesteps, ref.timesteps.numpy())
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    for i, t in enumerate(ref.timesteps):  # DPM-Solver's second order from the second step, first at the last
        eps = np.random.default_rng(i + 1).standard_normal(x.shape).astype(np.float32)  # the UNet's output
        np.testing.assert_allclose(ours.scale_model_input(x, i), ref.scale_model_input(torch.from_numpy(x), t).numpy(),
                                   rtol=1e-6)
        noise = fresh_noise(ours, i, x.shape, np.random.default_rng(100 + i))
        want = diffusers_step(ref, torch.from_numpy(eps), t, torch.from_numpy(x), noise).numpy()
        np.testing.assert_allclose(our_step(ours, eps, i, x, noise), want, rtol=1e-5, atol=1e-5)  # float32 steps
        x = want


def test_dpm_solver_s_lambda_clip_counts_only_where_it_clips():
    # below every timestep's half log-SNR (SD's schedule reaches -2.68) the clip changes nothing
    config = {"_class_name": "DPMSolverMultistepScheduler", "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear"}
    schedule = NoiseSchedule.from_diffusers(config)
    assert schedule.unfollowed_options({**config, "lambda_min_clipped": -5.1}) == []
    assert schedule.unfollowed_options({**config, "lambda_min_clipped": -2.0}) == ["lambda_min_clipped=-2.0"]


@pytest.mark.parametrize("name", NAMES)
def test_a_scheduler_config_that_leaves_keys_out_gets_diffusers_defaults(name):
    # a file naming only its class: diffusers' samplers take linear betas 1e-4..0.02 over 1000 timesteps (not
    # Stable Diffusion's scaled_linear), offset 0, their own spacing; before, the betas were SD's. Its options take
    # the class's defaults: DDIM's set_alpha_to_one is True, PNDM's False (the last step shows it)
    config = {"_class_name": CLASSES[name].__name__, **OPTIONS.get(name, {})}  # a variant's option, if any
    ours, ref = make_scheduler(name, NoiseSchedule.from_diffusers(config)), diffusers_sampler(name, config)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_allclose(NoiseSchedule.from_diffusers(config).alphas_cumprod(), ref.alphas_cumprod.numpy(),
                               rtol=1e-6)  # float32 tables on both sides
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    for i, t in enumerate(ref.timesteps):
        eps = (0.9 * x + 0.3 * np.random.default_rng(1 + i).standard_normal(x.shape)).astype(np.float32)
        noise = fresh_noise(ours, i, x.shape, np.random.default_rng(100 + i))
        want = diffusers_step(ref, torch.from_numpy(eps), t, ref.scale_model_input(torch.from_numpy(x), t), noise)
        np.testing.assert_allclose(our_step(ours, eps, i, ours.scale_model_input(x, i), noise), want.numpy(),
                                   rtol=1e-5, atol=1e-5)  # float32 steps
        x = want.numpy()


@pytest.mark.parametrize("name", ["lms", ["ddim"], None])
def test_a_scheduler_name_not_in_the_table_is_one_input_error(name):
    # a JSON list reached the table's lookup as an unhashable key: a TypeError before
    with pytest.raises(InputError, match="unknown scheduler .*; valid: ddim, euler, euler-a, dpm\\+\\+"):
        make_scheduler(name)
