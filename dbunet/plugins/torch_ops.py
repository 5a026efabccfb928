"""The PyTorch-side switch: run the custom ops through the Triton kernels on a device.

    from dbunet.plugins.torch_ops import use_triton_kernels
    use_triton_kernels()                 # TorchPipeline on a CUDA device now uses the fused kernels
    use_triton_kernels(enabled=False)    # ... and its PyTorch references again

This is how the kernels run end to end on a GPU without TensorRT. Registration lasts for the process
(torch.library has no unregister), so what is registered asks the switch at every call: a benchmark can
alternate kernels and references in one process. The CPU keeps the reference unless asked for, which
tests do under TRITON_INTERPRET=1 in a separate process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from dbunet.models import ops

# op name (in dbunet.plugins.launch and torch.ops.dbunet), its custom op, its PyTorch reference
ROUTES = (
    ("box_constraint", ops.box_constraint, ops.box_constraint_reference),
    ("spatial_cross_attention", ops.spatial_cross_attention, ops.spatial_cross_attention_reference),
    ("channel_cross_attention", ops.channel_cross_attention, ops.channel_cross_attention_reference),
)
_enabled: dict[str, bool] = {}  # device type -> kernels (True) or references (False); absent: never registered


def use_triton_kernels(device_type: str = "cuda", enabled: bool = True) -> None:
    if device_type not in _enabled:
        for name, op, reference in ROUTES:
            op.register_kernel(device_type)(_switched(device_type, name, reference))
    _enabled[device_type] = enabled


def _switched(device_type: str, name: str, reference: Callable) -> Callable:
    @functools.wraps(reference)  # the op's signature, as torch.library reads it
    def run(*args):
        if _enabled[device_type]:
            from dbunet.plugins import launch

            return getattr(launch, name)(*args)  # looked up per call: a test may count the launches
        return reference(*args)

    return run


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()
