"""CPU report: ONNX Runtime vs the PyTorch reference vs OpenVINO, and the machine's GEMM limit.

    python benchmarks/cpu_report.py [--config tiny] [--repeat 7]

Regenerates benchmarks/README.md and benchmarks/cpu_<config>.png. Everything is measured in one
invocation on this machine, each runtime in its own process (a runtime's idle worker threads keep
spinning and would slow whichever runs next in the same process), medians throughout. OpenVINO
(`pip install openvino`) runs the `--decomposed` export of the same DB-UNet (it cannot read ONNX
model-local functions in a custom domain).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def med_ms(fn, repeat: int, warmup: int = 3) -> float:
    from dbunet.bench.stats import measure

    return measure(fn, repeat, warmup).median_ms


def gemm_rate(repeat: int) -> float:
    """Best fp32 GEMM rate (GFLOP/s) of numpy and torch at 2048^3: the machine's practical limit."""
    import torch

    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    flops = 2 * 2048**3
    ta = torch.from_numpy(a)
    return max(flops / med_ms(lambda: a @ a, repeat) / 1e6, flops / med_ms(lambda: ta @ ta, repeat) / 1e6)


def _step_inputs(config: str):
    from dbunet.config import preset
    from dbunet.export.graphs import sample_inputs
    from dbunet.export.specs import component_specs, default_sizes

    cfg = preset(config)
    spec = component_specs(cfg)["dbunet"]
    sizes = default_sizes(cfg, batch=2, boxes=4)
    return spec, sizes, sample_inputs(spec, sizes, cfg.text.vocab_size)


def measure(kind: str, cache: Path, config: str, repeat: int) -> dict:
    """One measurement, run in a fresh process by main()."""
    spec, _, feeds = _step_inputs(config)
    if kind == "gemm":
        return {"gflops": gemm_rate(repeat)}
    if kind == "ort_step":
        from dbunet.runtime.backends.onnxruntime import OrtBackend

        graph = OrtBackend("cpu").load(cache / "full" / "fp32" / "dbunet.onnx", spec)
        return {"ms": med_ms(lambda: graph.run(feeds), repeat * 3)}
    if kind == "torch_step":
        import torch

        from dbunet.models.cascade import load_model

        unet = load_model(cache / "full" / "model").cascade.unet
        tensors = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
        with torch.no_grad():
            return {"ms": med_ms(lambda: unet(*tensors), repeat * 3)}
    if kind == "openvino_step":
        try:
            import openvino as ov
        except ImportError:
            return {"ms": None}
        core = ov.Core()
        model = core.read_model(str(cache / "decomposed" / "fp32" / "dbunet.onnx"))
        request = core.compile_model(model, "CPU").create_infer_request()
        return {"ms": med_ms(lambda: request.infer(feeds), repeat * 3)}
    if kind in ("bench_ort", "bench_torch"):
        from dbunet.bench.baseline import save_report
        from dbunet.bench.runner import BenchOptions, run_bench

        path = cache / f"{kind}.json"
        save_report(run_bench(BenchOptions(cache / "full", backend=kind.split("_")[1], repeat=repeat)), path)
        return {"report": str(path)}
    raise SystemExit(f"unknown measurement {kind}")


def main() -> None:
    import json
    import subprocess
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = p.parse_args()
    cache = HERE / ".cache" / args.config
    if args.measure:
        print(json.dumps(measure(args.measure, cache, args.config, args.repeat)))
        return
    from dbunet.export.exporter import ExportOptions, export

    if not (cache / "full" / "manifest.json").is_file():
        export(ExportOptions(config=args.config, out=cache / "full"), report=print)
    if not (cache / "decomposed" / "manifest.json").is_file():
        export(ExportOptions(config=args.config, out=cache / "decomposed", decomposed=True, components=("dbunet",),
                             weights=cache / "full" / "model"), report=print)

    def run(kind: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--config", args.config, "--repeat", str(args.repeat),
                              "--measure", kind], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    from dbunet.bench.baseline import load_report
    from dbunet.bench.plot import plot_reports
    from dbunet.config import preset
    from dbunet.models.stats import component_stats

    cfg = preset(args.config)
    _, sizes, _ = _step_inputs(args.config)
    step_gflop = next(r.gflops for r in component_stats(cfg) if r.component == "dbunet")
    gemm = run("gemm")["gflops"]
    steps = {name: run(f"{name}_step")["ms"] for name in ("ort", "openvino", "torch")}
    reports = [load_report(run(f"bench_{b}")["report"]) for b in ("ort", "torch")]
    plot_path = HERE / f"cpu_{args.config}.png"
    plot_reports(reports, plot_path, f"{args.config}: per-stage latency, {reports[0].machine['processor']}")

    ort_r, torch_r = (r.results for r in reports)
    machine = reports[0].machine
    lines = [
        "# CPU benchmarks", "",
        f"Regenerate with `python benchmarks/cpu_report.py --config {args.config}`. Machine: {machine['processor']}, "
        f"{machine['cpu_count']} cores; medians; ONNX Runtime fp32 on the CPU provider; each runtime in its own "
        "process.", "",
        f"## {args.config}: one DB-UNet step (CFG batch 2, {sizes['latent_height']}x{sizes['latent_width']} latents, "
        f"4 boxes, {step_gflop:.2f} GFLOP)", "",
        "| runtime | ms | GFLOP/s | share of the fp32 GEMM rate |", "|---|---|---|---|",
    ]
    for name, ms in steps.items():
        if ms is None:
            lines.append(f"| {name} | not installed | | |")
            continue
        rate = step_gflop / ms * 1000
        lines.append(f"| {name} | {ms:.2f} | {rate:.1f} | {rate / gemm:.1%} |")
    lines += ["", f"fp32 GEMM rate (2048^3, best of numpy and torch): {gemm:.0f} GFLOP/s.", "",
              "## whole pipeline and per stage (dbunet-bench)", "",
              "| component | ort ms | torch ms | torch / ort |", "|---|---|---|---|"]
    for c in ort_r:
        lines.append(f"| {c} | {ort_r[c].median_ms:.2f} | {torch_r[c].median_ms:.2f} | "
                     f"{torch_r[c].median_ms / ort_r[c].median_ms:.2f}x |")
    lines += ["", f"![per-stage latency](cpu_{args.config}.png)", ""]
    from dbunet import atomic

    atomic.write_text(HERE / "README.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
