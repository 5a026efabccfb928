"""TorchPipeline: the reference cascade in PyTorch, the oracle every backend is compared with.

prompt + boxes -> tokens -> text encoder -> DB-UNet denoise loop (CFG, sampler, boxes) -> VAE
decode -> refiner (z_sem -> GAE -> z_dis; forward-noise to strength s; DDIM) -> uint8 image.
The loop itself is dbunet.generation.run_cascade, shared with the torch-free runtime; this
module only runs the PyTorch modules for each stage. Its steps are the reference loop: a per-call
UNet on the CFG batch, guidance on the host and the sampler's own numpy step(), never the coefficient
table's update, so the runtime's step graphs are checked against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dbunet.config import ModelConfig
from dbunet.generation import CascadePipeline, Conditioning, Step, reference_denoise_step
from dbunet.models.cascade import Model, load_model
from dbunet.models.components import encode_text, tokenize
from dbunet.models.device import torch_device


class TorchStages:
    """Each cascade stage as a call into the PyTorch modules (numpy in, numpy out)."""

    whole_loops = False

    def __init__(self, model: Model, device: torch.device) -> None:
        self.model, self.device = model, device
        self.cascade = model.cascade

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.float().cpu().numpy()

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return tokenize(self.model.tokenizer, texts, self.model.config.text.max_length)

    @torch.no_grad()
    def encode_text(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, pooled = encode_text(self.cascade.text_encoder, self._t(ids), self.model.config.text.hidden_layer)
        return self._np(hidden), self._np(pooled)

    def tokenize_2(self, texts: list[str]) -> np.ndarray:
        return tokenize(self.model.tokenizer_2, texts, self.model.config.text_2.max_length)

    @torch.no_grad()
    def encode_text_2(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        layer = self.model.config.text_2.hidden_layer
        hidden, pooled = encode_text(self.cascade.text_encoder_2, self._t(ids), layer)
        return self._np(hidden), self._np(pooled)

    @torch.no_grad()
    def denoise_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> tuple[np.ndarray, np.ndarray]:
        unet = self.cascade.latent_refiner if component == "latent_refiner_step" else self.cascade.unet

        def predict(sample, timestep, box_scale):
            args = (sample, timestep, cond.text, cond.boxes, cond.phrases, cond.valid, box_scale)
            if cond.time_ids is not None:  # SDXL's UNets: sample, timestep, text, text_embeds, time_ids
                args = (*args[:3], cond.text_embeds, cond.time_ids)
            elif not self.model.config.has_boxes:  # a plain SD UNet: sample, timestep, text
                args = args[:3]
            return self._np(unet(*(self._t(a) for a in args)))

        return reference_denoise_step(step, x, cond, predict), x0_prev  # the sampler keeps its own x0 history

    @torch.no_grad()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self._np(self.cascade.vae.decode(self._t(latents)).sample)

    @torch.no_grad()
    def refiner_condition(self, image: np.ndarray) -> np.ndarray:
        return self._np(self.cascade.refiner.condition(self._t(image)))

    @torch.no_grad()
    def refiner_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, z_dis: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        timestep = np.full(x.shape[0], step.sampler.timesteps[step.index], dtype=np.float32)
        eps = self._np(self.cascade.refiner.unet(self._t(x), self._t(timestep), self._t(z_dis)))
        return step.sampler.step(eps, step.index, x), x0_prev

    def close(self) -> None:
        pass  # the modules go with the pipeline


class TorchPipeline(CascadePipeline):
    precision = "fp32"
    manifest = None  # set by from_artifacts

    def __init__(self, model: Model, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.device = torch_device(device)
        model.cascade.to(self.device).eval()
        self.stages = TorchStages(model, self.device)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> TorchPipeline:
        return cls(load_model(directory), device)

    @classmethod
    def from_artifacts(cls, directory: str | Path, device: str = "cpu") -> TorchPipeline:
        """The reference over the weights an artifacts directory was exported from (checked by hash)."""
        from dbunet.errors import ArtifactError
        from dbunet.manifest import Manifest

        directory = Path(directory)
        manifest = Manifest.read(directory)
        source = Path(manifest.weights_source)
        source = source if source.is_absolute() else directory / source
        if not (source / "config.json").is_file():
            raise ArtifactError(f"the PyTorch reference needs the exported model's weights at {source}; "
                                "they are missing")
        pipe = cls.from_pretrained(source, device)
        if pipe.model.weights_sha256() != manifest.weights_sha256:
            raise ArtifactError(f"weights at {source} differ from those the artifacts at {directory} "
                                "were exported from")
        pipe.manifest = manifest
        return pipe
