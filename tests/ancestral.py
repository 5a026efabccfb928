"""Euler ancestral's step noise, the same on both sides of a comparison with diffusers.

diffusers' EulerAncestralDiscreteScheduler draws the noise of each step with torch's generator (`randn_tensor`);
dbunet draws it from the seed's NoiseSource, after the starting noise (drawn whether or not `latents=` is given), one
draw per step in order. With `noise_of_seed` in force diffusers' scheduler takes dbunet's draws instead, so the two
pipelines add the same noise and their images can be compared step for step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_ancestral
import numpy as np
import torch

from dbunet.noise import NoiseSource


@contextmanager
def noise_of_seed(seed: int, shape: tuple[int, ...]) -> Iterator[list[np.ndarray]]:
    """Within the block diffusers' Euler ancestral steps draw what a dbunet run with `seed` draws (starting noise of
    `shape` first); yields the draws taken, for a test to count."""
    source, taken = NoiseSource(seed), []
    source.normal(shape)  # the starting noise: dbunet draws it even where latents are given

    def draw(size, generator=None, device=None, dtype=None, layout=None):
        taken.append(source.normal(tuple(size)))
        return torch.from_numpy(taken[-1]).to(dtype or torch.float32)

    with mock.patch.object(euler_ancestral, "randn_tensor", draw):
        yield taken
