"""Samplers as coefficient tables: one float32 row per step drives one generic update (docs/architecture.md 3.4).

DDIM, Euler, Euler ancestral, DPM-Solver++(2M) and LCM are all linear in the current sample x, the guided noise
prediction eps and the previous step's data prediction x0_prev (Euler ancestral and LCM then add fresh noise, which
the run draws and adds on the host: Scheduler.noise_scale):

    x_in   = c_in * x                                  model input scaling
    eps    = eps_u + g * (eps_c - eps_u)               classifier-free guidance
    x0     = clip(d * x + e * eps, -r, r)              data prediction (r = inf: no clipping)
    x_next = p * x + q * eps + u * x0 + v * x0_prev

A row holds the step's timestep, c_in, g, box scale, d, e, r, p, q, u, v. The host computes the whole
table before the loop; a step graph (or engine) takes its row as an input, so the loop only hands
rows over. `generic_update` is that update in numpy: the specification the graphs implement.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np

ROW = ("timestep", "c_in", "guidance", "box_scale", "d", "e", "clip", "p", "q", "u", "v")
COLUMN = {name: i for i, name in enumerate(ROW)}


@dataclass(frozen=True)
class Update:
    """The sampler's part of one row (the rest is the request's: guidance and box scale)."""

    c_in: float
    d: float
    e: float
    clip: float  # r; inf when the schedule does not clip x0
    p: float
    q: float
    u: float
    v: float


def make_row(timestep: float, update: Update, guidance: float = 1.0, box_scale: float = 0.0) -> np.ndarray:
    c_in, d, e, clip, p, q, u, v = astuple(update)
    return np.array([timestep, c_in, guidance, box_scale, d, e, clip, p, q, u, v], dtype=np.float32)


def generic_update(row: np.ndarray, x: np.ndarray, eps: np.ndarray,
                   x0_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x_next, x0) from one row, in float32: what every step graph computes after its UNet call."""
    c = {name: np.float32(row[i]) for name, i in COLUMN.items()}
    x0 = np.clip(c["d"] * x + c["e"] * eps, -c["clip"], c["clip"])
    x_next = c["p"] * x + c["q"] * eps + c["u"] * x0 + c["v"] * x0_prev
    return x_next.astype(np.float32), x0.astype(np.float32)
