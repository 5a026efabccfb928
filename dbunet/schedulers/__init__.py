"""numpy samplers shared by the PyTorch reference pipeline and the torch-free runtime."""

from __future__ import annotations

from dbunet.errors import InputError
from dbunet.schedulers.base import Scheduler
from dbunet.schedulers.ddim import DDIMScheduler
from dbunet.schedulers.dpm_solver import DPMSolverScheduler
from dbunet.schedulers.euler import EulerScheduler
from dbunet.schedulers.schedule import NoiseSchedule

SCHEDULERS: dict[str, type[Scheduler]] = {
    "ddim": DDIMScheduler,
    "euler": EulerScheduler,
    "dpm++": DPMSolverScheduler,
}


def make_scheduler(name: str, schedule: NoiseSchedule | None = None) -> Scheduler:
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise InputError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}") from None
    return cls(schedule)


__all__ = [
    "SCHEDULERS",
    "DDIMScheduler",
    "DPMSolverScheduler",
    "EulerScheduler",
    "NoiseSchedule",
    "Scheduler",
    "make_scheduler",
]
