"""Model configs: frozen dataclasses, validated at construction, serializable to JSON.

A config plus a safetensors state dict is a complete model. `tiny` is the default preset
(seconds per image on a 2-core CPU); `sd15` has Stable Diffusion 1.5's scale.
This module is torch-free so that the runtime can read configs from a manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from dbunet import architectures, jsonfile, schemas
from dbunet.architectures.base import LATENT_REFINER_GRAPHS
from dbunet.bounds import check_bounds, check_choices, check_flags
from dbunet.errors import ConfigError
from dbunet.schedulers.schedule import NoiseSchedule


def _check_groups(name: str, channels: tuple[int, ...], groups: int) -> None:
    for c in channels:
        if c % groups:
            raise ConfigError(f"{name}: every channel count must be divisible by {groups} groups, got {c}")


@dataclass(frozen=True)
class TextEncoderConfig:
    """transformers CLIPTextConfig fields (the text encoder is a stock CLIPTextModel)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_length: int = 77
    hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"  # SD 1.x's CLIP, SDXL's OpenCLIP bigG
    layer_norm_eps: float = 1e-5
    # SDXL's encoders: the text embedding is the penultimate hidden state (-2: before the last layer and the
    # final layer norm), and the second encoder's pooled output goes through its projection (projection_dim)
    hidden_layer: int = -1  # -1: the last hidden state, after the final layer norm
    projection_dim: int = 0  # 0: no projection (CLIPTextModel); > 0: CLIPTextModelWithProjection's text_embeds
    pad_token: str = "<|endoftext|>"  # SD 1.x and SDXL's first tokenizer pad with EOS, SDXL's second with "!"

    def __post_init__(self) -> None:
        check_choices("text", self)
        check_bounds("text", self, {"vocab_size": (2, 1 << 20), "hidden_size": (1, 1 << 14),
                                    "intermediate_size": (1, 1 << 16), "num_hidden_layers": (1, 128),
                                    "num_attention_heads": (1, 256), "max_length": (3, 1024),
                                    "projection_dim": (0, 1 << 14), "layer_norm_eps": (1e-12, 0.1)})
        # its range needs the layer count, checked above to be a number
        check_bounds("text", self, {"hidden_layer": (-self.num_hidden_layers, -1)})
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"text encoder: hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads"
            )
        if self.max_length < 3:
            raise ConfigError(f"text encoder: max_length must be >= 3, got {self.max_length}")


@dataclass(frozen=True)
class VaeConfig:
    """diffusers AutoencoderKL fields; len(block_out_channels) - 1 downsamples (4 blocks: f = 8)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    force_upcast: bool = False  # the VAE overflows in fp16 (SDXL's): its fp16 export stays fp32

    def __post_init__(self) -> None:
        check_bounds("vae", self, {"block_out_channels": (1, 4096), "layers_per_block": (1, 16),
                                   "latent_channels": (1, 64), "norm_num_groups": (1, 1024),
                                   "scaling_factor": (1e-4, 1e4)}, counts={"block_out_channels": (1, 6)})
        _check_groups("vae", self.block_out_channels, self.norm_num_groups)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class DBUNetConfig:
    """DB-UNet (docs/architecture.md 3.2): three levels; DCA and BoxConstraint in every encoder layer."""

    in_channels: int = 4
    block_out_channels: tuple[int, int, int] = (320, 640, 1280)
    layers_per_block: int = 2
    num_attention_heads: int = 8
    norm_num_groups: int = 32
    cross_attention_dim: int = 768  # text hidden size D
    dca_heads: int = 8
    dca_max_tokens: int = 1024  # P bound for DCA tokens at `sample_size`; sets each level's pool factor
    sample_size: int = 64  # the latent size the pool factors are chosen for
    max_boxes: int = 30
    box_fourier_freqs: int = 8
    box_hidden_dim: int = 512
    box_gate_init: float = 0.0  # GLIGEN initialises the gate at 0 (a no-op until trained)

    def __post_init__(self) -> None:
        check_bounds("dbunet", self, {"in_channels": (1, 64), "block_out_channels": (1, 8192),
                                      "layers_per_block": (1, 16), "num_attention_heads": (1, 256),
                                      "norm_num_groups": (1, 1024),
                                      "cross_attention_dim": (1, 1 << 14), "dca_heads": (1, 256),
                                      "dca_max_tokens": (1, 1 << 20), "sample_size": (1, 1024), "max_boxes": (0, 256),
                                      "box_fourier_freqs": (1, 64), "box_hidden_dim": (1, 1 << 14),
                                      "box_gate_init": (-100, 100)})
        if len(self.block_out_channels) != 3:
            raise ConfigError(f"DB-UNet has exactly 3 levels, got block_out_channels={self.block_out_channels}")
        _check_groups("dbunet", self.block_out_channels, self.norm_num_groups)
        for c in self.block_out_channels:
            if c % self.num_attention_heads or (2 * c) % self.dca_heads or c % self.dca_heads:
                raise ConfigError(
                    f"dbunet: channels {c} must be divisible by num_attention_heads={self.num_attention_heads} "
                    f"and dca_heads={self.dca_heads}"
                )
        if self.layers_per_block < 1 or self.max_boxes < 0 or self.dca_max_tokens < 1:
            raise ConfigError("dbunet: layers_per_block >= 1, max_boxes >= 0, dca_max_tokens >= 1 required")

    def dca_pool(self, level: int) -> int:
        """Pool factor k of DCA at `level`: the smallest power of 2 keeping P <= dca_max_tokens
        (docs/architecture.md 3.2)."""
        side = -(-self.sample_size // 2**level)
        k = 1
        while (-(-side // k)) ** 2 > self.dca_max_tokens:
            k *= 2
        return k


@dataclass(frozen=True)
class SDUNetConfig:
    """A plain Stable Diffusion 1.x / 2.x UNet (diffusers UNet2DConditionModel fields; --arch sd1).

    Only what such folders set is carried; dbunet.models.sd_folder refuses a folder whose UNet sets
    anything else to a non-default value (an inpainting UNet's 9 input channels, class embeddings...)."""

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    cross_attention_dim: int = 768
    attention_head_dim: tuple[int, ...] = (8,)  # one value for every block, or one per block
    norm_num_groups: int = 32
    use_linear_projection: bool = False  # SD 2.x
    upcast_attention: bool = False  # SD 2.1

    max_boxes = 0  # no box conditioning (class attribute: shared code asks every denoiser config)

    def __post_init__(self) -> None:
        check_bounds("sd unet", self, {"in_channels": (1, 64), "out_channels": (1, 64), "sample_size": (1, 1024),
                                       "block_out_channels": (1, 8192), "layers_per_block": (1, 16),
                                       "cross_attention_dim": (1, 1 << 14), "attention_head_dim": (1, 1024),
                                       "norm_num_groups": (1, 1024)}, counts={"block_out_channels": (1, 8)})
        n = len(self.block_out_channels)
        same_count = len(self.down_block_types) == len(self.up_block_types) == n
        if not same_count or len(self.attention_head_dim) not in (1, n):
            raise ConfigError(f"sd unet: {n} blocks need as many down and up block types and 1 or {n} head dims")
        _check_groups("sd unet", self.block_out_channels, self.norm_num_groups)

    def to_diffusers(self) -> dict[str, Any]:
        heads = self.attention_head_dim
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels, "sample_size": self.sample_size,
            "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
            "down_block_types": list(self.down_block_types), "up_block_types": list(self.up_block_types),
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": heads[0] if len(heads) == 1 else list(heads),
            "norm_num_groups": self.norm_num_groups, "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
        }


@dataclass(frozen=True)
class SDXLUNetConfig(SDUNetConfig):
    """An SDXL UNet: an SD UNet whose timestep embedding adds the micro-conditioning ("text_time": the pooled
    text embedding and six size numbers, each through a sinusoidal embedding of addition_time_embed_dim)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    sample_size: int = 128
    cross_attention_dim: int = 2048
    attention_head_dim: tuple[int, ...] = (5, 10, 20)
    transformer_layers_per_block: tuple[int, ...] = (1, 2, 10)
    use_linear_projection: bool = True
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 2816  # 6 * addition_time_embed_dim + the pooled embedding

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds("sdxl unet", self, {"transformer_layers_per_block": (1, 64), "addition_time_embed_dim": (1, 4096),
                                         "projection_class_embeddings_input_dim": (1, 1 << 16)})
        if len(self.transformer_layers_per_block) not in (1, len(self.block_out_channels)):
            raise ConfigError("sdxl unet: transformer_layers_per_block needs 1 value or one per block")

    def to_diffusers(self) -> dict[str, Any]:
        layers = self.transformer_layers_per_block
        return {**super().to_diffusers(), "addition_embed_type": "text_time",
                "addition_time_embed_dim": self.addition_time_embed_dim,
                "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim,
                "transformer_layers_per_block": layers[0] if len(layers) == 1 else list(layers)}


@dataclass(frozen=True)
class LatentRefinerConfig:
    """SDXL's refiner: a second SDXL UNet that takes the base's latents over for the last, low-noise steps
    (diffusers' StableDiffusionXLImg2ImgPipeline with denoising_start), conditioned on the second text encoder
    alone; its time_ids end with an aesthetic score instead of the target size where requires_aesthetics_score."""

    unet: SDXLUNetConfig
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    requires_aesthetics_score: bool = True  # time_ids: size, crop, score (5); otherwise size, crop, target (6)
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    zero_empty_negative: bool = False  # the refiner folder's own force_zeros_for_empty_prompt

    @property
    def time_ids(self) -> int:
        return 5 if self.requires_aesthetics_score else 6


ARCHITECTURES = architectures.NAMES
# the denoiser config classes dbunet.architectures names
UNET_CONFIGS = {"DBUNetConfig": DBUNetConfig, "SDUNetConfig": SDUNetConfig, "SDXLUNetConfig": SDXLUNetConfig}


@dataclass(frozen=True)
class RefinerConfig:
    """DiffuseGAE refiner (docs/architecture.md 3.3): semantic encoder, GAE, AdaGN conditional UNet in pixel space."""

    encoder_channels: tuple[int, ...] = (64, 128, 256, 512)
    semantic_dim: int = 512
    gae_widths: tuple[int, ...] = (512, 1024, 2048)
    gae_groups: int = 32
    code_dim: int = 100
    # Named slices of the 100-dim code; a user swaps them between images (the editing claim).
    attribute_groups: tuple[tuple[str, int], ...] = (
        ("layout", 20),
        ("shape", 20),
        ("color", 20),
        ("texture", 20),
        ("lighting", 20),
    )
    unet_channels: tuple[int, ...] = (64, 128, 256)
    norm_num_groups: int = 32
    schedule: NoiseSchedule = field(
        default_factory=lambda: NoiseSchedule(
            beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True
        )
    )

    def __post_init__(self) -> None:
        check_bounds("refiner", self, {"encoder_channels": (1, 8192), "semantic_dim": (1, 1 << 14),
                                       "gae_widths": (1, 1 << 15), "gae_groups": (1, 1024), "code_dim": (1, 1 << 14),
                                       "unet_channels": (1, 8192), "norm_num_groups": (1, 1024)},
                     counts={"encoder_channels": (1, 8), "gae_widths": (1, 16), "unet_channels": (1, 8),
                             "attribute_groups": (1, 256)})
        _check_groups("refiner encoder", self.encoder_channels, self.norm_num_groups)
        _check_groups("refiner unet", self.unet_channels, self.norm_num_groups)
        _check_groups("gae", self.gae_widths, self.gae_groups)
        for name, size in self.attribute_groups:  # a sum alone lets a negative size reach into its neighbour
            if not 1 <= size <= self.code_dim:
                raise ConfigError(f"refiner: attribute group {name!r} has {size} dims; each has 1..{self.code_dim}")
        total = sum(size for _, size in self.attribute_groups)
        if total != self.code_dim:
            raise ConfigError(f"refiner: attribute groups cover {total} dims, code_dim is {self.code_dim}")
        names = [name for name, _ in self.attribute_groups]
        if len(set(names)) != len(names):
            raise ConfigError(f"refiner: duplicate attribute group names in {names}")

    def attribute_slice(self, name: str) -> slice:
        start = 0
        for group, size in self.attribute_groups:
            if group == name:
                return slice(start, start + size)
            start += size
        valid = ", ".join(g for g, _ in self.attribute_groups)
        raise ConfigError(f"unknown attribute group {name!r}; valid: {valid}")


def side_beyond(name: str, value: int, most: int) -> str | None:
    """The one wording of an image side past the model's maximum (`most`, its defaults.max_<name>; 0: none known),
    for requests, tracing sizes and engine resolutions alike; None where it is within."""
    if most and value > most:
        return f"{name} {value} is beyond this model's maximum of {most} (its config's defaults.max_{name})"
    return None


@dataclass(frozen=True)
class SamplingDefaults:
    """What a plain call uses when the caller says nothing."""

    height: int = 512
    width: int = 512
    steps: int = 30
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    box_fraction: float = 0.3  # boxes on for the first 30% of steps (GLIGEN's scheduled sampling)
    refiner_steps: int = 10
    refiner_strength: float = 0.3
    high_noise_frac: float = 0.8  # SDXL's refiner takes over after this fraction of the noise schedule
    # the largest image a request may ask for: beyond it memory, not the user, would say no
    max_height: int = 1024
    max_width: int = 1024


MAX_SIDE = 8192  # no config may allow more (a manifest is untrusted input)
MAX_INT = schemas.MAX_INT  # bound on every integer a config holds (its JSON Schema says so)


@dataclass(frozen=True)
class ModelConfig:
    """A whole model. `arch` "dbunet": DB-UNet with boxes, then the refiner (docs/architecture.md 3).
    `arch` "sd1": a plain Stable Diffusion 1.x/2.x folder's own UNet (`unet` is an SDUNetConfig): no boxes,
    no refiner stage (`refiner` then keeps its defaults and nothing uses it)."""

    name: str
    text: TextEncoderConfig
    vae: VaeConfig
    unet: DBUNetConfig | SDUNetConfig | SDXLUNetConfig  # the class dbunet.architectures names for `arch`
    refiner: RefinerConfig
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    seed: int = 0  # seed of the deterministic initial weights
    arch: str = architectures.DEFAULT  # a name in dbunet.architectures
    text_2: TextEncoderConfig | None = None  # SDXL's second text encoder (with projection)
    # SDXL pipelines' force_zeros_for_empty_prompt: no negative prompt given is all-zero embeddings, not encoded
    zero_empty_negative: bool = False
    latent_refiner: LatentRefinerConfig | None = None  # SDXL's refiner, where exported with one (--refiner)

    @property
    def text_width(self) -> int:
        """The width of the text embedding the denoiser attends to (both encoders' hidden states, concatenated)."""
        return self.text.hidden_size + (self.text_2.hidden_size if self.text_2 else 0)

    @property
    def architecture(self) -> architectures.Architecture:
        return architectures.get(self.arch)

    @property
    def has_boxes(self) -> bool:
        return self.architecture.boxes

    @property
    def has_refiner(self) -> bool:
        """The DiffuseGAE refiner stage (in pixel space, after the VAE)."""
        return self.architecture.refiner

    @property
    def has_latent_refiner(self) -> bool:
        """SDXL's refiner (in latent space, before the VAE)."""
        return self.latent_refiner is not None

    def _without_absent_refiner(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return names if self.has_latent_refiner else tuple(n for n in names if n not in LATENT_REFINER_GRAPHS)

    @property
    def graphs(self) -> tuple[str, ...]:
        """Every graph the exporter writes for this model (its architecture's, less a refiner it lacks)."""
        return self._without_absent_refiner(self.architecture.graphs)

    @property
    def run_graphs(self) -> tuple[str, ...]:
        """The graphs a run loads, and the TensorRT engines built for them."""
        return self._without_absent_refiner(self.architecture.run_graphs)

    def __post_init__(self) -> None:
        check_choices("config", self)
        check_flags("config", self)
        arch = architectures.get(self.arch, "config.arch")
        want = UNET_CONFIGS[arch.unet_config]
        if not isinstance(self.unet, want):
            raise ConfigError(f"arch {self.arch} needs a {want.__name__} as its unet, got {type(self.unet).__name__}")
        if not (arch.refiner or self.has_latent_refiner) and self.defaults.refiner_steps:
            raise ConfigError(f"this {self.arch} model has no refiner: defaults.refiner_steps must be 0")
        if self.latent_refiner is not None:
            self._check_latent_refiner(arch)
        if (self.text_2 is not None) != (arch.text_encoders == 2):  # first: the text width below counts text_2
            raise ConfigError(f"arch {self.arch} takes {arch.text_encoders} text encoder(s): text_2 "
                              f"{'missing' if self.text_2 is None else 'given'}")
        if self.unet.in_channels != self.vae.latent_channels:
            raise ConfigError(
                f"unet.in_channels {self.unet.in_channels} != vae.latent_channels {self.vae.latent_channels}"
            )
        if self.unet.cross_attention_dim != self.text_width:
            raise ConfigError(f"unet.cross_attention_dim {self.unet.cross_attention_dim} != the text width "
                              f"{self.text_width}" + (" (both encoders' hidden sizes)" if self.text_2 else ""))
        if arch.micro_conditioning:
            want = 6 * self.unet.addition_time_embed_dim + self.text_2.projection_dim
            if self.text_2.projection_dim < 1 or self.unet.projection_class_embeddings_input_dim != want:
                raise ConfigError(f"sdxl: projection_class_embeddings_input_dim must be 6 x addition_time_embed_dim "
                                  f"+ text_2.projection_dim = {want}, got "
                                  f"{self.unet.projection_class_embeddings_input_dim}")
        f = self.vae.downscale
        d = self.defaults
        if d.height % f or d.width % f:
            raise ConfigError(f"default image size must be a multiple of {f}")
        if not (f <= d.height <= d.max_height <= MAX_SIDE and f <= d.width <= d.max_width <= MAX_SIDE):
            raise ConfigError(f"image sizes: need {f} <= default <= maximum <= {MAX_SIDE}, got height "
                              f"{d.height}/{d.max_height}, width {d.width}/{d.max_width}")

    def _check_latent_refiner(self, arch: architectures.Architecture) -> None:
        r = self.latent_refiner
        if not arch.latent_refiner:
            raise ConfigError(f"arch {self.arch} takes no latent refiner (an SDXL refiner)")
        if r.unet.cross_attention_dim == self.text_width != self.text_2.hidden_size:  # a base folder given as refiner
            raise ConfigError(f"latent_refiner: its UNet attends to both text encoders ({self.text_width} wide), as "
                              f"SDXL's base UNet does; a refiner's attends to the second alone "
                              f"({self.text_2.hidden_size}): give the refiner's folder")
        if r.unet.cross_attention_dim != self.text_2.hidden_size or r.unet.in_channels != self.vae.latent_channels:
            raise ConfigError(f"latent_refiner: its UNet must attend to the second text encoder's width "
                              f"{self.text_2.hidden_size} and take {self.vae.latent_channels} latent channels, got "
                              f"{r.unet.cross_attention_dim} and {r.unet.in_channels}")
        want = r.time_ids * r.unet.addition_time_embed_dim + self.text_2.projection_dim
        if r.unet.projection_class_embeddings_input_dim != want:
            raise ConfigError(f"latent_refiner: projection_class_embeddings_input_dim must be {r.time_ids} x "
                              f"addition_time_embed_dim + text_2.projection_dim = {want} (requires_aesthetics_score "
                              f"{r.requires_aesthetics_score}), got {r.unet.projection_class_embeddings_input_dim}")
        if not 0.0 < self.defaults.high_noise_frac < 1.0:
            raise ConfigError(f"defaults.high_noise_frac must lie strictly between 0 and 1, got "
                              f"{self.defaults.high_noise_frac}")

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Checked against the JSON Schema generated from these dataclasses, then built (and bounded) by them."""
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected an object, got {type(data).__name__}")
        arch = architectures.get(data.get("arch", architectures.DEFAULT), "config.arch")
        schema = schemas.dataclass_schema(cls)  # with the unet schema of the architecture's config class
        schema = {**schema, "properties": {**schema["properties"],
                                           "unet": schemas.dataclass_schema(UNET_CONFIGS[arch.unet_config])}}
        wrong = schemas.problem(data, schema)
        if wrong:
            raise ConfigError(f"config {wrong}")
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(jsonfile.loads(text, lambda why: ConfigError(f"config {why}")))


def _convert(tp: Any, value: Any) -> Any:
    """Rebuild a value of annotated type `tp` from its JSON form, already checked against the schema generated
    from the same annotations (dbunet.schemas): lists become tuples, objects dataclasses, integers floats where
    a float is declared."""
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_convert(a, v) for a, v in zip(kinds, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        return _convert(arms[0], value) if value is not None and len(arms) == 1 else value
    if tp is float:
        if not math.isfinite(value):  # JSON Schema has no word for NaN and infinity, which Python's JSON reads
            raise ConfigError(f"expected a finite number, got {value!r}")
        return float(value)
    return value


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = dict(typing.get_type_hints(cls))
    if cls is ModelConfig:  # the denoiser's config class follows the architecture
        hints["unet"] = UNET_CONFIGS[architectures.get(data.get("arch", architectures.DEFAULT),
                                                       "config.arch").unet_config]
    kwargs = {}
    for k, v in data.items():
        try:
            kwargs[k] = _convert(hints[k], v)
        except ConfigError as exc:
            raise ConfigError(f"{cls.__name__}.{k}: {exc}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


# -- presets ---------------------------------------------------------------------------------
def tiny() -> ModelConfig:
    """Seconds per image on a 2-core CPU; seeded random weights (no training)."""
    return ModelConfig(
        name="tiny",
        text=TextEncoderConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        ),
        vae=VaeConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8),
        unet=DBUNetConfig(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            num_attention_heads=4,
            norm_num_groups=8,
            cross_attention_dim=64,
            dca_heads=4,
            dca_max_tokens=256,
            sample_size=16,
            box_hidden_dim=64,
            # Untrained weights: a zero gate would make the boxes invisible, so the demo opens it.
            box_gate_init=1.0,
        ),
        refiner=RefinerConfig(
            encoder_channels=(16, 32, 32),
            semantic_dim=128,
            gae_widths=(128, 256),
            gae_groups=8,
            unet_channels=(16, 32, 32),
            norm_num_groups=8,
        ),
        defaults=SamplingDefaults(height=128, width=128, steps=8, refiner_steps=4, max_height=512, max_width=512),
    )


def sd15() -> ModelConfig:
    """Stable Diffusion 1.5 scale: text dim 768, channels 320/640/1280, 512x512 images."""
    return ModelConfig(name="sd15", text=TextEncoderConfig(), vae=VaeConfig(), unet=DBUNetConfig(),
                       refiner=RefinerConfig())


def shapes() -> ModelConfig:
    """The demo: a small cascade trained on generated shapes-in-boxes images (dbunet.train), 64x64
    images on an 8x8 latent. Its trained weights ship in dbunet/presets/shapes/."""
    return ModelConfig(
        name="shapes",
        text=TextEncoderConfig(
            vocab_size=600, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4
        ),
        # scaling_factor: 1 / std of the trained VAE's latents, measured by dbunet.train after the VAE stage
        vae=VaeConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
                      scaling_factor=0.39164),
        unet=DBUNetConfig(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            num_attention_heads=4,
            norm_num_groups=8,
            cross_attention_dim=64,
            dca_heads=4,
            dca_max_tokens=64,
            sample_size=8,
            max_boxes=8,
            box_hidden_dim=64,
            box_gate_init=1.0,  # trained from scratch: no pretrained model to protect with a closed gate
        ),
        refiner=RefinerConfig(
            encoder_channels=(16, 32, 32),
            semantic_dim=128,
            gae_widths=(128, 256),
            gae_groups=8,
            unet_channels=(16, 32, 32),
            norm_num_groups=8,
        ),
        defaults=SamplingDefaults(
            height=64, width=64, steps=20, guidance_scale=4.0, box_fraction=1.0, refiner_steps=6,
            refiner_strength=0.3, max_height=256, max_width=256,
        ),
    )


def sdxl() -> ModelConfig:
    """SDXL base at its real sizes, seeded random weights (--arch sdxl): for export and runtime benchmarks."""
    clip_l = TextEncoderConfig(hidden_layer=-2)
    clip_g = TextEncoderConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                               hidden_act="gelu", hidden_layer=-2, projection_dim=1280, pad_token="!")
    defaults = SamplingDefaults(height=1024, width=1024, steps=30, guidance_scale=5.0, scheduler="euler",
                                refiner_steps=0, max_height=2048, max_width=2048)
    return ModelConfig(name="sdxl", text=clip_l, vae=VaeConfig(scaling_factor=0.13025, force_upcast=True),
                       unet=SDXLUNetConfig(), refiner=RefinerConfig(), defaults=defaults, arch="sdxl",
                       text_2=clip_g, zero_empty_negative=True,
                       schedule=NoiseSchedule(timestep_spacing="leading", steps_offset=1))


PRESETS = {"tiny": tiny, "sd15": sd15, "shapes": shapes, "sdxl": sdxl}
DEFAULT_PRESET = "shapes"  # the trained demo: dbunet-export without --config
# a dbunet model folder (dbunet.models.cascade.save_model): this config as JSON, and the weights
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}") from None
