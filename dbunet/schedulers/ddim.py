"""DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models"), deterministic (eta = 0).

Matches diffusers' DDIMScheduler step for step."""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.base import Scheduler, prediction_terms, spaced_timesteps
from dbunet.schedulers.table import Update


class DDIMScheduler(Scheduler):
    name = "ddim"
    default_clip_sample = True

    def __init__(self, schedule=None) -> None:
        super().__init__(schedule)
        self.final_alpha_cumprod = (
            np.float32(1.0) if self.set_alpha_to_one else self.alphas_cumprod[0]
        )

    def _set_timesteps(self, n: int) -> None:
        self.timesteps = spaced_timesteps(self.schedule, n, self.spacing)

    def _alphas(self, index: int) -> tuple[np.float32, np.float32]:
        # 1. previous timestep: t - T/n (the spacing of the schedule)
        t = int(self.timesteps[index])
        prev_t = t - self.schedule.num_train_timesteps // self.num_inference_steps
        # 2. alphas (eq. 12 notation: alpha here is alpha_bar)
        return self.alphas_cumprod[t], self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

    def update(self, index: int, start: int = 0) -> Update:
        """x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t), clipped; x_next = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps
        (a v model's output converted to x0 and eps first: prediction_terms)."""
        self._require_timesteps(index)
        a_t, a_prev = (np.float64(a) for a in self._alphas(index))
        s = self.schedule
        d, e, f, g = prediction_terms(s.prediction_type, 1.0, np.sqrt(a_t), np.sqrt(1 - a_t))
        return Update(c_in=1.0, d=d, e=e, clip=self.clip_range,
                      p=np.sqrt(1 - a_prev) * f, q=np.sqrt(1 - a_prev) * g, u=np.sqrt(a_prev), v=0.0)

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        self._require_timesteps(index)
        s = self.schedule
        a_t, a_prev = self._alphas(index)
        b_t = 1 - a_t
        # 3. predicted x0 and noise from the model output (eq. 12, "predicted x0"; v: Salimans & Ho 2022)
        if s.prediction_type == "v_prediction":
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
            model_output = np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample
        else:
            x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
        # 4. optional clipping of x0
        x0 = np.clip(x0, -self.clip_range, self.clip_range)
        # 5./6. eta = 0: sigma_t = 0, so the direction term is sqrt(1 - alpha_prev) * eps (eq. 12)
        direction = np.sqrt(1 - a_prev) * model_output
        # 7. x_{t-1}
        return (np.sqrt(a_prev) * x0 + direction).astype(sample.dtype)
