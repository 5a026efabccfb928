"""Each component as a module whose forward takes exactly its spec's inputs, in order."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from dbunet.architectures.base import GUIDED_STEPS
from dbunet.iospec import GraphSpec
from dbunet.models.cascade import Cascade
from dbunet.models.components import encode_text


class TextEncoderGraph(nn.Module):
    """input_ids -> (the hidden state the denoiser reads, the pooled embedding); see models.components.encode_text."""

    def __init__(self, cascade: Cascade, second: bool = False) -> None:
        super().__init__()
        self.text_encoder = cascade.text_encoder_2 if second else cascade.text_encoder
        self.hidden_layer = (cascade.config.text_2 if second else cascade.config.text).hidden_layer

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        return encode_text(self.text_encoder, input_ids, self.hidden_layer)


class SecondTextEncoderGraph(TextEncoderGraph):
    """SDXL's second encoder: penultimate hidden state and the projected pooled embedding (text_embeds)."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__(cascade, second=True)


class DBUNetGraph(nn.Module):
    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.unet

    def forward(self, sample, timestep, text, boxes, box_phrases, box_valid, box_scale) -> Tensor:
        return self.unet(sample, timestep, text, boxes, box_phrases, box_valid, box_scale)


class SDUNetGraph(nn.Module):
    """--arch sd1: the folder's own UNet in the denoiser's role (sample, timestep, text -> noise or v)."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.unet

    def forward(self, sample, timestep, text) -> Tensor:
        return self.unet(sample, timestep, text)


class SDXLUNetGraph(nn.Module):
    """--arch sdxl: the folder's UNet with its micro-conditioning inputs."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.unet

    def forward(self, sample, timestep, text, text_embeds, time_ids) -> Tensor:
        return self.unet(sample, timestep, text, text_embeds, time_ids)


class LatentRefinerGraph(SDXLUNetGraph):
    """SDXL's refiner UNet: the same inputs, the second encoder's text and its own time_ids."""

    def __init__(self, cascade: Cascade) -> None:
        nn.Module.__init__(self)
        self.unet = cascade.latent_refiner


class VaeDecoderGraph(nn.Module):
    """Latents already divided by the scaling factor -> image in about [-1, 1]."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.vae = cascade.vae

    def forward(self, latent: Tensor) -> Tensor:
        return self.vae.decode(latent).sample


class VaeEncoderGraph(nn.Module):
    """Image -> mean of the latent distribution (not yet multiplied by the scaling factor)."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.vae = cascade.vae

    def forward(self, image: Tensor) -> Tensor:
        return self.vae.encode(image).latent_dist.mean


class RefinerEncoderGraph(nn.Module):
    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.encoder = cascade.refiner.semantic_encoder

    def forward(self, image: Tensor) -> Tensor:
        return self.encoder(image)


class GAEGraph(nn.Module):
    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.gae = cascade.refiner.gae

    def forward(self, z_sem: Tensor) -> tuple[Tensor, Tensor]:
        code = self.gae.encode(z_sem)
        return code, self.gae.decode(code)


class RefinerUNetGraph(nn.Module):
    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.refiner.unet

    def forward(self, sample: Tensor, timestep: Tensor, z_dis: Tensor) -> Tensor:
        return self.unet(sample, timestep, z_dis)


GRAPHS: dict[str, type[nn.Module]] = {
    "text_encoder": TextEncoderGraph,
    "text_encoder_2": SecondTextEncoderGraph,
    "dbunet": DBUNetGraph,
    "latent_refiner": LatentRefinerGraph,
    "vae_decoder": VaeDecoderGraph,
    "vae_encoder": VaeEncoderGraph,
    "refiner_encoder": RefinerEncoderGraph,
    "gae": GAEGraph,
    "refiner_unet": RefinerUNetGraph,
}


# exporter hooks: an architecture's own wrapper for a graph, where it differs from the DB-UNet cascade's
ARCH_GRAPHS: dict[tuple[str, str], type[nn.Module]] = {("sd1", "dbunet"): SDUNetGraph,
                                                        ("sdxl", "dbunet"): SDXLUNetGraph}


def graph_module(name: str, cascade: Cascade, arch: str) -> nn.Module:
    return ARCH_GRAPHS.get((arch, name), GRAPHS[name])(cascade)


def sample_inputs(spec: GraphSpec, sizes: dict[str, int], vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs in each tensor's realistic range (ids with BOS/EOS, valid boxes, a mix of padding)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = t.shape(sizes)
        if t.name == "input_ids":
            ids = rng.integers(0, vocab_size - 2, size=shape)
            lengths = rng.integers(1, shape[1] - 1, size=shape[0])
            for row, n in enumerate(lengths):
                ids[row, 0], ids[row, n:] = vocab_size - 2, vocab_size - 1  # BOS ... EOS, EOS padding
            feeds[t.name] = ids.astype(np.int64)
        elif t.name == "boxes":
            xy = rng.uniform(0.0, 0.6, size=(*shape[:2], 2))
            feeds[t.name] = np.concatenate([xy, xy + rng.uniform(0.2, 0.4, size=xy.shape)], -1).astype(np.float32)
        elif t.name == "box_valid":
            valid = np.ones(shape, dtype=np.float32)
            if shape[1] > 1:
                valid[..., -1] = 0.0  # one padding slot
            feeds[t.name] = valid
        elif t.name == "box_scale":
            feeds[t.name] = np.array(1.0, dtype=np.float32)
        elif t.name == "timestep":
            feeds[t.name] = rng.uniform(0, 999, size=shape).astype(np.float32)
        elif t.name == "coeffs":
            feeds[t.name] = sample_row(spec.component)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def sample_row(component: str) -> np.ndarray:
    """A coefficient row of a mid-run step that exercises every term of the generic update (docs/architecture.md 3.4);
    the refiner's clips x0 to [-1, 1] as its DDIM schedule does, the DB-UNet's guides at 7.5."""
    from dbunet.schedulers.table import Update, make_row

    guided = component in GUIDED_STEPS
    update = Update(c_in=0.8, d=1.3, e=-0.6, clip=np.inf if guided else 1.0, p=0.3, q=0.2, u=0.6, v=-0.1)
    return make_row(500.0, update, guidance=7.5 if guided else 1.0, box_scale=1.0)


@torch.no_grad()
def run_reference(module: nn.Module, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    out = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.float().numpy() for o in outs]
