"""The two figures behind --backend auto's CPU rule: ONNX Runtime FP32 against OpenVINO BF16 for one model, in
one process, alternating, medians (dbunet.backends.BF16_MIN_WORK sits between the models measured).

    python benchmarks/auto_choice.py --artifacts DIR --image        # a whole image at the model's default size
    python benchmarks/auto_choice.py --artifacts DIR --step 256     # one guided DB-UNet step at 256x256

Needs OpenVINO and a CPU with AVX512-BF16 or AMX.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def image_timers(art: Path) -> dict:
    from dbunet.runtime import Pipeline

    pipes = {"ort fp32": Pipeline.from_artifacts(art, "ort", "fp32"),
             "openvino bf16": Pipeline.from_artifacts(art, "openvino", "bf16")}
    return {k: (lambda p=p: p("a red circle", seed=1).timings["total"]) for k, p in pipes.items()}


def step_timers(art: Path, side: int) -> dict:
    from dbunet.manifest import Manifest
    from dbunet.runtime.backends.onnxruntime import OrtBackend
    from dbunet.runtime.backends.openvino import OvBackend
    from dbunet.schedulers import make_scheduler

    manifest = Manifest.read(art)
    cfg, a = manifest.config, manifest.find("dbunet_step", "fp32")
    ov = OvBackend("cpu", cache_dir=None)
    ov.artifact_precision("bf16")
    graphs = {"ort fp32": OrtBackend("cpu").load(art / a.path, a.spec), "openvino bf16": ov.load(art / a.path, a.spec)}
    rng, d, n = np.random.default_rng(0), cfg.text.hidden_size, 4
    latent = (1, cfg.vae.latent_channels, side // cfg.vae.downscale, side // cfg.vae.downscale)
    row = make_scheduler("ddim", cfg.schedule).plan(20, 7.5, 6)[0]
    feeds = dict(x=rng.standard_normal(latent, dtype=np.float32), x0_prev=np.zeros(latent, np.float32), coeffs=row,
                 text=rng.standard_normal((2, 77, d), dtype=np.float32),
                 boxes=np.tile(np.float32([0.1, 0.1, 0.6, 0.7]), (2, n, 1)),
                 box_phrases=rng.standard_normal((2, n, d), dtype=np.float32), box_valid=np.ones((2, n), np.float32))

    def timer(graph):
        start = time.perf_counter()
        graph.run(feeds)
        return time.perf_counter() - start

    return {k: (lambda g=g: timer(g)) for k, g in graphs.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", action="store_true", help="a whole image (the model's default size)")
    what.add_argument("--step", type=int, metavar="SIDE", help="one guided DB-UNet step at SIDE x SIDE")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    timers = image_timers(args.artifacts) if args.image else step_timers(args.artifacts, args.step)
    seconds = {k: [] for k in timers}
    for r in range(args.repeat + 1):  # the first round warms up
        for k, fn in timers.items():
            s = fn()
            if r:
                seconds[k].append(s)
    for k, v in seconds.items():
        print(f"{k:<14} median {statistics.median(v):.3f} s  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
