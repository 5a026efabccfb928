"""An SDXL base folder (diffusers' StableDiffusionXLPipeline layout) as a dbunet model of arch "sdxl": its own
UNet, VAE, both text encoders and tokenizers, deployed as they are (dbunet.architectures.sdxl); with SDXL's refiner
from a StableDiffusionXLImg2ImgPipeline folder where given."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from dbunet.config import (
    LatentRefinerConfig,
    ModelConfig,
    SamplingDefaults,
    SDXLUNetConfig,
    TextEncoderConfig,
    sd15,
)
from dbunet.errors import ConfigError, WeightsError
from dbunet.models.cascade import TOKENIZER_2_DIR, TOKENIZER_DIR, Model, build_model, load_state
from dbunet.models.files import read_json_object, read_model_index
from dbunet.models.folder_scheduler import folder_sampler, read_schedule, sampler_defaults
from dbunet.models.sd_folder import (
    ImportReport,
    pad_token_of,
    read_text_config,
    read_vae_config,
    read_weights,
    sd_unet_config,
)

log = logging.getLogger(__name__)

# the UNet config keys an SDXL base UNet sets beyond a plain SD UNet's, carried by SDXLUNetConfig
_SDXL_KEYS = ("transformer_layers_per_block", "addition_embed_type", "addition_time_embed_dim",
              "projection_class_embeddings_input_dim")


def _text_config(path: Path, second: bool, pad_token: str) -> TextEncoderConfig:
    """SDXL reads the penultimate hidden state of both encoders, and the second's projected pooled output."""
    return read_text_config(path, projection=second, hidden_layer=-2, pad_token=pad_token)


def _sdxl_unet_config(root: Path, what: str) -> SDXLUNetConfig:
    unet_json = root / "unet" / "config.json"
    u = read_json_object(unet_json)
    if u.get("addition_embed_type") != "text_time":
        raise ConfigError(f"{unet_json}: not an SDXL {what} UNet (addition_embed_type "
                          f"{u.get('addition_embed_type')!r}, expected 'text_time')")
    plain = sd_unet_config({k: v for k, v in u.items() if k not in _SDXL_KEYS}, str(unet_json))
    layers = u.get("transformer_layers_per_block", 1)
    return SDXLUNetConfig(
        **dataclasses.asdict(plain), addition_time_embed_dim=u["addition_time_embed_dim"],
        projection_class_embeddings_input_dim=u["projection_class_embeddings_input_dim"],
        transformer_layers_per_block=tuple(layers) if isinstance(layers, list) else (layers,))


def sdxl_config_from_folder(root: str | Path, refiner: str | Path | None = None) -> ModelConfig:
    """The config of an SDXL base folder, with SDXL's refiner from a second folder where given."""
    root = Path(root)
    vae = read_vae_config(root / "vae" / "config.json", upcast=True)
    text = _text_config(root / "text_encoder" / "config.json", False, pad_token_of(root / TOKENIZER_DIR))
    text_2 = _text_config(root / "text_encoder_2" / "config.json", True, pad_token_of(root / TOKENIZER_2_DIR))
    unet = _sdxl_unet_config(root, "base")
    schedule, sched = read_schedule(root)
    side = unet.sample_size * vae.downscale
    sampler = folder_sampler(schedule, sched, "euler", root)
    latent_refiner = latent_refiner_config(Path(refiner), sampler) if refiner is not None else None
    run = {"steps": 30, "guidance_scale": 5.0, **sampler_defaults(sampler, root)}
    defaults = SamplingDefaults(height=side, width=side, refiner_steps=run["steps"] if latent_refiner else 0,
                                scheduler=sampler, max_height=max(1024, 2 * side), max_width=max(1024, 2 * side),
                                **run)
    zeros = read_model_index(root).flag("force_zeros_for_empty_prompt", True)
    name = f"sdxl:{root.name}" + (f"+{Path(refiner).name}" if refiner is not None else "")
    try:
        return ModelConfig(name=name, text=text, vae=vae, unet=unet, refiner=sd15().refiner,
                           schedule=schedule, defaults=defaults, arch="sdxl", text_2=text_2,
                           zero_empty_negative=zeros, latent_refiner=latent_refiner)
    except ConfigError as exc:
        raise ConfigError(f"{root}{' with ' + str(refiner) if refiner else ''}: {exc}") from None


def latent_refiner_config(root: Path, base_sampler: str) -> LatentRefinerConfig:
    """SDXL's refiner from a StableDiffusionXLImg2ImgPipeline folder: its UNet, its scheduler's schedule and
    its pipeline flags (requires_aesthetics_score, force_zeros_for_empty_prompt; diffusers' defaults where absent).
    A run samples the refiner's steps with the base's sampler (the request's one `scheduler`); where the refiner's
    own scheduler samples otherwise, as its pipeline in diffusers would, that is said here."""
    if not (root / "unet").is_dir():
        raise WeightsError(f"--refiner {root}: not an SDXL refiner folder (no unet/)")
    unet = _sdxl_unet_config(root, "refiner")
    schedule, sched = read_schedule(root)
    own = folder_sampler(schedule, sched, base_sampler, root)  # says its own options dbunet lacks, or its class
    if own != base_sampler:
        log.warning("--refiner %s: its scheduler samples as %s, the base's as %s; a run samples the base's and the "
                    "refiner's steps with one sampler (the request's, default %s), where diffusers' refiner pipeline "
                    "samples with %s", root, own, base_sampler, base_sampler, own)
    flags = read_model_index(root)
    return LatentRefinerConfig(unet=unet, schedule=schedule,
                               requires_aesthetics_score=flags.flag("requires_aesthetics_score", False),
                               zero_empty_negative=flags.flag("force_zeros_for_empty_prompt", True))


def import_sdxl(root: Path, refiner: Path | None = None) -> tuple[Model, ImportReport]:
    """The folder's own weights, every tensor (strict); SDXL's refiner UNet from `refiner`, whose second text
    encoder and VAE, where it has them, must be the base's (the pipelines share them: one of each is exported)."""
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", TOKENIZER_DIR, TOKENIZER_2_DIR):
        if not (root / sub).is_dir():
            raise WeightsError(f"--arch sdxl: {root} has no {sub}/ (an SDXL base folder has unet, vae, text_encoder, "
                               "text_encoder_2, tokenizer, tokenizer_2)")
    if refiner is not None and not Path(refiner).is_dir():
        raise WeightsError(f"--refiner {refiner} is not a directory (an SDXL refiner folder)")
    model = build_model(sdxl_config_from_folder(root, refiner), root / TOKENIZER_DIR, initial_weights=False)
    cascade, loaded = model.cascade, []
    for name, module in (("unet", cascade.unet), ("vae", cascade.vae), ("text_encoder", cascade.text_encoder),
                         ("text_encoder_2", cascade.text_encoder_2)):
        state = read_weights(root / name, name)
        state.pop("text_model.embeddings.position_ids", None)  # a buffer older transformers saved
        load_state(module, state, strict=True, source=str(root / name))
        loaded += [f"{name}.{k}" for k in state]
    if refiner is not None:
        refiner = Path(refiner)
        _require_shared(model, refiner)
        state = read_weights(refiner / "unet", "unet")
        load_state(cascade.latent_refiner, state, strict=True, source=str(refiner / "unet"))
        loaded += [f"latent_refiner.{k}" for k in state]
    return model, ImportReport(sorted(loaded), [])


def _require_shared(model: Model, refiner: Path) -> None:
    """The refiner folder's text_encoder_2, tokenizer_2 and vae, where present, equal the base's: configs, weights
    and tokenizer files (a refiner pipeline encodes and decodes with its own; dbunet exports the base's)."""
    import torch

    config, cascade = model.config, model.cascade

    def differs(what: str) -> WeightsError:
        return WeightsError(f"--refiner {refiner}: its {what} differs from the base's; dbunet exports one for both "
                            "(as SDXL's refiner shares the base's)")

    shared = (("text_encoder_2", cascade.text_encoder_2, config.text_2,  # its padding: the tokenizer's, below
               lambda path: _text_config(path, True, config.text_2.pad_token)),
              ("vae", cascade.vae, config.vae, lambda path: read_vae_config(path, upcast=True)))
    for name, module, own_config, read_config in shared:
        if not (refiner / name).is_dir():
            continue
        if read_config(refiner / name / "config.json") != own_config:
            raise differs(f"{name} config")
        theirs = read_weights(refiner / name, name)
        theirs.pop("text_model.embeddings.position_ids", None)
        ours = module.state_dict()
        if not (set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k].float()) for k in ours)):
            raise differs(name)
    their_tokenizer = refiner / TOKENIZER_2_DIR
    if their_tokenizer.is_dir():
        files = {name: (their_tokenizer / name).read_bytes() for name in model.tokenizer_2_files
                 if (their_tokenizer / name).is_file()}
        if (files != {name: model.tokenizer_2_files[name] for name in files}
                or pad_token_of(their_tokenizer) != config.text_2.pad_token):
            raise differs(TOKENIZER_2_DIR)
