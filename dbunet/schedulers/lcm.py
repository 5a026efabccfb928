"""Latent Consistency Model sampling (Luo et al. 2023), for LCM-distilled UNets (an LCM-LoRA fused into SD 1.x or
SDXL): a few steps, each a jump to the consistency function's estimate of x0, re-noised to the next timestep.

Matches diffusers' LCMScheduler: the timesteps are evenly chosen from the distillation's schedule (every
(T / original_inference_steps)-th timestep, T - 1 first); step i predicts x0 as DDIM does (clipped where the schedule
clips), takes denoised = c_out x0 + c_skip x with the boundary-condition scalings of timestep t * timestep_scaling
(sigma_data 0.5), and returns sqrt(a_next) denoised plus fresh noise of standard deviation sqrt(1 - a_next); the last
step returns denoised itself. Both parts are a coefficient row; the noise is the run's to draw (dbunet.generation)."""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.base import Scheduler, prediction_terms
from dbunet.schedulers.table import Update

SIGMA_DATA = 0.5  # the consistency models' data standard deviation, diffusers' fixed value


class LCMScheduler(Scheduler):
    name = "lcm"

    def _set_timesteps(self, n: int) -> None:
        s = self.schedule
        original = s.original_inference_steps
        if n > original:  # a subset of the distillation's schedule: plan() turns this into "at most N steps"
            raise IndexError(f"lcm takes at most {original} steps")
        k = s.num_train_timesteps // original
        distilled = (np.arange(1, original + 1) * k - 1)[::-1]
        self.timesteps = distilled[np.floor(np.linspace(0, original, n, endpoint=False)).astype(np.int64)]

    def _what_limits_steps(self) -> str:
        return ("its steps are picked from the distillation's original_inference_steps, "
                f"{self.schedule.original_inference_steps}")

    def _terms(self, index: int) -> tuple[float, float, float, float, float]:
        """(a_t, a_next, c_skip, c_out, scale of denoised): a_next is the next step's alpha, or a_t at the last."""
        t = int(self.timesteps[index])
        last = index == self.num_inference_steps - 1
        a_t = np.float64(self.alphas_cumprod[t])
        a_next = a_t if last else np.float64(self.alphas_cumprod[int(self.timesteps[index + 1])])
        scaled = t * self.schedule.timestep_scaling
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / np.sqrt(scaled**2 + SIGMA_DATA**2)
        return a_t, a_next, c_skip, c_out, 1.0 if last else np.sqrt(a_next)

    def update(self, index: int, start: int = 0) -> Update:
        """x0 = DDIM's prediction, clipped; x_next = sqrt(a_next) (c_out x0 + c_skip x), the noise apart."""
        self._require_timesteps(index)
        a_t, _, c_skip, c_out, scale = self._terms(index)
        s = self.schedule
        d, e, _, _ = prediction_terms(s.prediction_type, 1.0, np.sqrt(a_t), np.sqrt(1 - a_t))
        return Update(c_in=1.0, d=d, e=e, clip=self.clip_range,
                      p=scale * c_skip, q=0.0, u=scale * c_out, v=0.0)

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        self._require_timesteps(index)
        s = self.schedule
        a_t, _, c_skip, c_out, scale = self._terms(index)
        if s.prediction_type == "v_prediction":
            x0 = np.sqrt(a_t) * sample - np.sqrt(1 - a_t) * model_output
        else:
            x0 = (sample - np.sqrt(1 - a_t) * model_output) / np.sqrt(a_t)
        x0 = np.clip(x0, -self.clip_range, self.clip_range)
        return (scale * (c_out * x0 + c_skip * sample)).astype(sample.dtype)

    def noise_scale(self, index: int) -> float | None:
        self._require_timesteps(index)
        if index == self.num_inference_steps - 1:  # the last step draws none
            return None
        return float(np.sqrt(1 - self._terms(index)[1]))
