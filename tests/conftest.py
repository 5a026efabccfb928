import os

# Triton kernels run under Triton's CPU interpreter in tests unless told otherwise (on a GPU:
# TRITON_INTERPRET=0 pytest tests/plugins). Set before anything imports torch: torch may import
# triton, and triton fixes its interpreter mode for some library functions at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")

import sys
from pathlib import Path

import pytest

# tests/stand_ins: the stand-ins for what cannot exist here (TensorRT, a CUDA device), importable by every test
sys.path.insert(0, str(Path(__file__).resolve().parent / "stand_ins"))

from dbunet.config import tiny


def absolute_pythonpath(value: str, cwd: str) -> str:
    """PYTHONPATH with its relative entries made absolute against `cwd` (an empty entry left as it is)."""
    return os.pathsep.join(os.path.join(cwd, entry) if entry else entry for entry in value.split(os.pathsep))


# Tests start dbunet's commands in subprocesses from other folders: a source tree given as a relative path
# (`PYTHONPATH=. pytest`, as on a machine where dbunet is not installed) must be found there too.
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = absolute_pythonpath(os.environ["PYTHONPATH"], os.getcwd())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny preset model saved once per test session."""
    from dbunet.models.cascade import create_preset_model

    directory = tmp_path_factory.mktemp("tiny-model")
    create_preset_model(tiny(), directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from dbunet.models.cascade import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """The tiny preset exported once per session, FP32 and FP16."""
    from dbunet.export.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("artifacts")
    export(ExportOptions(out=out, fp16=True), report=lambda line: None)
    return out


@pytest.fixture(scope="session")
def readme_main_job(tmp_path_factory):
    """The directory the README's main job ran in (tests/readme_job.py), once per session."""
    from readme_job import run_main_job, scripts_dir

    if (bindir := scripts_dir()) is None:
        pytest.skip("dbunet is not installed in this interpreter's environment (pip install -e .)")
    cwd = tmp_path_factory.mktemp("readme-main-job")
    run_main_job(cwd, bindir)
    return cwd


@pytest.fixture(scope="session")
def sd1_folder(tmp_path_factory):
    """A small random SD 1.x folder (tests/sd1_folder.py)."""
    from sd1_folder import make_sd_folder

    return make_sd_folder(tmp_path_factory.mktemp("sd1"))


def _export_folder(folder, arch: str, out, refiner=None):
    """A diffusers folder exported with --arch `arch` (and SDXL's refiner folder), FP32 and FP16."""
    from dbunet.export.exporter import ExportOptions, export

    export(ExportOptions(weights=folder, arch=arch, out=out, fp16=True, refiner=refiner), report=lambda line: None)
    return out


@pytest.fixture(scope="session")
def sd1_artifacts(sd1_folder, tmp_path_factory):
    return _export_folder(sd1_folder, "sd1", tmp_path_factory.mktemp("sd1-artifacts"))


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory):
    """A small random SDXL base folder (tests/sdxl_folder.py)."""
    from sdxl_folder import make_sdxl_folder

    return make_sdxl_folder(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="session")
def sdxl_artifacts(sdxl_folder, tmp_path_factory):
    return _export_folder(sdxl_folder, "sdxl", tmp_path_factory.mktemp("sdxl-artifacts"))


@pytest.fixture(scope="session")
def sdxl_refiner_folder(sdxl_folder, tmp_path_factory):
    """SDXL's refiner for the base folder (tests/sdxl_folder.py)."""
    from sdxl_folder import make_sdxl_refiner_folder

    return make_sdxl_refiner_folder(tmp_path_factory.mktemp("sdxl-refiner"), sdxl_folder)


@pytest.fixture(scope="session")
def sdxl_refined_artifacts(sdxl_folder, sdxl_refiner_folder, tmp_path_factory):
    """The base and its refiner exported together (--refiner)."""
    return _export_folder(sdxl_folder, "sdxl", tmp_path_factory.mktemp("sdxl-refined-artifacts"),
                          refiner=sdxl_refiner_folder)


def make_sensitive(model) -> None:
    """Make every conditioning path of a seeded tiny model loud enough to see in the float output.

    Untrained, the tiny preset's boxes barely move the image (the box schedule changed it by 0.03 of
    255 levels): every BoxConstraint gate is opened to tanh(3) ~ 1 and its output projection scaled
    8x. Measured with the reference loop (6 steps): boxes on all steps instead of the first 30% move
    the final latent by 2e-2 of its range, boxes off by 0.3, guidance 1 by 0.26, another negative
    prompt by 0.11, the refiner the image by 2.0 -- against 6e-7 (FP32) and 1.8e-3 (FP16) between
    the runtime and the reference.
    """
    import torch

    from dbunet.models.box_constraint import BoxConstraint

    with torch.no_grad():
        for module in model.cascade.unet.modules():
            if isinstance(module, BoxConstraint):
                module.gamma.fill_(3.0)
                module.proj.weight.mul_(8.0)
                module.proj.bias.mul_(8.0)


@pytest.fixture(scope="session")
def sensitive_artifacts(tmp_path_factory):
    """The sensitive tiny model (make_sensitive) exported FP32 and FP16 with what the runtime needs."""
    from dbunet.architectures import DBUNET
    from dbunet.export.exporter import ExportOptions, export
    from dbunet.models.cascade import create_preset_model, save_model

    root = tmp_path_factory.mktemp("sensitive")
    model = create_preset_model(tiny(), root / "model")
    make_sensitive(model)
    save_model(model, root / "model")
    components = tuple(c for c in DBUNET.graphs if c != "vae_encoder")
    export(ExportOptions(weights=root / "model", out=root / "artifacts", fp16=True, components=components),
           report=lambda line: None)
    return root / "artifacts"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def snapshot():
    """snapshot(dir) -> {relative path: (size, mtime_ns)} of everything under it: equal before and after = untouched."""
    return _snapshot
