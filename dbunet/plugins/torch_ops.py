"""The PyTorch-side switch: run the custom ops through the Triton kernels on a device.

    from dbunet.plugins.torch_ops import use_triton_kernels
    use_triton_kernels()            # TorchPipeline on a CUDA device now uses the fused kernels

This is how the kernels run end to end on a GPU without TensorRT. Registration lasts for the
process (torch.library has no unregister); the CPU keeps the reference unless asked for, which
tests do under TRITON_INTERPRET=1 in a separate process.
"""

from __future__ import annotations

import torch

from dbunet.models import ops

_done: set[str] = set()


def use_triton_kernels(device_type: str = "cuda") -> None:
    if device_type in _done:
        return
    from dbunet.plugins import launch

    ops.box_constraint.register_kernel(device_type)(launch.box_constraint)
    ops.spatial_cross_attention.register_kernel(device_type)(launch.spatial_cross_attention)
    ops.channel_cross_attention.register_kernel(device_type)(launch.channel_cross_attention)
    _done.add(device_type)


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()
