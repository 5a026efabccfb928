"""TorchPipeline: the reference cascade in PyTorch, the oracle every backend is compared with.

prompt + boxes -> tokens -> text encoder -> DB-UNet denoise loop (CFG, sampler, boxes) -> VAE
decode -> refiner (z_sem -> GAE -> z_dis; forward-noise to strength s; DDIM) -> uint8 image.
Sampler math and noise are numpy, shared with the torch-free runtime.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dbunet.boxes import Box, box_arrays
from dbunet.config import ModelConfig
from dbunet.models.cascade import Model, create_preset_model, load_model
from dbunet.models.components import encode_text, tokenize
from dbunet.noise import NoiseSource
from dbunet.request import GenerationRequest
from dbunet.schedulers import DDIMScheduler, make_scheduler

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class GenerationResult:
    image: np.ndarray  # uint8 [H, W, 3]
    request: GenerationRequest
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    step_times: list[float] = field(default_factory=list)  # seconds per denoising step


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[1,3,H,W] in [-1,1] -> [H,W,3] uint8 (round half to even, as numpy does)."""
    x = np.clip(image[0].transpose(1, 2, 0), -1.0, 1.0)
    return np.round((x + 1.0) * 127.5).astype(np.uint8)


class TorchPipeline:
    def __init__(self, model: Model, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.device = torch.device(device)
        self.cascade = model.cascade.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> TorchPipeline:
        return cls(load_model(directory), device)

    @classmethod
    def from_config(cls, config: ModelConfig, directory: str | Path, device: str = "cpu") -> TorchPipeline:
        """Load the model saved in `directory`, creating it there from `config`'s seed if absent."""
        directory = Path(directory)
        model = load_model(directory) if (directory / "config.json").is_file() else create_preset_model(config, directory)
        return cls(model, device)

    def request(self, prompt: str, **overrides) -> GenerationRequest:
        """A request with the model's defaults for everything not given."""
        d = self.config.defaults
        base = dict(
            height=d.height, width=d.width, steps=d.steps, guidance_scale=d.guidance_scale,
            scheduler=d.scheduler, box_fraction=d.box_fraction, refiner_steps=d.refiner_steps,
            refiner_strength=d.refiner_strength,
        )
        if "boxes" in overrides:
            overrides["boxes"] = tuple(b if isinstance(b, Box) else Box.parse(b) for b in overrides["boxes"])
        fields = {f.name for f in dataclasses.fields(GenerationRequest)}
        return GenerationRequest(prompt=prompt, **{**base, **{k: v for k, v in overrides.items() if k in fields}})

    def __call__(self, prompt: str, progress: Progress | None = None, **options) -> GenerationResult:
        req = self.request(prompt, **options).validate(self.config.unet.max_boxes, self.config.vae.downscale)
        return self.generate(req, progress)

    # -- stages ------------------------------------------------------------------------------
    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @torch.no_grad()
    def encode_prompts(self, req: GenerationRequest, guided: bool) -> torch.Tensor:
        texts = [req.negative_prompt, req.prompt] if guided else [req.prompt]
        ids = tokenize(self.model.tokenizer, texts, self.config.text.max_length)
        hidden, _ = encode_text(self.cascade.text_encoder, self._tensor(ids))
        return hidden  # (2 or 1, L, D): unconditional first

    @torch.no_grad()
    def encode_boxes(self, req: GenerationRequest, guided: bool):
        """Coordinates [b,N,4], phrase embeddings [b,N,D], validity [b,N]; the unconditional half sees no boxes."""
        coords, valid = box_arrays(req.boxes)
        n, d = len(req.boxes), self.config.text.hidden_size
        if n:
            ids = tokenize(self.model.tokenizer, [b.phrase for b in req.boxes], self.config.text.max_length)
            _, pooled = encode_text(self.cascade.text_encoder, self._tensor(ids))
            phrases = pooled[None]  # (1, N, D)
        else:
            phrases = torch.zeros(1, 0, d, device=self.device)
        coords_t, valid_t = self._tensor(coords), self._tensor(valid)
        if guided:
            return coords_t.repeat(2, 1, 1), phrases.repeat(2, 1, 1), torch.cat([torch.zeros_like(valid_t), valid_t])
        return coords_t, phrases, valid_t

    @torch.no_grad()
    def denoise_step(self, latents: np.ndarray, t: float, text, boxes, box_scale: float, guidance: float) -> np.ndarray:
        guided = text.shape[0] == 2 * latents.shape[0]
        x = np.concatenate([latents, latents]) if guided else latents
        timestep = torch.full((x.shape[0],), float(t), device=self.device)
        eps = self.cascade.unet(self._tensor(x), timestep, text, *boxes, torch.tensor(box_scale, device=self.device))
        eps = eps.float().cpu().numpy()
        if guided:
            uncond, cond = eps[: latents.shape[0]], eps[latents.shape[0] :]
            eps = uncond + np.float32(guidance) * (cond - uncond)
        return eps

    @torch.no_grad()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        z = self._tensor(latents / np.float32(self.config.vae.scaling_factor))
        return self.cascade.vae.decode(z).sample.clamp(-1, 1).float().cpu().numpy()

    @torch.no_grad()
    def refine(self, image: np.ndarray, req: GenerationRequest, noise: NoiseSource, progress: Progress | None) -> np.ndarray:
        total, start = req.refiner_schedule()
        if total == 0:
            return image
        refiner = self.cascade.refiner
        z_dis = refiner.condition(self._tensor(image))
        sampler = DDIMScheduler(self.config.refiner.schedule)
        sampler.set_timesteps(total)
        x = sampler.add_noise(image, noise.normal(image.shape), start)
        for i in range(start, total):
            t = torch.full((x.shape[0],), float(sampler.timesteps[i]), device=self.device)
            eps = refiner.unet(self._tensor(x), t, z_dis).float().cpu().numpy()
            x = sampler.step(eps, i, x)
            if progress:
                progress("refiner", i - start + 1, total - start)
        return x

    def generate(self, req: GenerationRequest, progress: Progress | None = None) -> GenerationResult:
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        noise = NoiseSource(req.seed)
        guided = req.guidance_scale != 1.0

        t0 = time.perf_counter()
        text = self.encode_prompts(req, guided)
        boxes = self.encode_boxes(req, guided)
        timings["text"] = time.perf_counter() - t0

        sampler = make_scheduler(req.scheduler, self.config.schedule)
        sampler.set_timesteps(req.steps)
        f = self.config.vae.downscale
        shape = (1, self.config.vae.latent_channels, req.height // f, req.width // f)
        latents = noise.normal(shape) * np.float32(sampler.init_noise_sigma)
        step_times = []
        for i, t in enumerate(sampler.timesteps):
            t0 = time.perf_counter()
            box_scale = 1.0 if i < req.box_steps else 0.0
            eps = self.denoise_step(sampler.scale_model_input(latents, i), t, text, boxes, box_scale, req.guidance_scale)
            latents = sampler.step(eps, i, latents)
            step_times.append(time.perf_counter() - t0)
            if progress:
                progress("denoise", i + 1, req.steps)
        timings["denoise"] = sum(step_times)

        t0 = time.perf_counter()
        image = self.decode(latents)
        timings["vae"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        image = self.refine(image, req, noise, progress)
        timings["refiner"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        return GenerationResult(to_uint8(image), req, timings, step_times)
