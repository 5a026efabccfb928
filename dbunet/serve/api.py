"""The HTTP API's work, free of any server: a JSON body -> a validated request -> a PNG (or JSON with base64).

Every refusal is the one line dbunet-run prints (`error: ...`), raised as `Refused` with its HTTP status:
400 for a request the model cannot take (checked before any model runs: the model's limits come from its
manifest), 413 for a body over MAX_BODY.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dbunet import jsonfile
from dbunet.boxes import Box
from dbunet.errors import DbunetError, NonFiniteError
from dbunet.schedulers import KARRAS_SAMPLERS, SCHEDULERS

MAX_BODY = 64 * 1024  # bytes: a 10,000-character prompt and 30 boxes fit many times over
# the request's JSON fields: dbunet-run's options under the API's names (size as height and width)
FIELDS = ("prompt", "negative_prompt", "boxes", "seed", "steps", "scheduler", "karras_sigmas", "guidance_scale",
          "height", "width", "box_fraction", "refiner_steps", "refiner_strength", "high_noise_frac", "original_size",
          "crop_top_left", "target_size", "response")
RESPONSES = ("png", "json")


class Refused(Exception):
    """A request the service answers with an error status and one `error:` line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def body(self) -> str:
        return f"error: {self}\n"


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    options: dict
    response: str = "png"


async def read_body(chunks: AsyncIterator[bytes], declared: str | None) -> bytes:
    """The request body, refused with 413 as soon as it passes MAX_BODY: before reading it where its declared
    length says so, else once that many bytes have come (a chunked body declares none, and could be endless)."""
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(413, f"request body of {declared} bytes; at most {MAX_BODY}")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY:
            raise Refused(413, f"request body of over {MAX_BODY} bytes; at most {MAX_BODY}")
    return bytes(body)


def parse(body: bytes) -> ImageRequest:
    """The JSON body as dbunet-run's options; the model's own checks come when the pipeline builds the request."""
    if len(body) > MAX_BODY:
        raise Refused(413, f"request body of {len(body)} bytes; at most {MAX_BODY}")
    data = jsonfile.loads(body, lambda why: Refused(400, f"the body is {why}"))
    if not isinstance(data, dict):
        raise Refused(400, f"the body must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise Refused(400, f"unknown field(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    # null is "not given" (as in most JSON APIs): the model's default; a required prompt stays required
    data = {name: value for name, value in data.items() if value is not None}
    prompt = data.pop("prompt", None)
    if not isinstance(prompt, str):
        raise Refused(400, "prompt is required and must be a string")
    response = data.pop("response", "png")
    if response not in RESPONSES:
        raise Refused(400, f"response must be one of {', '.join(RESPONSES)}, got {response!r}")
    boxes = data.get("boxes", [])
    if not isinstance(boxes, list) or not all(isinstance(b, str) for b in boxes):
        raise Refused(400, "boxes must be a list of 'x0,y0,x1,y1:phrase' strings, as dbunet-run's --box")
    try:
        data["boxes"] = tuple(Box.parse(b) for b in boxes)
    except DbunetError as exc:
        raise Refused(400, str(exc)) from None
    return ImageRequest(prompt, data, response)


def generate(pipe, request: ImageRequest) -> tuple[str, bytes, dict[str, float]]:
    """(content type, body, seconds per stage): the image dbunet-run would write for the same request, byte for
    byte."""
    from dbunet.runtime.png import metadata, png_bytes

    try:
        result = pipe(request.prompt, **request.options)
    except NonFiniteError as exc:  # the model's fault, not the request's: never an image, and a server error
        raise Refused(500, str(exc)) from None
    except DbunetError as exc:  # the model's limits, an unknown scheduler, a size too large: one line
        raise Refused(400, str(exc)) from None
    except TypeError as exc:  # a value of the wrong JSON type reached a check that compares numbers
        raise Refused(400, f"a field has the wrong type ({exc})") from None
    meta = metadata(result, pipe.manifest, pipe.backend_name, pipe.precision)
    png = png_bytes(result, meta)
    if request.response == "png":
        return "image/png", png, result.timings
    body = {"image_png_base64": base64.b64encode(png).decode("ascii"), "metadata": meta,
            "timings_s": {k: round(v, 4) for k, v in result.timings.items()}}
    return "application/json", json.dumps(body).encode(), result.timings


def model_summary(pipe) -> dict:
    """GET /v1/model: what the service runs and what a request may ask of it."""
    cfg, manifest = pipe.config, pipe.manifest
    d = cfg.defaults
    return {
        "name": cfg.name, "architecture": cfg.arch, "summary": cfg.architecture.summary,
        "boxes": cfg.has_boxes, "max_boxes": cfg.unet.max_boxes,
        "refiner": "diffusegae" if cfg.has_refiner else "sdxl" if cfg.has_latent_refiner else None,
        "defaults": {"height": d.height, "width": d.width, "steps": d.steps, "scheduler": d.scheduler,
                     "karras_sigmas": cfg.schedule.use_karras_sigmas,
                     "guidance_scale": d.guidance_scale, "refiner_steps": d.refiner_steps},
        "limits": {"max_height": d.max_height, "max_width": d.max_width, "size_multiple": cfg.vae.downscale,
                   "max_steps": cfg.schedule.num_train_timesteps, "max_body_bytes": MAX_BODY,
                   "schedulers": list(SCHEDULERS), "karras_sigmas_with": list(KARRAS_SAMPLERS)},
        "backend": pipe.backend_name, "precision": pipe.precision, "whole_loops": pipe.stages.whole_loops,
        "weights_sha256": manifest.weights_sha256,
    }
