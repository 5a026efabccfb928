"""Pipeline: the cascade from an artifacts directory, on any backend, without torch."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

import numpy as np

from dbunet.errors import ConfigError, DbunetError
from dbunet.generation import Conditioning, GenerationResult, Progress, Step, run_cascade
from dbunet.manifest import Manifest, PinnedDirectory, verify_artifact, verify_file
from dbunet.request import GenerationRequest, build_request
from dbunet.runtime.backends.base import Backend, Graph
from dbunet.runtime.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

# txt2img needs these: the denoising loops run whole-step graphs. The per-call dbunet and refiner_unet
# graphs (other consumers, debugging) and vae_encoder (img2img, editing) are exported but not loaded.
RUNTIME_COMPONENTS = ("text_encoder", "dbunet_step", "vae_decoder", "refiner_encoder", "gae", "refiner_step")
# absent for --arch sd1 (named here: the runtime never imports dbunet.export, where components_of lives)
REFINER_COMPONENTS = ("refiner_encoder", "gae", "refiner_step")


BACKENDS = ("auto", "ort", "trt", "openvino")


# --backend auto on a CPU: OpenVINO BF16 beats ONNX Runtime FP32 only where the denoiser's work per step is large
# enough for BF16's faster GEMMs to outweigh OpenVINO's per-call overhead. Measured (benchmarks/auto_choice.py):
# the `shapes` model (64x64, work 1.5e5), a whole image, ORT FP32 0.121 s vs OpenVINO BF16 0.153 s (AMD EPYC,
# AVX512-BF16; on an Intel AMX CPU 0.23 s vs 0.56 s); the sd15 preset at 256x256 (work 3.2e8), one guided step,
# 1.067 s vs 0.570 s (the same AMD). The threshold sits between the two, on a log scale.
BF16_MIN_WORK = 1e7


def denoiser_work(config) -> float:
    """A size model of one denoising step at the model's default size: latent pixels x sum over levels of
    channels^2 / 4^level (the convolutions' and projections' share, which BF16 speeds up)."""
    f = config.vae.downscale
    pixels = (config.defaults.height // f) * (config.defaults.width // f)
    return pixels * sum(c * c / 4**level for level, c in enumerate(config.unet.block_out_channels))


def choose_backend(directory: Path, precision: str | None = None, device: str = "auto") -> tuple[str, str]:
    """--backend auto: (backend, why). The request decides first: an explicit precision or device is never
    handed to a backend that cannot serve it. Then: TensorRT engines built for this GPU, else ONNX Runtime's
    CUDA provider, else on the CPU OpenVINO BF16 where it is installed, the CPU computes BF16 and the model is
    large enough to gain (BF16_MIN_WORK), else ONNX Runtime."""
    from dbunet.runtime.backends.tensorrt import missing_dependencies

    if precision == "bf16":
        return "openvino", "bf16 is computed by OpenVINO"
    if device not in ("auto", "cuda", "cpu"):
        return "ort", f"device {device!r}"  # ONNX Runtime says which devices there are
    if device != "cpu" and precision in (None, "fp16") and not missing_dependencies():
        try:
            from dbunet.engines.cache import read_index
            from dbunet.runtime.backends.tensorrt import TrtBackend

            identity = TrtBackend().identity
            if any(e.device == identity for e in read_index(directory)):
                return "trt", f"TensorRT engines built for {identity.gpu}"
        except DbunetError:
            pass
    import onnxruntime

    if device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()):
        return "ort", "ONNX Runtime's CUDA provider"
    if precision is None and _openvino_installed():
        from dbunet.runtime.backends.openvino import has_bf16

        work = denoiser_work(Manifest.read(directory).config)
        if has_bf16() and work >= BF16_MIN_WORK:
            return "openvino", f"OpenVINO BF16: faster than ONNX Runtime FP32 for a model this size ({work:.1e})"
    return "ort", f"ONNX Runtime on the CPU ({(precision or 'fp32').upper()})"


def _openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def make_backend(name: str, device: str = "auto", threads: int | None = None) -> Backend:
    if name == "openvino":
        from dbunet.runtime.backends.openvino import OvBackend

        return OvBackend(device, threads)
    if name == "ort":
        from dbunet.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend(device, threads)
    if name == "trt":
        from dbunet.runtime.backends.tensorrt import TrtBackend

        return TrtBackend(device, threads)
    raise ConfigError(f"unknown runtime backend {name!r}; valid: {', '.join(BACKENDS)}")


class GraphStages:
    """Each cascade stage as a graph run (see dbunet.generation.Stages)."""

    def __init__(self, graphs: dict[str, Graph], tokenizer: ClipTokenizer, boxes: bool = True) -> None:
        self.graphs, self.tokenizer, self.boxes = graphs, tokenizer, boxes

    def _run(self, name: str, **feeds: np.ndarray) -> list[np.ndarray]:
        return self.graphs[name].run(feeds)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return self.tokenizer(texts)

    def encode_text(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, pooled = self._run("text_encoder", input_ids=ids)
        return hidden, pooled

    def denoise_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, cond: Conditioning
                     ) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(x=x, x0_prev=x0_prev, coeffs=step.row, text=cond.text)
        if self.boxes:  # the DB-UNet's step; a plain SD UNet's (--arch sd1) takes no boxes
            feeds |= dict(boxes=cond.boxes, box_phrases=cond.phrases, box_valid=cond.valid)
        x_next, x0 = self._run("dbunet_step", **feeds)
        return x_next, x0

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self._run("vae_decoder", latent=latents)[0]

    def refiner_condition(self, image: np.ndarray) -> np.ndarray:
        (z_sem,) = self._run("refiner_encoder", image=image)
        return self._run("gae", z_sem=z_sem)[1]

    def refiner_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, z_dis: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        x_next, x0 = self._run("refiner_step", x=x, x0_prev=x0_prev, coeffs=step.row, z_dis=z_dis)
        return x_next, x0


class Pipeline:
    def __init__(self, manifest: Manifest, directory: Path, backend: Backend, precision: str, stages) -> None:
        self.manifest, self.directory, self.backend, self.precision = manifest, directory, backend, precision
        self.config = manifest.config
        self.stages = stages

    @classmethod
    def from_artifacts(cls, directory: str | Path, backend: str | Backend = "ort", precision: str | None = None,
                       device: str = "auto", threads: int | None = None) -> Pipeline:
        """Check the manifest, every file's hash and version, then load one graph per stage; all of it through
        one pinned directory, so what was verified is what is loaded even if an export switches it meanwhile."""
        pinned = PinnedDirectory(directory)
        try:
            pipe = cls._load(pinned.path, backend, precision, device, threads)
        except BaseException:
            pinned.close()
            raise
        pipe.pinned, pipe.directory = pinned, Path(directory)  # engines load lazily (TensorRT): pinned meanwhile
        weakref.finalize(pipe, pinned.close)
        return pipe

    @classmethod
    def _load(cls, directory: Path, backend: str | Backend, precision: str | None, device: str,
              threads: int | None) -> Pipeline:
        manifest = Manifest.read(directory)
        if backend == "auto":
            backend, why = choose_backend(directory, precision, device)
            log.info("backend auto: %s (%s)", backend, why)
        be = make_backend(backend, device, threads) if isinstance(backend, str) else backend
        available = manifest.precisions()
        precision = precision or be.default_precision(available)
        # the exported files a precision runs from (OpenVINO computes BF16 from the FP32 files)
        files = be.artifact_precision(precision) if hasattr(be, "artifact_precision") else precision
        if files not in available:
            raise ConfigError(f"precision {files} was not exported to {directory}; available: {', '.join(sorted(available))}")
        tok = manifest.tokenizer
        tokenizer = ClipTokenizer(verify_file(directory, tok["file"], tok["sha256"]), manifest.config.text.max_length,
                                  manifest.config.text.vocab_size)
        if hasattr(be, "stages"):  # backends that run their own compiled form (TensorRT engines)
            stages = be.stages(manifest, directory, files, tokenizer)
            log.info("loaded %s (%s, %s) on %s", directory, manifest.config.name, precision, be.name)
            return cls(manifest, directory, be, precision, stages)
        graphs = {}
        cfg = manifest.config
        wanted = [n for n in RUNTIME_COMPONENTS if cfg.has_refiner or n not in REFINER_COMPONENTS]
        artifacts = {name: manifest.find(name, files) for name in wanted}
        paths = {name: verify_artifact(directory, a) for name, a in artifacts.items()}  # all checked, then loaded
        for name, artifact in artifacts.items():
            graphs[name] = be.load(paths[name], artifact.spec, artifact.sha256[artifact.path])
        log.info("loaded %s (%s, %s) on %s", directory, manifest.config.name, precision, be.name)
        return cls(manifest, directory, be, precision, GraphStages(graphs, tokenizer, cfg.has_boxes))

    def request(self, prompt: str, **options) -> GenerationRequest:
        return build_request(self.config, prompt, **options)

    def __call__(self, prompt: str, progress: Progress | None = None, latents: np.ndarray | None = None,
                 **options) -> GenerationResult:
        """Generate one image. `latents`: optional starting noise [1, C, h, w] (before the sampler's
        init_noise_sigma), as diffusers' pipelines take it; otherwise the seed draws it."""
        return run_cascade(self.stages, self.config, self.request(prompt, **options), progress, latents)

    def close(self) -> None:
        if isinstance(self.stages, GraphStages):
            for g in self.stages.graphs.values():
                g.close()
        else:
            self.stages.close()
        if getattr(self, "pinned", None) is not None:
            self.pinned.close()
