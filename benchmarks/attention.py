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

3. `--ratio` (also part of the default run, its own block): why tiny's 512x512 step takes more than 5x its
   256x256 step. ONNX Runtime's profiler splits both steps into MultiHeadAttention and the rest, which gives the
   speed-up an attention kernel would need; beside it, ONNX Runtime's MultiHeadAttention at tiny's first level
   (head size 8) in scores per second, and the least time this machine's Exp and SGEMM rates allow for one
   exponential and 16 multiply-adds per score.

Every figure comes from its own process (a fresh allocator and thread pool), FP32 throughout: ONNX Runtime's
CPU provider computes in FP32. A plain graph whose one score tensor alone would pass 12 GiB is not run.
"""

from __future__ import annotations

import argparse
import json
import os
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


def step_graph(model: str, sizes: list[int]):
    """The cached export's FP32 step graph: (its path, its artifact entry, seeded CFG-batch feeds by size)."""
    from dbunet.export.graphs import sample_inputs
    from dbunet.export.specs import default_sizes
    from dbunet.manifest import Manifest

    cache = HERE / ".cache" / f"{model}-256"
    manifest = Manifest.read(cache)
    artifact = manifest.find("dbunet_step", "fp32")
    feeds = {size: sample_inputs(artifact.spec, default_sizes(manifest.config, 2, size, size),
                                 manifest.config.text.vocab_size) for size in sizes}
    return cache / artifact.path, artifact, feeds


def measure_step(model: str, size: int, form: str, repeat: int) -> dict:
    from dbunet.runtime.backends.onnxruntime import OrtBackend

    path, artifact, feeds = step_graph(model, [size])
    if form == "openvino":
        from dbunet.runtime.backends.openvino import OvBackend

        backend = OvBackend("cpu", cache_dir=None)  # FP32 (its default precision attribute)
    else:
        backend = OrtBackend("cpu", fuse_attention=form == "fused")
    graph = backend.load(path, artifact.spec)
    seconds = median_s(lambda: graph.run(feeds[size]), repeat)
    return {"seconds": seconds, "peak_mb": peak_mb()}


def measure_image(model: str, size: int, fused: bool) -> dict:
    import time

    from dbunet.runtime import Pipeline
    from dbunet.runtime.backends.onnxruntime import OrtBackend

    pipe = Pipeline.from_artifacts(HERE / ".cache" / f"{model}-256", OrtBackend("cpu", fuse_attention=fused), "fp32")
    t0 = time.perf_counter()
    pipe("a red circle above a blue square", height=size, width=size)
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_mb()}


# -- the tiny 512/256 step ratio: where the time goes, what a kernel would have to do -------------------------
HEAD8 = ("tiny 512x512, first level self-attention", 2, 4, 4096, 4096, 8, 8)
MACS_PER_SCORE = 16  # q.k and p.v: head size 8 each


def measure_profile(model: str, sizes: list[int], repeat: int) -> dict:
    """One rewritten step (the backend's session options) at each size, the sizes alternating run by run so that
    the machine's drifts touch both alike: the median time of its MultiHeadAttention kernels by ONNX Runtime's
    profiler and of the whole run without the profiler (whose cost per node would inflate the many small ops),
    in ms, by size."""
    import statistics
    import tempfile
    import time

    import onnxruntime as ort

    from dbunet.onnx_attention import load_rewritten
    from dbunet.runtime.backends.onnxruntime import OrtBackend, session_options

    path, artifact, feeds = step_graph(model, sizes)
    order = [size for _ in range(repeat + 1) for size in sizes]  # the first round warms up
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(None)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "step")
        data, _ = load_rewritten(path, options)
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        for size in order:
            session.run(None, feeds[size])
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        del session
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kernels = [e for e in events
               if e.get("cat") == "Node" and e.get("args", {}).get("op_name") == "MultiHeadAttention"]
    attention = {size: [] for size in sizes}
    for size, (start, end) in list(zip(order, runs, strict=True))[len(sizes):]:
        attention[size].append(sum(e["dur"] for e in kernels if start <= e["ts"] <= end) / 1e3)

    graph = OrtBackend("cpu").load(path, artifact.spec)
    seconds = {size: [] for size in sizes}
    for i, size in enumerate(order):
        t0 = time.perf_counter()
        graph.run(feeds[size])
        if i >= len(sizes):
            seconds[size].append(time.perf_counter() - t0)
    return {str(size): {"run_ms": statistics.median(seconds[size]) * 1e3,
                        "attention_ms": statistics.median(attention[size])} for size in sizes}


def _ort_session(nodes, inputs: dict[str, list[int]], output: str, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                               for n, s in inputs.items()],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)  # ONNX Runtime >= 1.20
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def exp_rate(repeat: int) -> float:
    """ONNX Runtime's Exp on one core, on a tensor that stays in its cache (elements/s): a chain of Exp(-x) nodes
    less the same chain without the Exp. (On all cores at once the threads' hand-offs per node would be timed.)"""
    import numpy as np
    from onnx import helper

    size, links = 64 * 1024, 200
    feeds = {"x": -np.random.default_rng(0).random(size, dtype=np.float32)}  # exp(-x) stays in (0, 1]

    def chain(ops: list[str]) -> float:
        nodes = [helper.make_node(ops[i % len(ops)], [f"t{i - 1}" if i else "x"], [f"t{i}"])
                 for i in range(links * len(ops))]
        session = _ort_session(nodes, {"x": [size]}, nodes[-1].output[0], threads=1)
        return median_s(lambda: session.run(None, feeds), repeat)

    return links * size / (chain(["Exp", "Neg"]) - chain(["Neg"]))


def matmul_rate(repeat: int) -> float:
    """ONNX Runtime's MatMul at 2048^3 on all cores (multiply-adds/s)."""
    import numpy as np
    from onnx import helper

    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    session = _ort_session([helper.make_node("MatMul", ["a", "b"], ["c"])], {"a": [n, n], "b": [n, n]}, "c",
                           threads=os.cpu_count() or 1)
    return n**3 / median_s(lambda: session.run(None, {"a": a, "b": a}), repeat)


def measure_rates(repeat: int) -> dict:
    """This machine: MultiHeadAttention at HEAD8 on all cores (s), Exp in cache per core (1/s), MatMul on all
    cores (multiply-adds/s)."""
    return {"head8_s": measure_attention(list(HEAD8), "fused", repeat)["seconds"],
            "exp_per_core_s": exp_rate(repeat), "macs_per_s": matmul_rate(repeat), "cores": os.cpu_count() or 1}


def needed_speedup(attention: tuple[float, float], rest: tuple[float, float], ratio: float = 5.0) -> float | None:
    """How much faster attention must run at both sizes for (rest + attention) to grow by at most `ratio`, the
    rest unchanged; None where no speed-up can (the rest alone grows more). (r2 + a2/k) <= ratio (r1 + a1/k)."""
    (a1, a2), (r1, r2) = attention, rest
    if ratio * r1 <= r2:
        return None
    return (a2 - ratio * a1) / (ratio * r1 - r2)


def ratio_block(repeat: int) -> list[str]:
    from cpu_report import cpu_line

    steps = in_child("profile", "tiny", [256, 512], repeat)
    rates = in_child("rates", repeat)
    if not (steps and rates) or "oom" in (steps | rates):
        return ["- the tiny 512/256 ratio: a measurement failed (printed above)"]
    small, large = steps["256"], steps["512"]
    a1, a2 = small["attention_ms"], large["attention_ms"]
    r1, r2 = small["run_ms"] - a1, large["run_ms"] - a2
    need = needed_speedup((a1, a2), (r1, r2))
    _, b, h, s, keys, _, _ = HEAD8
    scores = b * h * s * keys
    head8_ms = rates["head8_s"] * 1e3
    exp_per_s = rates["exp_per_core_s"] * rates["cores"]
    floor_ms = (scores / exp_per_s + MACS_PER_SCORE * scores / rates["macs_per_s"]) * 1e3
    lines = ["## Why tiny's 512x512 step takes more than 5x its 256x256 step (ONNX Runtime, CPU, FP32)", "",
             f"`python benchmarks/attention.py --ratio`; medians of {repeat} runs after a warm-up, the two sizes "
             f"alternating. {cpu_line()}.", "",
             "| tiny, one guided step, rewritten (attention by ONNX Runtime's profiler, the run without it) "
             "| 256x256 | 512x512 | growth |",
             "|---|---|---|---|",
             f"| MultiHeadAttention kernels | {a1:.1f} ms | {a2:.1f} ms | {a2 / a1:.1f}x |",
             f"| everything else | {r1:.1f} ms | {r2:.1f} ms | {r2 / r1:.1f}x |",
             f"| the whole run | {a1 + r1:.1f} ms | {a2 + r2:.1f} ms | {(a2 + r2) / (a1 + r1):.1f}x |", ""]
    if need is None:
        lines.append("- No attention speed-up brings the ratio to 5x: the rest alone grows more than that.")
    elif need <= 1:
        lines.append("- The 512x512 step takes at most 5x the 256x256 step as it is.")
        need = None
    else:
        lines.append(f"- For the 512x512 step to take at most 5x the 256x256 step, MultiHeadAttention would have to "
                     f"run {need:.2f}x faster at both sizes (the rest as it is).")
    lines += [f"- ONNX Runtime's MultiHeadAttention at tiny's first level, {b}x{h}x{s}x8 (the flash path with "
              f"head size 8): {head8_ms:.1f} ms, {scores / rates['head8_s'] / 1e9:.2f} G scores/s"
              + (f"; {need:.2f}x faster is {head8_ms / need:.1f} ms." if need else "."),
              f"- This machine's limits: ONNX Runtime's Exp in cache {rates['exp_per_core_s'] / 1e9:.1f} G/s on one "
              f"core (x {rates['cores']} cores), its MatMul at 2048^3 {rates['macs_per_s'] / 1e9:.0f} G "
              f"multiply-adds/s on all. One exponential and {MACS_PER_SCORE} multiply-adds per score at those rates "
              f"take {floor_ms:.1f} ms for that attention, before any max, sum, rescaling or packing: ONNX "
              f"Runtime's kernel takes {head8_ms / floor_ms:.1f}x that floor."]
    if need:
        lines.append(f"- The 5x ratio needs {head8_ms / need / floor_ms:.2f}x the floor: "
                     + ("below it, so no kernel that computes every score at these rates meets the ratio here."
                        if head8_ms / need < floor_ms else "a kernel that close to the floor would meet it."))
    return lines


def in_child(kind: str, *args) -> dict | None:
    """One measurement in a fresh process (child.py); None where it failed (printed: why), {"oom": True} where
    the kernel killed it for memory."""
    from child import ChildFailed
    from child import in_child as run

    try:
        return run(__file__, kind, *args, cwd=ROOT)
    except ChildFailed as exc:
        print(f"  {kind} {args}: failed: {exc}")
        return {"oom": True} if exc.out_of_memory else None


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
    sys.path.insert(0, str(HERE))
    from child import serve_child

    if serve_child({"attention": measure_attention, "step": measure_step, "image": measure_image,
                    "profile": measure_profile, "rates": measure_rates}):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["tiny", "sd15"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 512, 1024])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-shapes", action="store_true", help="skip the per-shape table")
    parser.add_argument("--ratio", action="store_true", help="only the tiny 512/256 step ratio's block")
    args = parser.parse_args()
    from cpu_report import cpu_line, write_block

    readme = HERE / "README.md"
    if "tiny" in args.models:
        export_model("tiny")
        block = "\n".join(ratio_block(args.repeat))
        print(block, flush=True)
        write_block(readme, "tiny-ratio", block, tool="attention")
    if args.ratio:
        return
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
    write_block(readme, "linear-memory", "\n".join(lines), tool="attention")


if __name__ == "__main__":
    main()
