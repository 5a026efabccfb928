"""numpy samplers shared by the PyTorch reference pipeline and the torch-free runtime."""

from __future__ import annotations

from dbunet.errors import InputError
from dbunet.schedulers.base import Scheduler
from dbunet.schedulers.ddim import DDIMScheduler
from dbunet.schedulers.dpm_solver import DPMSolverScheduler
from dbunet.schedulers.dpm_solver_sde import DPMSolverSDEScheduler
from dbunet.schedulers.euler import EulerScheduler
from dbunet.schedulers.euler_ancestral import EulerAncestralScheduler
from dbunet.schedulers.lcm import LCMScheduler
from dbunet.schedulers.pndm import PNDMScheduler
from dbunet.schedulers.schedule import NoiseSchedule

SCHEDULERS: dict[str, type[Scheduler]] = {
    "ddim": DDIMScheduler,
    "euler": EulerScheduler,
    "euler-a": EulerAncestralScheduler,
    "dpm++": DPMSolverScheduler,
    "dpm++-sde": DPMSolverSDEScheduler,
    "lcm": LCMScheduler,
    "pndm": PNDMScheduler,
}
KARRAS_SAMPLERS = tuple(name for name, sampler in SCHEDULERS.items() if sampler.takes_karras_sigmas)
KARRAS_SAMPLERS_IN_WORDS = f"{', '.join(KARRAS_SAMPLERS[:-1])} and {KARRAS_SAMPLERS[-1]}"  # for messages


def make_scheduler(name: str, schedule: NoiseSchedule | None = None) -> Scheduler:
    if not isinstance(name, str) or name not in SCHEDULERS:  # a list from JSON is not even hashable
        raise InputError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](schedule)


__all__ = [
    "KARRAS_SAMPLERS",
    "KARRAS_SAMPLERS_IN_WORDS",
    "SCHEDULERS",
    "DDIMScheduler",
    "DPMSolverSDEScheduler",
    "DPMSolverScheduler",
    "EulerAncestralScheduler",
    "EulerScheduler",
    "LCMScheduler",
    "NoiseSchedule",
    "PNDMScheduler",
    "Scheduler",
    "make_scheduler",
]
