"""Every exported component's inputs and outputs, declared once (optimum-style IO specs)."""

from __future__ import annotations

from dbunet.architectures.base import GRAPHS
from dbunet.config import ModelConfig
from dbunet.iospec import GraphSpec, TensorSpec
from dbunet.schedulers.table import ROW

F32, I64 = "float32", "int64"
# every graph the exporter can write, in export order (declared with the architectures)
COMPONENTS = GRAPHS


def components_of(config: ModelConfig) -> tuple[str, ...]:
    return config.graphs


def component_specs(config: ModelConfig) -> dict[str, GraphSpec]:
    L, D = config.text.max_length, config.text.hidden_size
    W = config.text_width  # what the denoiser attends to (SDXL: both encoders' widths)
    second = config.text_2 or config.text  # SDXL's second encoder (absent elsewhere: its spec is dropped)
    micro = [("text_embeds", F32, ("batch", second.projection_dim or second.hidden_size)),
             ("time_ids", F32, ("batch", 6))]  # SDXL's micro-conditioning (dropped elsewhere)
    # SDXL's refiner: the second encoder's hidden state alone, its own time_ids (5 with the aesthetic score)
    refined = config.latent_refiner
    L2, D2 = second.max_length, second.hidden_size
    refiner_cond = [("text", F32, ("batch", L2, D2)), micro[0],
                    ("time_ids", F32, ("batch", refined.time_ids if refined else 5))]
    z, S = config.vae.latent_channels, config.refiner.semantic_dim
    latent = ("batch", z, "latent_height", "latent_width")
    image = ("batch", 3, "height", "width")
    one_latent = (1, z, "latent_height", "latent_width")  # the step's sample; "batch" is the CFG batch
    row = (len(ROW),)

    def spec(name, inputs, outputs) -> GraphSpec:
        return GraphSpec(name, tuple(TensorSpec(*t) for t in inputs), tuple(TensorSpec(*t) for t in outputs))

    specs = [
        spec("text_encoder", [("input_ids", I64, ("batch", L))],
             [("last_hidden_state", F32, ("batch", L, D)), ("pooled", F32, ("batch", D))]),
        spec("text_encoder_2", [("input_ids", I64, ("batch", second.max_length))],
             [("last_hidden_state", F32, ("batch", second.max_length, second.hidden_size)),
              ("pooled", F32, ("batch", second.projection_dim or second.hidden_size))]),
        spec("dbunet",
             [("sample", F32, latent), ("timestep", F32, ("batch",)), ("text", F32, ("batch", L, W)), *micro,
              ("boxes", F32, ("batch", "boxes", 4)), ("box_phrases", F32, ("batch", "boxes", D)),
              ("box_valid", F32, ("batch", "boxes")), ("box_scale", F32, ())],
             [("noise", F32, latent)]),
        spec("latent_refiner", [("sample", F32, latent), ("timestep", F32, ("batch",)), *refiner_cond],
             [("noise", F32, latent)]),
        spec("vae_decoder", [("latent", F32, latent)], [("image", F32, image)]),
        spec("vae_encoder", [("image", F32, image)], [("latent", F32, latent)]),
        spec("refiner_encoder", [("image", F32, image)], [("z_sem", F32, ("batch", S))]),
        spec("gae", [("z_sem", F32, ("batch", S))],
             [("code", F32, ("batch", config.refiner.code_dim)), ("z_dis", F32, ("batch", S))]),
        spec("refiner_unet", [("sample", F32, image), ("timestep", F32, ("batch",)), ("z_dis", F32, ("batch", S))],
             [("noise", F32, image)]),
        # one whole step: text batch 2 ([negative; prompt]) guides with the row's scale, batch 1 does not
        spec("dbunet_step",
             [("x", F32, one_latent), ("x0_prev", F32, one_latent), ("coeffs", F32, row),
              ("text", F32, ("batch", L, W)), *micro, ("boxes", F32, ("batch", "boxes", 4)),
              ("box_phrases", F32, ("batch", "boxes", D)), ("box_valid", F32, ("batch", "boxes"))],
             [("x_next", F32, one_latent), ("x0", F32, one_latent)]),
        spec("latent_refiner_step",
             [("x", F32, one_latent), ("x0_prev", F32, one_latent), ("coeffs", F32, row), *refiner_cond],
             [("x_next", F32, one_latent), ("x0", F32, one_latent)]),
        spec("refiner_step",
             [("x", F32, image), ("x0_prev", F32, image), ("coeffs", F32, row), ("z_dis", F32, ("batch", S))],
             [("x_next", F32, image), ("x0", F32, image)]),
    ]
    arch = config.architecture
    specs = [GraphSpec(s.component, tuple(t for t in s.inputs if t.name in arch.graph_inputs((t.name,))), s.outputs)
             for s in specs if s.component in config.graphs]
    return {s.component: s for s in specs}


MAX_TRACE_BATCH = 16  # tracing needs one image's worth; the graphs' batch axis stays dynamic


def default_sizes(config: ModelConfig, batch: int = 2, height: int | None = None, width: int | None = None,
                  boxes: int = 3) -> dict[str, int]:
    """Concrete sizes for every symbolic dim (tracing and parity inputs)."""
    f = config.vae.downscale
    height = height or config.defaults.height
    width = width or config.defaults.width
    return {"batch": batch, "height": height, "width": width, "latent_height": height // f,
            "latent_width": width // f, "boxes": boxes}


def traced_pixels(spec: GraphSpec, sizes: dict[str, int]) -> int:
    """The positions of a graph's largest spatial tensor as traced (an image's pixels for the VAE, a latent's for
    the UNet), 0 where it has none (the text encoders): what its parity tolerance is scaled by, since the sums of
    its normalisations grow with them (dbunet.export.parity.tolerance)."""
    largest = 0
    for t in (*spec.inputs, *spec.outputs):
        for h, w in (("height", "width"), ("latent_height", "latent_width")):
            if h in t.dims and w in t.dims:
                largest = max(largest, sizes[h] * sizes[w])
    return largest
