"""The training noise schedule that every sampler shares (betas -> alphas_cumprod)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dbunet.errors import ConfigError

BetaSchedule = Literal["linear", "scaled_linear"]
TimestepSpacing = Literal["leading", "linspace", "trailing"]


@dataclass(frozen=True)
class NoiseSchedule:
    """Field names and meanings follow diffusers' scheduler configs, so a config dict converts 1:1."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: BetaSchedule = "scaled_linear"
    timestep_spacing: TimestepSpacing = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False  # DDIM: alpha_cumprod used past the last step
    clip_sample: bool = False  # DDIM: clamp the predicted x0 (useful in pixel space)
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ConfigError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        if self.beta_schedule not in ("linear", "scaled_linear"):
            raise ConfigError(f"beta_schedule must be 'linear' or 'scaled_linear', got {self.beta_schedule!r}")
        if self.timestep_spacing not in ("leading", "linspace", "trailing"):
            raise ConfigError(
                f"timestep_spacing must be 'leading', 'linspace' or 'trailing', got {self.timestep_spacing!r}"
            )

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
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "timestep_spacing": self.timestep_spacing,
            "steps_offset": self.steps_offset,
            "prediction_type": "epsilon",
        }


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
