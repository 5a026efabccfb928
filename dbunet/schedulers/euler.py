"""Euler sampler over Karras et al. (2022) sigmas (Algorithm 2 with s_churn = 0).

Matches diffusers' EulerDiscreteScheduler step for step: the sigmas of the spaced timesteps, or (use_karras_sigmas)
the paper's spacing between the same ends."""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.base import Scheduler, karras_sigmas, prediction_terms, spaced_timesteps, timesteps_of
from dbunet.schedulers.table import Update


class EulerScheduler(Scheduler):
    name = "euler"
    default_spacing = "linspace"
    takes_karras_sigmas = True

    def __init__(self, schedule=None) -> None:
        super().__init__(schedule)
        acp = self.alphas_cumprod
        self.train_sigmas = ((1 - acp) / acp) ** 0.5  # float32, sigma(t) = sqrt((1 - a_t) / a_t)
        self.sigmas = np.zeros(1, dtype=np.float32)

    def _set_timesteps(self, n: int) -> None:
        # Euler keeps float timesteps (diffusers: linspace is not rounded here).
        s = self.schedule
        if self.spacing == "linspace":
            ts = np.linspace(0, s.num_train_timesteps - 1, n, dtype=np.float32)[::-1].copy()
        else:
            ts = spaced_timesteps(s, n, self.spacing).astype(np.float32)
        sig = np.interp(ts, np.arange(len(self.train_sigmas)), self.train_sigmas)
        if s.use_karras_sigmas and self.takes_karras_sigmas:  # between the spaced steps' own ends; fractional ts
            sig = karras_sigmas(s, sig[0], sig[-1], n)
            ts = timesteps_of(sig, self.train_sigmas).astype(np.float32)
        self.sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        self.timesteps = ts

    @property
    def init_noise_sigma(self) -> float:
        smax = float(self.sigmas.max())
        if self.spacing in ("linspace", "trailing"):
            return smax
        return (smax**2 + 1) ** 0.5

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        self._require_timesteps(index)
        # EDM preconditioning c_in = 1 / sqrt(sigma^2 + 1)
        return (sample / ((self.sigmas[index] ** 2 + 1) ** 0.5)).astype(sample.dtype)

    def target_sigma(self, index: int) -> float:
        """The sigma step `index` integrates down to: the next one."""
        return float(self.sigmas[index + 1])

    def update(self, index: int, start: int = 0) -> Update:
        """x_in = x / sqrt(sigma^2 + 1); x0 = x - sigma eps; x_next = x + (sigma_next - sigma) eps."""
        self._require_timesteps(index)
        sigma, sigma_next = np.float64(self.sigmas[index]), np.float64(self.target_sigma(index))
        c_in = 1 / np.sqrt(sigma**2 + 1)  # the model sees c_in x = alpha x0 + sigma_vp eps, alpha = c_in
        d, e, f, g = prediction_terms(self.schedule.prediction_type, c_in, c_in, sigma * c_in)
        return Update(c_in=c_in, d=d, e=e, clip=np.inf, p=1.0 + (sigma_next - sigma) * f, q=(sigma_next - sigma) * g,
                      u=0.0, v=0.0)

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        self._require_timesteps(index)
        sample = sample.astype(np.float32)
        sigma = self.sigmas[index]
        # 1. denoised estimate: x0 = x - sigma * eps (v model: x0 = -sigma / sqrt(sigma^2 + 1) v + x / (sigma^2 + 1))
        if self.schedule.prediction_type == "v_prediction":
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            x0 = sample - sigma * model_output
        # 2. ODE derivative d = (x - x0) / sigma
        d = (sample - x0) / sigma
        # 3. Euler step to the next sigma
        return (sample + d * (np.float32(self.target_sigma(index)) - sigma)).astype(model_output.dtype)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return (original + noise * self.sigmas[index]).astype(original.dtype)
