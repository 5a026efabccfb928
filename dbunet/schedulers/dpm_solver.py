"""DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), midpoint form, data prediction.

Matches diffusers' DPMSolverMultistepScheduler (solver_order=2, lower_order_final, final sigma 0), with its
timestep spacings or (use_karras_sigmas) Karras et al.'s sigmas between the training schedule's ends.
The coefficients are float32, with log/exp/sqrt rounded from float64: the second-order term divides
by the step in lambda, so a one-ulp difference in a logarithm shows up at 1e-5 in the sample.
"""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.base import Scheduler, karras_sigmas, prediction_terms, timesteps_of
from dbunet.schedulers.table import Update

_F32 = np.float32


def log_f32(x: np.float32) -> np.float32:
    with np.errstate(divide="ignore"):  # log(0) = -inf at the final sigma, intended
        return _F32(np.log(np.float64(x)))


def exp_f32(x: np.float32) -> np.float32:
    return _F32(np.exp(np.float64(x)))


class DPMSolverScheduler(Scheduler):
    name = "dpm++"
    default_spacing = "linspace"
    takes_karras_sigmas = True

    def __init__(self, schedule=None) -> None:
        super().__init__(schedule)
        acp = self.alphas_cumprod
        self.train_sigmas = ((1 - acp) / acp) ** 0.5
        self.sigmas = np.zeros(1, dtype=np.float32)
        self._previous_x0: np.ndarray | None = None

    def _set_timesteps(self, n: int) -> None:
        s = self.schedule
        T = s.num_train_timesteps
        # DPM-Solver spaces n + 1 points and drops the last (diffusers' convention for this sampler).
        if self.spacing == "linspace":
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif self.spacing == "leading":
            ratio = T // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + s.steps_offset
        else:
            ts = np.arange(T, 0, -T / n).round().astype(np.int64) - 1
        sig = np.interp(ts, np.arange(len(self.train_sigmas)), self.train_sigmas)
        if s.use_karras_sigmas:  # between the training schedule's ends, whatever the spacing; whole timesteps
            sig = karras_sigmas(s, self.train_sigmas[-1], self.train_sigmas[0], n)
            ts = timesteps_of(sig, self.train_sigmas).round().astype(np.int64)
        self.sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        self.timesteps = ts
        self._previous_x0 = None

    def _alpha_sigma_lambda(self, index: int) -> tuple[np.float32, np.float32, np.float32]:
        """VP coefficients of sigma_i: alpha = 1/sqrt(sigma^2+1), sigma_vp = sigma*alpha,
        lambda = log(alpha/sigma_vp)."""
        sigma = self.sigmas[index]
        alpha = _F32(1) / _F32(np.sqrt(np.float64(sigma * sigma + _F32(1))))
        sigma_vp = sigma * alpha
        return alpha, sigma_vp, log_f32(alpha) - log_f32(sigma_vp)

    def _coefficients(self, index: int) -> tuple[np.float32, np.float32]:
        """(p, w) of the first-order step x_next = p x + w x0 from sigma_index to the next sigma, float32 as diffusers
        computes them: p = sigma_t / sigma_s, w = alpha_t (1 - e^-h), h the step in lambda (at the final sigma 0,
        lambda_t = inf and e^-h = 0: x_next = x0)."""
        _, sigma_s, lambda_s = self._alpha_sigma_lambda(index)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        return sigma_t / sigma_s, -(alpha_t * (exp_f32(-(lambda_t - lambda_s)) - _F32(1)))

    def _second_order(self, index: int, start: int) -> bool:
        """Second order after the run's first step, first order on the last (lower_order_final), as diffusers."""
        return start < index < self.num_inference_steps - 1

    def _ratio(self, index: int) -> np.float32:
        """r = h_prev / h, the previous step in lambda over this one (the midpoint form divides D1 by it)."""
        lambda_p = self._alpha_sigma_lambda(index - 1)[2]
        lambda_s = self._alpha_sigma_lambda(index)[2]
        return (lambda_s - lambda_p) / (self._alpha_sigma_lambda(index + 1)[2] - lambda_s)

    def update(self, index: int, start: int = 0) -> Update:
        """Steps 1-4 of `step` as coefficients: x0 = (x - sigma_s eps) / alpha_s;
        x_next = p x + w x0 + (w / 2r)(x0 - x0_prev)."""
        self._require_timesteps(index)
        alpha_s, sigma_s, _ = self._alpha_sigma_lambda(index)
        p, w = (np.float64(c) for c in self._coefficients(index))
        u, v = w, 0.0
        if self._second_order(index, start):
            r = np.float64(self._ratio(index))
            u, v = w + 0.5 * w / r, -0.5 * w / r
        d, e, _, _ = prediction_terms(self.schedule.prediction_type, 1.0, np.float64(alpha_s), np.float64(sigma_s))
        return Update(c_in=1.0, d=d, e=e, clip=np.inf, p=p, q=0.0, u=u, v=v)

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        self._require_timesteps(index)
        sample = sample.astype(np.float32)
        # 1. data prediction x0 = (x - sigma_s * eps) / alpha_s
        alpha_s, sigma_s, _ = self._alpha_sigma_lambda(index)
        if self.schedule.prediction_type == "v_prediction":  # x0 = alpha_s x - sigma_s v
            x0 = alpha_s * sample - sigma_s * model_output
        else:
            x0 = (sample - sigma_s * model_output) / alpha_s
        # 2. first order (DPM-Solver++1 = DDIM): x_t = p x + w x0
        p, w = self._coefficients(index)
        prev = p * sample + w * x0
        # 3. second order (2M, midpoint): add (1/2) w D1, D1 = (x0 - x0_prev) / r, r = h_prev / h; skipped on the
        #    first step and on the last (lower_order_final).
        if self._previous_x0 is not None and index != self.num_inference_steps - 1:
            d1 = (_F32(1) / self._ratio(index)) * (x0 - self._previous_x0)
            prev = prev + (_F32(0.5) * w) * d1
        self._previous_x0 = x0
        return prev.astype(model_output.dtype)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        alpha, sigma, _ = self._alpha_sigma_lambda(index)
        return (alpha * original + sigma * noise).astype(original.dtype)
