"""The training noise schedule that every sampler shares (betas -> alphas_cumprod)."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dbunet.bounds import check_choices, check_flags, check_numbers
from dbunet.errors import ConfigError
from dbunet.scalars import is_real, tuple_for_list

BetaSchedule = Literal["linear", "scaled_linear"]
TimestepSpacing = Literal["leading", "linspace", "trailing"]
PredictionType = Literal["epsilon", "v_prediction"]

# keys that fix what the UNet was trained with, at the one value dbunet honours: another refuses the folder, whatever
# its sampler (these, the fields below, prediction_type and beta_schedule are the whole contract with the UNet)
_TRAINING = {"trained_betas": None, "rescale_betas_zero_snr": False, "timestep_type": "discrete"}
# options of diffusers' DDIM, Euler, DPM-Solver (multistep), LCM and PNDM at the values dbunet's samplers follow (each
# class's own default, but PNDM's skip_prk_steps, which Stable Diffusion's folders set); another value is a variant
# dbunet lacks (exponential or beta sigmas, third-order or Heun DPM-Solver, the first DPM-Solver's SDE, thresholding,
# PNDM's Runge-Kutta warm-up), and runs sample without it, said at export (Karras sigmas are followed: fields below;
# SDE DPM-Solver++ is a sampler of its own: OPTION_SAMPLERS)
SAMPLER_OPTIONS = {"thresholding": False, "use_exponential_sigmas": False,
                   "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
                   "use_dynamic_shifting": False, "final_sigmas_type": "zero", "euler_at_final": False,
                   "lower_order_final": True, "algorithm_type": "dpmsolver++", "solver_order": 2,
                   "solver_type": "midpoint", "interpolation_type": "linear", "lambda_min_clipped": -math.inf,
                   "skip_prk_steps": True}
# (sampler, option, value) that dbunet follows with another sampler of its own, which a folder then defaults to
OPTION_SAMPLERS = {("dpm++", "algorithm_type", "sde-dpmsolver++"): "dpm++-sde"}
# keys that are bookkeeping, act only with one of the options above away from its value (the thresholding ratio,
# the flow shift), or belong to samplers dbunet replaces (DPM-Solver's learned variance needs a UNet with twice the
# channels, which the import refuses)
_IGNORED = {"_class_name", "_diffusers_version", "dynamic_thresholding_ratio", "sample_max_value",
            "variance_type", "flow_shift", "time_shift_type"}
# what every diffusers sampler (DDIM, PNDM, Euler, DPM-Solver) takes for a key its config leaves out
_DIFFUSERS_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
# classes whose betas default otherwise (the betas are the UNet's: read as the folder's own class reads them; a
# sampler's option left out takes the run's sampler's default, as from_config gives it: clip_sample None)
_CLASS_DEFAULTS = {"LCMScheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}}


MAX_TRAIN_TIMESTEPS = 10_000  # the tables are this long; diffusers' models use 1000


@dataclass(frozen=True)
class NoiseSchedule:
    """Field names and meanings follow diffusers' scheduler configs, so a config dict converts 1:1."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: BetaSchedule = "scaled_linear"
    # None: each sampler's own diffusers default (DDIM leading; Euler and DPM-Solver linspace), as
    # diffusers does when a folder's scheduler config (SD 1.5's, say) does not name one
    timestep_spacing: TimestepSpacing | None = "leading"
    steps_offset: int = 1
    # DDIM and PNDM: alpha_cumprod past the last step is 1 (else the first timestep's); None: the sampler's diffusers
    # default (DDIM's True, PNDM's False), as from_config gives a key the folder's file leaves out
    set_alpha_to_one: bool | None = False
    # DDIM and LCM: clamp the predicted x0 (useful in pixel space); None: the sampler's diffusers default (DDIM
    # clips, LCM does not), as from_config gives a key the folder's file leaves out (PNDM's, SD 1.5's class, has none)
    clip_sample: bool | None = False
    clip_sample_range: float = 1.0
    prediction_type: PredictionType = "epsilon"  # what the denoiser predicts: the noise, or v (SD 2.x)
    # Euler and DPM-Solver: sigmas spaced as Karras et al. (2022) space them, between the ends of the steps' sigmas
    # (Euler) or of the training schedule's (DPM-Solver), or between sigma_min and sigma_max where given; DDIM has
    # no such option in diffusers and ignores it here too
    use_karras_sigmas: bool = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    # LCM: the distillation's timestep schedule (every (T / original_inference_steps)-th timestep), from which a run
    # picks its steps, and the scale of the timestep in the consistency boundary condition (c_skip, c_out)
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0

    def __post_init__(self) -> None:
        check_flags("schedule", self)  # a folder's file is read as it is: "false" or "1" is named, not compared
        check_numbers("schedule", self)
        if not 2 <= self.num_train_timesteps <= MAX_TRAIN_TIMESTEPS:
            raise ConfigError(f"num_train_timesteps must lie in 2..{MAX_TRAIN_TIMESTEPS}, "
                              f"got {self.num_train_timesteps}")
        if not 0 <= self.steps_offset < self.num_train_timesteps:
            raise ConfigError(f"steps_offset must lie in 0..{self.num_train_timesteps - 1}, got {self.steps_offset}")
        if not 0 < self.clip_sample_range <= 1e4:
            raise ConfigError(f"clip_sample_range must lie in (0, 1e4], got {self.clip_sample_range}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        for key in ("sigma_min", "sigma_max"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1e4:
                raise ConfigError(f"{key} must lie in (0, 1e4], got {value}")
        if self.sigma_min is not None and self.sigma_max is not None and not self.sigma_min < self.sigma_max:
            raise ConfigError(f"need sigma_min < sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        if not 1 <= self.original_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"original_inference_steps must lie in 1..{self.num_train_timesteps} (the training "
                              f"timesteps), got {self.original_inference_steps}")
        if not 0 < self.timestep_scaling <= 1e4:
            raise ConfigError(f"timestep_scaling must lie in (0, 1e4], got {self.timestep_scaling}")
        check_choices("schedule", self)  # beta_schedule, prediction_type, timestep_spacing

    def alphas_cumprod(self) -> np.ndarray:
        """float32 cumulative product of (1 - beta), computed in float32 as diffusers does."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = _linspace_f32(self.beta_start, self.beta_end, n)
        else:  # "scaled_linear": linear in sqrt(beta), the Stable Diffusion schedule
            betas = _linspace_f32(self.beta_start**0.5, self.beta_end**0.5, n) ** 2
        # Accumulate in float64 and round each product to float32, as torch.cumprod does on the CPU.
        return np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)

    def to_diffusers(self) -> dict:
        """The same schedule as a diffusers scheduler config (used by tests and by SD-folder import)."""
        spacing = {} if self.timestep_spacing is None else {"timestep_spacing": self.timestep_spacing}
        # DDIM takes no sigma options: they are written only where they act, as a Karras folder's file has them
        karras = {} if not self.use_karras_sigmas else {
            "use_karras_sigmas": True, **{k: getattr(self, k) for k in ("sigma_min", "sigma_max") if getattr(self, k)}}
        # LCM's, likewise where they differ from its defaults
        lcm = {k: getattr(self, k) for k in ("original_inference_steps", "timestep_scaling")
               if getattr(self, k) != _DEFAULTS[k]}
        return spacing | karras | lcm | {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "steps_offset": self.steps_offset,
            "prediction_type": self.prediction_type,
            **({} if self.clip_sample is None else {"clip_sample": self.clip_sample}),
            "clip_sample_range": self.clip_sample_range,
            **({} if self.set_alpha_to_one is None else {"set_alpha_to_one": self.set_alpha_to_one}),
        }

    @classmethod
    def from_diffusers(cls, config: dict, source: str = "scheduler config",
                       class_name: object = None) -> NoiseSchedule:
        """The noise schedule of any diffusers scheduler config (DDIM, PNDM, Euler, DPM-Solver, UniPC, LCM...), as
        `class_name` (default: the config's own _class_name) would read it.

        Only the keys that fix what the UNet was trained with are read here; a value dbunet cannot honour (trained
        betas, zero-terminal-SNR rescaling, a cosine schedule, sample prediction, continuous timesteps) raises
        ConfigError naming it. The sampler's own options are `unfollowed_options`'s."""
        refused = [f"{k}={config[k]!r}" for k, v in _TRAINING.items() if k in config and config[k] != v]
        for key, kind in (("prediction_type", PredictionType), ("beta_schedule", BetaSchedule)):
            supported = typing.get_args(kind)
            if key in config and config[key] not in supported:
                refused.append(f"{key}={config[key]!r} ({' and '.join(supported)} are supported)")
        if refused:
            raise ConfigError(f"{source}: cannot honour {', '.join(refused)}")
        values = {k: v for k, v in config.items() if k in _FIELDS}
        # a key the folder leaves out takes diffusers' default, as from_config would give each sampler (the betas'
        # too: diffusers' samplers default to linear 1e-4..0.02, not Stable Diffusion's schedule; LCM's do not)
        named = class_name if class_name is not None else config.get("_class_name")
        for key, default in (_CLASS_DEFAULTS.get(named, {}) if isinstance(named, str) else {}).items():
            values.setdefault(key, default)
        for key, default in _DIFFUSERS_BETAS.items():
            values.setdefault(key, default)
        values.setdefault("timestep_spacing", None)
        values.setdefault("steps_offset", 0)
        values.setdefault("clip_sample", None)  # the run's sampler's default: DDIM clips, LCM does not
        values.setdefault("set_alpha_to_one", None)  # the run's sampler's default: DDIM's True, PNDM's False
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def unfollowed_options(self, config: dict, source: str = "scheduler config",
                           defaults: Mapping[str, object] | None = None) -> list[str]:
        """The options of a config of one of dbunet's samplers (this schedule's) that they do not follow,
        as "key=value". A key no table here knows counts at the value `defaults` gives it (the installed diffusers
        class's own: an option a release added since keeps the older behaviour at its default), and is refused
        where `defaults` lacks it too: it may change the image, and saying nothing would hide that."""
        defaults = defaults or {}
        known = _FIELDS | set(_TRAINING) | set(SAMPLER_OPTIONS) | _IGNORED | {"prediction_type", "beta_schedule"}
        unknown = sorted(k for k in set(config) - known if k not in defaults)
        if unknown:
            raise ConfigError(f"{source}: cannot honour unknown keys {unknown}")
        options = {**{k: v for k, v in defaults.items() if k not in known}, **SAMPLER_OPTIONS}
        return [f"{k}={config[k]!r}" for k, v in options.items()
                if k in config and tuple_for_list(config[k]) != tuple_for_list(v) and self._acts(k, config)]

    def _acts(self, key: str, config: dict) -> bool:
        """Whether an option away from its value changes diffusers' DPM-Solver here, and dbunet does not follow it
        with another of its samplers (SDE DPM-Solver++ is dpm++-sde). Its last step is first order
        wherever the final sigma is zero, and a second-order solver takes no third-order step to lower, so
        euler_at_final and lower_order_final act only past those; a lambda clip below every timestep's half log-SNR
        clips nothing."""
        if any((option, value) == (key, config[key]) for _, option, value in OPTION_SAMPLERS):
            return False  # followed: the run's sampler is another of dbunet's (folder_scheduler.FOLDER_SAMPLERS)
        final_zero = config.get("final_sigmas_type", "zero") == "zero"
        if key == "euler_at_final":
            return not final_zero
        if key == "lower_order_final":
            return not final_zero or config.get("solver_order", 2) != 2
        if key == "lambda_min_clipped" and is_real(config[key]):
            ac = self.alphas_cumprod().astype(np.float64)
            return config[key] > float(np.min(0.5 * (np.log(ac) - np.log1p(-ac))))
        return True


_FIELDS = frozenset(f.name for f in dataclasses.fields(NoiseSchedule))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NoiseSchedule)}


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """float32 linspace rounded exactly as torch.linspace rounds it.

    Sampler tables must be bit-identical to diffusers' (which builds them with torch): late
    steps divide by sqrt(alpha_cumprod) ~ 1e-2, so one ulp in a table grows past 1e-5 in x.
    torch evaluates the first half as start + step * i and the second as end - step * (n-1-i),
    each with one rounding (fused multiply-add); float64 then one cast reproduces that.
    """
    a, b = np.float64(np.float32(start)), np.float64(np.float32(end))
    if n == 1:
        return np.array([a], dtype=np.float32)
    step = np.float64(np.float32((np.float32(end) - np.float32(start)) / np.float32(n - 1)))
    i = np.arange(n, dtype=np.float64)
    return np.where(i < n // 2, a + step * i, b - step * (n - 1 - i)).astype(np.float32)
