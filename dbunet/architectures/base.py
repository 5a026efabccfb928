"""What an architecture declares (see dbunet.architectures)."""

from __future__ import annotations

from dataclasses import dataclass

# every graph the exporter can write, in export order: a step graph after the per-call UNet it wraps
# (docs/architecture.md 4); the denoiser's graphs are "dbunet" / "dbunet_step" whatever the architecture,
# as the runtime and the engine builder address the denoiser by that role
GRAPHS = ("text_encoder", "text_encoder_2", "dbunet", "latent_refiner", "vae_decoder", "vae_encoder",
          "refiner_encoder", "gae", "refiner_unet", "dbunet_step", "latent_refiner_step", "refiner_step")
REFINER_GRAPHS = ("refiner_encoder", "gae", "refiner_unet", "refiner_step")  # the DiffuseGAE refiner
LATENT_REFINER_GRAPHS = ("latent_refiner", "latent_refiner_step")  # SDXL's refiner (a model may have one)
# the step graphs that guide: a CFG batch of 2 ([negative; prompt]) around a text-conditioned UNet
GUIDED_STEPS = ("dbunet_step", "latent_refiner_step")
BOX_INPUTS = ("boxes", "box_phrases", "box_valid", "box_scale")
MICRO_INPUTS = ("text_embeds", "time_ids")  # SDXL's added conditioning
# what dbunet-bench can time: one call of a stage, and the whole pipeline
BENCH_COMPONENTS = ("text_encoder", "dbunet_step", "vae_decoder", "refiner_step", "pipeline")
# the graphs a txt2img run loads (whole-step graphs; the per-call UNets and the VAE encoder are exported for
# other consumers and debugging) and the TensorRT engines built for them
RUN_GRAPHS = ("text_encoder", "text_encoder_2", "dbunet_step", "latent_refiner_step", "vae_decoder", "refiner_encoder",
              "gae", "refiner_step")


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str  # one line: what a model of this architecture is
    boxes: bool  # the denoiser takes layout boxes (BOX_INPUTS)
    refiner: bool  # the DiffuseGAE refiner stage follows the base image
    unet_config: str  # the dbunet.config class of its denoiser
    needs_folder: str = ""  # a folder (--weights) it can only be exported from, and the subfolder it must hold
    text_encoders: int = 1  # SDXL: two, their hidden states concatenated
    micro_conditioning: bool = False  # SDXL: the pooled text embedding and the size numbers (time_ids)
    latent_refiner: bool = False  # SDXL: a second UNet may take the latents over for the last steps (--refiner)

    def _keep(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if (self.refiner or n not in REFINER_GRAPHS)
                     and (self.latent_refiner or n not in LATENT_REFINER_GRAPHS)
                     and (self.text_encoders == 2 or n != "text_encoder_2"))

    @property
    def graphs(self) -> tuple[str, ...]:
        """Every graph the exporter can write for it (ModelConfig.graphs: for one model)."""
        return self._keep(GRAPHS)

    @property
    def run_graphs(self) -> tuple[str, ...]:
        """The graphs a run loads, and the TensorRT engines built for them."""
        return self._keep(RUN_GRAPHS)

    @property
    def bench_components(self) -> tuple[str, ...]:
        return self._keep(BENCH_COMPONENTS)

    def graph_inputs(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The inputs of a graph that this architecture's denoiser takes (no box inputs without boxes)."""
        return tuple(n for n in names if (self.boxes or n not in BOX_INPUTS)
                     and (self.micro_conditioning or n not in MICRO_INPUTS))
