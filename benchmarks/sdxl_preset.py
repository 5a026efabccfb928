"""The sdxl preset at SDXL base's real sizes: one guided UNet step in PyTorch (FP32, CPU), time and peak RSS.

    python benchmarks/sdxl_preset.py [--size 1024] [--repeat 2]

Builds the preset's UNet with seeded random weights (2.57 B parameters, 10.3 GB in FP32), then times the
denoiser of one classifier-free-guided step (batch 2: text 77 x 2048, text_embeds 1280, six size numbers) at
the given image size. Prints one JSON line. The ONNX export of the whole preset does not fit a 24 GB machine
(benchmarks/README.md says what was measured), so this measures the PyTorch reference's step.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default: 1024)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import torch

    from dbunet.bench.stats import peak_rss_mb
    from dbunet.config import sdxl
    from dbunet.models.components import build_sdxl_unet

    torch.manual_seed(0)
    config = sdxl()
    t0 = time.perf_counter()
    with torch.no_grad():
        unet = build_sdxl_unet(config.unet).eval()
    built = time.perf_counter() - t0
    side = args.size // config.vae.downscale
    sample = torch.randn(2, config.vae.latent_channels, side, side)
    timestep = torch.full((2,), 500.0)
    text = torch.randn(2, config.text.max_length, config.text_width)
    text_embeds = torch.randn(2, config.text_2.projection_dim)
    time_ids = torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * 2, dtype=torch.float32)
    times = []
    with torch.no_grad():
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = unet(sample, timestep, text, text_embeds, time_ids)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"parameters": sum(p.numel() for p in unet.parameters()), "build_s": round(built, 1),
                      "size": args.size, "step_s": [round(t, 1) for t in times], "peak_rss_mb": round(peak_rss_mb()),
                      "finite": bool(torch.isfinite(out).all()), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
