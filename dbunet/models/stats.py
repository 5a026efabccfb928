"""Parameter counts and FLOPs per call of every component, at a preset's default size or a given one.

    python -m dbunet.models.stats [--config shapes tiny sd15] [--markdown]

Counted on the meta device (shapes only, no arithmetic), so sd15 takes seconds on a CPU.
FLOPs are torch.utils.flop_counter's: 2 per multiply-add of matmuls, convolutions and
attention, including the custom ops (their formulas are registered in dbunet.models.ops);
elementwise work and normalisations are not counted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from dbunet.config import PRESETS, ModelConfig, preset

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_SDPA not in flop_registry:  # counted on meta (math path, bmm) but not on the CPU kernel

    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
        b, h, lq, d = q_shape
        return 2 * b * h * lq * k_shape[2] * (d + v_shape[3])


@dataclass
class ComponentStats:
    component: str
    params: int
    gflops: float
    call: str  # what one call is


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def component_stats(config: ModelConfig, height: int | None = None, width: int | None = None) -> list[ComponentStats]:
    """One row per component; image size `height` x `width` (default: the preset's)."""
    import dataclasses

    from dbunet.models.cascade import Cascade

    with torch.device("meta"):
        cascade = Cascade(config, config.text.vocab_size - 2, config.text.vocab_size - 1)
    d = dataclasses.replace(config.defaults, height=height or config.defaults.height,
                            width=width or config.defaults.width)
    f = config.vae.downscale
    h, w = d.height // f, d.width // f
    L, D, zc = config.text.max_length, config.text.hidden_size, config.vae.latent_channels
    N = 4  # boxes in the DB-UNet call
    meta = dict(device="meta")
    ids = torch.zeros(2, L, dtype=torch.long, **meta)
    latent = torch.zeros(2, zc, h, w, **meta)
    image = torch.zeros(1, 3, d.height, d.width, **meta)
    unet_args = (
        latent,
        torch.zeros(2, **meta),
        torch.zeros(2, L, D, **meta),
        torch.zeros(2, N, 4, **meta),
        torch.zeros(2, N, D, **meta),
        torch.zeros(2, N, **meta),
        torch.zeros((), **meta),
    )
    ref = cascade.refiner
    z_sem = torch.zeros(1, config.refiner.semantic_dim, **meta)
    rows = [
        ComponentStats("text_encoder", _params(cascade.text_encoder),
                       _flops(lambda: cascade.text_encoder(input_ids=ids)), f"2 prompts x {L} tokens"),
        ComponentStats("dbunet", _params(cascade.unet), _flops(lambda: cascade.unet(*unet_args)),
                       f"one CFG step, batch 2, {h}x{w} latent, {N} boxes"),
        ComponentStats("vae_decoder", _params(cascade.vae.decoder) + _params(cascade.vae.post_quant_conv),
                       _flops(lambda: cascade.vae.decode(latent[:1])), f"{h}x{w} latent -> {d.height}x{d.width}"),
        ComponentStats("vae_encoder", _params(cascade.vae.encoder) + _params(cascade.vae.quant_conv),
                       _flops(lambda: cascade.vae.encode(image)), f"{d.height}x{d.width} image"),
        ComponentStats("refiner_encoder", _params(ref.semantic_encoder), _flops(lambda: ref.semantic_encoder(image)),
                       f"{d.height}x{d.width} image"),
        ComponentStats("gae", _params(ref.gae), _flops(lambda: ref.gae(z_sem)), "encode + decode one code"),
        ComponentStats("refiner_unet", _params(ref.unet),
                       _flops(lambda: ref.unet(image, torch.zeros(1, **meta), z_sem)),
                       f"one step, {d.height}x{d.width}"),
    ]
    return rows


def format_table(name: str, rows: list[ComponentStats], markdown: bool) -> str:
    header = ("component", "params", "GFLOPs/call", "one call")
    body = [(r.component, f"{r.params / 1e6:,.2f} M", f"{r.gflops:,.2f}", r.call) for r in rows]
    total = sum(r.params for r in rows)
    body.append(("total", f"{total / 1e6:,.2f} M", "", ""))
    if markdown:
        lines = [f"**{name}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([name, fmt.format(*header), *(fmt.format(*row) for row in body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", choices=PRESETS, default=list(PRESETS), metavar="PRESET",
                        help=f"presets to report: any of {', '.join(PRESETS)} (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    args = parser.parse_args(argv)
    for name in args.config:
        cfg = preset(name)
        d = cfg.defaults
        title = f"{name} ({d.height}x{d.width})"
        print(format_table(title, component_stats(cfg), args.markdown))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
