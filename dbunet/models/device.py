"""Which torch device a command runs the models on: refused in one line where PyTorch would fail later."""

from __future__ import annotations

import torch

from dbunet.errors import ConfigError


def torch_device(device: str | torch.device) -> torch.device:
    """The CPU or a CUDA GPU this PyTorch can reach ("auto": CUDA where it can, else the CPU); anything else is
    refused in one line (PyTorch itself would fail on the first tensor, with a traceback)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        found = None
    if found is None or found.type not in ("cpu", "cuda"):
        raise ConfigError(f"PyTorch runs the models on cpu or cuda here, not {device!r}")
    if found.type == "cuda" and not torch.cuda.is_available():
        why = "is a CPU-only build" if torch.version.cuda is None else "sees no CUDA GPU"
        raise ConfigError(f"device {device!r}: this PyTorch ({torch.__version__}) {why}; use --device cpu")
    return found
