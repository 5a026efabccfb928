"""The step noise of stochastic samplers (Euler ancestral, LCM, SDE DPM-Solver++), the same on both sides of a
comparison with diffusers.

diffusers' EulerAncestralDiscreteScheduler, LCMScheduler and DPMSolverMultistepScheduler (SDE) draw the noise of each
step with torch's generator (`randn_tensor`); dbunet draws it from the seed's NoiseSource, after the starting noise
(drawn whether or not `latents=` is given), one draw per step in order (LCM's last step draws none in diffusers, and
adds none in either). With `noise_of_seed` in force diffusers' samplers take dbunet's draws instead, so the two
pipelines add the same noise and their images can be compared step for step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_solver
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_ancestral
import diffusers.schedulers.scheduling_lcm as lcm
import numpy as np
import torch

from dbunet.noise import NoiseSource

STOCHASTIC_MODULES = (euler_ancestral, lcm, dpm_solver)  # where diffusers' stochastic samplers take randn_tensor from


@contextmanager
def step_noise_from(draw: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Within the block diffusers' stochastic samplers take each step's noise from draw(size, **randn_tensor's
    keywords) instead of torch's generator."""
    with contextlib.ExitStack() as patches:
        for module in STOCHASTIC_MODULES:
            patches.enter_context(mock.patch.object(module, "randn_tensor", draw))
        yield


@contextmanager
def noise_of_seed(seed: int, shape: tuple[int, ...]) -> Iterator[list[np.ndarray]]:
    """Within the block diffusers' stochastic samplers draw what a dbunet run with `seed` draws (starting noise of
    `shape` first); yields the draws taken, for a test to count."""
    source, taken = NoiseSource(seed), []
    source.normal(shape)  # the starting noise: dbunet draws it even where latents are given

    def draw(size, generator=None, device=None, dtype=None, layout=None):
        taken.append(source.normal(tuple(size)))
        return torch.from_numpy(taken[-1]).to(dtype or torch.float32)

    with step_noise_from(draw):
        yield taken
