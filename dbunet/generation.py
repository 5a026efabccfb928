"""The cascade's orchestration, written once for every backend (torch-free).

A backend supplies `Stages`: tokenize, run the text encoder, run one whole denoising step, decode,
condition the refiner and run one refiner step. `run_cascade` does the rest: the prompts and boxes,
the box schedule, the sampler's coefficient table, the refiner's SDEdit start, noise and timing.
Arrays are numpy float32 in and out of every stage.

One step (docs/architecture.md 3.4) is UNet + guidance + sampler update. Backends that run step graphs take only the
step's coefficient row: the loop hands rows over and swaps x / x0_prev, no numpy math per step. The
PyTorch reference ignores the row's update and runs its sampler's own numpy `step()` (hence `Step`
carries the sampler), so comparing a backend with it checks the tables too.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dbunet.boxes import box_arrays
from dbunet.config import ModelConfig
from dbunet.errors import InputError, NonFiniteError
from dbunet.lifetime import Closable
from dbunet.noise import NoiseSource
from dbunet.request import GenerationRequest, build_request, plan_schedules
from dbunet.schedulers import Scheduler
from dbunet.schedulers.table import COLUMN

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Step:
    index: int  # into sampler.timesteps
    row: np.ndarray  # float32 coefficients (dbunet.schedulers.table.ROW): all a step graph needs
    sampler: Scheduler  # for reference implementations that call sampler.step()
    # a stochastic sampler's fresh noise, already scaled, added to x_next after the step; None for the others
    noise: np.ndarray | None = None


@dataclass(frozen=True)
class Conditioning:
    """What the DB-UNet sees besides the sample; batch 2 = [unconditional; conditional] when guided."""

    text: np.ndarray  # [B,L,D]
    boxes: np.ndarray  # [B,N,4]
    phrases: np.ndarray  # [B,N,D]
    valid: np.ndarray  # [B,N]; 0 for padding, and for every box of the unconditional half
    # SDXL's micro-conditioning (None for the other architectures): the pooled text embedding of the second
    # encoder [B,P] and (original size, crop top-left, target size) [B,6]
    text_embeds: np.ndarray | None = None
    time_ids: np.ndarray | None = None


def reference_denoise_step(step: Step, x: np.ndarray, cond: Conditioning,
                           predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """x_next by the reference loop: predict(sample, timestep, box_scale) -> noise on the CFG batch, guidance
    on the host, then the sampler's own numpy step() (not the row's update; the row gives g and box scale)."""
    sampler, batch = step.sampler, cond.text.shape[0]
    sample = np.concatenate([sampler.scale_model_input(x, step.index)] * batch)
    timestep = np.full(batch, sampler.timesteps[step.index], dtype=np.float32)
    eps = predict(sample, timestep, np.array(step.row[COLUMN["box_scale"]], dtype=np.float32))
    if batch > 1:  # [unconditional; conditional]
        eps = eps[:1] + np.float32(step.row[COLUMN["guidance"]]) * (eps[1:] - eps[:1])
    return sampler.step(eps.astype(np.float32), step.index, x)


class Stages(Protocol):
    whole_loops: bool  # True: also a WholeLoopStages, and run_cascade runs each loop in one call

    def tokenize(self, texts: list[str]) -> np.ndarray: ...  # int64 [n, L]

    def encode_text(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # [n,L,D], pooled [n,D]

    # the second text encoder (architectures with text_encoders == 2: SDXL); others need not have these
    def tokenize_2(self, texts: list[str]) -> np.ndarray: ...

    def encode_text_2(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # [n,L,D2], text_embeds [n,P]

    # (x_next, x0), each like x; component: the step graph, "latent_refiner_step" for SDXL's refiner
    def denoise_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> tuple[np.ndarray, np.ndarray]: ...

    def decode(self, latents: np.ndarray) -> np.ndarray: ...  # scaled-back latents -> image [B,3,H,W]

    def refiner_condition(self, image: np.ndarray) -> np.ndarray: ...  # X1 -> z_dis

    def refiner_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, z_dis: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class WholeLoopStages(Stages, Protocol):
    """Stages that can run a whole loop in one call (the TensorRT backend: one CUDA graph per loop), and say so
    with `whole_loops = True`; run_cascade then uses these, and per-step timing is the loop's time split evenly."""

    def denoise_loop(self, steps: list[Step], x: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> np.ndarray: ...  # the latents after the last step

    def refiner_loop(self, steps: list[Step], x: np.ndarray, z_dis: np.ndarray) -> np.ndarray: ...


def _loop(one_step: Callable, whole_loop: Callable | None, steps: list[Step], x: np.ndarray, extra,
          stage: str, progress: Progress | None) -> tuple[np.ndarray, list[float]]:
    """Run `steps` from x (x0_prev starts at zero); return the result and seconds per step. Steps that add noise, and
    a sampler whose x0_prev the host computes (Scheduler.history), run one by one: a whole-loop graph has no input
    for either."""
    history = steps[0].sampler.history(steps[0].index) if steps else None
    if whole_loop is not None and history is None and all(step.noise is None for step in steps):
        t0 = time.perf_counter()
        x = whole_loop(steps, x, extra)
        elapsed = time.perf_counter() - t0
        if progress:
            progress(stage, len(steps), len(steps))
        return x, [elapsed / max(len(steps), 1)] * len(steps)
    x0, times = np.zeros_like(x), []
    for k, step in enumerate(steps):
        t0 = time.perf_counter()
        x_in = x
        x, x0 = one_step(step, x, x0, extra)
        if history is not None:
            x0 = history(step.index, x_in, x0)
        if step.noise is not None:
            x = x + step.noise
        times.append(time.perf_counter() - t0)
        if progress:
            progress(stage, k + 1, len(steps))
    return x, times


@dataclass
class GenerationResult:
    image: np.ndarray  # uint8 [H, W, 3]
    request: GenerationRequest
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    step_times: list[float] = field(default_factory=list)  # seconds per denoising step
    # float intermediates, for comparisons finer than uint8 levels
    latents: np.ndarray | None = None  # z_0 [1,C,h,w], before the VAE scaling
    decoded: np.ndarray | None = None  # X1 [1,3,H,W], the VAE's image clipped to [-1, 1]
    pixels: np.ndarray | None = None  # the final image [1,3,H,W] before quantisation (X1 if no refiner)


def encode_prompts(stages: Stages, config: ModelConfig, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(text embedding [n,L,W], pooled [n,P]) of each text: one encoder's, or (SDXL) both encoders' hidden
    states concatenated along the width, with the second encoder's pooled projection."""
    hidden, pooled = stages.encode_text(stages.tokenize(texts))
    if config.architecture.text_encoders == 2:
        hidden_2, pooled = stages.encode_text_2(stages.tokenize_2(texts))
        hidden = np.concatenate([hidden, hidden_2], axis=-1)
    return hidden.astype(np.float32), pooled.astype(np.float32)


def _prompts(req: GenerationRequest) -> list[str]:
    """The texts to encode: [negative; prompt] when guided (guidance scale above 1), the prompt alone else."""
    return [req.negative_text, req.prompt] if req.guided else [req.prompt]


def _zero_empty_negative(req: GenerationRequest, zero: bool, *arrays: np.ndarray) -> None:
    """SDXL pipelines' force_zeros_for_empty_prompt: without a negative prompt the unconditional rows are zeros,
    not an encoding. An explicit "" is encoded, as diffusers does (it zeros `negative_prompt is None` only)."""
    if zero and req.guided and req.negative_prompt is None:
        for a in arrays:
            a[0] = 0.0


def build_conditioning(stages: Stages, config: ModelConfig, req: GenerationRequest) -> Conditioning:
    """The text and boxes a denoising step sees: [negative; prompt] when guided (guidance scale above 1), one
    pooled embedding per box phrase, and no boxes for the unconditional half; SDXL's micro-conditioning."""
    prompts = _prompts(req)
    text, pooled = encode_prompts(stages, config, prompts)
    _zero_empty_negative(req, config.zero_empty_negative, text, pooled)
    micro = {}
    if config.architecture.micro_conditioning:  # original size, crop top-left, target size: the request's size
        sizes = np.array(req.size_numbers, dtype=np.float32)
        micro = {"text_embeds": pooled, "time_ids": np.stack([sizes] * len(prompts))}
    coords, valid = box_arrays(req.boxes)
    if req.boxes:
        _, phrase_pooled = stages.encode_text(stages.tokenize([b.phrase for b in req.boxes]))
        phrases = phrase_pooled[None].astype(np.float32)  # (1, N, D)
    else:
        phrases = np.zeros((1, 0, config.text.hidden_size), dtype=np.float32)
    if req.guided:
        coords, phrases = np.concatenate([coords, coords]), np.concatenate([phrases, phrases])
        valid = np.concatenate([np.zeros_like(valid), valid])
    return Conditioning(text, coords, phrases, valid, **micro)


def build_refiner_conditioning(stages: Stages, config: ModelConfig, req: GenerationRequest) -> Conditioning:
    """What SDXL's refiner sees: the second encoder's hidden state and pooled projection alone, its own
    force_zeros_for_empty_prompt, and time_ids of original size, crop top-left and the aesthetic score where it
    requires one, the target size otherwise, as diffusers' img2img builds them: where a score is required, the
    unconditional row has the negative score and crop (0, 0) (its negative_crops_coords_top_left), not the
    request's crop."""
    r = config.latent_refiner
    prompts = _prompts(req)
    hidden, pooled = stages.encode_text_2(stages.tokenize_2(prompts))
    text, pooled = hidden.astype(np.float32), pooled.astype(np.float32)  # copies: zeroed below
    _zero_empty_negative(req, r.zero_empty_negative, text, pooled)
    sizes = req.size_numbers  # original size, crop top-left, target size
    if r.requires_aesthetics_score:
        rows = [[*sizes[:2], 0, 0, r.negative_aesthetic_score], [*sizes[:4], r.aesthetic_score]]
    else:
        rows = [sizes, sizes]
    coords, valid = box_arrays(())
    n = len(prompts)
    return Conditioning(text, np.concatenate([coords] * n), np.zeros((n, 0, text.shape[-1]), dtype=np.float32),
                        np.concatenate([valid] * n), pooled, np.array(rows[-n:], dtype=np.float32))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[1,3,H,W] in [-1,1] -> [H,W,3] uint8 (round half to even, as numpy does)."""
    x = np.clip(image[0].transpose(1, 2, 0), -1.0, 1.0)
    return np.round((x + 1.0) * 127.5).astype(np.uint8)


def initial_latents(latents: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Caller-given starting latents (unit-variance noise, as diffusers' `latents=`), checked; None if not given."""
    if latents is None:
        return None
    try:
        array = np.asarray(latents)
    except (TypeError, ValueError):  # ragged nested lists
        array = None
    # real numbers only: a complex array would lose its imaginary part, strings would be parsed as numbers
    if array is None or array.dtype.kind not in "fiu":
        kind = type(latents).__name__ if array is None else f"{type(latents).__name__} of {array.dtype}"
        raise InputError(f"latents must be a float array of shape {shape}, got {kind}")
    array = array.astype(np.float32)
    if array.shape == shape[1:]:
        array = array[None]
    if array.shape != shape:
        raise InputError(f"latents of shape {tuple(array.shape)} do not fit this request: expected {shape} "
                         "(1, latent channels, height / f, width / f)")
    if not np.isfinite(array).all():
        raise InputError("latents contain NaN or infinity")
    return np.ascontiguousarray(array)


def _steps(sampler: Scheduler, start: int, rows: np.ndarray, noise: NoiseSource, shape: tuple[int, ...]
           ) -> list[Step]:
    """The loop's steps from index `start`; a stochastic sampler's noise is drawn here, in order, at the steps where
    diffusers' sampler draws (Scheduler.noise_scale), so that a seed gives one image on every backend."""
    def fresh(index: int) -> np.ndarray | None:
        scale = sampler.noise_scale(index)
        return None if scale is None else (noise.normal(shape) * np.float32(scale)).astype(np.float32)

    return [Step(start + k, row, sampler, fresh(start + k)) for k, row in enumerate(rows)]


def require_finite(array: np.ndarray, stage: str, settings: str) -> None:
    """Never an image from NaN or infinity (they quantise to black): the run ends here, naming the stage."""
    if not np.isfinite(array).all():
        raise NonFiniteError(f"the {stage} produced NaN or infinity ({settings}); no image was written. "
                             "A lower precision may overflow where FP32 does not: try --precision fp32")


def run_cascade(
    stages: Stages, config: ModelConfig, req: GenerationRequest, progress: Progress | None = None,
    latents: np.ndarray | None = None,
) -> GenerationResult:
    """The whole cascade for one request. `latents`: the starting noise z_T before the sampler's
    init_noise_sigma scaling (as diffusers' pipelines take it); the seed still draws the same noise
    for it first, so the refiner's noise does not depend on whether latents were given."""
    if req.negative_prompt and not req.guided:  # diffusers drops it silently; said, not refused, to take its calls
        log.warning("the negative prompt is not used at guidance scale %g: it steers classifier-free guidance, which "
                    "runs above a scale of 1 only", req.guidance_scale)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    noise = NoiseSource(req.seed)

    t0 = time.perf_counter()
    cond = build_conditioning(stages, config, req)
    timings["text"] = time.perf_counter() - t0

    # denoise: z_T ~ N(0, sigma_0^2), then one whole step per coefficient row
    sampler, rows, refiner_sampler, refiner_rows, start = plan_schedules(config, req)
    f = config.vae.downscale
    shape = (1, config.vae.latent_channels, req.height // f, req.width // f)
    given = initial_latents(latents, shape)
    drawn = noise.normal(shape)  # drawn either way: the noise order stays the same
    latents = (drawn if given is None else given) * np.float32(sampler.init_noise_sigma)
    steps = _steps(sampler, 0, rows, noise, shape)
    whole = stages.whole_loops
    latents, step_times = _loop(stages.denoise_step, stages.denoise_loop if whole else None, steps, latents, cond,
                                "denoise", progress)
    timings["denoise"] = sum(step_times)
    require_finite(latents, "denoising loop", f"{req.scheduler}, {req.steps} steps, guidance {req.guidance_scale:g}")

    # SDXL's refiner takes the latents over for the low-noise end of the schedule (plan_schedules split it)
    t0 = time.perf_counter()
    if config.has_latent_refiner and refiner_sampler is not None:
        refiner_cond = build_refiner_conditioning(stages, config, req)
        role = "latent_refiner_step"
        one = functools.partial(stages.denoise_step, component=role)
        loop = functools.partial(stages.denoise_loop, component=role) if whole else None
        steps = _steps(refiner_sampler, start, refiner_rows, noise, shape)
        latents, _ = _loop(one, loop, steps, latents, refiner_cond, "refiner", progress)
        require_finite(latents, "refiner", f"{len(steps)} of {req.refiner_steps} steps")
    refined_latents_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    image = stages.decode(latents / np.float32(config.vae.scaling_factor))
    require_finite(image, "VAE decoder", f"scaling factor {config.vae.scaling_factor:g}")
    image = np.clip(image, -1.0, 1.0).astype(np.float32)
    decoded = image
    timings["vae"] = time.perf_counter() - t0

    # refiner: X1 forward-noised to strength s, then DDIM conditioned on z_dis (docs/architecture.md 3.3)
    t0 = time.perf_counter()
    if config.has_refiner and refiner_sampler is not None:
        z_dis = stages.refiner_condition(image)
        x = refiner_sampler.add_noise(image, noise.normal(image.shape), start)
        steps = [Step(start + k, row, refiner_sampler) for k, row in enumerate(refiner_rows)]
        image, _ = _loop(stages.refiner_step, stages.refiner_loop if whole else None, steps, x, z_dis, "refiner",
                         progress)
        require_finite(image, "refiner", f"{len(steps)} steps")
    timings["refiner"] = time.perf_counter() - t0 + refined_latents_s
    timings["total"] = time.perf_counter() - t_all
    return GenerationResult(to_uint8(image), req, timings, step_times, latents, decoded, image)


class CascadePipeline(Closable):
    """What every pipeline shares (the runtime's Pipeline, the PyTorch reference's TorchPipeline): a model config
    and its Stages; one call is one validated request through run_cascade."""

    config: ModelConfig
    stages: Stages

    def request(self, prompt: str, **options) -> GenerationRequest:
        return build_request(self.config, prompt, **options)

    def __call__(self, prompt: str, progress: Progress | None = None, latents: np.ndarray | None = None,
                 **options) -> GenerationResult:
        """Generate one image. `latents`: optional starting noise [1, C, h, w] (before the sampler's
        init_noise_sigma), as diffusers' pipelines take it; otherwise the seed draws it."""
        with self.in_use():
            return run_cascade(self.stages, self.config, self.request(prompt, **options), progress, latents)
