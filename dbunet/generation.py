"""The cascade's orchestration, written once for every backend (torch-free).

A backend supplies `Stages`: tokenize, run the text encoder, run one DB-UNet call, decode,
condition the refiner and run one refiner UNet call. `run_cascade` does the rest: classifier-free
guidance, the sampler, the box schedule, the refiner's SDEdit start, noise and timing. Arrays are
numpy float32 in and out of every stage, so the sampler math is the same everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dbunet.boxes import box_arrays
from dbunet.config import ModelConfig
from dbunet.noise import NoiseSource
from dbunet.request import GenerationRequest
from dbunet.schedulers import DDIMScheduler, make_scheduler

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class Stages(Protocol):
    def tokenize(self, texts: list[str]) -> np.ndarray: ...  # int64 [n, L]

    def encode_text(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # [n,L,D], pooled [n,D]

    def denoise(
        self, sample: np.ndarray, timestep: np.ndarray, text: np.ndarray, boxes: np.ndarray,
        phrases: np.ndarray, valid: np.ndarray, box_scale: np.ndarray,
    ) -> np.ndarray: ...  # noise prediction, like sample

    def decode(self, latents: np.ndarray) -> np.ndarray: ...  # scaled-back latents -> image [B,3,H,W]

    def refiner_condition(self, image: np.ndarray) -> np.ndarray: ...  # X1 -> z_dis

    def refiner_denoise(self, sample: np.ndarray, timestep: np.ndarray, z_dis: np.ndarray) -> np.ndarray: ...


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


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[1,3,H,W] in [-1,1] -> [H,W,3] uint8 (round half to even, as numpy does)."""
    x = np.clip(image[0].transpose(1, 2, 0), -1.0, 1.0)
    return np.round((x + 1.0) * 127.5).astype(np.uint8)


def run_cascade(
    stages: Stages, config: ModelConfig, req: GenerationRequest, progress: Progress | None = None
) -> GenerationResult:
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    noise = NoiseSource(req.seed)
    guided = req.guidance_scale != 1.0

    # text: [negative; prompt] for classifier-free guidance, and one pooled embedding per box phrase
    t0 = time.perf_counter()
    prompts = [req.negative_prompt, req.prompt] if guided else [req.prompt]
    text, _ = stages.encode_text(stages.tokenize(prompts))
    coords, valid = box_arrays(req.boxes)
    if req.boxes:
        _, pooled = stages.encode_text(stages.tokenize([b.phrase for b in req.boxes]))
        phrases = pooled[None].astype(np.float32)  # (1, N, D)
    else:
        phrases = np.zeros((1, 0, config.text.hidden_size), dtype=np.float32)
    if guided:  # the unconditional half sees no boxes
        coords, phrases = np.concatenate([coords, coords]), np.concatenate([phrases, phrases])
        valid = np.concatenate([np.zeros_like(valid), valid])
    timings["text"] = time.perf_counter() - t0

    # denoise: z_T ~ N(0, sigma_0^2), one guided UNet call per step
    sampler = make_scheduler(req.scheduler, config.schedule)
    sampler.set_timesteps(req.steps)
    f = config.vae.downscale
    shape = (1, config.vae.latent_channels, req.height // f, req.width // f)
    latents = noise.normal(shape) * np.float32(sampler.init_noise_sigma)
    batch = text.shape[0]
    step_times = []
    for i, t in enumerate(sampler.timesteps):
        t0 = time.perf_counter()
        x = sampler.scale_model_input(latents, i)
        x = np.concatenate([x] * batch) if batch > 1 else x
        box_scale = np.array(1.0 if i < req.box_steps else 0.0, dtype=np.float32)
        eps = stages.denoise(x, np.full(batch, t, dtype=np.float32), text, coords, phrases, valid, box_scale)
        if guided:
            uncond, cond = eps[:1], eps[1:]
            eps = uncond + np.float32(req.guidance_scale) * (cond - uncond)
        latents = sampler.step(eps.astype(np.float32), i, latents)
        step_times.append(time.perf_counter() - t0)
        if progress:
            progress("denoise", i + 1, req.steps)
    timings["denoise"] = sum(step_times)

    t0 = time.perf_counter()
    image = np.clip(stages.decode(latents / np.float32(config.vae.scaling_factor)), -1.0, 1.0).astype(np.float32)
    decoded = image
    timings["vae"] = time.perf_counter() - t0

    # refiner: X1 forward-noised to strength s, then DDIM conditioned on z_dis (SPEC 3.3)
    t0 = time.perf_counter()
    total, start = req.refiner_schedule()
    if total:
        z_dis = stages.refiner_condition(image)
        refiner_sampler = DDIMScheduler(config.refiner.schedule)
        refiner_sampler.set_timesteps(total)
        x = refiner_sampler.add_noise(image, noise.normal(image.shape), start)
        for i in range(start, total):
            t = np.full(x.shape[0], refiner_sampler.timesteps[i], dtype=np.float32)
            x = refiner_sampler.step(stages.refiner_denoise(x, t, z_dis).astype(np.float32), i, x)
            if progress:
                progress("refiner", i - start + 1, total - start)
        image = x
    timings["refiner"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return GenerationResult(to_uint8(image), req, timings, step_times, latents, decoded, image)
