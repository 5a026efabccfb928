"""End-to-end wall time of one image: ONNX Runtime vs the PyTorch reference, same process, same run.

    python benchmarks/e2e.py [--artifacts DIR] [--repeat 5] [--steps N] [--size PIXELS]

Exports the tiny preset first when DIR has no manifest. Runs the two pipelines alternately, so a
drift of the machine's speed (minutes long on a shared host) hits both alike, and reports medians
and their ratio. benchmarks/cpu_report.py uses it for its end-to-end figure.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

PROMPT = "a red cat on a sofa"
BOXES = ["0.1,0.2,0.6,0.9:a red cat"]


def paired_runs(artifacts: Path, repeat: int, steps: int | None = None, size: int | None = None) -> dict:
    """{'ort': [s, ...], 'torch': [s, ...], 'steps', 'precision'}: one warm-up each, then `repeat`
    alternating timed images (fp32 ORT against the fp32 PyTorch reference)."""
    from dbunet.models.pipeline import TorchPipeline
    from dbunet.runtime import Pipeline

    ort_pipe = Pipeline.from_artifacts(artifacts, "ort", "fp32")
    torch_pipe = TorchPipeline.from_artifacts(artifacts)
    given = {"steps": steps, "height": size, "width": size}
    opts = {"boxes": BOXES, "seed": 0, **{k: v for k, v in given.items() if v is not None}}
    for pipe in (ort_pipe, torch_pipe):  # warm-up: first-run allocations and lazy inits
        pipe("warm up", **opts)
    times: dict[str, list[float]] = {"ort": [], "torch": []}
    for i in range(repeat):
        for name, pipe in (("ort", ort_pipe), ("torch", torch_pipe)):
            time.sleep(0.2)  # let the other runtime's worker threads go idle before timing this one
            t0 = time.perf_counter()
            pipe(PROMPT, **{**opts, "seed": i})
            times[name].append(time.perf_counter() - t0)
    return {**times, "steps": ort_pipe.request(PROMPT, **opts).steps, "precision": ort_pipe.precision}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=Path("dbunet-artifacts"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    p.add_argument("--size", type=int, default=None, help="square image side (default: the preset's)")
    args = p.parse_args()
    if not (args.artifacts / "manifest.json").is_file():
        from dbunet.export.exporter import ExportOptions, export

        export(ExportOptions(out=args.artifacts, fp16=True), report=print)

    import torch

    runs = paired_runs(args.artifacts, args.repeat, args.steps, args.size)
    med = {k: statistics.median(runs[k]) for k in ("ort", "torch")}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"steps: {runs['steps']}, repeats: {args.repeat}, precision: {runs['precision']}")
    for k in ("ort", "torch"):
        print(f"{k:<6} median {med[k] * 1000:8.1f} ms   runs: {', '.join(f'{x * 1000:.0f}' for x in runs[k])}")
    print(f"torch / ort = {med['torch'] / med['ort']:.2f}x")


if __name__ == "__main__":
    main()
