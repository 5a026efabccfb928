"""Attention in linear memory on ONNX Runtime's CPU provider: plain graphs vs the load-time rewrite.

    python benchmarks/attention.py [--models tiny sd15] [--sizes 256 512 1024] [--repeat 3]

Two tables, written into the `attention` block of benchmarks/README.md (text outside the block is kept):

1. Per attention shape: one attention as PyTorch's exporter writes it (scaled_dot_product_attention ->
   MatMul, Softmax, MatMul) vs the same graph after dbunet.onnx_attention's rewrite (one
   com.microsoft.MultiHeadAttention): median time and the memory the run adds to the process (peak RSS after
   the runs minus RSS after the warm-up's allocations were returned: what one attention needs at once).
2. Per model (presets exported once under benchmarks/.cache/): one guided whole step (dbunet_step, CFG
   batch 2) at each size, plain vs rewritten: median time and the process's peak RSS; and, for tiny, a whole
   512x512 image (every stage) rewritten.

Every figure comes from its own process (a fresh allocator and thread pool), FP32 throughout: ONNX Runtime's
CPU provider computes in FP32. A plain graph whose one score tensor alone would pass 12 GiB is not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SKIP_BYTES = 12 * 2**30  # a plain graph whose score tensor passes this would only swap or die on 24 GiB

# (label, batch, heads, query tokens, key tokens, head size, value head size)
SHAPES = [
    ("sd15 512x512, first level self-attention", 2, 8, 4096, 4096, 40, 40),
    ("sd15 512x512, cross-attention (77 tokens)", 2, 8, 4096, 77, 40, 40),
    ("SDXL 1024x1024, second level self-attention", 2, 10, 4096, 4096, 64, 64),
    ("VAE mid-block at 1024x1024 (1 head of 512)", 1, 1, 16384, 16384, 512, 512),
    ("sd15 1024x1024, first level self-attention", 2, 8, 16384, 16384, 40, 40),
]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    from dbunet.bench.stats import peak_rss_mb

    return peak_rss_mb()


def median_s(fn, repeat: int) -> float:
    import statistics
    import time

    fn()  # warm-up: kernels chosen, arena grown
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- one attention ----------------------------------------------------------------------------------------
def attention_graph(b, h, s, keys, d, dv, path: Path) -> None:
    """One attention exported by torch.onnx (TorchScript exporter, as dbunet-export uses), with dynamic tokens."""
    import torch
    import torch.nn.functional as F

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            split = [(x.shape[0], x.shape[1], h, x.shape[2] // h) for x in (q, k, v)]
            q4, k4, v4 = (x.view(*sh).transpose(1, 2) for x, sh in zip((q, k, v), split, strict=True))
            out = F.scaled_dot_product_attention(q4, k4, v4)
            return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

    args = (torch.randn(b, 16, h * d), torch.randn(b, 8, h * d), torch.randn(b, 8, h * dv))
    axes = {"q": {1: "s"}, "k": {1: "l"}, "v": {1: "l"}, "out": {1: "s"}}
    torch.onnx.export(Attention(), args, str(path), dynamo=False, opset_version=18, input_names=["q", "k", "v"],
                      output_names=["out"], dynamic_axes=axes)


def measure_attention(shape: list, form: str, repeat: int) -> dict:
    """form: "plain" (ONNX Runtime, as exported), "fused" (ONNX Runtime, rewritten) or "openvino" (as exported,
    OpenVINO FP32)."""
    import tempfile

    import numpy as np
    import onnx

    from dbunet.onnx_attention import fuse_attention

    _, b, h, s, keys, d, dv = shape
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((b, s, h * d), dtype=np.float32),
             "k": rng.standard_normal((b, keys, h * d), dtype=np.float32),
             "v": rng.standard_normal((b, keys, h * dv), dtype=np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "attention.onnx"
        attention_graph(b, h, s, keys, d, dv, path)
        model = onnx.load(str(path))
        if form == "openvino":
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            run = lambda: compiled(feeds)  # noqa: E731
        else:
            import onnxruntime as ort

            fuse_attention(model, rewrite=form == "fused")
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            run = lambda: session.run(None, feeds)  # noqa: E731
    before = rss_mb()  # resident now: the peak after the runs less this is what the runs needed at once
    seconds = median_s(run, repeat)
    return {"seconds": seconds, "added_mb": peak_mb() - before}


# -- one model step ---------------------------------------------------------------------------------------
def export_model(name: str) -> Path:
    cache = HERE / ".cache" / f"{name}-256"
    if not (cache / "manifest.json").is_file():
        from dbunet.export.exporter import ExportOptions, export

        export(ExportOptions(config=name, out=cache, height=256, width=256), report=print)
    return cache


def measure_step(model: str, size: int, form: str, repeat: int) -> dict:
    from dbunet.export.graphs import sample_inputs
    from dbunet.export.specs import default_sizes
    from dbunet.manifest import Manifest
    from dbunet.runtime.backends.onnxruntime import OrtBackend

    cache = HERE / ".cache" / f"{model}-256"
    manifest = Manifest.read(cache)
    artifact = manifest.find("dbunet_step", "fp32")
    if form == "openvino":
        from dbunet.runtime.backends.openvino import OvBackend

        backend = OvBackend("cpu", cache_dir=None)  # FP32 (its default precision attribute)
    else:
        backend = OrtBackend("cpu", fuse_attention=form == "fused")
    graph = backend.load(cache / artifact.path, artifact.spec)
    feeds = sample_inputs(artifact.spec, default_sizes(manifest.config, 2, size, size), manifest.config.text.vocab_size)
    seconds = median_s(lambda: graph.run(feeds), repeat)
    return {"seconds": seconds, "peak_mb": peak_mb()}


def measure_image(model: str, size: int, fused: bool) -> dict:
    import time

    from dbunet.runtime import Pipeline
    from dbunet.runtime.backends.onnxruntime import OrtBackend

    pipe = Pipeline.from_artifacts(HERE / ".cache" / f"{model}-256", OrtBackend("cpu", fuse_attention=fused), "fp32")
    t0 = time.perf_counter()
    pipe("a red circle above a blue square", height=size, width=size)
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_mb()}


def in_child(kind: str, *args) -> dict | None:
    """One measurement in a fresh process; None where it failed (printed: why), {"oom": True} where the kernel
    killed it for memory."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps([kind, *args])], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode:
        why = (f"killed by signal {-proc.returncode} (the kernel's out-of-memory killer sends 9)"
               if proc.returncode < 0 else (proc.stderr.strip().splitlines() or ["?"])[-1][:200])
        print(f"  {kind} {args}: failed: {why}")
        return {"oom": True} if proc.returncode == -9 else None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def score_gib(b, h, s, keys) -> float:
    return b * h * s * keys * 4 / 2**30


def cell(got: dict | None, key: str) -> str:
    if got is None:
        return "failed"
    if got.get("oom"):
        return "out of memory (killed)"
    return f"{fmt(got['seconds'], 's')}, {fmt(got[key], 'MB')}"


def fmt(value, unit: str) -> str:
    if value is None:
        return "failed"
    return f"{value:.3f} s" if unit == "s" else f"{value:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["tiny", "sd15"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 512, 1024])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-shapes", action="store_true", help="skip the per-shape table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        measure = {"attention": measure_attention, "step": measure_step, "image": measure_image}[kind]
        print(json.dumps(measure(*rest)))
        return

    sys.path.insert(0, str(HERE))
    from cpu_report import cpu_line, update_readme

    from dbunet import atomic

    lines = ["## Attention in linear memory (ONNX Runtime, CPU, FP32)", "",
             "`python benchmarks/attention.py`; each figure from its own process, medians of "
             f"{args.repeat} runs after a warm-up. {cpu_line()}.", ""]
    if not args.no_shapes:
        lines += ["| attention (batch x heads x tokens x head size) | ORT plain: time, memory | ORT rewritten | "
                  "OpenVINO FP32 (as exported) |", "|---|---|---|---|"]
        for shape in SHAPES:
            label, b, h, s, keys, d, _ = shape
            skip = score_gib(b, h, s, keys) * 2**30 > SKIP_BYTES
            cells = []
            for form in ("plain", "fused", "openvino"):
                if form == "plain" and skip:
                    cells.append(f"not run (scores {score_gib(b, h, s, keys):.0f} GiB)")
                    continue
                cells.append(cell(in_child("attention", shape, form, args.repeat), "added_mb"))
            dims = f"{b}x{h}x{s}{'' if keys == s else f' (keys {keys})'}x{d}"
            lines.append(f"| {label}: {dims} | {' | '.join(cells)} |")
            print(lines[-1], flush=True)
        lines.append("")
    lines += ["| model, one guided step (dbunet_step, batch 2) | size | ORT plain: time, peak RSS | ORT rewritten | "
              "OpenVINO FP32 |", "|---|---|---|---|---|"]
    steps = {}
    for model in args.models:
        export_model(model)
        for size in args.sizes:
            cells = []
            for form in ("plain", "fused", "openvino"):
                if form == "plain" and (model, size) == ("sd15", 1024):
                    cells.append("not run (16 GiB per score tensor)")
                    continue
                got = steps[model, size, form] = in_child("step", model, size, form, args.repeat)
                cells.append(cell(got, "peak_mb"))
            lines.append(f"| {model} | {size}x{size} | {' | '.join(cells)} |")
            print(lines[-1], flush=True)
    lines.append("")
    for model in args.models:  # attention's FLOPs grow with the tokens squared: 16x for 4x the pixels
        pair = [steps.get((model, size, "fused")) for size in (256, 512)]
        plain = [steps.get((model, size, "plain")) for size in (256, 512)]
        if all(p and "seconds" in p for p in pair + plain):
            lines.append(f"- {model}: the 512x512 step takes {pair[1]['seconds'] / pair[0]['seconds']:.1f}x the "
                         f"256x256 step rewritten, {plain[1]['seconds'] / plain[0]['seconds']:.1f}x plain "
                         "(4x the pixels; 16x the attention's multiply-adds)")
    if "tiny" in args.models:
        for fused in (False, True):
            image = in_child("image", "tiny", 512, fused)
            lines.append(f"- tiny, a whole 512x512 image (every stage), {'rewritten' if fused else 'plain'}: "
                         f"{cell(image, 'peak_mb')} peak RSS")
            print(lines[-1], flush=True)
    readme = HERE / "README.md"
    atomic.write_text(readme, update_readme(readme.read_text(), "linear-memory", "\n".join(lines),
                                                 tool="attention"))


if __name__ == "__main__":
    main()
