"""Stock components: the VAE (diffusers AutoencoderKL), the CLIP text encoder and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor, nn

from dbunet.config import SDUNetConfig, TextEncoderConfig, VaeConfig
from dbunet.errors import WeightsError


def build_vae(cfg: VaeConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        scaling_factor=cfg.scaling_factor,
    )


def build_sd_unet(cfg: SDUNetConfig):
    """A plain SD 1.x/2.x UNet2DConditionModel whose forward takes (sample, timestep, text) and returns the
    prediction tensor: the call shape every denoiser graph of the exporter has."""
    from diffusers import UNet2DConditionModel

    class SDUNet(UNet2DConditionModel):
        def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
            return super().forward(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    return upsampling_to_skip_sizes(SDUNet(**cfg.to_diffusers()))


def upsampling_to_skip_sizes(unet):
    """`unet` upsampling each level to its skip connection's size, at every sample size. diffusers does so only
    where the sample is not a multiple of 2**num_upsamplers, a Python branch that the ONNX tracer freezes at the
    export size: the graph then doubled every size, and a latent of 65 (SD 1.x at 520 pixels, which diffusers
    takes) met its skip of 65 as 66 and failed. A count that no side is a multiple of takes that branch always;
    at even sizes the interpolation to the skip's size is the doubling it replaces."""
    # 2**30: past any side, within the int64 the tracer computes the remainder in; forward is its only reader
    unet.num_upsamplers = 30
    return unet


def build_sdxl_unet(cfg):
    """An SDXL UNet2DConditionModel called as (sample, timestep, text, text_embeds, time_ids) -> prediction."""
    from diffusers import UNet2DConditionModel

    class SDXLUNet(UNet2DConditionModel):
        def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor,
                    time_ids: Tensor) -> Tensor:
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            return super().forward(sample, timestep, encoder_hidden_states, added_cond_kwargs=added,
                                   return_dict=False)[0]

    return upsampling_to_skip_sizes(SDXLUNet(**cfg.to_diffusers()))


def build_text_encoder(cfg: TextEncoderConfig, bos_token_id: int, eos_token_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_length,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,  # pooled output is read at the first EOS
        pad_token_id=eos_token_id,
        projection_dim=cfg.projection_dim or 512,
    )
    return CLIPTextModelWithProjection(config) if cfg.projection_dim else CLIPTextModel(config)


CLIP_TEXT_NESTING = "text_model."


def clip_text_layout(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with the keys of every CLIPTextModel in `module` named as the installed transformers names them.

    Up to transformers 4 a CLIPTextModel keeps its weights under `text_model.` (so do all SD 1.x / SDXL folders
    on the Hub); from 5 they sit at its top, and transformers' own from_pretrained renames on load. dbunet reads
    the safetensors itself, so it renames too, either way: weights written under one release load under the
    other. (CLIPTextModelWithProjection nests `text_model.` in both.)"""
    from transformers import CLIPTextModel

    renamed: dict[str, str] = {}
    for path, sub in module.named_modules():
        if not isinstance(sub, CLIPTextModel):
            continue
        at = f"{path}." if path else ""
        nested = any(k.startswith(CLIP_TEXT_NESTING) for k in sub.state_dict())
        for key in (k for k in state if k.startswith(at)):
            rest = key[len(at):]
            if nested and not rest.startswith(CLIP_TEXT_NESTING):
                renamed[key] = at + CLIP_TEXT_NESTING + rest
            elif not nested and rest.startswith(CLIP_TEXT_NESTING):
                renamed[key] = at + rest[len(CLIP_TEXT_NESTING):]
    return {renamed.get(k, k): v for k, v in state.items()} if renamed else state


def load_tokenizer(directory: str | Path, max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A CLIP tokenizer from vocab.json + merges.txt (or tokenizer.json) in `directory`."""
    # The fast (tokenizers-backed) class in every release: the export writes its tokenizer.json for the runtime.
    # transformers 5 made it an alias of CLIPTokenizer and renamed the constructor's file arguments (vocab_file
    # -> vocab), so the folder goes through from_pretrained, whose signature both lines share (as diffusers does).
    from transformers import CLIPTokenizerFast

    directory = Path(directory)
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if not (vocab.is_file() and merges.is_file()) and not (directory / "tokenizer.json").is_file():
        raise WeightsError(f"no tokenizer in {directory}: expected vocab.json + merges.txt or tokenizer.json")
    try:
        tok = CLIPTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # a damaged file surfaces as whatever transformers' parser trips on (KeyError...)
        raise WeightsError(f"the tokenizer in {directory} could not be read: {type(exc).__name__}: {exc}") from None
    tok.model_max_length = max_length
    tok.pad_token = pad_token  # EOS for SD 1.x and SDXL's first tokenizer, "!" for SDXL's second
    return tok


def tokenize(tokenizer, texts: list[str], max_length: int = 77) -> np.ndarray:
    """Token ids [len(texts), max_length], int64: BOS, tokens, EOS, padded with EOS (as SD 1.x)."""
    enc = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True)
    return np.asarray(enc["input_ids"], dtype=np.int64)


def encode_text(text_encoder, ids: Tensor, hidden_layer: int = -1) -> tuple[Tensor, Tensor]:
    """(hidden state [B,L,D]: the last, after the final layer norm, or hidden_states[hidden_layer] (SDXL: -2);
    pooled [B,P]: the embedding at the first EOS, through the projection where the encoder has one)."""
    out = text_encoder(input_ids=ids, output_hidden_states=hidden_layer != -1)
    hidden = out.last_hidden_state if hidden_layer == -1 else out.hidden_states[hidden_layer]
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return hidden, pooled
