"""The cascade's stages (dbunet.generation.Stages) as runs of exported graphs, for the backends that load
ONNX graphs (ONNX Runtime, OpenVINO); the TensorRT backend runs engines through its own stages."""

from __future__ import annotations

import dataclasses

import numpy as np

from dbunet.generation import Conditioning, Step
from dbunet.runtime.backends.base import Graph
from dbunet.runtime.tokenizer import ClipTokenizer


def conditioning_feeds(cond: Conditioning, boxes: bool) -> dict[str, np.ndarray]:
    """The step graph's conditioning inputs, by the names every backend's step graph (and engine) takes: the
    text, and the box inputs where the architecture has them (dbunet.architectures)."""
    feeds = {"text": cond.text}
    if cond.time_ids is not None:  # SDXL
        feeds |= {"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}
    if boxes:
        feeds |= {"boxes": cond.boxes, "box_phrases": cond.phrases, "box_valid": cond.valid}
    return feeds


def pad_box_slots(cond: Conditioning, slots: int) -> Conditioning:
    """`cond` with its box axis padded to `slots`: the added slots have validity 0, which hides them (the box
    constraint's and the dual cross-attention's padding rule), so fixed shapes can take any box count up to it."""
    n = cond.boxes.shape[1]
    if n > slots:
        raise ValueError(f"{n} boxes do not fit {slots} slots")

    def pad(a: np.ndarray) -> np.ndarray:
        widths = [(0, 0)] * a.ndim
        widths[1] = (0, slots - n)
        return np.pad(a.astype(np.float32, copy=False), widths)

    return dataclasses.replace(cond, boxes=pad(cond.boxes), phrases=pad(cond.phrases), valid=pad(cond.valid))


class GraphStages:
    """Each cascade stage as a graph run (see dbunet.generation.Stages)."""

    whole_loops = False

    def __init__(self, graphs: dict[str, Graph], tokenizers: list[ClipTokenizer], boxes: bool = True) -> None:
        self.graphs, self.tokenizers, self.boxes = graphs, tokenizers, boxes

    def _run(self, name: str, **feeds: np.ndarray) -> list[np.ndarray]:
        return self.graphs[name].run(feeds)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return self.tokenizers[0](texts)

    def encode_text(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, pooled = self._run("text_encoder", input_ids=ids)
        return hidden, pooled

    def tokenize_2(self, texts: list[str]) -> np.ndarray:
        return self.tokenizers[1](texts)

    def encode_text_2(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, text_embeds = self._run("text_encoder_2", input_ids=ids)
        return hidden, text_embeds

    def denoise_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> tuple[np.ndarray, np.ndarray]:
        feeds = conditioning_feeds(cond, self.boxes and component == "dbunet_step")
        x_next, x0 = self._run(component, x=x, x0_prev=x0_prev, coeffs=step.row, **feeds)
        return x_next, x0

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self._run("vae_decoder", latent=latents)[0]

    def refiner_condition(self, image: np.ndarray) -> np.ndarray:
        (z_sem,) = self._run("refiner_encoder", image=image)
        return self._run("gae", z_sem=z_sem)[1]

    def refiner_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, z_dis: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        x_next, x0 = self._run("refiner_step", x=x, x0_prev=x0_prev, coeffs=step.row, z_dis=z_dis)
        return x_next, x0

    def close(self) -> None:
        for g in self.graphs.values():
            g.close()
