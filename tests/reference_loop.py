"""An independent reference for the cascade loop, written from docs/architecture.md (3.3, 3.4, 5) and the README.

It shares no orchestration code with `dbunet/`: it reads manifest.json as plain JSON, tokenizes with
transformers' CLIP tokenizer from the exported model's vocab.json + merges.txt, runs each exported
per-call graph in a plain ONNX Runtime session, and uses diffusers' own DDIM / Euler / Euler ancestral /
DPM-Solver++ (ODE and SDE) / LCM / PNDM schedulers as the outside oracle for the samplers. What the documents
specify is written out here:

- noise: numpy Philox seeded with the seed; the initial latent is drawn first, then a stochastic sampler's
  (Euler ancestral, LCM, SDE DPM-Solver++) step noise as diffusers' sampler draws it, then the refiner's forward noise
  (docs/architecture.md 3.4); z_T is scaled by the sampler's initial sigma;
- text: [negative prompt; prompt] for classifier-free guidance, a single prompt when the scale is 1 or less;
  each box phrase is encoded alone and its pooled embedding is its phrase embedding (docs/architecture.md 3.2);
- guidance: eps = eps_u + g (eps_c - eps_u); the unconditional half sees no boxes (validity 0);
- box schedule: box_scale = 1 for the first ceil(box_fraction * steps) steps, 0 after; no boxes -> 0;
- VAE: latents are divided by the scaling factor before decoding; the image is clipped to [-1, 1];
- refiner (SDEdit start): `refiner_steps` DDIM calls cover the last `strength` of a schedule of
  max(refiner_steps, round(refiner_steps / strength)) steps; X1 is forward-noised to the first of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)
from step_noise import step_noise_from
from transformers import CLIPTokenizerFast

CALLS = ("text_encoder", "dbunet", "vae_decoder", "refiner_encoder", "gae", "refiner_unet")


@dataclass
class ReferenceOutput:
    latents: np.ndarray  # z_0 [1,C,h,w]
    decoded: np.ndarray  # X1 [1,3,H,W]
    pixels: np.ndarray  # final image before quantisation


def diffusers_scheduler(name: str, schedule: dict):
    """diffusers' sampler configured field by field from the manifest's noise schedule."""
    common = dict(
        num_train_timesteps=schedule["num_train_timesteps"], beta_start=schedule["beta_start"],
        beta_end=schedule["beta_end"], beta_schedule=schedule["beta_schedule"],
        timestep_spacing=schedule["timestep_spacing"], steps_offset=schedule["steps_offset"],
        prediction_type="epsilon",
    )
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=schedule["clip_sample"],
                             clip_sample_range=schedule["clip_sample_range"],
                             set_alpha_to_one=schedule["set_alpha_to_one"])
    # Karras sigmas and their range, where the schedule has them (a manifest from before them has neither key)
    sigmas = {k: schedule.get(k) for k in ("use_karras_sigmas", "sigma_min", "sigma_max") if schedule.get(k)}
    if name == "euler":
        return EulerDiscreteScheduler.from_config({**common, **sigmas})
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(common)
    if name == "lcm":
        return LCMScheduler.from_config({**common, **{k: schedule[k] for k in ("original_inference_steps",
                                                                             "timestep_scaling") if k in schedule}})
    if name == "pndm":  # PLMS, as Stable Diffusion's folders configure it
        return PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=schedule["set_alpha_to_one"])
    if name in ("dpm++", "dpm++-sde"):  # the ODE form, or the SDE form that adds noise at each step
        algorithm = "sde-dpmsolver++" if name == "dpm++-sde" else "dpmsolver++"
        return DPMSolverMultistepScheduler.from_config({**common, **sigmas, "algorithm_type": algorithm,
                                                        "solver_order": 2})
    raise ValueError(name)


class ReferenceCascade:
    def __init__(self, artifacts: Path, precision: str = "fp32") -> None:
        artifacts = Path(artifacts)
        manifest = json.loads((artifacts / "manifest.json").read_text())
        self.config = manifest["config"]
        path = {(a["component"], a["precision"]): a["files"][0] for a in manifest["artifacts"]}
        self.sessions = {
            name: ort.InferenceSession(str(artifacts / path[name, precision]), providers=["CPUExecutionProvider"])
            for name in CALLS
        }
        source = Path(manifest["weights_source"])
        tokenizer_dir = (source if source.is_absolute() else artifacts / source) / "tokenizer"
        self.tokenizer = CLIPTokenizerFast.from_pretrained(str(tokenizer_dir))
        self.max_length = self.config["text"]["max_length"]

    def _run(self, name: str, **feeds) -> list[np.ndarray]:
        return self.sessions[name].run(None, feeds)

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True)["input_ids"]
        hidden, pooled = self._run("text_encoder", input_ids=np.asarray(ids, dtype=np.int64))
        return hidden, pooled

    def __call__(self, prompt: str, *, negative_prompt: str = "", boxes=(), seed: int = 0, steps: int = 8,
                 guidance_scale: float = 7.5, scheduler: str = "ddim", box_fraction: float = 0.3,
                 refiner_steps: int = 4, refiner_strength: float = 0.3, height: int | None = None,
                 width: int | None = None, karras_sigmas: bool | None = None) -> ReferenceOutput:
        cfg = self.config
        height, width = height or cfg["defaults"]["height"], width or cfg["defaults"]["width"]
        rng = np.random.Generator(np.random.Philox(seed))
        guided = guidance_scale > 1.0

        # text and boxes; boxes are (x0, y0, x1, y1, phrase)
        text, _ = self._encode([negative_prompt, prompt] if guided else [prompt])
        n, dim = len(boxes), cfg["text"]["hidden_size"]
        coords = np.array([b[:4] for b in boxes], dtype=np.float32).reshape(1, n, 4)
        phrases = (self._encode([b[4] for b in boxes])[1] if n else np.zeros((0, dim), np.float32)).reshape(1, n, dim)
        valid = np.ones((1, n), dtype=np.float32)
        if guided:
            coords, phrases = np.concatenate([coords, coords]), np.concatenate([phrases, phrases])
            valid = np.concatenate([np.zeros_like(valid), valid])
        batch = text.shape[0]

        # denoising loop with diffusers' sampler
        schedule = cfg["schedule"] if karras_sigmas is None else {**cfg["schedule"], "use_karras_sigmas": karras_sigmas}
        sampler = diffusers_scheduler(scheduler, schedule)
        sampler.set_timesteps(steps)
        f = 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
        shape = (1, cfg["vae"]["latent_channels"], height // f, width // f)
        latents = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) * sampler.init_noise_sigma
        box_steps = math.ceil(box_fraction * steps) if n else 0

        def draw(size, **_):
            return torch.from_numpy(rng.standard_normal(tuple(size), dtype=np.float32))
        for i, t in enumerate(sampler.timesteps):
            x_in = sampler.scale_model_input(latents, t).numpy()
            (eps,) = self._run(
                "dbunet", sample=np.concatenate([x_in] * batch), timestep=np.full(batch, float(t), np.float32),
                text=text, boxes=coords, box_phrases=phrases, box_valid=valid,
                box_scale=np.array(1.0 if i < box_steps else 0.0, np.float32),
            )
            if guided:
                eps = eps[:1] + np.float32(guidance_scale) * (eps[1:] - eps[:1])
            with step_noise_from(draw):  # a stochastic sampler's step noise from the seed's stream
                latents = sampler.step(torch.from_numpy(eps), t, latents).prev_sample
        z0 = latents.numpy()

        (image,) = self._run("vae_decoder", latent=z0 / np.float32(cfg["vae"]["scaling_factor"]))
        decoded = np.clip(image, -1.0, 1.0).astype(np.float32)

        # refiner: SDEdit start at the last `strength` of the schedule, DDIM conditioned on z_dis
        pixels = decoded
        if refiner_steps and refiner_strength:
            total = max(refiner_steps, round(refiner_steps / refiner_strength))
            start = total - refiner_steps
            refiner = diffusers_scheduler("ddim", cfg["refiner"]["schedule"])
            refiner.set_timesteps(total)
            (z_sem,) = self._run("refiner_encoder", image=decoded)
            _, z_dis = self._run("gae", z_sem=z_sem)
            noise = torch.from_numpy(rng.standard_normal(decoded.shape, dtype=np.float32))
            x = refiner.add_noise(torch.from_numpy(decoded), noise, refiner.timesteps[start:start + 1])
            for t in refiner.timesteps[start:]:
                (eps,) = self._run("refiner_unet", sample=x.numpy(), timestep=np.full(1, float(t), np.float32),
                                   z_dis=z_dis)
                x = refiner.step(torch.from_numpy(eps), t, x).prev_sample
            pixels = x.numpy()
        return ReferenceOutput(z0, decoded, pixels)
