"""TensorRT backend: the engines dbunet-build wrote, run with cuda-python on one stream (torch-free).

Engines are looked up in the artifacts' engine index for this TensorRT version and GPU (another one is
refused with a one-line error that says to run dbunet-build), loaded lazily per resolution, and share
one activation region. The denoising loop and the refiner loop each run as one CUDA graph (see
trt_engine.StepLoop); the other stages as one graph per engine and shape. Noise is drawn on the host,
exactly as on every other backend, so one seed gives one image everywhere (within FP16 tolerance).

The engines have static shapes: the guided batch of 2 (an unguided request feeds its prompt twice:
eps_u + 1 (eps_c - eps_u) = eps_c) and the box slots the engines were built with (unused slots have
validity 0 and change nothing).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from dbunet.backends import info
from dbunet.errors import ArtifactError, ConfigError, InputError
from dbunet.generation import Conditioning, Step
from dbunet.manifest import shown
from dbunet.releases import install
from dbunet.runtime.stages import conditioning_feeds, pad_box_slots

log = logging.getLogger(__name__)


def missing_dependencies() -> list[str]:
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("tensorrt")
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401  (cuda-python < 12.6)
        except ImportError:
            missing.append("cuda-python")
    return missing


def installed() -> bool:
    """Whether --backend trt's packages are both here. `auto` asks on every run: tensorrt first, absent on most
    machines, so the CUDA bindings (0.1-0.3 s to import) are not imported beside ONNX Runtime for nothing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return not missing_dependencies()


class TrtBackend:
    device = "cuda"

    def __init__(self, device: str = "auto", threads: int | None = None) -> None:
        missing = missing_dependencies()
        if missing:
            raise ConfigError(f"--backend trt needs {' and '.join(missing)}, not installed here: on an NVIDIA GPU "
                              f"machine, {install('trt')} and run dbunet-build; or use --backend ort")
        if device not in ("auto", "cuda"):
            raise ConfigError(f"--backend trt runs on the GPU; device {device!r} is not possible (use --backend ort)")
        import tensorrt as trt

        from dbunet.engines.builder import current_device
        from dbunet.runtime.backends.cuda import Cuda

        self.trt = trt
        self.identity, self.driver_cuda = current_device(trt)  # CudaError: no device, driver too old
        self.cuda = Cuda()

    def default_precision(self, available: set[str]) -> str:
        if "fp16" not in available:
            raise ConfigError("TensorRT engines are built from the FP16 export; "
                              "run dbunet-export --fp16, then dbunet-build")
        return "fp16"

    def artifact_precision(self, precision: str) -> str:
        return precision

    def stages(self, manifest, directory: Path, precision: str, tokenizers) -> TrtStages:
        specs = {a.component: a.spec for a in manifest.artifacts if a.precision == precision}
        engines = TrtEngines(self, Path(directory), specs)
        cfg = manifest.config
        default = f"{cfg.defaults.height}x{cfg.defaults.width}"
        built = sorted({e.resolution for e in engines.index if e.resolution != "any" and e.device == self.identity})
        # load one resolution's engines now, so the shared activation region is sized once for them
        if built:
            engines.preload(default if default in built else built[0], cfg)
        return TrtStages(engines, tokenizers, cfg)

    def close(self) -> None:
        self.cuda.close()  # the stream; the engines and buffers on it belong to the stages, closed before


class TrtEngines:
    """Engines of one artifacts directory on this GPU, loaded on first use, one activation region."""

    def __init__(self, backend: TrtBackend, directory: Path, specs: dict | None = None) -> None:
        from dbunet.engines.cache import read_index
        from dbunet.runtime.backends.trt_engine import ActivationRegion

        self.backend, self.directory, self.specs = backend, directory, specs or {}
        self.index = read_index(directory)
        if not self.index:
            raise ArtifactError(f"no TensorRT engines in {shown(directory)}; "
                                f"run dbunet-build --artifacts {shown(directory)} on this machine")
        trt = backend.trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.region = ActivationRegion(backend.cuda)
        self.runners: dict[tuple[str, str], object] = {}

    def entry(self, component: str, resolution: str):
        from dbunet.engines.cache import find_engine

        return find_engine(self.index, component, resolution, self.backend.identity)

    def runner(self, component: str, resolution: str = "any"):
        from dbunet.manifest import verify_file
        from dbunet.runtime.backends.trt_engine import EngineRunner

        key = (component, resolution)
        if key not in self.runners:
            entry = self.entry(component, resolution)
            plan = verify_file(self.directory, entry.file, entry.sha256).read_bytes()
            engine = self.runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise ArtifactError(f"TensorRT could not deserialize {entry.file} ({entry.plugin_path}); "
                                    "run dbunet-build on this machine")
            runner = EngineRunner(self.backend.trt, self.backend.cuda, engine, component, self.specs.get(component))
            self.region.attach(runner)
            self.runners[key] = runner
        return self.runners[key]

    def preload(self, resolution: str, config) -> None:
        from dbunet.engines.profiles import SIZE_FREE, engine_components

        for component in engine_components(config):
            self.runner(component, "any" if component in SIZE_FREE else resolution)

    def set_graphs(self, enabled: bool) -> None:
        for r in self.runners.values():
            r.use_graphs = enabled
            if not enabled:
                r.drop_graphs()

    def close(self) -> None:
        for r in self.runners.values():
            r.close()
        self.runners.clear()
        self.region.free()


class TrtStages:
    """The cascade's stages (dbunet.generation.Stages) on TensorRT engines, with whole-loop graphs."""

    whole_loops = info("trt").whole_loops == "always"  # the registry states it: every loop one CUDA graph

    def __init__(self, engines: TrtEngines, tokenizers, config) -> None:
        self.engines, self.tokenizers, self.config = engines, tokenizers, config
        self.lock = threading.Lock()  # one stream and one set of buffers: calls take turns
        self.use_graphs = True
        self.last_issue_s = 0.0  # host time the last denoising loop took to issue (before waiting for it)

    def set_graphs(self, enabled: bool) -> None:
        """CUDA graphs on (the default) or off: off runs per-step launches (dbunet-bench compares the two)."""
        self.use_graphs = enabled
        self.engines.set_graphs(enabled)

    def _runner(self, component: str, resolution: str = "any"):
        runner = self.engines.runner(component, resolution)
        runner.use_graphs = self.use_graphs
        return runner

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return self.tokenizers[0](texts)

    def _encode(self, component: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            hidden, pooled = self._runner(component).run({"input_ids": ids})
        return hidden, pooled

    def encode_text(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._encode("text_encoder", ids)

    def tokenize_2(self, texts: list[str]) -> np.ndarray:
        return self.tokenizers[1](texts)

    def encode_text_2(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._encode("text_encoder_2", ids)  # SDXL: pooled is the projected text_embeds

    # -- denoising --------------------------------------------------------------------------------------------
    def _step_inputs(self, x: np.ndarray, cond: Conditioning, component: str) -> tuple[object, dict[str, np.ndarray]]:
        resolution = runner_resolution(x, self.config.vae.downscale)
        if not (self.config.has_boxes and component == "dbunet_step"):  # a plain SD or SDXL UNet's step: no boxes
            return self._runner(component, resolution), static_conditioning(cond, None)
        slots = self.engines.entry(component, resolution).shapes["boxes"][0][1]  # min shape [2, slots, 4]
        return self._runner(component, resolution), static_conditioning(cond, slots)

    def denoise_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            runner, fixed = self._step_inputs(x, cond, component)
            x_next, x0 = runner.run({"x": x, "x0_prev": x0_prev, "coeffs": step.row, **fixed})
        return x_next, x0

    def denoise_loop(self, steps: list[Step], x: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> np.ndarray:
        from dbunet.runtime.backends.trt_engine import StepLoop

        with self.lock:
            runner, fixed = self._step_inputs(x, cond, component)
            loop = StepLoop(runner)
            z0 = loop.run(np.stack([s.row for s in steps]), x, fixed)
            self.last_issue_s = loop.issue_s
            return z0

    def decode(self, latents: np.ndarray) -> np.ndarray:
        f = self.config.vae.downscale
        with self.lock:
            runner = self._runner("vae_decoder", runner_resolution(latents, f))
            return runner.run({"latent": latents})[0]

    # -- refiner ------------------------------------------------------------------------------------------------
    def refiner_condition(self, image: np.ndarray) -> np.ndarray:
        with self.lock:
            (z_sem,) = self._runner("refiner_encoder", runner_resolution(image, 1)).run({"image": image})
            return self._runner("gae").run({"z_sem": z_sem})[1]

    def refiner_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, z_dis: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            runner = self._runner("refiner_step", runner_resolution(x, 1))
            x_next, x0 = runner.run({"x": x, "x0_prev": x0_prev, "coeffs": step.row, "z_dis": z_dis})
        return x_next, x0

    def refiner_loop(self, steps: list[Step], x: np.ndarray, z_dis: np.ndarray) -> np.ndarray:
        from dbunet.runtime.backends.trt_engine import StepLoop

        with self.lock:
            runner = self._runner("refiner_step", runner_resolution(x, 1))
            return StepLoop(runner).run(np.stack([s.row for s in steps]), x, {"z_dis": z_dis})

    # -- figures for dbunet-bench ---------------------------------------------------------------------------
    def engine_device_ms(self, repeat: int) -> dict[str, list[float]]:
        """Device milliseconds of `repeat` enqueues of each engine, timed with CUDA events, on the shapes and
        buffers its last call left bound ('component@resolution' -> times; engines never called are left out)."""
        cuda, figures = self.engines.backend.cuda, {}
        with self.lock:
            for (component, resolution), runner in self.engines.runners.items():
                if not runner.bound:
                    continue
                times = []
                start, end = cuda.event(), cuda.event()  # one pair, reused: events are device resources
                try:
                    for _ in range(repeat):
                        cuda.record(start)
                        runner.enqueue()
                        cuda.record(end)
                        times.append(cuda.elapsed_ms(start, end))
                finally:
                    cuda.destroy_event(start)
                    cuda.destroy_event(end)
                figures[f"{component}@{resolution}"] = times
        return figures

    def memory_figures(self) -> dict:
        """Device memory: in use, the shared activation region, the engines' I/O buffers (MB), engines loaded."""
        engines = self.engines
        return {"in_use_mb": engines.backend.cuda.memory_in_use() / 2**20,
                "activation_region_mb": engines.region.size / 2**20,
                "io_buffers_mb": sum(r.memory.nbytes for r in engines.runners.values()) / 2**20,
                "engines": sorted(f"{c}@{r}" for c, r in engines.runners)}

    def close(self) -> None:
        self.engines.close()


def runner_resolution(x: np.ndarray, downscale: int) -> str:
    """The image resolution an NCHW array belongs to ('HxW'), given its downscale from the image."""
    return f"{x.shape[2] * downscale}x{x.shape[3] * downscale}"


def static_conditioning(cond: Conditioning, slots: int | None) -> dict[str, np.ndarray]:
    """The step engine's conditioning inputs at its static shapes: batch 2, `slots` box slots (None: an
    engine without box inputs)."""
    if cond.text.shape[0] == 1:  # unguided: the prompt twice; equal halves make the guided eps eps_c at any scale
        cond = Conditioning(*(None if a is None else np.concatenate([a, a])
                              for a in (cond.text, cond.boxes, cond.phrases, cond.valid, cond.text_embeds,
                                        cond.time_ids)))
    if slots is None:
        return conditioning_feeds(cond, boxes=False)
    n = cond.boxes.shape[1]
    if n > slots:
        raise InputError(f"{n} boxes, but the engines take at most {slots}; rebuild with dbunet-build --max-boxes {n}")
    return conditioning_feeds(pad_box_slots(cond, slots), boxes=True)
