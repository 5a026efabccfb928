"""What every sampler provides. Fixed tables are built at construction; only the timestep list changes."""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np

from dbunet.errors import InputError
from dbunet.schedulers.schedule import NoiseSchedule
from dbunet.schedulers.table import COLUMN, Update, make_row


class Scheduler(abc.ABC):
    """A numpy sampler. Steps are addressed by index into `timesteps`, not by timestep value,
    so a loop that starts part-way (img2img, the refiner) is plain slicing."""

    name: str = ""
    default_spacing: str = "leading"  # diffusers' default for this sampler (used when the schedule names none)
    takes_karras_sigmas: bool = False  # follows the schedule's use_karras_sigmas (diffusers' class has the option)
    default_clip_sample: bool = False  # diffusers' default where the schedule leaves clip_sample to the sampler
    default_set_alpha_to_one: bool = True  # likewise set_alpha_to_one (DDIM's and LCM's; PNDM's is False)

    def __init__(self, schedule: NoiseSchedule | None = None) -> None:
        self.schedule = schedule or NoiseSchedule()
        self.alphas_cumprod = self.schedule.alphas_cumprod()
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.num_inference_steps = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        if not isinstance(num_inference_steps, int | np.integer) or num_inference_steps < 1:
            raise InputError(f"steps must be an integer >= 1, got {num_inference_steps!r}")
        if num_inference_steps > self.schedule.num_train_timesteps:
            raise InputError(
                f"steps must be <= {self.schedule.num_train_timesteps} (the training timesteps), "
                f"got {num_inference_steps}"
            )
        self.num_inference_steps = int(num_inference_steps)
        self._set_timesteps(self.num_inference_steps)

    @abc.abstractmethod
    def _set_timesteps(self, n: int) -> None: ...

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the starting noise."""
        return 1.0

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        """What the denoiser sees at step `index` (identity for variance-preserving samplers)."""
        return sample

    @abc.abstractmethod
    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        """x_t -> x_{t-1} given the (guided) noise prediction at step `index`; a stochastic sampler's noise
        (noise_scale times a fresh standard normal draw) is the loop's to add."""

    def noise_scale(self, index: int) -> float | None:
        """The standard deviation of the fresh noise a stochastic sampler adds after step `index`; None where it draws
        none (every step of the others), so that the draws of a run come in the order diffusers' samplers take them."""
        self._require_timesteps(index)
        return None

    def history(self, start: int = 0) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray | None] | None:
        """For a sampler whose next step reads more than the last step's x0 (PNDM's earlier model outputs), what
        the loop calls after each step of a run that began at `start`, with the step's index, its input x and its x0
        output, for the next step's x0_prev input (None after the last); None for the others, whose x0_prev is the
        step's own x0. Such runs go step by step: a whole-loop graph has no place for it."""
        return None

    @abc.abstractmethod
    def update(self, index: int, start: int = 0) -> Update:
        """Step `index` as coefficients of the generic update (dbunet.schedulers.table), for a run that began at
        index `start`, as `step()` runs it (multistep samplers use the previous step's x0 after the first step)."""

    def plan(self, steps: int, guidance_scale: float = 1.0, box_steps: int = 0, start: int = 0) -> np.ndarray:
        """set_timesteps(steps) and its table, refused when the schedule cannot take that many steps: an index past
        the training schedule, or coefficients that are not finite (repeated timesteps), which would make NaN
        latents. The refusal names the most steps this sampler takes with this schedule."""
        rows = self._usable(steps, guidance_scale, box_steps, start)
        if rows is None:
            most = next((n for n in range(steps - 1, 0, -1) if self._usable(n, 1.0, 0, 0) is not None), 0)
            raise InputError(f"{self.name} takes at most {most} steps with this schedule "
                             f"({self._what_limits_steps()}), got {steps}")
        return rows

    def _what_limits_steps(self) -> str:
        """The schedule's settings that bound the step count, for the refusal's message."""
        s = self.schedule
        return f"{s.num_train_timesteps} training timesteps, {self.spacing} spacing, steps_offset {s.steps_offset}"

    def _usable(self, steps: int, guidance_scale: float, box_steps: int, start: int) -> np.ndarray | None:
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # judged below, not warned about
                self.set_timesteps(steps)
                rows = self.table(guidance_scale, box_steps, start)
        except IndexError:
            return None
        finite = np.delete(rows, COLUMN["clip"], axis=1)  # clip is inf where the schedule does not clip
        return rows if np.isfinite(finite).all() else None

    def table(self, guidance_scale: float = 1.0, box_steps: int = 0, start: int = 0) -> np.ndarray:
        """One float32 row per step (UNet call) from `start` on: [calls - start, len(ROW)]. Boxes steer the first
        `box_steps` steps (box scale 1), then step aside (0)."""
        if not self.num_inference_steps:
            raise InputError(f"{self.name}: call set_timesteps before table()")
        return np.stack([
            make_row(float(self.timesteps[i]), self.update(i, start), guidance_scale, 1.0 if i < box_steps else 0.0)
            for i in range(start, len(self.timesteps))
        ])

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """Forward-noise a clean sample to step `index` (q(x_t | x_0))."""
        acp = self.alphas_cumprod[int(self.timesteps[index])]
        return (np.sqrt(acp) * original + np.sqrt(1 - acp) * noise).astype(original.dtype)

    @property
    def spacing(self) -> str:
        return self.schedule.timestep_spacing or self.default_spacing

    @property
    def set_alpha_to_one(self) -> bool:
        """Whether alpha_cumprod past the last step is 1 (else the first training timestep's), with this schedule."""
        s = self.schedule.set_alpha_to_one
        return self.default_set_alpha_to_one if s is None else s

    @property
    def clip_range(self) -> float:
        """The range the predicted x0 is clamped to: inf where this sampler does not clip it with this schedule."""
        s = self.schedule
        clips = self.default_clip_sample if s.clip_sample is None else s.clip_sample
        return s.clip_sample_range if clips else np.inf

    def _require_timesteps(self, index: int) -> None:
        if not 0 <= index < len(self.timesteps):
            raise InputError(
                f"{self.name}: step index {index} outside 0..{len(self.timesteps) - 1}; call set_timesteps first"
            )


def prediction_terms(prediction_type: str, k: float, alpha: float, sigma: float) -> tuple[float, float, float, float]:
    """(d, e, f, g) with x0 = d x + e m and eps = f x + g m, for a model output m.

    The model saw k x, a variance-preserving sample alpha x0 + sigma eps. An epsilon model predicts
    eps; a v model (Salimans & Ho 2022; SD 2.x) predicts v = alpha eps - sigma x0, so
    x0 = alpha (k x) - sigma v and eps = sigma (k x) + alpha v. Both are linear in (x, m), which is
    what keeps every sampler a row of coefficients."""
    if prediction_type == "epsilon":
        return k / alpha, -sigma / alpha, 0.0, 1.0
    if prediction_type == "v_prediction":
        return alpha * k, -sigma, sigma * k, alpha
    raise InputError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")


def spaced_timesteps(schedule: NoiseSchedule, n: int, spacing: str) -> np.ndarray:
    """Timestep selection of diffusers' DDIM / Euler ("Common Diffusion Noise Schedules...", Table 2)."""
    T = schedule.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = T // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.int64) + schedule.steps_offset
    ratio = T / n  # trailing
    return np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1


KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5: the paper's value, and diffusers'


def karras_sigmas(schedule: NoiseSchedule, highest: float, lowest: float, n: int) -> np.ndarray:
    """n sigmas from high to low, evenly spaced in sigma^(1/rho) (float64): between the schedule's sigma_max and
    sigma_min where it gives them, else between `highest` and `lowest`."""
    top = schedule.sigma_max if schedule.sigma_max is not None else float(highest)
    bottom = schedule.sigma_min if schedule.sigma_min is not None else float(lowest)
    ramp = np.linspace(0, 1, n)
    return (top ** (1 / KARRAS_RHO) + ramp * (bottom ** (1 / KARRAS_RHO) - top ** (1 / KARRAS_RHO))) ** KARRAS_RHO


def timesteps_of(sigmas: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timestep of each sigma: linear in log sigma between the two training timesteps whose
    sigmas enclose it, held at the ends (float64). The arithmetic is diffusers' `_sigma_to_t`'s: the log of the
    float32 training sigmas in float32, their differences in float32, the rest in float64, so that the timesteps the
    UNet sees are the same numbers."""
    log_train = np.log(train_sigmas)  # increasing with the timestep
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    low = np.clip(np.searchsorted(log_train, log_sigma, side="right") - 1, 0, len(log_train) - 2)
    w = np.clip((log_train[low] - log_sigma) / (log_train[low] - log_train[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)
