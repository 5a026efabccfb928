"""ONNX Runtime on this CPU: the denoising loop per step vs as a whole loop (dbunet.runtime.backends.ort_loop).

    python benchmarks/ort_loop.py [--rounds 15] [--sd15-rounds 3]

The whole loop runs the step graph in a second session per shape with the symbolic dims pinned (ONNX Runtime folds
the shape arithmetic away) and keeps the loop's tensors in OrtValues. On the CUDA provider that is what lets it
capture CUDA graphs and it is the default there; on the CPU it is off by default, and this measures what it would
gain and cost: per model, two Pipelines in one process (per step, whole loop) generate alternately (the machine's
drift hits both alike); medians of the denoising time and the whole image, FP32. The cost: the loop Pipeline's
first image less its median (creating the pinned sessions); and what each Pipeline holds resident after loading
and making two images, each in a fresh process.
Models: shapes (the trained demo, 64x64), tiny at 128 and 256, sd15 at 256 (4 steps, fewer rounds), exported once
under benchmarks/.cache/. Rewrites the `ort_loop:cpu` block of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CASES = (("shapes", 64, {}), ("tiny", 128, {}), ("tiny", 256, {}), ("sd15", 256, {"steps": 4, "refiner_steps": 2}))


def _pipeline(model: str, form: str):
    from attention import export_model

    from dbunet.runtime.backends.onnxruntime import OrtBackend
    from dbunet.runtime.pipeline import Pipeline

    return Pipeline.from_artifacts(export_model(model), OrtBackend("cpu", whole_loops=form == "loop"), "fp32")


def resident_mb(case: int, form: str) -> float:
    """What one Pipeline holds resident after two images, in a process of its own (in a shared process the
    second Pipeline's figure would depend on what the first left in the allocator)."""
    from child import in_child

    return in_child(__file__, "resident", case, form)


def _resident(case: int, form: str) -> float:
    from attention import rss_mb

    model, side, options = CASES[case]
    before = rss_mb()
    pipe = _pipeline(model, form)
    for seed in range(2):
        pipe("a red circle", seed=seed, height=side, width=side, **options)
    return rss_mb() - before


def measure(case: int, rounds: int) -> dict:
    model, side, options = CASES[case]
    request = {"height": side, "width": side, **options}
    pipes, first_s = {}, {}
    try:
        for form in ("steps", "loop"):
            pipes[form] = _pipeline(model, form)
            start = time.perf_counter()
            pipes[form]("a red circle", seed=0, **request)
            first_s[form] = time.perf_counter() - start
        times = {form: {"denoise": [], "total": []} for form in pipes}
        for k in range(rounds):
            for form, pipe in pipes.items():
                result = pipe("a red circle", seed=k + 1, **request)
                times[form]["denoise"].append(result.timings["denoise"] * 1000)
                times[form]["total"].append(result.timings["total"] * 1000)
        steps = len(result.step_times)
    finally:
        for pipe in pipes.values():
            pipe.close()
    med = {form: {k: statistics.median(v) for k, v in t.items()} for form, t in times.items()}
    return {"model": model, "side": side, "steps": steps, "rounds": rounds, "median": med,
            "first_extra_ms": first_s["loop"] * 1000 - med["loop"]["total"],
            "resident_mb": {form: resident_mb(case, form) for form in pipes}}


def block(rows: list[dict]) -> str:
    import onnxruntime
    from cpu_report import cpu_line

    lines = ["## ONNX Runtime's whole loops on the CPU (FP32)", "",
             f"ONNX Runtime {onnxruntime.__version__}, FP32, {cpu_line()} ({os.cpu_count()} cores); "
             "`python benchmarks/ort_loop.py`. Medians; per step and whole loop alternate in one process.", "",
             "| model, side, steps | denoise per step / whole loop (ms) | whole image (ms) | loop / per step (image) "
             "| loop's first image: extra ms | resident after two images, per step / loop (MB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        s, w = r["median"]["steps"], r["median"]["loop"]
        lines.append(f"| {r['model']} {r['side']}x{r['side']}, {r['steps']} steps ({r['rounds']} rounds) "
                     f"| {s['denoise']:.1f} / {w['denoise']:.1f} | {s['total']:.1f} / {w['total']:.1f} "
                     f"| {w['total'] / s['total']:.2f} | {r['first_extra_ms']:.0f} "
                     f"| {r['resident_mb']['steps']:.0f} / {r['resident_mb']['loop']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from child import serve_child

    if serve_child({"resident": _resident}, argv):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sd15-rounds", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=sorted({c[0] for c in CASES}))
    args = parser.parse_args(argv)
    from cpu_report import write_block

    rows = []
    for case, (model, _, _) in enumerate(CASES):
        if model in args.models:
            rows.append(measure(case, args.sd15_rounds if model == "sd15" else args.rounds))
            print(rows[-1], flush=True)
    text = block(rows)
    print(text)
    readme = HERE / "README.md"
    write_block(readme, "cpu", text, tool="ort_loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
