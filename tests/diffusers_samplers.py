"""dbunet's samplers as diffusers builds them: a scheduler class, and the options that make one of its variants
(SDE DPM-Solver++ is DPMSolverMultistepScheduler with algorithm_type="sde-dpmsolver++"). The comparisons with
diffusers take their sampler from here, so that a sampler added to dbunet is added to them in one place."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

from dbunet.schedulers import SCHEDULERS

CLASSES = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler-a": EulerAncestralDiscreteScheduler,
           "dpm++": DPMSolverMultistepScheduler, "dpm++-sde": DPMSolverMultistepScheduler, "lcm": LCMScheduler,
           "pndm": PNDMScheduler}
# PNDM is dbunet's as Stable Diffusion's folders configure it: PLMS steps alone (its Runge-Kutta warm-up skipped)
OPTIONS = {"dpm++-sde": {"algorithm_type": "sde-dpmsolver++"}, "pndm": {"skip_prk_steps": True}}
NAMES = list(CLASSES)
assert set(NAMES) == set(SCHEDULERS), "every sampler of dbunet's is compared with diffusers'"


def diffusers_sampler(name: str, config: dict, **options):
    """diffusers' `name` sampler from a scheduler config, with `options` over it (from_config's keywords)."""
    return CLASSES[name].from_config(config, **{**OPTIONS.get(name, {}), **options})


def diffusers_sampler_of(name: str, **kwargs):
    """diffusers' `name` sampler from constructor keywords (each class's defaults for the rest)."""
    return CLASSES[name](**{**OPTIONS.get(name, {}), **kwargs})
