"""DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models"), deterministic (eta = 0).

Matches diffusers' DDIMScheduler step for step."""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.base import Scheduler, spaced_timesteps
from dbunet.schedulers.table import Update


class DDIMScheduler(Scheduler):
    name = "ddim"

    def __init__(self, schedule=None) -> None:
        super().__init__(schedule)
        self.final_alpha_cumprod = (
            np.float32(1.0) if self.schedule.set_alpha_to_one else self.alphas_cumprod[0]
        )

    def _set_timesteps(self, n: int) -> None:
        self.timesteps = spaced_timesteps(self.schedule, n)

    def _alphas(self, index: int) -> tuple[np.float32, np.float32]:
        # 1. previous timestep: t - T/n (the spacing of the schedule)
        t = int(self.timesteps[index])
        prev_t = t - self.schedule.num_train_timesteps // self.num_inference_steps
        # 2. alphas (eq. 12 notation: alpha here is alpha_bar)
        return self.alphas_cumprod[t], self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

    def update(self, index: int) -> Update:
        """x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t), clipped; x_next = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
        self._require_timesteps(index)
        a_t, a_prev = (np.float64(a) for a in self._alphas(index))
        s = self.schedule
        return Update(c_in=1.0, d=1 / np.sqrt(a_t), e=-np.sqrt(1 - a_t) / np.sqrt(a_t),
                      clip=s.clip_sample_range if s.clip_sample else np.inf,
                      p=0.0, q=np.sqrt(1 - a_prev), u=np.sqrt(a_prev), v=0.0)

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        self._require_timesteps(index)
        s = self.schedule
        a_t, a_prev = self._alphas(index)
        b_t = 1 - a_t
        # 3. predicted x0 from the noise prediction (eq. 12, "predicted x0")
        x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
        # 4. optional clipping of x0
        if s.clip_sample:
            x0 = np.clip(x0, -s.clip_sample_range, s.clip_sample_range)
        # 5./6. eta = 0: sigma_t = 0, so the direction term is sqrt(1 - alpha_prev) * eps (eq. 12)
        direction = np.sqrt(1 - a_prev) * model_output
        # 7. x_{t-1}
        return (np.sqrt(a_prev) * x0 + direction).astype(sample.dtype)
