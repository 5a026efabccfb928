"""Static optimization profiles, derived from the components' IO specs (dbunet.export.specs declares them).

CUDA graphs need static shapes, so every engine of the denoising loops is built for one resolution:
min = opt = max. The guided step always runs its CFG batch of 2 (unguided, at a scale of 1 or less, the runtime
feeds the prompt twice: equal halves give eps_u + g (eps_c - eps_u) = eps_c), and boxes are padded to
`max_boxes` slots with validity 0, which change nothing (padding slots are masked out). Only the text encoder,
which runs once per image outside the loops, keeps a range: its batch is 1 or 2 prompts, or one phrase per box.
Torch-free and TensorRT-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbunet.architectures.base import GUIDED_STEPS
from dbunet.config import ModelConfig, side_beyond
from dbunet.errors import ConfigError
from dbunet.iospec import GraphSpec

# engines whose shapes do not follow the image size
SIZE_FREE = ("text_encoder", "text_encoder_2", "gae")


def engine_components(config: ModelConfig) -> tuple[str, ...]:
    """The engines a model needs: the graphs its architecture's runs load."""
    return config.run_graphs


Shape = tuple[int, ...]


@dataclass(frozen=True)
class Resolution:
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> Resolution:
        h, sep, w = text.lower().partition("x")
        try:
            return cls(int(h), int(w)) if sep else cls(int(h), int(h))
        except ValueError:
            raise ConfigError(f"resolution must look like 512x512, got {text!r}") from None

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"


def check_build(config: ModelConfig, resolutions: tuple[Resolution, ...], max_boxes: int) -> None:
    """Every resolution and the box slots an engine build asks for, refused before the first engine is built:
    positive multiples of the VAE's factor, within the sizes the model runs at (its defaults.max_*)."""
    f, d = config.vae.downscale, config.defaults
    for res in resolutions:
        if res.height % f or res.width % f or min(res.height, res.width) < f:
            raise ConfigError(f"resolution {res}: height and width must be positive multiples of {f}")
        if side_beyond("height", res.height, d.max_height) or side_beyond("width", res.width, d.max_width):
            raise ConfigError(f"resolution {res} is beyond this model's maximum of {d.max_height}x{d.max_width} "
                              "(its config's defaults.max_height and max_width): no run could use the engine")
    if not 0 <= max_boxes <= config.unet.max_boxes:
        raise ConfigError(f"max boxes must lie in 0..{config.unet.max_boxes} (the model's maximum), got {max_boxes}")


def profile(spec: GraphSpec, config: ModelConfig, resolution: Resolution, max_boxes: int
            ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """{input name: (min, opt, max)} for one component at one resolution."""
    check_build(config, (resolution,), max_boxes)
    f = config.vae.downscale
    sizes = {"batch": 2 if spec.component in GUIDED_STEPS else 1, "boxes": max_boxes,
             "height": resolution.height, "width": resolution.width,
             "latent_height": resolution.height // f, "latent_width": resolution.width // f}
    shapes = {}
    for t in spec.inputs:
        fixed = t.shape(sizes)
        # the text encoders: [negative; prompt], one prompt, or one phrase per box
        if spec.component in ("text_encoder", "text_encoder_2"):
            shapes[t.name] = ((1, *fixed[1:]), (2, *fixed[1:]), (max(2, max_boxes), *fixed[1:]))
        else:
            shapes[t.name] = (fixed, fixed, fixed)
    return shapes
