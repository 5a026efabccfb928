"""PNDM's pseudo linear multistep sampler (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds", eq. 9 and 12), the PLMS that Stable Diffusion 1.x/2.x folders name (PNDMScheduler, skip_prk_steps).

Matches diffusers' PNDMScheduler with skip_prk_steps=True. n steps take n + 1 UNet calls (one for n = 1): the second
timestep is visited twice, the second visit a correction that averages the first two noise predictions and steps
again from the first call's sample. From the third call on the noise prediction is an Adams-Bashforth combination of
the last up to four (3e1 - e2)/2, (23e1 - 16e2 + 5e3)/12, (55e1 - 59e2 + 37e3 - 9e4)/24, and eq. 9 steps with it.

In rows (dbunet.schedulers.table) the step graph's x0 output is the call's raw model output (d = 0, e = 1): the
earlier outputs and the first sample enter the update through x0_prev, which the loop computes on the host between
calls (`history`, a PLMSHistory). So these runs go step by step, as the stochastic samplers' do."""

from __future__ import annotations

import numpy as np

from dbunet.schedulers.base import Scheduler, spaced_timesteps
from dbunet.schedulers.table import Update

_F32 = np.float32
# Adams-Bashforth weights of the current output and the earlier ones (newest first), by how many there are
_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class PNDMScheduler(Scheduler):
    name = "pndm"
    default_set_alpha_to_one = False  # diffusers' PNDMScheduler's, where the schedule leaves it to the sampler

    def __init__(self, schedule=None) -> None:
        super().__init__(schedule)
        self.final_alpha_cumprod = _F32(1.0) if self.set_alpha_to_one else self.alphas_cumprod[0]
        self._outputs: list[np.ndarray] = []  # step()'s: diffusers' ets
        self._first_sample: np.ndarray | None = None
        self._calls = 0

    def _set_timesteps(self, n: int) -> None:
        spaced = spaced_timesteps(self.schedule, n, self.spacing)  # high to low
        self.timesteps = spaced if n == 1 else np.concatenate([spaced[:2], spaced[1:]])  # the second one twice
        self._outputs, self._first_sample, self._calls = [], None, 0

    def _eq9(self, index: int, start: int) -> tuple[int, np.float32, np.float32]:
        """(call number since the run's start, a_t, a_prev) of eq. 9 at call `index`: from the call's timestep to
        one step of the spacing below, except the correction (call 1), which steps again from the timestep above."""
        ratio = self.schedule.num_train_timesteps // self.num_inference_steps
        call, t = index - start, int(self.timesteps[index])
        t, prev = (t + ratio, t) if call == 1 else (t, t - ratio)
        return call, self.alphas_cumprod[t], self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod

    def _weights(self, call: int) -> tuple[float, ...]:
        """The combination's weights, current output first: diffusers' ets hold every output but the correction's."""
        if call == 1:
            return (0.5, 0.5)  # the correction: the mean of the first two outputs
        return _WEIGHTS[min(call, 4) if call else 1]

    def coefficients(self, index: int, start: int = 0) -> tuple[int, float, float, tuple[float, ...]]:
        """(call, A, B, weights): eq. 9 as x_next = A S + B M, where S is the sample it steps from (the first call's at
        the correction) and M the weighted model outputs (a v model's converted to noise through S: v's terms are
        folded into A and B), float64 from float32 alphas."""
        call, a_t, a_prev = self._eq9(index, start)
        a_t, a_prev = np.float64(a_t), np.float64(a_prev)
        sample_coeff = np.sqrt(a_prev / a_t)
        denom = a_t * np.sqrt(1 - a_prev) + np.sqrt(a_t * (1 - a_t) * a_prev)
        coef = (a_prev - a_t) / denom
        a, b = sample_coeff, -coef
        if self.schedule.prediction_type == "v_prediction":  # eps = sqrt(a_t) v + sqrt(1 - a_t) S
            a, b = sample_coeff - coef * np.sqrt(1 - a_t), -coef * np.sqrt(a_t)
        return call, float(a), float(b), self._weights(call)

    def update(self, index: int, start: int = 0) -> Update:
        """x0 := the model output itself (d = 0, e = 1); x_next = A x + B w0 out + x0_prev, where x0_prev is what the
        loop computes from the earlier outputs (PLMSHistory); the correction steps from the first sample (p = 0)."""
        self._require_timesteps(index)
        call, a, b, weights = self.coefficients(index, start)
        return Update(c_in=1.0, d=0.0, e=1.0, clip=np.inf, p=0.0 if call == 1 else a, q=b * weights[0], u=0.0,
                      v=0.0 if call == 0 else 1.0)

    def history(self, start: int = 0) -> PLMSHistory:
        return PLMSHistory(self, start)

    def step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        """diffusers' step_plms in float32, its arithmetic in its order. Calls must come in order from the run's
        first (as a loop makes them); set_timesteps starts over."""
        self._require_timesteps(index)
        start = index - self._calls
        call, a_t, a_prev = self._eq9(index, start)
        model_output = model_output.astype(np.float32)
        if call != 1:
            self._outputs = [*self._outputs[-3:], model_output]
        e = self._outputs
        if call == 0:
            self._first_sample = sample
        elif call == 1:
            model_output = (model_output + e[-1]) / _F32(2)
            sample, self._first_sample = self._first_sample, None
        elif len(e) == 2:
            model_output = (_F32(3) * e[-1] - e[-2]) / _F32(2)
        elif len(e) == 3:
            model_output = (_F32(23) * e[-1] - _F32(16) * e[-2] + _F32(5) * e[-3]) / _F32(12)
        else:
            model_output = _F32(1 / 24) * (_F32(55) * e[-1] - _F32(59) * e[-2] + _F32(37) * e[-3] - _F32(9) * e[-4])
        self._calls += 1
        b_t, b_prev = _F32(1) - a_t, _F32(1) - a_prev
        if self.schedule.prediction_type == "v_prediction":
            model_output = _F32(np.sqrt(a_t)) * model_output + _F32(np.sqrt(b_t)) * sample
        sample_coeff = _F32(np.sqrt(a_prev / a_t))
        denom = a_t * _F32(np.sqrt(b_prev)) + _F32(np.sqrt(a_t * b_t * a_prev))
        return (sample_coeff * sample - (a_prev - a_t) * model_output / denom).astype(np.float32)


class PLMSHistory:
    """What a PLMS run keeps between calls: the earlier model outputs and the first sample. After each call it gives
    the next call's x0_prev input: the part of eq. 9 that does not come from the next call's own output."""

    def __init__(self, sampler: PNDMScheduler, start: int) -> None:
        self.sampler, self.start = sampler, start
        self.outputs: list[np.ndarray] = []  # newest last, as diffusers' ets
        self.first_sample: np.ndarray | None = None

    def __call__(self, index: int, x: np.ndarray, output: np.ndarray) -> np.ndarray | None:
        """Record call `index` (its input x, its raw model output) and return the x0_prev of call index + 1 (None
        after the last)."""
        call = index - self.start
        if call == 0:
            self.first_sample = x
        if call != 1:
            self.outputs = [*self.outputs[-3:], output]
        if index + 1 >= len(self.sampler.timesteps):
            return None
        after, a, b, weights = self.sampler.coefficients(index + 1, self.start)
        if after == 1:  # the correction: A times the first sample plus B/2 times the first output
            return (_F32(a) * self.first_sample + _F32(b * weights[1]) * self.outputs[-1]).astype(np.float32)
        earlier = zip(weights[1:], reversed(self.outputs), strict=False)  # newest first
        return sum((_F32(b * w) * out for w, out in earlier), np.zeros_like(output)).astype(np.float32)
