"""Seeded noise, generated on the host so every backend sees the same numbers.

One numpy Philox generator per image, seeded with the user's seed; draws happen in a fixed order:
first the initial latent z_T [B,C,h,w], then the refiner's forward noise [B,3,H,W]. Standard
normal float32 (numpy's ziggurat), so a seed means the same image on every machine and backend.
"""

from __future__ import annotations

import numpy as np

from dbunet.errors import InputError


class NoiseSource:
    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
            raise InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.Philox(self.seed))

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=np.float32)
