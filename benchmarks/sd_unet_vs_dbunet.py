"""One denoising step of a plain SD 1.5 UNet (--arch sd1) beside one DB-UNet sd15 step, same run, same backend.

    python benchmarks/sd_unet_vs_dbunet.py [--size 512] [--repeat 5] [--work DIR]

Builds a random-weight SD 1.5-architecture folder with diffusers (UNet 320/640/1280/1280 channels, 8 heads,
768-wide CLIP text; save_pretrained, no hub), exports its whole-step
graph with --arch sd1, exports the sd15 preset's DB-UNet step graph, and times both step graphs on ONNX
Runtime FP32 (CPU provider), alternating, each call a guided CFG batch of 2 (the DB-UNet with 4 boxes).
Prints medians and the DB-UNet / SD UNet ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def sd15_folder(root: Path) -> Path:
    """SD 1.5's architecture with random weights, in diffusers' layout."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dbunet.tokenizer import learn_bpe, write_clip_tokenizer

    if (root / "unet" / "config.json").is_file():
        return root
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                  scaling_factor=0.18215).save_pretrained(root / "vae")
    vocab, merges = learn_bpe(49408)
    write_clip_tokenizer(root / "tokenizer", vocab, merges)
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
                  ).save_pretrained(root / "text_encoder")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1).save_pretrained(root / "scheduler")
    return root


def step_feeds(spec, latent: int, boxes: int, row: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = {"batch": 2, "latent_height": latent, "latent_width": latent, "boxes": boxes}
    feeds = {}
    for t in spec.inputs:
        shape = t.shape(sizes)
        if t.name == "coeffs":
            feeds[t.name] = row
        elif t.name == "boxes":
            feeds[t.name] = np.tile(np.array([0.1, 0.1, 0.6, 0.6], np.float32), (*shape[:2], 1))
        elif t.name == "box_valid":
            feeds[t.name] = np.ones(shape, np.float32)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="image side (default: 512, SD 1.5's)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls of each, alternating (default: 5)")
    p.add_argument("--work", type=Path, default=Path("sd-vs-dbunet"), help="where the folder and exports go")
    p.add_argument("--prepare", action="store_true", help="only build the folder and the exports (no timing)")
    args = p.parse_args(argv)

    from dbunet.export.exporter import ExportOptions, export
    from dbunet.manifest import Manifest
    from dbunet.runtime.backends.onnxruntime import OrtBackend
    from dbunet.schedulers import make_scheduler

    folder = sd15_folder(args.work / "sd15-random")
    exports = {"SD 1.5 UNet (--arch sd1)": ExportOptions(weights=folder, arch="sd1", out=args.work / "sd1",
                                                         components=("dbunet_step",), height=64, width=64),
               "DB-UNet sd15": ExportOptions(config="sd15", out=args.work / "dbunet", components=("dbunet_step",),
                                             height=64, width=64)}
    sampler = make_scheduler("ddim")
    sampler.set_timesteps(30)
    row = sampler.table(7.5, box_steps=1)[0]
    graphs, feeds = {}, {}
    for name, options in exports.items():
        if not (options.out / "manifest.json").is_file():
            print(f"exporting {name} ...", flush=True)
            export(options, report=lambda line: None)
        if args.prepare:
            continue
        artifact = Manifest.read(options.out).find("dbunet_step", "fp32")
        graphs[name] = OrtBackend().load(options.out / artifact.path, artifact.spec)
        feeds[name] = step_feeds(artifact.spec, args.size // 8, 4, row)
    if args.prepare:
        return 0
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for name in graphs:  # warm-up
        graphs[name].run(feeds[name])
    for _ in range(args.repeat):
        for name, graph in graphs.items():
            t0 = time.perf_counter()
            graph.run(feeds[name])
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    sd, db = med["SD 1.5 UNet (--arch sd1)"], med["DB-UNet sd15"]
    print(f"{platform.processor() or platform.machine()}, ONNX Runtime FP32 (CPU), {args.size}x{args.size}, "
          f"CFG batch 2, medians of {args.repeat} alternating calls")
    for name, t in times.items():
        print(f"  {name:<26} {med[name]:7.2f} s   (min {min(t):.2f}, max {max(t):.2f})")
    print(f"  ratio DB-UNet / SD UNet: {db / sd:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
