"""Import a local diffusers-format Stable Diffusion 1.x folder.

Reads `vae/`, `text_encoder/`, `tokenizer/` and, when present, `unet/` (DB-UNet layers whose name
and shape match a UNet2DConditionModel parameter take its weights; DCA, BoxConstraint and the
rest keep their seeded initialisation) and `scheduler/scheduler_config.json`. Weights are read
from safetensors; a legacy .bin only through torch.load(weights_only=True), never unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from dbunet.config import DBUNetConfig, ModelConfig, TextEncoderConfig, VaeConfig, sd15
from dbunet.errors import WeightsError
from dbunet.models.cascade import Model, build_model, load_state
from dbunet.schedulers.schedule import NoiseSchedule

log = logging.getLogger(__name__)

_WEIGHT_NAMES = {
    "vae": "diffusion_pytorch_model",
    "unet": "diffusion_pytorch_model",
    "text_encoder": "model",
}


@dataclass
class ImportReport:
    unet_loaded: list[str]
    unet_kept: list[str]  # DB-UNet parameters with no same-named, same-shaped source tensor

    def summary(self) -> str:
        n, m = len(self.unet_loaded), len(self.unet_loaded) + len(self.unet_kept)
        return f"DB-UNet: {n} of {m} tensors taken from the checkpoint's UNet"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc})") from None


def read_weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    stem = _WEIGHT_NAMES[component]
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return {k: v.float() for k, v in load_file(str(folder / name)).items()}
    legacy = folder / f"{stem}.bin"
    if legacy.is_file():
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses anything that is not plain tensors
            raise WeightsError(f"{legacy}: refused to load ({exc}); convert it to safetensors") from None
    raise WeightsError(f"no weights in {folder}: expected {stem}.safetensors")


def config_from_sd_folder(root: str | Path, base: ModelConfig | None = None) -> ModelConfig:
    """The model config the folder implies; what the folder does not say comes from `base` (sd15)."""
    root = Path(root)
    base = base or sd15()
    te = _read_json(root / "text_encoder" / "config.json")
    vae = _read_json(root / "vae" / "config.json")
    text = TextEncoderConfig(
        vocab_size=te["vocab_size"],
        hidden_size=te["hidden_size"],
        intermediate_size=te["intermediate_size"],
        num_hidden_layers=te["num_hidden_layers"],
        num_attention_heads=te["num_attention_heads"],
        max_length=te.get("max_position_embeddings", 77),
        hidden_act=te.get("hidden_act", "quick_gelu"),
    )
    vae_cfg = VaeConfig(
        block_out_channels=tuple(vae["block_out_channels"]),
        layers_per_block=vae["layers_per_block"],
        latent_channels=vae["latent_channels"],
        norm_num_groups=vae.get("norm_num_groups", 32),
        scaling_factor=vae.get("scaling_factor", 0.18215),
    )
    unet = dataclasses.replace(base.unet, in_channels=vae_cfg.latent_channels, cross_attention_dim=text.hidden_size)
    unet_json = root / "unet" / "config.json"
    if unet_json.is_file():
        u = _read_json(unet_json)
        heads = u.get("attention_head_dim", 8)
        heads = heads[0] if isinstance(heads, list) else heads  # SD 1.x stores the head *count* here
        unet = DBUNetConfig(
            **{
                **dataclasses.asdict(unet),
                "block_out_channels": tuple(u["block_out_channels"][:3]),
                "layers_per_block": u.get("layers_per_block", 2),
                "norm_num_groups": u.get("norm_num_groups", 32),
                "num_attention_heads": heads,
                "sample_size": u.get("sample_size", unet.sample_size),
            }
        )
    schedule = base.schedule
    sched_json = root / "scheduler" / "scheduler_config.json"
    if sched_json.is_file():
        s = _read_json(sched_json)
        fields = {f.name for f in dataclasses.fields(NoiseSchedule)}
        schedule = dataclasses.replace(schedule, **{k: v for k, v in s.items() if k in fields})
    return dataclasses.replace(base, name=f"sd-folder:{root.name}", text=text, vae=vae_cfg, unet=unet, schedule=schedule)


def load_sd_folder(root: str | Path, base: ModelConfig | None = None) -> tuple[Model, ImportReport]:
    root = Path(root)
    if not root.is_dir():
        raise WeightsError(f"{root} is not a folder")
    config = config_from_sd_folder(root, base)
    model = build_model(config, root / "tokenizer")
    cascade = model.cascade
    load_state(cascade.vae, read_weights(root / "vae", "vae"), strict=True, source=str(root / "vae"))
    text_state = read_weights(root / "text_encoder", "text_encoder")
    text_state.pop("text_model.embeddings.position_ids", None)  # a buffer older transformers saved
    load_state(cascade.text_encoder, text_state, strict=True, source=str(root / "text_encoder"))

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
