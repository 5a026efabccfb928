"""PNG output with the generation's provenance in its text chunks; optional box overlay."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from dbunet import atomic
from dbunet.config import ModelConfig
from dbunet.generation import GenerationResult
from dbunet.manifest import Manifest
from dbunet.request import GenerationRequest

PALETTE = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 200, 200)]


def draw_boxes(image: np.ndarray, result: GenerationResult) -> Image.Image:
    img = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for i, b in enumerate(result.request.boxes):
        color = PALETTE[i % len(PALETTE)]
        rect = (b.x0 * w, b.y0 * h, max(b.x0 * w, b.x1 * w - 1), max(b.y0 * h, b.y1 * h - 1))
        draw.rectangle(rect, outline=color, width=max(1, w // 128))
        if draw.textlength(b.phrase) <= rect[2] - rect[0] - 4:  # a label wider than its box would hide the image
            draw.text((rect[0] + 2, rect[1] + 1), b.phrase, fill=color)
    return img


def refiner_line(config: ModelConfig, req: GenerationRequest) -> str | None:
    """What the refiner did, in the terms of the model's own refiner; None for a model without one."""
    if config.has_latent_refiner:  # SDXL's takes the latents over at the high noise fraction
        ran, how = req.refiner_steps, f"{req.refiner_steps} steps from high noise fraction {req.high_noise_frac}"
    elif config.has_refiner:  # the DiffuseGAE refiner re-noises the image to its strength
        ran = req.refiner_steps and req.refiner_strength
        how = f"{req.refiner_steps} steps at strength {req.refiner_strength}"
    else:
        return None
    return how if ran else "none"


def metadata(result: GenerationResult, manifest: Manifest, backend: str, precision: str) -> dict[str, str]:
    req = result.request
    refiner = refiner_line(manifest.config, req)
    return {
        "prompt": req.prompt,
        **({"negative_prompt": req.negative_prompt} if req.negative_prompt is not None else {}),
        "seed": str(req.seed),
        "boxes": json.dumps([b.spec() for b in req.boxes]),
        "steps": str(req.steps),
        "scheduler": req.scheduler,
        **({"karras_sigmas": str(req.karras_sigmas).lower()} if req.karras_sigmas is not None else {}),
        "guidance_scale": repr(req.guidance_scale),
        **({"refiner": refiner} if refiner else {}),
        **({"size_numbers": json.dumps(req.size_numbers)} if req.original_size or req.target_size
           or req.crop_top_left != (0, 0) else {}),
        "artifact_hash": manifest.weights_sha256,
        "backend": f"{backend}/{precision}",
        "software": "dbunet",
    }


def png_bytes(result: GenerationResult, meta: dict[str, str], with_boxes: bool = False) -> bytes:
    """The image as PNG, its provenance in iTXt chunks (UTF-8, so any prompt survives): what dbunet-run writes
    and dbunet-serve answers, byte for byte."""
    img = draw_boxes(result.image, result) if with_boxes else Image.fromarray(result.image)
    info = PngImagePlugin.PngInfo()
    for key, value in meta.items():
        info.add_itxt(key, value)
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def save_png(path: str | Path, result: GenerationResult, meta: dict[str, str], with_boxes: bool = False) -> Path:
    path = Path(path)
    data = png_bytes(result, meta, with_boxes)
    try:
        atomic.write_bytes(path, data)
    except OSError as exc:  # disk full, read-only: said with the file the user named (not the temporary one)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    return path
