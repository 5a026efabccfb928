"""End-to-end wall time of one image: ONNX Runtime vs the PyTorch reference, same process, same run.

    python benchmarks/e2e.py [--artifacts DIR] [--repeat 5] [--steps N] [--size PIXELS] [--loops]

Exports the tiny preset first when DIR has no manifest. Runs the two pipelines alternately, so a
drift of the machine's speed (minutes long on a shared host) hits both alike, and reports medians
and their ratio. `--loops` compares instead, on ONNX Runtime, the whole-step graphs (the runtime's
loop) with the per-call loop they replaced (UNet graph, then guidance and the sampler's numpy step()
on the host). benchmarks/cpu_report.py uses both for its end-to-end figures.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

PROMPT = "a red cat on a sofa"
BOXES = ["0.1,0.2,0.6,0.9:a red cat"]


def per_call_loop(pipe):
    """`pipe` (a runtime Pipeline) running the loop as it was before whole-step graphs: the per-call UNet
    graphs, with guidance and the sampler's numpy step() on the host between calls."""
    from dbunet.generation import reference_denoise_step
    from dbunet.manifest import Manifest

    stages = pipe.stages
    for name in ("dbunet", "refiner_unet"):
        artifact = Manifest.read(pipe.directory).find(name, pipe.precision)
        stages.graphs[name] = pipe.backend.load(pipe.directory / artifact.path, artifact.spec)

    def denoise_step(step, x, x0_prev, cond):
        def predict(sample, timestep, box_scale):
            return stages.graphs["dbunet"].run(dict(sample=sample, timestep=timestep, text=cond.text, boxes=cond.boxes,
                                                    box_phrases=cond.phrases, box_valid=cond.valid,
                                                    box_scale=box_scale))[0]
        return reference_denoise_step(step, x, cond, predict), x0_prev

    def refiner_step(step, x, x0_prev, z_dis):
        t = np.full(x.shape[0], step.sampler.timesteps[step.index], dtype=np.float32)
        eps = stages.graphs["refiner_unet"].run(dict(sample=x, timestep=t, z_dis=z_dis))[0]
        return step.sampler.step(eps, step.index, x), x0_prev

    stages.denoise_step, stages.refiner_step = denoise_step, refiner_step
    return pipe


def paired_runs(artifacts: Path, repeat: int, steps: int | None = None, size: int | None = None,
                loops: bool = False) -> dict:
    """{'ort': [s, ...], 'torch': [s, ...], 'steps', 'precision'}: one warm-up each, then `repeat`
    alternating timed images (fp32 ORT against the fp32 PyTorch reference). With `loops`: {'step_graphs',
    'per_call', ...}, both fp32 ORT."""
    from dbunet.runtime import Pipeline

    ort_pipe = Pipeline.from_artifacts(artifacts, "ort", "fp32")
    if loops:
        pipes = {"step_graphs": ort_pipe, "per_call": per_call_loop(Pipeline.from_artifacts(artifacts, "ort", "fp32"))}
    else:
        from dbunet.models.pipeline import TorchPipeline

        pipes = {"ort": ort_pipe, "torch": TorchPipeline.from_artifacts(artifacts)}
    given = {"steps": steps, "height": size, "width": size}
    opts = {"boxes": BOXES, "seed": 0, **{k: v for k, v in given.items() if v is not None}}
    for pipe in pipes.values():  # warm-up: first-run allocations and lazy inits
        pipe("warm up", **opts)
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for i in range(repeat):
        for name, pipe in pipes.items():
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
    p.add_argument("--loops", action="store_true", help="step graphs vs the per-call loop (both ORT)")
    args = p.parse_args()
    if not (args.artifacts / "manifest.json").is_file():
        from dbunet.export.exporter import ExportOptions, export

        export(ExportOptions(out=args.artifacts, fp16=True), report=print)

    import torch

    runs = paired_runs(args.artifacts, args.repeat, args.steps, args.size, args.loops)
    slow, fast = ("per_call", "step_graphs") if args.loops else ("torch", "ort")
    med = {k: statistics.median(runs[k]) for k in (fast, slow)}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"steps: {runs['steps']}, repeats: {args.repeat}, precision: {runs['precision']}")
    for k in (fast, slow):
        print(f"{k:<11} median {med[k] * 1000:8.1f} ms   runs: {', '.join(f'{x * 1000:.0f}' for x in runs[k])}")
    print(f"{slow} / {fast} = {med[slow] / med[fast]:.2f}x")


if __name__ == "__main__":
    main()
