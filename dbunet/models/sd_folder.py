"""Import a local diffusers-format Stable Diffusion 1.x/2.x folder (SDXL: dbunet.models.sdxl_folder).

Reads `vae/`, `text_encoder/`, `tokenizer/` and, when present, `unet/` (DB-UNet layers whose name
and shape match a UNet2DConditionModel parameter take its weights; DCA, BoxConstraint and the
rest keep their seeded initialisation) and `scheduler/scheduler_config.json`. Weights are read
from safetensors, whole or sharded (an index and its shards); a legacy .bin only through
torch.load(weights_only=True), never unpickled.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dbunet.config import DBUNetConfig, ModelConfig, SamplingDefaults, SDUNetConfig, TextEncoderConfig, VaeConfig, sd15
from dbunet.errors import ConfigError, WeightsError
from dbunet.models.cascade import Model, build_model, load_state
from dbunet.models.files import read_json_object, read_model_index, read_safetensors, read_sharded_safetensors
from dbunet.models.folder_scheduler import folder_sampler, read_schedule, sampler_defaults
from dbunet.scalars import tuple_for_list

log = logging.getLogger(__name__)

_WEIGHT_NAMES = {
    "vae": "diffusion_pytorch_model",
    "unet": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}


@dataclass
class ImportReport:
    unet_loaded: list[str]
    unet_kept: list[str]  # DB-UNet parameters with no same-named, same-shaped source tensor

    def summary(self) -> str:
        n, m = len(self.unet_loaded), len(self.unet_loaded) + len(self.unet_kept)
        return f"DB-UNet: {n} of {m} tensors taken from the checkpoint's UNet"


def read_weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    stem = _WEIGHT_NAMES[component]
    # (whole file, shards' index) as diffusers and transformers name them, the fp16 variant's with the variant
    # before the index's last suffix (save_pretrained(variant="fp16") past its shard size)
    for whole, index in ((f"{stem}.safetensors", f"{stem}.safetensors.index.json"),
                         (f"{stem}.fp16.safetensors", f"{stem}.safetensors.index.fp16.json")):
        if (folder / whole).is_file():
            return {k: v.float() for k, v in read_safetensors(folder / whole).items()}
        if (folder / index).is_file():
            return {k: v.float() for k, v in read_sharded_safetensors(folder / index).items()}
    legacy = folder / f"{stem}.bin"
    if legacy.is_file():
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses anything that is not plain tensors
            raise WeightsError(f"{legacy}: refused to load ({exc}); convert it to safetensors") from None
        wrong = _not_a_state_dict(state)
        if wrong:  # weights_only also loads lists, numbers and nested dicts
            raise WeightsError(f"{legacy}: not a state dict of named tensors ({wrong}); convert it to safetensors")
        return {k: v.float() for k, v in state.items()}
    if (folder / f"{stem}.bin.index.json").is_file():  # shards of pickles: each would need torch.load
        raise WeightsError(f"{folder}: sharded .bin weights ({stem}.bin.index.json) are not read; save them as "
                           "safetensors (save_pretrained writes safetensors by default)")
    raise WeightsError(f"no weights in {folder}: expected {stem}.safetensors (or {stem}.safetensors.index.json and "
                       "its shards; or their fp16 variant)")


def _not_a_state_dict(state: Any) -> str | None:
    """Why `state` is not {name: tensor}; None when it is."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}"
    for name, value in state.items():
        if not isinstance(name, str):
            return f"{name!r} is not a tensor name"
        if not isinstance(value, torch.Tensor):
            return f"{name!r}: {type(value).__name__} where a tensor belongs"
    return None


def read_text_config(path: Path, projection: bool = False, **fixed: Any) -> TextEncoderConfig:
    """A folder's CLIP text encoder config (transformers' CLIPTextConfig keys, with its defaults); `projection`:
    the encoder is a CLIPTextModelWithProjection (SDXL's second); `fixed`: what the architecture decides."""
    te = read_json_object(path)
    try:
        return TextEncoderConfig(
            vocab_size=te["vocab_size"], hidden_size=te["hidden_size"], intermediate_size=te["intermediate_size"],
            num_hidden_layers=te["num_hidden_layers"], num_attention_heads=te["num_attention_heads"],
            max_length=te.get("max_position_embeddings", 77), hidden_act=te.get("hidden_act", "quick_gelu"),
            layer_norm_eps=te.get("layer_norm_eps", 1e-5),
            projection_dim=te.get("projection_dim", 0) if projection else 0, **fixed,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_vae_config(path: Path, upcast: bool = False) -> VaeConfig:
    """A folder's AutoencoderKL config; what dbunet would drop is refused. `upcast`: honour force_upcast (SDXL
    pipelines decode in fp32 where it is set, diffusers' default true; SD 1.x pipelines ignore the flag)."""
    vae = read_json_object(path)
    _check_vae_keys(vae, str(path))
    return VaeConfig(
        block_out_channels=vae.sequence("block_out_channels"),
        layers_per_block=vae["layers_per_block"],
        latent_channels=vae["latent_channels"],
        norm_num_groups=vae.get("norm_num_groups", 32),
        scaling_factor=vae.get("scaling_factor", 0.18215),
        force_upcast=vae.flag("force_upcast", True) if upcast else False,
    )


def _text_and_vae_config(root: Path) -> tuple[TextEncoderConfig, VaeConfig]:
    return read_text_config(root / "text_encoder" / "config.json"), read_vae_config(root / "vae" / "config.json")


def config_from_sd_folder(root: str | Path, base: ModelConfig | None = None) -> ModelConfig:
    """The model config the folder implies; what the folder does not say comes from `base` (sd15)."""
    root = Path(root)
    base = base or sd15()
    text, vae_cfg = _text_and_vae_config(root)
    unet = dataclasses.replace(base.unet, in_channels=vae_cfg.latent_channels, cross_attention_dim=text.hidden_size)
    unet_json = root / "unet" / "config.json"
    if unet_json.is_file():
        u = read_json_object(unet_json)
        heads = u.get("attention_head_dim", 8)
        heads = heads[0] if isinstance(heads, list) else heads  # SD 1.x stores the head *count* here
        unet = DBUNetConfig(
            **{
                **dataclasses.asdict(unet),
                "block_out_channels": u.sequence("block_out_channels")[:3],
                "layers_per_block": u.get("layers_per_block", 2),
                "norm_num_groups": u.get("norm_num_groups", 32),
                "num_attention_heads": heads,
                "sample_size": u.get("sample_size", unet.sample_size),
            }
        )
    schedule, _ = read_schedule(root, base.schedule)
    return dataclasses.replace(base, name=f"sd-folder:{root.name}", text=text, vae=vae_cfg, unet=unet,
                               schedule=schedule)


# diffusers config keys that are bookkeeping only
_BOOKKEEPING = {"_class_name", "_diffusers_version", "_name_or_path"}
_MISSING = object()  # a key the model class has no default for: never equal to a folder's value


def _refuse_non_defaults(config: dict, model_class, carried: set[str], source: str, kind: str) -> None:
    """Every key of a folder's config that dbunet does not carry must hold the model class's default: anything
    else would change the model, and a model built without it would draw wrong images."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(model_class.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    differing = sorted(k for k, v in config.items()
                       if k not in carried and k not in _BOOKKEEPING
                       and tuple_for_list(v) != tuple_for_list(defaults.get(k, _MISSING)))
    if differing:
        raise ConfigError(f"{source}: cannot honour {', '.join(f'{k}={config[k]!r}' for k in differing)} "
                          f"({kind} leaves them at their defaults)")


# AutoencoderKL keys VaeConfig carries, or that change nothing here (sample_size: the size it was trained at;
# the block types are checked on their own)
_VAE_CARRIED = {f.name for f in dataclasses.fields(VaeConfig)} | {"sample_size", "down_block_types", "up_block_types"}


def _check_vae_keys(vae: dict, source: str) -> None:
    from diffusers import AutoencoderKL

    _refuse_non_defaults(vae, AutoencoderKL, _VAE_CARRIED, source, "the SD 1.x/2.x and SDXL VAE")
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if not isinstance(vae.get(key, []), list):
            raise ConfigError(f"{source}: {key} must be a list, got {vae[key]!r}")
        if any(b != block for b in vae.get(key, [block])):
            raise ConfigError(f"{source}: cannot honour {key}={vae[key]!r} (each block must be {block})")


def sd_unet_config(unet: dict, source: str) -> SDUNetConfig:
    """The folder's UNet config as an SDUNetConfig; any other key set to a non-default value is refused
    (class or addition embeddings, an inpainting UNet's 9 channels are named in the error)."""
    from diffusers import UNet2DConditionModel

    if unet.get("in_channels", 4) != 4:
        raise ConfigError(f"{source}: a UNet with {unet['in_channels']} input channels (an inpainting or depth "
                          "UNet) is not supported; text-to-image UNets take 4")
    carried = {f.name for f in dataclasses.fields(SDUNetConfig)}
    _refuse_non_defaults(unet, UNet2DConditionModel, carried, source, "a plain SD 1.x/2.x UNet")
    listed = {f.name for f in dataclasses.fields(SDUNetConfig) if isinstance(f.default, tuple)} - {"attention_head_dim"}
    for k in sorted(listed & set(unet)):
        if not isinstance(unet[k], list):
            raise ConfigError(f"{source}: {k} must be a list, got {unet[k]!r}")
    heads = unet.get("attention_head_dim", 8)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in unet.items() if k in carried}
    kwargs["attention_head_dim"] = tuple(heads) if isinstance(heads, list | tuple) else (heads,)
    try:
        return SDUNetConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def sd1_config_from_folder(root: str | Path) -> ModelConfig:
    """--arch sd1: the folder's own UNet, VAE, text encoder and scheduler, without boxes or refiner."""
    root = Path(root)
    if (root / "text_encoder_2").is_dir():  # else refused as a UNet with settings a plain SD UNet lacks
        raise ConfigError(f"{root} is an SDXL folder (it has text_encoder_2/): export it with --arch sdxl")
    text, vae = _text_and_vae_config(root)
    unet_json = root / "unet" / "config.json"
    if not unet_json.is_file():
        raise WeightsError(f"--arch sd1 needs the folder's own UNet: {unet_json} is missing")
    unet = sd_unet_config(read_json_object(unet_json), str(unet_json))
    text = dataclasses.replace(text, pad_token=pad_token_of(root / "tokenizer"))  # SD 2.x pads with "!"
    if unet.cross_attention_dim != text.hidden_size:
        raise ConfigError(f"{root}: the UNet attends to {unet.cross_attention_dim}-wide text, the text encoder "
                          f"gives {text.hidden_size}")
    if unet.out_channels != vae.latent_channels:
        raise ConfigError(f"{root}: the UNet predicts {unet.out_channels} channels, the VAE has "
                          f"{vae.latent_channels} latent channels")
    schedule, raw = read_schedule(root)
    side = unet.sample_size * vae.downscale
    sampler = folder_sampler(schedule, raw, "ddim", root)
    defaults = SamplingDefaults(height=side, width=side, refiner_steps=0, scheduler=sampler,
                                max_height=max(1024, 2 * side), max_width=max(1024, 2 * side),
                                **{"steps": 30, "guidance_scale": 7.5, **sampler_defaults(sampler, root)})
    return ModelConfig(name=f"sd1:{root.name}", text=text, vae=vae, unet=unet, refiner=sd15().refiner,
                       schedule=schedule, defaults=defaults, arch="sd1")


def load_sd_folder(root: str | Path, base: ModelConfig | None = None, arch: str = "dbunet",
                   refiner: Path | None = None) -> tuple[Model, ImportReport]:
    """A diffusers folder as a model of `arch`: "dbunet" builds a DB-UNet taking the matching layers, "sd1"
    deploys the folder's own UNet as it is (FOLDER_IMPORTS: the hook per architecture); `refiner`: SDXL's refiner
    folder, for architectures that take one."""
    root = Path(root)
    if not root.is_dir():
        raise WeightsError(f"{root} is not a folder")
    if arch not in FOLDER_IMPORTS:
        raise ConfigError(f"--arch {arch} cannot be imported from a diffusers folder; "
                          f"valid: {', '.join(FOLDER_IMPORTS)}")
    say_safety_checker_dropped(root)
    if refiner is not None:
        return FOLDER_IMPORTS[arch](root, base, refiner=refiner)
    return FOLDER_IMPORTS[arch](root, base)


def say_safety_checker_dropped(root: Path) -> None:
    """diffusers' SD pipelines run the folder's safety checker, which blacks out images it flags as NSFW; dbunet
    exports no such filter, so whoever deploys the folder is told rather than left to assume it came along."""
    checker = read_model_index(root).get("safety_checker")
    if isinstance(checker, list) and any(isinstance(part, str) for part in checker):
        log.warning("%s: its safety checker (%s) is not exported: dbunet's images are not filtered as diffusers' "
                    "pipeline filters them; filter where the images are served if the deployment needs it", root,
                    "/".join(str(part) for part in checker))


def _as_sd1(root: Path, base: ModelConfig | None) -> tuple[Model, ImportReport]:
    model = build_model(sd1_config_from_folder(root), root / "tokenizer", initial_weights=False)  # all loaded next
    _load_text_and_vae(model, root)
    state = read_weights(root / "unet", "unet")
    load_state(model.cascade.unet, state, strict=True, source=str(root / "unet"))
    return model, ImportReport(sorted(state), [])


def _into_dbunet(root: Path, base: ModelConfig | None) -> tuple[Model, ImportReport]:
    config = config_from_sd_folder(root, base)
    model = build_model(config, root / "tokenizer")
    cascade = model.cascade
    _load_text_and_vae(model, root)

    own = cascade.unet.state_dict()
    loaded: list[str] = []
    if (root / "unet").is_dir():
        source = read_weights(root / "unet", "unet")
        matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        load_state(cascade.unet, matched, strict=False, source=str(root / "unet"))
        loaded = sorted(matched)
    report = ImportReport(loaded, sorted(set(own) - set(loaded)))
    log.info("imported %s: %s", root, report.summary())
    return model, report


def _as_sdxl(root: Path, base: ModelConfig | None, refiner: Path | None = None) -> tuple[Model, ImportReport]:
    from dbunet.models.sdxl_folder import import_sdxl

    return import_sdxl(root, refiner)


FOLDER_IMPORTS = {"dbunet": _into_dbunet, "sd1": _as_sd1, "sdxl": _as_sdxl}


def pad_token_of(tokenizer_dir: Path) -> str:
    """The token a folder's tokenizer pads with: <|endoftext|> (SD 1.x, SDXL's first) or "!" (SD 2.x, SDXL's
    second); the runtime pads the same way."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = tokenizer_dir / name
        if path.is_file():
            pad = read_json_object(path).get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if pad is not None:
                return pad
    return "<|endoftext|>"


def _load_text_and_vae(model: Model, root: Path) -> None:
    cascade = model.cascade
    load_state(cascade.vae, read_weights(root / "vae", "vae"), strict=True, source=str(root / "vae"))
    text_state = read_weights(root / "text_encoder", "text_encoder")
    text_state.pop("text_model.embeddings.position_ids", None)  # a buffer older transformers saved
    load_state(cascade.text_encoder, text_state, strict=True, source=str(root / "text_encoder"))
