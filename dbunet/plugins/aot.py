"""Ahead-of-time compilation of the Triton kernels to PTX, for TensorRT AOT plugins. No GPU needed.

`triton.compile(..., target=GPUTarget("cuda", cc, 32))` lowers a kernel for any compute
capability on a CPU-only machine. Targets: sm_87 (Jetson Orin), sm_89 (Ada), sm_90 (Hopper).

Triton >= 3.3 appends hidden pointer parameters (global and profile scratch) after the kernel's
own; TensorRT's AOT launcher passes exactly inputs, int32 scalars and outputs. `strip_hidden_params`
removes the hidden ones from the PTX entry after checking the kernel never reads them (no scratch
used); a kernel that does need scratch is rejected rather than launched with a bad pointer.
Verified with Triton 3.9.0 (see SUPPORTED_TRITON).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dbunet.errors import BuildError

TARGETS = {"sm_87": 87, "sm_89": 89, "sm_90": 90}
SUPPORTED_TRITON = (">=3.3", "<3.10")  # the hidden-parameter layout checked here

# per kernel: parameter types in order (pointers typed by the I/O dtype), and the compile-time constants
_KERNELS = {
    "box_constraint": {
        "params": ["*T"] * 7 + ["i32"] * 5 + ["*T"],
        "constants": {"BLOCK_P": 64, "BLOCK_N": 32, "BLOCK_D": 32, "BLOCK_C": 64},
    },
    "spatial_attention": {
        "params": ["*T"] * 3 + ["i32"] * 6 + ["*T"],
        "constants": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_DK": 128, "BLOCK_DV": 64},
    },
}


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    constants: dict
    target: str


def _kernel_fn(kernel: str):
    import os

    from dbunet.plugins import kernels

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise BuildError("AOT compilation needs TRITON_INTERPRET unset: the interpreter replaces the compiler")
    return getattr(kernels, f"{kernel}_kernel")


def compile_ptx(kernel: str, dtype: str, cc: int, num_warps: int = 4, **constants) -> CompiledKernel:
    """PTX of one kernel for one dtype ("fp16" or "fp32") and compute capability."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if kernel not in _KERNELS:
        raise BuildError(f"no AOT kernel {kernel!r}; valid: {', '.join(_KERNELS)}")
    if dtype not in ("fp16", "fp32"):
        raise BuildError(f"dtype must be fp16 or fp32, got {dtype!r}")
    fn = _kernel_fn(kernel)
    spec = _KERNELS[kernel]
    consts = {**spec["constants"], **constants, "IEEE": dtype == "fp32"}
    names = [n for n in fn.arg_names if n not in consts]
    if len(names) != len(spec["params"]):
        raise BuildError(f"{kernel}: kernel takes {names}, the AOT table lists {len(spec['params'])} parameters")
    signature = {n: t.replace("T", dtype) for n, t in zip(names, spec["params"])}
    signature |= {n: "constexpr" for n in consts}
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=consts),
        target=GPUTarget("cuda", cc, 32),
        options={"num_warps": num_warps, "enable_fp_fusion": True},  # explicit: the default changes in 3.10
    )
    name = compiled.metadata.name
    ptx = strip_hidden_params(compiled.asm["ptx"], name, len(names), compiled.metadata)
    return CompiledKernel(name, ptx, num_warps, compiled.metadata.shared, consts, f"sm_{cc}")


def strip_hidden_params(ptx: str, name: str, declared: int, metadata=None) -> str:
    """Drop the entry parameters past the `declared` ones, after checking none of them is read."""
    for attr in ("global_scratch_size", "profile_scratch_size"):
        if metadata is not None and getattr(metadata, attr, 0):
            raise BuildError(f"{name} needs {attr}={getattr(metadata, attr)}: TensorRT's AOT launch cannot provide it")
    params = re.findall(rf"\.param \.[^\n]*?({re.escape(name)}_param_(\d+))", ptx)
    hidden = [p for p, i in params if int(i) >= declared]
    for p in hidden:
        if re.search(rf"\[{re.escape(p)}\]", ptx):
            raise BuildError(f"{name}: hidden parameter {p} is used by the kernel; cannot launch from TensorRT")
    if not hidden:
        return ptx
    # the entry's parameter list: `.entry name(\n .param ..., \n .param ...\n)`
    head, sep, rest = ptx.partition(f".entry {name}(")
    if not sep:
        raise BuildError(f"{name}: no .entry in the PTX")
    plist, close, tail = rest.partition(")")
    kept = [line for line in plist.split(",") if not any(h in line for h in hidden)]
    return head + sep + ",".join(kept).rstrip() + "\n" + close + tail


def write_ptx(out_dir, targets: tuple[str, ...], dtypes: tuple[str, ...] = ("fp16", "fp32")) -> list[dict]:
    """Compile every AOT kernel for each target and dtype into `out_dir`; return manifest entries."""
    from pathlib import Path

    from dbunet import atomic

    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise BuildError(f"unknown PTX targets {sorted(unknown)}; valid: {', '.join(TARGETS)}")
    entries = []
    for kernel in _KERNELS:
        for dtype in dtypes:
            for target in targets:
                c = compile_ptx(kernel, dtype, TARGETS[target])
                path = Path(out_dir) / f"{kernel}.{dtype}.{target}.ptx"
                atomic.write_text(path, c.ptx)
                entries.append({"kernel": kernel, "dtype": dtype, "target": target, "file": path.name,
                                "entry": c.name, "num_warps": c.num_warps, "shared_mem": c.shared_mem,
                                "constants": {k: v for k, v in c.constants.items()}})
    return entries
