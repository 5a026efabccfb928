"""What dbunet-bench adds on the TensorRT backend: device time per engine, the host's cost per denoising
step with and without CUDA graphs, and device memory (the shared activation region, the I/O buffers).

Device time is measured with CUDA events around one enqueue of each engine, on the shapes and buffers its
last call left bound. Host overhead is the time the host spends issuing one denoising loop (before it
waits for the result), per step: with the whole-loop graph that is one launch; without, N row copies and
N enqueues.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dbunet.bench.stats import measure
from dbunet.generation import Conditioning, Step


def engine_device_ms(stages, repeat: int) -> dict[str, float]:
    """Median device milliseconds of one enqueue per engine the benchmark's calls used (the backend times them)."""
    return {name: float(np.median(times)) for name, times in stages.engine_device_ms(repeat).items()}


def host_overhead_ms(stages, steps: list[Step], latents: np.ndarray, cond: Conditioning, repeat: int,
                     warmup: int) -> dict[str, dict[str, float]]:
    """Per step of the denoising loop, graphs on and off: host issue time and wall time (median ms)."""
    figures = {}
    for label, enabled in (("graph", True), ("per_step", False)):
        stages.set_graphs(enabled)
        issue = []

        def loop(issue: list[float] = issue) -> None:
            stages.denoise_loop(steps, latents, cond)
            issue.append(stages.last_issue_s * 1000.0)

        wall = measure(loop, repeat, warmup)
        n = len(steps)
        figures[label] = {"issue_ms_per_step": float(np.median(issue[warmup:])) / n,
                          "wall_ms_per_step": wall.median_ms / n}
    stages.set_graphs(True)
    return figures


def device_memory(stages) -> dict[str, Any]:
    return stages.memory_figures()


def format_figures(figures: dict) -> str:
    lines = ["device time per engine (one enqueue, median ms):"]
    lines += [f"  {name:<28} {ms:8.3f}" for name, ms in figures["engine_device_ms"].items()]
    lines.append("host per denoising step (median ms): issue / wall")
    for label, f in figures["host_overhead"].items():
        lines.append(f"  {label:<28} {f['issue_ms_per_step']:8.3f} / {f['wall_ms_per_step']:8.3f}")
    m = figures["device_memory"]
    lines.append(f"device memory: {m['in_use_mb']:.0f} MB in use; activations (shared) "
                 f"{m['activation_region_mb']:.0f} MB, I/O buffers {m['io_buffers_mb']:.1f} MB")
    return "\n".join(lines)
