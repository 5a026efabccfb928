"""What an export is asked to do, checked without torch: dbunet-export refuses a bad option in a second, before
the seconds it takes to import the export's libraries (dbunet.export.exporter does the work)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dbunet import architectures, jsonfile
from dbunet.bounds import check_flags
from dbunet.config import CONFIG_FILE, PRESETS, WEIGHTS_FILE, ModelConfig, preset, side_beyond
from dbunet.errors import ConfigError, WeightsError
from dbunet.export.specs import COMPONENTS, MAX_TRACE_BATCH
from dbunet.export.staging import check_target
from dbunet.request import check_defaults
from dbunet.scalars import is_whole

DEFAULT_ARTIFACTS = Path("dbunet-artifacts")
SUPPORTED_OPSETS = range(18, 21)


@dataclass(frozen=True)
class ExportOptions:
    config: str = "tiny"  # preset name or a config JSON file (the API keeps the test model; dbunet-export: shapes)
    weights: Path | None = None  # a dbunet model folder, or a diffusers SD 1.x/2.x or SDXL folder
    out: Path = DEFAULT_ARTIFACTS
    fp16: bool = False
    opset: int = 18
    decomposed: bool = False
    height: int | None = None  # size of the tracing/parity inputs (dims stay dynamic)
    width: int | None = None
    batch: int = 2
    components: tuple[str, ...] | None = None  # None: every component of the architecture
    arch: str = architectures.DEFAULT  # a name in dbunet.architectures
    refiner: Path | None = None  # SDXL's refiner folder (architectures with a latent refiner)
    ptx_targets: tuple[str, ...] = ()  # e.g. ("sm_87", "sm_89", "sm_90"): Triton kernels -> PTX for TensorRT

    def _check_types(self) -> None:
        """What the command line's parser guarantees, for callers of the API: a float size traced as a float, a
        string of components read letter by letter, "no" taken for true."""
        check_flags("export options", self)
        for name in ("opset", "batch", "height", "width"):
            value = getattr(self, name)
            if not (is_whole(value) or (value is None and name in ("height", "width"))):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        for name in ("components", "ptx_targets"):
            value = getattr(self, name)
            if isinstance(value, str) or not (value is None or all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{name} must be a sequence of names, got {value!r}")

    def __post_init__(self) -> None:
        self._check_types()
        unknown = set(self.components or ()) - set(COMPONENTS)
        arch = architectures.get(self.arch)
        if arch.needs_folder and self.weights is None:
            raise ConfigError(f"--arch {arch.name} exports {arch.summary} from a diffusers folder: give the folder "
                              "with --weights")
        if self.refiner is not None and not arch.latent_refiner:
            raise ConfigError(f"--refiner: {arch.name} takes no SDXL refiner (--arch sdxl does)")
        if self.refiner is not None and self.weights is None:
            raise ConfigError("--refiner goes with --weights: the SDXL base folder it refines")
        if unknown:
            raise ConfigError(f"unknown components {sorted(unknown)}; valid: {', '.join(COMPONENTS)}")
        for what, named in (("--components", self.components or ()),
                            ("--ptx", [t.partition(":")[0] for t in self.ptx_targets])):  # one PTX file per target
            twice = sorted({n for n in named if list(named).count(n) > 1})
            if twice:
                raise ConfigError(f"{what} names {', '.join(twice)} more than once")
        if not 1 <= self.batch <= MAX_TRACE_BATCH:
            raise ConfigError(f"batch must lie in 1..{MAX_TRACE_BATCH}, got {self.batch} (it sizes the tracing and "
                              "parity inputs only: the graphs' batch axis stays dynamic)")
        for name, v in (("height", self.height), ("width", self.width)):
            if v is not None and (v < 8 or v % 8):
                raise ConfigError(f"{name} must be a positive multiple of 8, got {v}")
        from dbunet.plugins.aot import PtxTarget

        for target in self.ptx_targets:  # a bad target fails before any tracing
            PtxTarget.parse(target)
        if self.opset not in SUPPORTED_OPSETS:
            valid = f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
            raise ConfigError(f"opset {self.opset} not supported; valid: {valid}")


def check_tracing_size(config: ModelConfig, options: ExportOptions) -> None:
    """Tracing and parity inputs within the sizes the model runs at (its config's defaults.max_*): a larger one
    only costs memory and time, and its parity would be judged where no run can go."""
    d = config.defaults
    for name, value, most in (("height", options.height, d.max_height), ("width", options.width, d.max_width)):
        if value is not None and side_beyond(name, value, most):
            raise ConfigError(f"--{side_beyond(name, value, most)}; the graphs' sizes stay dynamic up to it")


def check_model(config: ModelConfig, options: ExportOptions) -> None:
    """What the config must allow beyond its own checks: the tracing size asked for, and a run with its defaults."""
    check_tracing_size(config, options)
    check_defaults(config)


def resolve_config(name_or_file: str) -> ModelConfig:
    path = Path(name_or_file)
    if path.is_dir() and name_or_file not in PRESETS:  # a folder named like a preset does not shadow it
        raise ConfigError(f"--config {path} is a directory: give a preset ({', '.join(PRESETS)}) or a config JSON "
                          "file; a model folder goes to --weights")
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = jsonfile.loads(path.read_bytes(), lambda why: ConfigError(f"--config {path}: {why}"))
        try:
            return ModelConfig.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"--config {path}: {exc}") from None
    return preset(name_or_file)


def is_model_folder(path: Path) -> bool:
    """A dbunet model folder (dbunet.models.cascade.save_model), as opposed to a diffusers folder."""
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()



CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # a single-file checkpoint's names
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # the Hub's owner/name, as its pages show it


def check_source_folder(path: Path, flag: str, kinds: str, pipeline: str) -> None:
    """--weights and --refiner name folders (`kinds`); a single file is most often a one-file checkpoint, which
    diffusers' `pipeline` class turns into a folder."""
    if not path.exists():
        hint = ""
        if HUB_ID.fullmatch(str(path)):  # "owner/name": most often a model id copied from the Hub's page
            hint = (f"; it reads like a Hugging Face Hub id, and dbunet-export reads local folders only: download it "
                    f"first (hf download {path} --local-dir DIR) and give DIR")
        raise WeightsError(f"{flag} {path} does not exist{hint}")
    if path.is_dir():
        return
    hint = ""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:  # civitai-style and original LDM checkpoints are one file
        hint = (f"; a single-file checkpoint becomes one with diffusers: {pipeline}.from_single_file(FILE), then "
                ".save_pretrained(DIR)")
    raise WeightsError(f"{flag} {path} is a file, not a folder ({kinds}){hint}")


def check_options(options: ExportOptions) -> None:
    """Everything the options decide before a model is loaded: the config and the size asked for, the source
    folders, the output directory. export() checks the same; dbunet-export calls it before importing torch."""
    if options.weights is None:  # a folder's own config is read in the staging directory (then checked again)
        check_model(resolve_config(options.config), options)
    else:
        resolve_config(options.config)  # a bad --config fails before anything is written
        check_source_folder(Path(options.weights), "--weights", "a dbunet model folder, or a diffusers SD 1.x/2.x "
                            "or SDXL folder", "StableDiffusionPipeline (SDXL: StableDiffusionXLPipeline)")
    if options.refiner is not None:
        check_source_folder(Path(options.refiner), "--refiner", "an SDXL refiner folder",
                            "StableDiffusionXLImg2ImgPipeline")
    check_target(Path(options.out).resolve())
