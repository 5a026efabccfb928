"""CPU report: ONNX Runtime vs the PyTorch reference vs OpenVINO, and the machine's GEMM limit.

    python benchmarks/cpu_report.py [CASE ...] [--repeat 7]

A CASE is `config[@size][/steps]`: `tiny` (the preset's size and steps), `sd15@256/1` (sd15 at
256x256, pipeline runs with one denoising step). Default: both of those. Each case exports its
graphs once (kept under benchmarks/.cache/), then measures in one invocation on this machine, each
runtime in its own process (one runtime's idle worker threads slow whichever runs next in the same
process), medians throughout, and rewrites its own block of benchmarks/README.md (text outside the
blocks is kept) and benchmarks/cpu_<case>.png.

OpenVINO runs through the runtime's own backend (`--backend openvino`: local functions inlined in
memory at load time), once in FP32 and once in BF16 where the CPU has AVX512-BF16 or AMX; each figure
says its precision.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
DEFAULT_CASES = ("tiny", "sd15@256/1")


@dataclass(frozen=True)
class Case:
    config: str
    size: int | None = None  # square image side; None: the preset's default
    steps: int | None = None  # pipeline denoising steps; None: the preset's default

    @classmethod
    def parse(cls, text: str) -> Case:
        m = re.fullmatch(r"(\w+)(?:@(\d+))?(?:/(\d+))?", text)
        if not m:
            raise SystemExit(f"case {text!r} is not config[@size][/steps], e.g. sd15@256/1")
        return cls(m[1], int(m[2]) if m[2] else None, int(m[3]) if m[3] else None)

    def __str__(self) -> str:
        return self.config + (f"@{self.size}" if self.size else "") + (f"/{self.steps}" if self.steps else "")

    @property
    def slug(self) -> str:  # names the cache folder, plot and README block; steps do not change the graphs
        return self.config + (f"-{self.size}" if self.size else "")


def med_ms(fn, repeat: int, warmup: int = 2) -> float:
    from dbunet.bench.stats import measure

    return measure(fn, repeat, warmup).median_ms


def gemm_rate(repeat: int) -> float:
    """Best fp32 GEMM rate (GFLOP/s) of numpy and torch at 2048^3: the machine's practical limit."""
    import torch

    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    flops = 2 * 2048**3
    ta = torch.from_numpy(a)
    return max(flops / med_ms(lambda: a @ a, repeat) / 1e6, flops / med_ms(lambda: ta @ ta, repeat) / 1e6)


def _step_inputs(case: Case, component: str = "dbunet"):
    from dbunet.config import preset
    from dbunet.export.graphs import sample_inputs
    from dbunet.export.specs import component_specs, default_sizes

    cfg = preset(case.config)
    spec = component_specs(cfg)[component]
    sizes = default_sizes(cfg, batch=2, height=case.size, width=case.size, boxes=4)
    return spec, sizes, sample_inputs(spec, sizes, cfg.text.vocab_size)


def step_pair(cache: Path, case: Case, repeat: int) -> dict:
    """One guided DDIM step both ways, alternating in one process (medians): the per-call UNet graph followed
    by guidance and the sampler's numpy step() on the host, and the whole-step graph doing all of it."""
    import time

    from dbunet.export.graphs import sample_row
    from dbunet.runtime.backends.onnxruntime import OrtBackend
    from dbunet.schedulers import DDIMScheduler

    spec, _, feeds = _step_inputs(case)
    step_spec, _, step_feeds = _step_inputs(case, "dbunet_step")
    backend = OrtBackend("cpu")
    per_call = backend.load(cache / "fp32" / "dbunet.onnx", spec).run
    whole = backend.load(cache / "fp32" / "dbunet_step.onnx", step_spec).run
    sampler = DDIMScheduler()
    sampler.set_timesteps(30)
    x = step_feeds["x"]

    def host_loop_step():
        eps = per_call(feeds)[0]
        sampler.step(eps[:1] + np.float32(7.5) * (eps[1:] - eps[:1]), 10, x)

    def graph_step():
        whole({**step_feeds, "coeffs": sample_row("dbunet_step")})

    times: dict[str, list[float]] = {"per_call": [], "whole_step": []}
    for i in range(repeat + 2):  # 2 warm-up rounds
        for name, fn in (("per_call", host_loop_step), ("whole_step", graph_step)):
            start = time.perf_counter()
            fn()
            if i >= 2:
                times[name].append((time.perf_counter() - start) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def measure(kind: str, cache: Path, case: Case, repeat: int) -> dict:
    """One measurement, run in a fresh process by main()."""
    spec, _, feeds = _step_inputs(case)
    graph = cache / "fp32" / "dbunet.onnx"
    if kind == "gemm":
        return {"gflops": gemm_rate(repeat)}
    if kind == "ort_step":
        from dbunet.runtime.backends.onnxruntime import OrtBackend

        run = OrtBackend("cpu").load(graph, spec).run
        return {"ms": med_ms(lambda: run(feeds), repeat)}
    if kind == "ort_step_pair":
        return step_pair(cache, case, repeat)
    if kind == "torch_step":
        import torch

        from dbunet.models.cascade import load_model

        unet = load_model(cache / "model").cascade.unet
        tensors = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
        with torch.no_grad():
            return {"ms": med_ms(lambda: unet(*tensors), repeat)}
    if kind in ("openvino_step", "openvino_bf16_step"):
        # the runtime's OpenVINO backend, with an explicit precision (OpenVINO alone picks BF16 where it can)
        try:
            from dbunet.runtime.backends.openvino import OvBackend, has_bf16
        except ImportError:
            return {"ms": None}
        precision = "bf16" if kind == "openvino_bf16_step" else "fp32"
        if precision == "bf16" and not has_bf16():
            return {"ms": None, "precision": "bf16 (not on this CPU)"}
        backend = OvBackend("cpu", cache_dir=None)
        backend.artifact_precision(precision)
        run = backend.load(graph, spec).run
        hint = backend.load(graph, spec).compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        return {"ms": med_ms(lambda: run(feeds), repeat), "precision": hint}
    if kind == "e2e":
        from e2e import paired_runs  # benchmarks/ is this script's folder, first on sys.path

        runs = paired_runs(cache, repeat, case.steps, case.size)
        return {k: float(np.median(runs[k])) * 1000 for k in ("ort", "torch")}
    if kind == "e2e_loops":
        from e2e import paired_runs

        runs = paired_runs(cache, repeat, case.steps, case.size, loops=True)
        return {k: float(np.median(runs[k])) * 1000 for k in ("step_graphs", "per_call")}
    if kind in ("bench_ort", "bench_torch"):
        from dbunet.bench.baseline import save_report
        from dbunet.bench.runner import BenchOptions, run_bench

        path = cache / f"{kind}.json"
        options = BenchOptions(cache, backend=kind.split("_")[1], steps=case.steps, height=case.size,
                               width=case.size, repeat=repeat)
        save_report(run_bench(options), path)
        return {"report": str(path)}
    raise SystemExit(f"unknown measurement {kind}")


def cpu_line() -> str:
    """The CPU model and the flags that decide low-precision paths (OpenVINO runs BF16 where it can)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, flags=re.M)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, flags=re.M) or re.match("()", "")).group(1).split())
    wanted = [f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return f"{model.group(1).strip() if model else 'unknown CPU'}; flags: {', '.join(wanted) or 'no AVX-512'}"


def _block(case: Case, repeat: int, gemm: float, step_gflop: float, steps: dict, e2e: dict, loops: dict,
           reports: list) -> str:
    ort_r, torch_r = (r.results for r in reports)
    settings = reports[0].settings
    h, w = settings["size"]
    _, sizes, _ = _step_inputs(case)
    lines = [
        f"## {case.config} at {h}x{w}", "",
        f"`python benchmarks/cpu_report.py {case}`; medians of {repeat} runs after 2 warm-up runs. "
        f"CPU: {cpu_line()}.", "",
        f"**End to end, ORT vs PyTorch eager: {e2e['ort']:.0f} ms vs {e2e['torch']:.0f} ms, "
        f"{e2e['torch'] / e2e['ort']:.2f}x** (one image, {settings['steps']} denoising "
        f"step{'s' if settings['steps'] != 1 else ''} and the preset's refiner steps; the two pipelines "
        "alternate in one process, so the machine's drift hits both alike).", "",
        f"**Whole-step graphs vs the per-call loop they replaced (both ORT fp32, alternating in one process): "
        f"{loops['step_graphs']:.0f} ms vs {loops['per_call']:.0f} ms, "
        f"{loops['per_call'] / loops['step_graphs']:.2f}x** "
        "(per call: the UNet graph, then guidance and the sampler's numpy step() on the host).", "",
        f"### one DB-UNet step (CFG batch 2, {sizes['latent_height']}x{sizes['latent_width']} latents, 4 boxes, "
        f"{step_gflop:.2f} GFLOP "
        "by torch.utils.flop_counter)", "",
        "| runtime | ms | GFLOP/s | share of the fp32 GEMM rate |", "|---|---|---|---|",
    ]
    for name, ms in steps.items():
        if ms is None:
            lines.append(f"| {name} | not available here | | |")
            continue
        rate = step_gflop / ms * 1000
        lines.append(f"| {name} | {ms:.2f} | {rate:.1f} | {rate / gemm:.1%} |")
    lines += ["", f"fp32 GEMM rate (2048^3, best of numpy and torch, same run): {gemm:.0f} GFLOP/s.", "",
              "### per stage and whole pipeline (dbunet-bench: each backend in its own process, one after the "
              "other)", "",
              "| component | ort ms | torch ms | torch / ort |", "|---|---|---|---|"]
    for c in ort_r:
        lines.append(f"| {c} | {ort_r[c].median_ms:.2f} | {torch_r[c].median_ms:.2f} | "
                     f"{torch_r[c].median_ms / ort_r[c].median_ms:.2f}x |")
    lines += ["", f"![per-stage latency](cpu_{case.slug}.png)"]
    return "\n".join(lines)


def update_readme(text: str, slug: str, block: str, tool: str = "cpu_report") -> str:
    """Replace the case's block (or append it); everything outside the markers stays as written."""
    start, end = f"<!-- {tool}:{slug} -->", f"<!-- /{tool}:{slug} -->"
    new = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        return text[: text.index(start)] + new + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + new + "\n"


def write_block(readme: Path, slug: str, block: str, tool: str = "cpu_report") -> None:
    """update_readme on the file itself (UTF-8, whatever the locale says), written atomically."""
    from dbunet import atomic

    text = readme.read_text(encoding="utf-8") if readme.is_file() else "# CPU benchmarks\n"
    atomic.write_text(readme, update_readme(text, slug, block, tool))


def run_case(case: Case, repeat: int) -> str:
    from child import ChildFailed, in_child

    from dbunet.bench.baseline import load_report
    from dbunet.bench.plot import plot_reports
    from dbunet.config import preset
    from dbunet.export.exporter import ExportOptions, export
    from dbunet.models.stats import component_stats

    cache = HERE / ".cache" / case.slug
    if not (cache / "manifest.json").is_file():
        export(ExportOptions(config=case.config, out=cache, height=case.size, width=case.size), report=print)

    def run(kind: str) -> dict:
        print(f"[{case}] {kind}", flush=True)
        try:
            return in_child(__file__, "measure", kind, str(case), repeat)
        except ChildFailed as exc:
            raise SystemExit(f"{kind} failed: {exc}") from None

    step_gflop = next(r.gflops for r in component_stats(preset(case.config), case.size, case.size)
                      if r.component == "dbunet")
    gemm = run("gemm")["gflops"]
    single = {name: run(f"{name}_step") for name in ("ort", "openvino", "openvino_bf16", "torch")}
    pair = run("ort_step_pair")
    inlined = f"openvino {single['openvino']['precision']} (per-call graph, functions inlined)"
    steps = {"ort fp32 (per-call UNet graph)": single["ort"]["ms"],
             inlined: single["openvino"]["ms"],
             f"openvino {single['openvino_bf16'].get('precision', 'bf16')} (same graph)": single["openvino_bf16"]["ms"],
             "torch fp32 eager": single["torch"]["ms"],
             "ort fp32, paired in one process: per-call UNet graph + host guidance and DDIM step()": pair["per_call"],
             "ort fp32, paired in one process: whole-step graph (UNet + guidance + update)": pair["whole_step"]}
    e2e = run("e2e")
    loops = run("e2e_loops")
    reports = [load_report(run(f"bench_{b}")["report"]) for b in ("ort", "torch")]
    machine = reports[0].machine
    plot_reports(reports, HERE / f"cpu_{case.slug}.png",
                 f"{case}: per-stage latency, {machine['processor']} ({machine['cpu_count']} cores)")
    return _block(case, repeat, gemm, step_gflop, steps, e2e, loops, reports)


def measure_case(kind: str, case: str, repeat: int) -> dict:
    """`measure` for a case given as its text (what a child process receives)."""
    parsed = Case.parse(case)
    return measure(kind, HERE / ".cache" / parsed.slug, parsed, repeat)


def main() -> None:
    from child import serve_child

    if serve_child({"measure": measure_case}):
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="*", default=list(DEFAULT_CASES), help="config[@size][/steps] (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (default: 7)")
    args = p.parse_args()
    cases = [Case.parse(c) for c in args.cases]
    for case in cases:
        block = run_case(case, args.repeat)
        write_block(README, case.slug, block)
        print(block)


if __name__ == "__main__":
    main()
