"""The whole model: text encoder, VAE, DB-UNet and refiner, with one config and one weights file.

On disk a model is a folder:
    config.json          ModelConfig (dbunet.config)
    model.safetensors    every component's state dict, keys prefixed by component name
    tokenizer/           vocab.json + merges.txt (CLIP BPE)
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from dbunet import atomic
from dbunet.config import CONFIG_FILE, WEIGHTS_FILE, ModelConfig
from dbunet.errors import ConfigError, WeightsError
from dbunet.models.components import (
    build_sd_unet,
    build_sdxl_unet,
    build_text_encoder,
    build_vae,
    clip_text_layout,
    load_tokenizer,
)
from dbunet.models.dbunet import DBUNet
from dbunet.models.files import read_json_object, read_safetensors
from dbunet.models.refiner import Refiner
from dbunet.tokenizer import BOS, EOS, learn_bpe, write_clip_tokenizer

TOKENIZER_DIR = "tokenizer"
TOKENIZER_2_DIR = "tokenizer_2"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")


# each architecture's denoiser (dbunet.architectures names them; the modules live here, with torch)
UNET_BUILDERS = {"dbunet": DBUNet, "sd1": build_sd_unet, "sdxl": build_sdxl_unet}


class Cascade(nn.Module):
    """Every trainable part of the cascade, under the names its checkpoint keys use. `initial_weights=False`: for a
    caller that loads every weight next (see allocated)."""

    def __init__(self, config: ModelConfig, bos_token_id: int, eos_token_id: int,
                 initial_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        part = _initialised if initial_weights else allocated
        self.text_encoder = part(lambda: build_text_encoder(config.text, bos_token_id, eos_token_id))
        if config.text_2 is not None:  # SDXL's second encoder (same vocabulary, its own weights)
            self.text_encoder_2 = part(lambda: build_text_encoder(config.text_2, bos_token_id, eos_token_id))
        self.vae = part(lambda: build_vae(config.vae))
        self.unet = part(lambda: UNET_BUILDERS[config.arch](config.unet))
        if config.latent_refiner is not None:  # SDXL's refiner: a second SDXL UNet, in latent space
            self.latent_refiner = part(lambda: build_sdxl_unet(config.latent_refiner.unet))
        if config.has_refiner:
            self.refiner = part(lambda: Refiner(config.refiner))


def _initialised(build: Callable[[], nn.Module]) -> nn.Module:
    return build()


def allocated(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with memory for its weights but no initial values, for a caller that loads them all next: drawing
    sd15's random initial weights took 5 of the 6 s its model folder took to load (2-core CPU). Parameters are made
    on the meta device while it builds, so their initialisation costs nothing, and buffers are computed as usual
    (CLIP's position ids are not in the weights file). The weights are NaN until loaded: one that is never loaded
    makes a non-finite output, not a plausible image."""
    _watch_parameters()
    _ALLOCATING.on = True
    try:
        module = build()
    finally:
        _ALLOCATING.on = False
    if any(buffer.is_meta for buffer in module.buffers()):  # a buffer computed from a parameter: build for real
        module = build()
    else:
        _materialise(module)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(math.nan)
    return module


_ALLOCATING = threading.local()  # `on` while this thread builds in allocated()


@functools.cache
def _watch_parameters() -> None:
    """One hook for the process, inert but in a thread inside allocated(): a model another thread builds then
    keeps its initial weights."""

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
        if getattr(_ALLOCATING, "on", False) and param is not None and not param.is_meta:
            return nn.Parameter(param.to("meta"), param.requires_grad)
        return None

    register_module_parameter_registration_hook(on_meta)


def _materialise(module: nn.Module) -> None:
    """Every meta parameter replaced by uninitialised host memory; a parameter two modules share stays shared."""
    made: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            if param.is_meta:
                if id(param) not in made:
                    made[id(param)] = nn.Parameter(torch.empty_like(param, device="cpu"), param.requires_grad)
                setattr(sub, name, made[id(param)])


class Model:
    """A config, its cascade and its tokenizer: everything TorchPipeline and the exporter need."""

    def __init__(self, config: ModelConfig, cascade: Cascade, tokenizer, tokenizer_files: dict[str, bytes],
                 tokenizer_2=None, tokenizer_2_files: dict[str, bytes] | None = None) -> None:
        self.config, self.cascade, self.tokenizer = config, cascade, tokenizer
        self.tokenizer_files = tokenizer_files  # vocab.json / merges.txt bytes, saved with the weights
        self.tokenizer_2, self.tokenizer_2_files = tokenizer_2, tokenizer_2_files or {}  # SDXL's second

    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(self.cascade.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy())  # the array's buffer: no copy of the weights
        return h.hexdigest()


def preset_tokenizer_dir(config: ModelConfig, directory: str | Path) -> Path:
    vocab, merges = learn_bpe(config.text.vocab_size)
    return write_clip_tokenizer(directory, vocab, merges)


def _tokenizer_files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in TOKENIZER_FILES if (directory / name).is_file()}


def build_model(config: ModelConfig, tokenizer_dir: str | Path, seed: int | None = None,
                initial_weights: bool = True) -> Model:
    """Deterministic initial weights: the same config and seed give bitwise the same model; none (NaN) with
    `initial_weights=False`, for a caller that loads every weight next. A second text encoder's tokenizer (SDXL)
    is read from tokenizer_2/ beside `tokenizer_dir`."""
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir, config.text.max_length, config.text.pad_token)
    files = _tokenizer_files(tokenizer_dir)
    tokenizer_2 = files_2 = None
    if config.text_2 is not None:
        tokenizer_2_dir = tokenizer_dir.parent / TOKENIZER_2_DIR
        tokenizer_2 = load_tokenizer(tokenizer_2_dir, config.text_2.max_length, config.text_2.pad_token)
        files_2 = _tokenizer_files(tokenizer_2_dir)
    bos, eos = tokenizer.convert_tokens_to_ids(BOS), tokenizer.convert_tokens_to_ids(EOS)
    if max(bos, eos) >= config.text.vocab_size:
        raise ConfigError(f"tokenizer ids reach {max(bos, eos)}, text encoder vocab_size is {config.text.vocab_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if seed is None else seed)
        cascade = Cascade(config, bos, eos, initial_weights)
    return Model(config, cascade.eval(), tokenizer, files, tokenizer_2, files_2)


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "presets"  # trained presets' model folders (dbunet.train)


def shipped_model_dir(config: ModelConfig) -> Path | None:
    """The trained weights shipped for this exact config (the shapes preset), if any."""
    directory = SHIPPED_DIR / config.name
    if not (directory / CONFIG_FILE).is_file():
        return None
    return directory if saved_config(directory) == config else None


def create_preset_model(config: ModelConfig, directory: str | Path) -> Model:
    """A preset model saved to `directory`: its shipped trained weights where the repository has them,
    seeded initial weights otherwise."""
    shipped = shipped_model_dir(config)
    if shipped is not None:
        model = load_model(shipped)
    else:
        tok_dir = preset_tokenizer_dir(config, Path(directory) / TOKENIZER_DIR)
        if config.text_2 is not None:  # the second encoder shares the vocabulary (its padding is in its config)
            preset_tokenizer_dir(config, Path(directory) / TOKENIZER_2_DIR)
        model = build_model(config, tok_dir)
    save_model(model, directory)
    return model


def save_model(model: Model, directory: str | Path) -> Path:
    """Write weights, tokenizer and config atomically; config.json last marks the folder complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.cascade.state_dict().items()}
    atomic.write_with(
        directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"})
    )
    for name, data in model.tokenizer_files.items():
        atomic.write_bytes(directory / TOKENIZER_DIR / name, data)
    for name, data in model.tokenizer_2_files.items():
        atomic.write_bytes(directory / TOKENIZER_2_DIR / name, data)
    atomic.write_text(directory / CONFIG_FILE, model.config.to_json())
    return directory


def load_model(directory: str | Path) -> Model:
    directory = Path(directory)
    cfg_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise WeightsError(f"{directory} is not a dbunet model folder: need {CONFIG_FILE} and {WEIGHTS_FILE}")
    model = build_model(saved_config(directory), directory / TOKENIZER_DIR, initial_weights=False)
    load_state(model.cascade, read_safetensors(weights), strict=True, source=str(weights))
    return model


def saved_config(directory: str | Path) -> ModelConfig:
    """The config of the model folder `directory`, without its weights."""
    return ModelConfig.from_dict(read_json_object(Path(directory) / CONFIG_FILE))


def load_state(module: nn.Module, state: dict[str, torch.Tensor], strict: bool, source: str) -> None:
    """Load with every mismatch collected into one message (CLIP text encoders' keys in either transformers
    layout)."""
    state = clip_text_layout(module, state)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if strict and (missing or unexpected or bad_shape):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise WeightsError(f"{source} does not fit the config: " + "; ".join(parts))
    with torch.no_grad():
        for k, v in state.items():
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
