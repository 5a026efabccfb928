"""DPM-Solver++(2M) SDE (Lu et al. 2022, arXiv 2211.01095, section 4 and Appendix B.4): the stochastic form of
DPM-Solver++, "DPM++ 2M SDE" in most front ends.

Matches diffusers' DPMSolverMultistepScheduler with algorithm_type="sde-dpmsolver++" (solver_order=2, midpoint,
lower_order_final, final sigma 0). Over a step h in lambda it decays the sample by e^-h on top of the ODE form's
sigma_t / sigma_s, weights the data prediction by alpha_t (1 - e^-2h) instead of alpha_t (1 - e^-h), and adds fresh
noise of standard deviation sigma_t sqrt(1 - e^-2h), drawn by the run (dbunet.generation) at every step, the last
too (where sigma_t = 0 adds none), as diffusers draws it. The timesteps, Karras sigmas and the second-order
correction are DPM-Solver++'s."""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.dpm_solver import DPMSolverScheduler, exp_f32

_F32 = np.float32


class DPMSolverSDEScheduler(DPMSolverScheduler):
    name = "dpm++-sde"

    def _decay(self, index: int) -> tuple[np.float32, np.float32, np.float32]:
        """(e^-h, e^-2h, sigma_t) of the step from sigma_index to the next sigma, float32 as diffusers has them."""
        lambda_s = self._alpha_sigma_lambda(index)[2]
        _, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        h = lambda_t - lambda_s
        return exp_f32(-h), exp_f32(_F32(-2.0) * h), sigma_t

    def _coefficients(self, index: int) -> tuple[np.float32, np.float32]:
        """p = (sigma_t / sigma_s) e^-h and w = alpha_t (1 - e^-2h)."""
        _, sigma_s, _ = self._alpha_sigma_lambda(index)
        alpha_t = self._alpha_sigma_lambda(index + 1)[0]
        decay, decay2, sigma_t = self._decay(index)
        return sigma_t / sigma_s * decay, alpha_t * (_F32(1) - decay2)

    def noise_scale(self, index: int) -> float:  # a draw at every step, the last too (where sigma_t is 0)
        self._require_timesteps(index)
        _, decay2, sigma_t = self._decay(index)
        return float(sigma_t * _F32(np.sqrt(np.float64(_F32(1) - decay2))))
