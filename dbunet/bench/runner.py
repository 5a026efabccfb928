"""Time each component of the cascade, and the whole pipeline, on one backend and precision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dbunet import __version__, backends, schemas
from dbunet.architectures.base import BENCH_COMPONENTS
from dbunet.bench.stats import Machine, Timing, calibration_ms, check_counts, device_memory_mb, measure, peak_rss_mb
from dbunet.errors import ConfigError
from dbunet.generation import Step, build_conditioning
from dbunet.manifest import Manifest, tool_versions
from dbunet.request import build_request
from dbunet.schedulers import DDIMScheduler, make_scheduler

COMPONENTS = BENCH_COMPONENTS  # any architecture's; a run times those of its model's architecture
SCHEMA = 2  # 2: the decoder's component is "vae_decoder", as the graph is named
PROMPT = "a red cat on a sofa"
BOXES = ("0.1,0.3,0.6,0.9:a red cat", "0.5,0.1,0.9,0.5:a lamp")
Progress = Callable[[str, int, int], None]


@dataclass
class BenchOptions:
    artifacts: Path = Path("dbunet-artifacts")
    backend: str = backends.DEFAULT  # a name in dbunet.backends (auto: the report names the one chosen)
    precision: str | None = None  # None: the backend's default
    components: tuple[str, ...] = COMPONENTS
    steps: int | None = None  # pipeline denoising steps (None: the model's default)
    height: int | None = None  # image size (None: the model's default)
    width: int | None = None
    repeat: int = 10
    warmup: int = 2
    threads: int | None = None
    whole_loops: bool | None = None  # None: the backend's default (dbunet.backends.make_backend)

    def __post_init__(self) -> None:
        unknown = set(self.components) - set(COMPONENTS)
        if unknown:
            raise ConfigError(f"unknown components {sorted(unknown)}; valid: {', '.join(COMPONENTS)}")
        check_counts(self.repeat, self.warmup)
        if self.backend != backends.AUTO:
            backends.info(self.backend)  # an unknown name: ConfigError listing the valid ones


@dataclass
class BenchReport:
    backend: str
    precision: str
    config: str
    results: dict[str, Timing]
    peak_rss_mb: float
    calibration_ms: float = 0.0  # fixed GEMM time measured during the run (machine speed); 0: unknown
    machine: dict = field(default_factory=lambda: Machine.current().to_dict())
    versions: dict = field(default_factory=tool_versions)
    settings: dict = field(default_factory=dict)
    device_memory_mb: float | None = None  # GPU memory held after the run; None: no GPU in use
    details: dict = field(default_factory=dict)  # backend-specific figures (TensorRT: per engine, graphs, memory)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "dbunet_version": __version__, "backend": self.backend, "precision": self.precision,
            "config": self.config, "machine": self.machine, "versions": self.versions, "settings": self.settings,
            "peak_rss_mb": self.peak_rss_mb, "device_memory_mb": self.device_memory_mb,
            "calibration_ms": self.calibration_ms, "details": self.details,
            "results": {k: t.to_dict() for k, t in self.results.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> BenchReport:
        if not isinstance(d, dict) or "schema" not in d:
            raise ConfigError("not a dbunet-bench report (no \"schema\" field)")
        if d["schema"] != SCHEMA:
            raise ConfigError(f"benchmark file schema {d['schema']!r} is not {SCHEMA}; record a new baseline")
        wrong = schemas.problem(d, schemas.BENCH_REPORT)
        if wrong:
            raise ConfigError(f"not a valid dbunet-bench report: {wrong}")
        return cls(d["backend"], d["precision"], d["config"], {k: Timing.from_dict(v) for k, v in d["results"].items()},
                   d["peak_rss_mb"], d.get("calibration_ms", 0.0), d["machine"], d["versions"], d.get("settings", {}),
                   d.get("device_memory_mb"), d.get("details", {}))


def _pipeline(options: BenchOptions):
    """(pipeline with .stages/.config/__call__, precision) for the chosen backend."""
    pipe = backends.open_pipeline(options.artifacts, options.backend, options.precision, threads=options.threads,
                                  whole_loops=options.whole_loops)
    return pipe, pipe.precision


def _request_options(options: BenchOptions, config) -> dict:
    boxes = list(BOXES) if config.has_boxes else []  # a plain SD model (--arch sd1) takes none
    # None (not set) is the model's default in the request
    return {"boxes": boxes, "steps": options.steps, "height": options.height, "width": options.width}


def _component_calls(pipe, request_options: dict) -> tuple[dict[str, Callable[[], object]], tuple]:
    """One representative call per component, inputs prepared once (guided batch of 2); and the inputs of
    one whole denoising loop (steps, latents, conditioning)."""
    cfg, stages = pipe.config, pipe.stages
    req = pipe.request(PROMPT, **request_options)
    rng = np.random.default_rng(0)
    ids = stages.tokenize([req.negative_text, req.prompt])
    cond = build_conditioning(stages, cfg, req)  # guided: the timed step is the CFG batch of 2
    f = cfg.vae.downscale
    latents = rng.standard_normal((1, cfg.vae.latent_channels, req.height // f, req.width // f)).astype(np.float32)
    image = np.clip(rng.standard_normal((1, 3, req.height, req.width)), -1, 1).astype(np.float32)
    z_dis = stages.refiner_condition(image) if cfg.has_refiner else None
    # the first step of each loop: guided DDIM with boxes on, and the refiner's DDIM
    sampler = make_scheduler("ddim", cfg.schedule)
    sampler.set_timesteps(req.steps)
    step = Step(0, sampler.table(req.guidance_scale, box_steps=1)[0], sampler)
    refiner = DDIMScheduler(cfg.refiner.schedule)
    refiner.set_timesteps(max(req.refiner_steps, 1))
    refiner_step = Step(0, refiner.table()[0], refiner)
    loop = ([Step(i, row, sampler) for i, row in enumerate(sampler.table(req.guidance_scale, req.box_steps))],
            latents, cond)
    return {
        "text_encoder": lambda: stages.encode_text(ids),
        "dbunet_step": lambda: stages.denoise_step(step, latents, latents, cond),
        "vae_decoder": lambda: stages.decode(latents),
        "refiner_step": lambda: stages.refiner_step(refiner_step, image, image, z_dis),
    }, loop


def run_bench(options: BenchOptions, progress: Progress | None = None,
              before_timing: Callable[[BenchReport], None] | None = None) -> BenchReport:
    """before_timing: called with the report-to-be (what will be measured, no results yet) once the pipeline is
    open, before the first timed call: `--compare` refuses a baseline of something else there, not minutes later."""
    config = Manifest.read(options.artifacts).config  # a bad size or step count is said before any graph loads
    build_request(config, PROMPT, **_request_options(options, config))
    pipe, precision = _pipeline(options)
    with pipe:  # closed at the end: a bench in a longer process (pytest) leaves no sessions, engines or device memory
        return _bench(pipe, precision, options, progress, before_timing)


def _bench(pipe, precision: str, options: BenchOptions, progress: Progress | None,
           before_timing: Callable[[BenchReport], None] | None) -> BenchReport:
    request_options = _request_options(options, pipe.config)
    request = pipe.request(PROMPT, **request_options)  # validates size and steps before any timing
    settings = {"repeat": options.repeat, "warmup": options.warmup, "threads": options.threads,
                "steps": request.steps, "size": [request.height, request.width],
                "whole_loops": pipe.stages.whole_loops}  # what ran: the option, or the backend's default
    if before_timing is not None:
        before_timing(BenchReport(pipe.backend_name, precision, pipe.config.name, {}, 0.0, settings=settings))
    calls, loop = _component_calls(pipe, request_options)
    timed = pipe.config.architecture.bench_components  # e.g. no refiner_step without a refiner
    options = replace(options, components=tuple(c for c in options.components if c in timed))
    calls["pipeline"] = lambda: pipe(PROMPT, seed=0, **request_options)
    results = {}
    calibrations = [calibration_ms()]  # between components: the machine's pace drifts within seconds
    for i, name in enumerate(options.components, 1):
        results[name] = measure(calls[name], options.repeat, options.warmup)
        calibrations.append(calibration_ms())
        if progress:
            progress("bench", i, len(options.components))
    calibration = float(np.median(calibrations))
    details = {}
    if pipe.backend_name == "trt":
        from dbunet.bench import tensorrt as trt_figures

        details = {"engine_device_ms": trt_figures.engine_device_ms(pipe.stages, options.repeat),
                   "host_overhead": trt_figures.host_overhead_ms(pipe.stages, *loop, options.repeat, options.warmup),
                   "device_memory": trt_figures.device_memory(pipe.stages)}
    return BenchReport(pipe.backend_name, precision, pipe.config.name, results, peak_rss_mb(), calibration,
                       settings=settings, device_memory_mb=device_memory_mb(), details=details)
