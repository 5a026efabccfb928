"""What one generation asks for, validated before any work starts. Torch-free (the runtime shares it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from dbunet.boxes import Box, as_boxes
from dbunet.config import ModelConfig, side_beyond
from dbunet.errors import ConfigError, InputError
from dbunet.scalars import is_real, is_whole, python_scalar
from dbunet.schedulers import KARRAS_SAMPLERS, KARRAS_SAMPLERS_IN_WORDS, SCHEDULERS
from dbunet.schedulers.schedule import NoiseSchedule
from dbunet.text import not_utf8

MAX_PROMPT_CHARS = 10_000  # far beyond any text encoder's window; tokenizing more only costs time
MAX_STEPS = 1000  # a sampler cannot take more steps than the training schedule has timesteps
MAX_GUIDANCE = 100.0  # far past any useful guidance; larger scales overflow float32 in the guided update
MAX_SIDE_UNSET = 0
MAX_MICRO = 8192  # SDXL's size numbers are pixels: no image is larger
SEED_RANGE = "0..2^63-1"  # what every seed (a run's, a training run's) may be: a non-negative int64


def valid_seed(seed) -> bool:
    return is_whole(seed) and 0 <= seed < 2**63


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    # None: not given. SDXL folders then use zeros (diffusers' force_zeros_for_empty_prompt applies to None only);
    # every other model encodes the empty text, as it does an explicit ""
    negative_prompt: str | None = None
    boxes: tuple[Box, ...] = field(default_factory=tuple)
    height: int = 512
    width: int = 512
    steps: int = 30
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    # Euler's and DPM-Solver++'s sigmas: Karras et al.'s (True), the spaced timesteps' (False), or None: the model's
    # scheduler file says (diffusers' users pass use_karras_sigmas to from_config)
    karras_sigmas: bool | None = None
    seed: int = 0
    box_fraction: float = 0.3  # boxes steer the first fraction of the steps, then step aside
    refiner_steps: int = 10  # refiner UNet calls; 0 skips the refiner
    refiner_strength: float = 0.3  # how far X1 is forward-noised before refining (SDEdit strength)
    # SDXL's refiner: the fraction of the noise schedule the base denoises before the refiner takes the latents
    # over (diffusers' denoising_end for the base, denoising_start for the refiner)
    high_noise_frac: float = 0.8
    # SDXL's micro-conditioning, (height, width) and (top, left) in pixels: None is the image's own size
    original_size: tuple[int, int] | None = None
    crop_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None

    def validate(self, max_boxes: int, downscale: int, max_height: int = MAX_SIDE_UNSET,
                 max_width: int = MAX_SIDE_UNSET, max_steps: int = MAX_STEPS) -> GenerationRequest:
        """Refuse, before any work starts, what would fail later or run the machine out of memory."""
        def bad(msg: str) -> InputError:
            return InputError(msg)

        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str | None):
            raise bad("prompt and negative prompt must be strings")
        for name, text in (("prompt", self.prompt), ("negative prompt", self.negative_text)):
            if not_utf8(text):
                raise bad(f"{name}: {not_utf8(text)}")
        if max(len(self.prompt), len(self.negative_text)) > MAX_PROMPT_CHARS:
            raise bad(f"prompt of {max(len(self.prompt), len(self.negative_text))} characters; at most "
                      f"{MAX_PROMPT_CHARS} (the text encoder reads its first tokens only)")
        if not (is_whole(self.steps) and 1 <= self.steps <= max_steps):
            raise bad(f"steps must be an integer in 1..{max_steps}, got {self.steps!r}")
        refiner_steps = self.refiner_steps
        if not (is_whole(refiner_steps) and 0 <= refiner_steps <= max_steps):
            raise bad(f"refiner steps must be an integer in 0..{max_steps}, got {self.refiner_steps!r}")
        if not valid_seed(self.seed):
            raise bad(f"seed must be an integer in {SEED_RANGE}, got {self.seed!r}")
        if not is_real(self.guidance_scale) or not 0 <= self.guidance_scale <= MAX_GUIDANCE:
            raise bad(f"guidance scale must be a number in 0..{MAX_GUIDANCE:g}, got {self.guidance_scale!r}")
        if not (is_real(self.refiner_strength) and 0.0 <= self.refiner_strength <= 1.0):
            raise bad(f"refiner strength must lie in [0, 1], got {self.refiner_strength!r}")
        if not (is_real(self.high_noise_frac) and 0.0 < self.high_noise_frac < 1.0):
            raise bad(f"high noise fraction must lie strictly between 0 and 1, got {self.high_noise_frac!r}")
        if not (is_real(self.box_fraction) and 0.0 <= self.box_fraction <= 1.0):
            raise bad(f"box fraction must lie in [0, 1], got {self.box_fraction!r}")
        if not isinstance(self.scheduler, str) or self.scheduler not in SCHEDULERS:
            raise bad(f"unknown scheduler {self.scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        if not isinstance(self.karras_sigmas, bool | None):
            raise bad(f"karras sigmas must be true or false, got {self.karras_sigmas!r}")
        if self.karras_sigmas and self.scheduler not in KARRAS_SAMPLERS:
            raise bad(f"the {self.scheduler} sampler has no Karras sigmas (diffusers' has none either); they are "
                      f"{KARRAS_SAMPLERS_IN_WORDS}'s")
        for name, v, most in (("height", self.height, max_height), ("width", self.width, max_width)):
            if not is_whole(v):  # 64.0 too: "a multiple of 8, got 64.0" would read as a contradiction
                raise bad(f"{name} must be an integer, got {v!r}")
            if v < downscale or v % downscale:
                raise bad(f"{name} must be a positive multiple of {downscale}, got {v!r}")
            if side_beyond(name, v, most):
                raise bad(side_beyond(name, v, most))
        for name, pair, least, order in (("original size", self.original_size, 1, "height, width"),
                                         ("crop top-left", self.crop_top_left, 0, "top, left"),
                                         ("target size", self.target_size, 1, "height, width")):
            if pair is not None and not (isinstance(pair, tuple) and len(pair) == 2 and all(
                    is_whole(v) and least <= v <= MAX_MICRO for v in pair)):
                raise bad(f"{name} must be two integers in {least}..{MAX_MICRO} ({order}), got {pair!r}")
        if len(self.boxes) > max_boxes:
            raise bad(f"{len(self.boxes)} boxes given, the model supports at most {max_boxes}")
        if not all(isinstance(b, Box) for b in self.boxes):
            raise bad("boxes must be dbunet.boxes.Box objects (Box.parse('x0,y0,x1,y1:phrase') makes one)")
        return self

    @property
    def negative_text(self) -> str:
        """The negative prompt as encoded: the empty text where none was given."""
        return "" if self.negative_prompt is None else self.negative_prompt

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs above a scale of 1 only, as diffusers' pipelines decide: at 1 or below a
        step takes the prompt's prediction alone (SDXL-Turbo's guidance 0 is the prompt, not the unconditional)."""
        return self.guidance_scale > 1.0

    @property
    def size_numbers(self) -> list[int]:
        """SDXL's time_ids: original size, crop top-left, target size (the image's size where not given)."""
        size = (self.height, self.width)
        return [*(self.original_size or size), *self.crop_top_left, *(self.target_size or size)]

    @property
    def box_steps(self) -> int:
        """How many leading denoising steps run with box_scale = 1."""
        return math.ceil(self.box_fraction * self.steps) if self.boxes else 0

    def schedule(self, schedule: NoiseSchedule) -> NoiseSchedule:
        """The model's noise schedule with this request's choice of sigmas, where it makes one."""
        if self.karras_sigmas is None or self.karras_sigmas == schedule.use_karras_sigmas:
            return schedule
        return dataclasses.replace(schedule, use_karras_sigmas=self.karras_sigmas)

    def refiner_schedule(self, most: int = MAX_STEPS) -> tuple[int, int]:
        """(schedule length, first index): `refiner_steps` calls covering the last `strength` of it, refused
        when that length is beyond `most` (the refiner's training timesteps)."""
        if self.refiner_steps == 0 or self.refiner_strength == 0:
            return 0, 0
        if self.refiner_steps > most * self.refiner_strength:  # steps / strength > most, without overflow
            raise InputError(f"refiner strength {self.refiner_strength:g} with {self.refiner_steps} refiner steps "
                             f"needs a schedule of {self.refiner_steps} / {self.refiner_strength:g} steps; the "
                             f"refiner's has {most}: use a strength of at least {self.refiner_steps / most:.3g} or "
                             "fewer refiner steps")
        total = min(most, max(self.refiner_steps, round(self.refiner_steps / self.refiner_strength)))
        return total, total - self.refiner_steps


def plan_schedules(config: ModelConfig, req: GenerationRequest):
    """Both samplers with their coefficient tables, built now (numpy, milliseconds): a request a schedule cannot
    take is refused before any model runs. Returns (sampler, rows, refiner sampler or None, refiner rows, start)."""
    from dbunet.schedulers import DDIMScheduler, make_scheduler

    sampler = make_scheduler(req.scheduler, req.schedule(config.schedule))
    rows = sampler.plan(req.steps, req.guidance_scale, req.box_steps)
    if config.has_latent_refiner:
        return _hand_over(config, req, sampler, rows)
    if not config.has_refiner:
        return sampler, rows, None, None, 0
    total, start = req.refiner_schedule(config.refiner.schedule.num_train_timesteps)
    if not total:
        return sampler, rows, None, None, 0
    refiner = DDIMScheduler(config.refiner.schedule)
    try:
        return sampler, rows, refiner, refiner.plan(total, start=start), start
    except InputError as exc:
        raise InputError(f"the refiner's {exc} (refiner steps {req.refiner_steps}, strength "
                         f"{req.refiner_strength:g})") from None


def _hand_over(config: ModelConfig, req: GenerationRequest, sampler, rows):
    """SDXL base + refiner, split as diffusers splits them: the base runs its steps whose timestep is at or above
    the cutoff T (1 - high_noise_frac) (denoising_end), the refiner its own schedule of refiner_steps from the first
    timestep below it (denoising_start), fresh: a multistep sampler starts first-order there. (diffusers adds one
    step for second-order samplers when the count is even; the samplers here are all first-order in that sense.)"""
    from dbunet.schedulers import make_scheduler

    if not req.refiner_steps:
        return sampler, rows, None, None, 0
    total = config.schedule.num_train_timesteps
    cutoff = int(round(total - req.high_noise_frac * total))
    base_steps = int((sampler.timesteps >= cutoff).sum())
    refiner = make_scheduler(req.scheduler, req.schedule(config.latent_refiner.schedule))
    refiner.set_timesteps(min(req.refiner_steps, config.latent_refiner.schedule.num_train_timesteps))
    calls = int((refiner.timesteps < cutoff).sum())
    if not base_steps or not calls:
        who, steps = ("base", req.steps) if not base_steps else ("refiner", req.refiner_steps)
        raise InputError(f"high noise fraction {req.high_noise_frac:g} leaves the {who} none of its {steps} steps "
                         f"(the hand-off is at timestep {cutoff}): choose a fraction nearer 0.5 or more steps")
    start = len(refiner.timesteps) - calls  # PNDM calls the UNet once more than its steps
    refiner_rows = refiner.plan(req.refiner_steps, req.guidance_scale, 0, start=start)
    return sampler, rows[:base_steps], refiner, refiner_rows, start


def build_request(config: ModelConfig, prompt: str, **options) -> GenerationRequest:
    """A validated request: the model's defaults for everything not given, None included (as diffusers' optional
    arguments and a JSON null over HTTP); boxes may be 'x0,y0,x1,y1:phrase'."""
    d = config.defaults
    base = dict(
        height=d.height, width=d.width, steps=d.steps, guidance_scale=d.guidance_scale, scheduler=d.scheduler,
        box_fraction=d.box_fraction, refiner_steps=d.refiner_steps, refiner_strength=d.refiner_strength,
        high_noise_frac=d.high_noise_frac,
    )
    options = {name: python_scalar(value) for name, value in options.items() if value is not None}
    if "boxes" in options:
        options["boxes"] = as_boxes(options["boxes"])
    for name in ("original_size", "crop_top_left", "target_size"):
        if isinstance(options.get(name), str | list):
            options[name] = parse_pair(options[name], name.replace("_", " "))
    names = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = set(options) - names
    if unknown:
        raise TypeError(f"unknown generation options {sorted(unknown)}; valid: {sorted(names - {'prompt'})}")
    req = GenerationRequest(prompt=prompt, **{**base, **options})
    if req.boxes and not config.has_boxes:
        raise InputError(f"this model ({config.arch}: {config.architecture.summary}) has no box conditioning; "
                         "remove the boxes")
    given = (req.original_size, req.target_size, req.crop_top_left != (0, 0))
    if any(given) and not config.architecture.micro_conditioning:
        raise InputError(f"this model ({config.arch}) has no micro-conditioning: original size, crop top-left and "
                         "target size are SDXL's")
    if req.refiner_steps and req.refiner_strength and not (config.has_refiner or config.has_latent_refiner):
        more = " (dbunet-export --refiner FOLDER adds SDXL's refiner)" if config.architecture.latent_refiner else ""
        raise InputError(f"this model ({config.arch}) has no refiner; leave refiner_steps at 0{more}")
    if "high_noise_frac" in options and not config.has_latent_refiner:
        raise InputError(f"this model ({config.arch}) has no SDXL refiner: the high noise fraction is its hand-off")
    if "refiner_strength" in options and config.has_latent_refiner:
        raise InputError("SDXL's refiner takes the latents over at the high noise fraction; refiner strength is the "
                         "DiffuseGAE refiner's")
    if "refiner_strength" in options and not config.has_refiner:  # it would be ignored
        raise InputError(f"this model ({config.arch}) has no DiffuseGAE refiner; refiner strength sets how far that "
                         "refiner re-noises the image")
    if "box_fraction" in options and not config.has_boxes:  # it would be ignored
        raise InputError(f"this model ({config.arch}) has no box conditioning; the box fraction is the share of the "
                         "steps the boxes steer")
    req = req.validate(config.unet.max_boxes, config.vae.downscale, d.max_height, d.max_width,
                       config.schedule.num_train_timesteps)
    plan_schedules(config, req)
    return req


def check_defaults(config: ModelConfig) -> None:
    """The model's sampling defaults make a request the model takes. A config file or a manifest may say otherwise
    (steps 0, a scheduler dbunet lacks): refused where the config is read, by the request's own rules, rather than at
    every run as if the caller had asked for what it never gave."""
    try:
        build_request(config, "")
    except InputError as exc:
        raise ConfigError(f"model {config.name}: its sampling defaults make no valid request: {exc}") from None


def parse_pair(value, name: str) -> tuple[int, int]:
    """'1024x768' or '16,32' (or a pair of integers) as (first, second); InputError otherwise."""
    given = value
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").split(",")
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"{name} must look like 1024x1024 or 0,0, got {given!r}") from None
    if not (isinstance(value, tuple) and len(value) == 2):
        raise InputError(f"{name} must be two integers, got {given!r}")  # as given: '1,2,3', not (1, 2, 3)
    return value
