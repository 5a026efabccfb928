import os

# Triton kernels run under Triton's CPU interpreter in tests unless told otherwise (on a GPU:
# TRITON_INTERPRET=0 pytest tests/plugins). Set before anything imports torch: torch may import
# triton, and triton fixes its interpreter mode for some library functions at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from dbunet.config import tiny


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
