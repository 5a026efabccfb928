"""Euler ancestral: Euler's step down to a lower sigma, then fresh noise back up to the next one.

Matches diffusers' EulerAncestralDiscreteScheduler ("Euler a"; SDXL-Turbo's): from sigma to the next sigma s_n it
integrates to s_down and adds noise of standard deviation s_up, where s_up^2 = s_n^2 (sigma^2 - s_n^2) / sigma^2
and s_down^2 = s_n^2 - s_up^2 (Karras et al. 2022, Algorithm 2's ancestral variant with eta 1). The step is Euler's
coefficient row with s_down for the next sigma; the noise is drawn by the run (dbunet.generation), so images
depend on the seed at every step, not only at the start. The last step, to sigma 0, adds none."""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.euler import EulerScheduler


class EulerAncestralScheduler(EulerScheduler):
    name = "euler-a"
    takes_karras_sigmas = False  # diffusers' class has no such option, and ignores it in a config

    def _down_up(self, index: int) -> tuple[float, float]:
        sigma, after = np.float64(self.sigmas[index]), np.float64(self.sigmas[index + 1])
        up = np.sqrt(after**2 * (sigma**2 - after**2) / sigma**2)
        return float(np.sqrt(after**2 - up**2)), float(up)

    def target_sigma(self, index: int) -> float:
        return self._down_up(index)[0]

    def noise_scale(self, index: int) -> float:  # a draw at every step, the last too (where s_up is 0)
        self._require_timesteps(index)
        return self._down_up(index)[1]
