"""A diffusers folder's scheduler: the noise schedule its UNet was trained with, and the sampler its runs default to.

diffusers' pipeline loads the class model_index.json names with the settings of scheduler/scheduler_config.json.
The schedule is read from any class's file (what cannot be honoured is refused); the options of a class that is one
of dbunet's samplers are compared with what that sampler follows, and whatever differs is said at export.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dbunet.models.files import read_json_object, read_model_index
from dbunet.schedulers import SCHEDULERS
from dbunet.schedulers.schedule import OPTION_SAMPLERS, SAMPLER_OPTIONS, NoiseSchedule

log = logging.getLogger(__name__)


def read_schedule(root: Path, missing: NoiseSchedule | None = None) -> tuple[NoiseSchedule, dict]:
    """The folder's noise schedule (what its UNet was trained with) and its scheduler config as read. A setting
    that cannot be honoured is refused (NoiseSchedule.from_diffusers), and so is a key unknown to a scheduler that is
    one of dbunet's samplers (NoiseSchedule.unfollowed_options); a folder without a scheduler samples with `missing`
    (default: Stable Diffusion's training schedule) and says so, since the images depend on it."""
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        schedule = missing or NoiseSchedule()
        log.warning("%s has no scheduler/scheduler_config.json: sampling with a %s schedule, betas %g..%g over %d "
                    "timesteps; add the folder's scheduler if its UNet was trained with another", root,
                    schedule.beta_schedule, schedule.beta_start, schedule.beta_end, schedule.num_train_timesteps)
        return schedule, {}
    raw = read_json_object(path)
    named = scheduler_class(root, raw)
    schedule = NoiseSchedule.from_diffusers(raw, str(path), named)
    if _samples_as_dbunet(named):
        _unfollowed(schedule, raw, named, str(path))
    return schedule, raw


# diffusers' scheduler classes that are dbunet's samplers (the schedule itself is read from the same file)
FOLDER_SAMPLERS = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler",
                   "EulerAncestralDiscreteScheduler": "euler-a", "DPMSolverMultistepScheduler": "dpm++",
                   "LCMScheduler": "lcm", "PNDMScheduler": "pndm"}


def _variant(sampler: str, scheduler_config: dict) -> str:
    """The sampler of dbunet's that the file's options make of its class's (DPM-Solver with algorithm_type
    "sde-dpmsolver++" is dpm++-sde)."""
    return next((variant for (base, key, value), variant in OPTION_SAMPLERS.items()
                 if base == sampler and key in scheduler_config and scheduler_config[key] == value), sampler)


# what a run of a folder whose sampler is one of these takes where the caller says nothing, in place of the
# architecture's 30 steps at guidance 7.5 (SD) or 5 (SDXL): an LCM-distilled UNet (an LCM-LoRA fused in) draws in 2-8
# steps at guidance 1-2 and burns the image at SD's guidance; at 1 the prompt runs alone, one UNet call a step
SAMPLER_DEFAULTS = {"lcm": {"steps": 4, "guidance_scale": 1.0}}


def sampler_defaults(sampler: str, root: Path) -> dict:
    """The sampling defaults a folder's sampler asks for (SAMPLER_DEFAULTS), said at export; {} for the others."""
    chosen = SAMPLER_DEFAULTS.get(sampler, {})
    if chosen:
        log.warning("%s: its sampler is %s: runs default to %s (dbunet-run --steps and --guidance-scale choose "
                    "others)", root, sampler, ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in chosen.items()))
    return chosen


def scheduler_class(root: Path, scheduler_config: dict) -> object:
    """The scheduler class diffusers' pipeline loads: model_index.json's entry, since from_pretrained takes the class
    from there and only the settings from scheduler_config.json; else the config's own _class_name."""
    entry = read_model_index(root).get("scheduler")
    if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    return scheduler_config.get("_class_name")


def _samples_as_dbunet(named: object) -> bool:
    """Whether the class is one of dbunet's samplers (or none is named), so that every option of its config counts:
    another class's options (UniPC's corrector) describe a sampler no run uses."""
    return named is None or (isinstance(named, str) and named in FOLDER_SAMPLERS)


def _unfollowed(schedule: NoiseSchedule, config: dict, named: object, source: str = "scheduler config") -> list[str]:
    """NoiseSchedule.unfollowed_options, with the installed diffusers class's constructor defaults for keys a
    release added after dbunet's tables were written (DPM-Solver gained four in 0.32 and 0.35)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, named, None) if isinstance(named, str) else None
    defaults = {} if cls is None else {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                                       if p.default is not inspect.Parameter.empty}
    # an option the file leaves out is the class's default, which is not always the value dbunet follows (PNDM's
    # skip_prk_steps: its Runge-Kutta warm-up runs unless the file turns it off)
    left_out = {k: v for k, v in defaults.items() if k in SAMPLER_OPTIONS and k not in config}
    return schedule.unfollowed_options({**left_out, **config}, source, defaults)


def folder_sampler(schedule: NoiseSchedule, scheduler_config: dict, fallback: str, root: Path) -> str:
    """A folder's default sampler: its scheduler's (scheduler_class) where dbunet has it, else `fallback`, said at
    export (the folder's pipeline in diffusers samples with its own: UniPC, Heun; DPM-Solver with
    exponential sigmas is dbunet's DPM-Solver without them). A folder without a scheduler file was said already
    (read_schedule), and takes `fallback`. `schedule` and `scheduler_config` are what read_schedule returned."""
    if not scheduler_config:
        return fallback
    named = scheduler_class(root, scheduler_config)
    if _samples_as_dbunet(named):
        sampler = _variant(FOLDER_SAMPLERS.get(named, fallback), scheduler_config)
        unfollowed = _unfollowed(schedule, scheduler_config, named)
        if unfollowed:
            log.warning("%s: its scheduler, %s with %s, is dbunet's %s with options it lacks: runs sample without "
                        "them, so images differ from the folder's pipeline in diffusers", root, named or "no class",
                        ", ".join(unfollowed), sampler)
        return sampler
    log.warning("%s: its scheduler, %s, is not one of dbunet's samplers; runs default to %s (dbunet-run "
                "--scheduler chooses %s)", root, named, fallback, ", ".join(SCHEDULERS))
    return fallback
