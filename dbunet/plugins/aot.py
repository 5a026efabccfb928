"""Ahead-of-time compilation of the Triton kernels to PTX, for TensorRT AOT plugins. No GPU needed.

`triton.compile(..., target=GPUTarget("cuda", cc, 32))` lowers a kernel for any compute
capability on a CPU-only machine. Targets: sm_87 (Jetson Orin), sm_89 (Ada), sm_90 (Hopper), sm_100
(Blackwell B200), sm_110 (Jetson Thor), sm_120 (Blackwell RTX).

Triton >= 3.3 appends hidden pointer parameters (global and profile scratch) after the kernel's
own; TensorRT's AOT launcher passes exactly inputs, int32 scalars and outputs. `strip_hidden_params`
removes the hidden ones from the PTX entry after checking the kernel never reads them (no scratch
used); a kernel that does need scratch is rejected rather than launched with a bad pointer.
Verified with Triton 3.6 to 3.9 (dbunet.releases.TRITON_RANGE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from dbunet.errors import BuildError
from dbunet.releases import TRITON_PIN, require

TARGETS = {"sm_87": 87, "sm_89": 89, "sm_90": 90, "sm_100": 100, "sm_110": 110, "sm_120": 120}

# A driver JIT-compiles PTX up to the ISA of its own CUDA release and refuses newer PTX. Triton writes the
# newest ISA its bundled ptxas knows (3.9: 8.8 for sm_87/89, 9.4 for sm_90a), which no JetPack 6 Orin (CUDA
# 12.6, ISA 8.5) or CUDA 13.0 driver (ISA 9.0) reads, so the ISA is pinned to the target's CUDA release.
# But triton.compile assembles the PTX with its own bundled ptxas too, which refuses an ISA newer than its
# CUDA release (Triton 3.6 bundles ptxas 12.8: ISA <= 8.7, so a CUDA 13.0 driver's 9.0 fails). A driver reads
# any older ISA, so the ISA is the lower of the two; one table serves both, since a ptxas writes up to the
# ISA of its CUDA release. From the PTX ISA release notes: the ISA each CUDA release introduced.
CUDA_PTX_ISA = {
    (12, 0): (8, 0), (12, 1): (8, 1), (12, 2): (8, 2), (12, 3): (8, 3), (12, 4): (8, 4), (12, 5): (8, 5),
    (12, 6): (8, 5), (12, 8): (8, 7), (12, 9): (8, 8), (13, 0): (9, 0),
}
# What each target usually runs: Jetson Orin on JetPack 6 (CUDA 12.6); Ada, Hopper and Blackwell on 12.8+ drivers;
# Jetson Thor on JetPack 7 (CUDA 13.0, where sm_110 got its name: ISA 9.0, so a ptxas of CUDA 13 too)
DEFAULT_CUDA = {"sm_87": "12.6", "sm_89": "12.8", "sm_90": "12.8", "sm_100": "12.8", "sm_110": "13.0", "sm_120": "12.8"}


def cuda_release(cuda: str) -> tuple[int, int]:
    """'12.8' -> (12, 8)."""
    try:
        major, minor = (int(p) for p in cuda.split(".")[:2])
    except ValueError:
        raise BuildError(f"CUDA version must look like 12.6, got {cuda!r}") from None
    return major, minor


def isa_for_cuda(cuda: str) -> tuple[int, int]:
    """The newest PTX ISA a CUDA `major.minor` driver reads. Releases past the table read at least its last."""
    version = cuda_release(cuda)
    if version < min(CUDA_PTX_ISA):
        raise BuildError(f"CUDA {cuda} is too old for the dbunet kernels: CUDA 12.0 or newer needed")
    return CUDA_PTX_ISA[max(v for v in CUDA_PTX_ISA if v <= version)]


@dataclass(frozen=True)
class PtxTarget:
    """`sm_87` or `sm_87:12.6`: a compute capability and the CUDA release whose driver will load the PTX."""

    name: str
    cuda: str

    @classmethod
    def parse(cls, text: str) -> PtxTarget:
        name, colon, cuda = text.partition(":")
        if name not in TARGETS:
            raise BuildError(f"unknown PTX target {name!r}; valid: {', '.join(TARGETS)} "
                             "(optionally :CUDA, e.g. sm_87:12.6)")
        target = cls(name, cuda if colon else DEFAULT_CUDA[name])  # "sm_87:" names no release: refused below
        isa_for_cuda(target.cuda)  # validates the CUDA version (the ptxas cap waits for the compile)
        return target

    @property
    def cc(self) -> int:
        return TARGETS[self.name]

    @property
    def isa(self) -> tuple[int, int]:
        """What both the target's driver and the installed Triton's ptxas accept (see CUDA_PTX_ISA)."""
        return target_isa(self.cc, self.cuda)


# The oldest PTX ISA that can name each architecture (PTX ISA notes; from sm_90 on, the arch-specific target
# Triton writes, sm_90a, sm_100a, ...). An ISA below it is not a refusal from ptxas but an LLVM abort inside
# triton.compile that ends the process, so it is checked first. Architectures older than sm_87 are named by
# every ISA from CUDA 12.0 (8.0) on.
ARCH_MIN_ISA = {87: (7, 4), 89: (7, 8), 90: (8, 0), 100: (8, 6), 101: (8, 6), 103: (8, 8), 110: (9, 0),
                120: (8, 7), 121: (8, 8)}


def target_isa(cc: int, driver_cuda: str) -> tuple[int, int]:
    """The PTX ISA for compute capability `cc` under a CUDA `driver_cuda` driver, assembled by this Triton."""
    if cc > max(ARCH_MIN_ISA):
        raise BuildError(f"sm_{cc} is newer than the dbunet kernels know (up to sm_{max(ARCH_MIN_ISA)}): no PTX "
                         "ISA for it can be chosen; a newer dbunet is needed")
    ptxas = triton_ptxas(cc)
    driver_isa, ptxas_isa = isa_for_cuda(driver_cuda), isa_for_cuda(ptxas.release)
    isa, least = min(driver_isa, ptxas_isa), ARCH_MIN_ISA.get(cc, (0, 0))
    if isa < least:
        lower = (f"this Triton's ptxas (CUDA {ptxas.release}) writes at most {_dotted(ptxas_isa)}: a newer Triton"
                 if ptxas_isa < least else
                 f"a CUDA {driver_cuda} driver reads at most {_dotted(driver_isa)}: a newer driver")
        raise BuildError(f"sm_{cc} needs PTX ISA {_dotted(least)} or newer, but {lower} is needed")
    return isa


def _dotted(isa: tuple[int, int]) -> str:
    return f"{isa[0]}.{isa[1]}"


@dataclass(frozen=True)
class Ptxas:
    path: Path
    release: str  # the CUDA release it belongs to, "12.8"


@functools.cache
def triton_ptxas(cc: int) -> Ptxas:
    """The ptxas triton.compile runs for `cc`: Triton bundles one per CUDA line and picks by architecture
    (3.9: 12.9 below sm_90, 13.x from it; 3.6 and 3.7: 12.8 below sm_100, 3.8: 12.9). TRITON_PTXAS_PATH replaces
    the one below sm_100 in 3.6 to 3.8, as it does for Triton's own compiles."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = Path(get_ptxas(cc).path)
    except (ImportError, AttributeError, TypeError) as exc:
        raise BuildError(f"cannot find the ptxas this Triton uses ({exc}); {TRITON_PIN} is needed") from None
    return Ptxas(path, ptxas_release(path, "Triton's ptxas"))


def ptxas_release(path: Path, what: str = "ptxas") -> str:
    """The CUDA release a ptxas belongs to, from `ptxas --version`: "12.8"."""
    import subprocess

    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as exc:
        raise BuildError(f"{what} at {path} does not run ({exc})") from None
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise BuildError(f"cannot read the CUDA release of {what} at {path}: {out.strip()[-200:]!r}")
    return match.group(1)


def ptx_isa(ptx: str) -> tuple[int, int]:
    """The `.version` a PTX module declares."""
    match = re.search(r"^\.version (\d+)\.(\d+)", ptx, flags=re.M)
    if not match:
        raise BuildError("no .version line in the PTX")
    return int(match.group(1)), int(match.group(2))


# The oldest assembler measured to compile the kernels right, per compute capability. On an H200 the same PTX (ISA
# 8.7, sm_90a) of FP16 spatial attention came out 0.68 to 1.05 of its range off the reference when Triton 3.6's
# bundled ptxas (CUDA 12.8) assembled it, and within the op table's bound when ptxas 13.0 or a CUDA 13.0 driver's
# own PTX compiler did (tools/gpu_check.py); a launch of the wrong cubin also ended in an illegal memory access.
# Between the two, CUDA 12.9's was not run: below the floor is refused, not only what was seen wrong. Triton 3.6 and
# 3.7 assemble sm_90 with ptxas 12.8, 3.8 with 12.9, 3.9 with its CUDA 13 ptxas-blackwell. A driver compiles the
# plugins' PTX with its own release's compiler, so TensorRT's path is held to the same floor; that a 12.x driver's
# compiler repeats ptxas 12.8's error is inferred, not run.
class Floor(NamedTuple):
    least: tuple[int, int]  # the oldest CUDA release whose assembler compiled the kernels right
    wrong: str  # what an older one was seen to do


SOUND_ASSEMBLER = {90: Floor((13, 0), "ptxas 12.8 turned FP16 attention 0.7 to 1.0 of its range off on an H200")}


def require_sound_assembler(cc: int, release: str, what: str, fix: str) -> None:
    """Refuse to run the kernels on sm_`cc` compiled by a CUDA `release` assembler below SOUND_ASSEMBLER's floor:
    a wrong image otherwise. `what` names the assembler, `fix` says how to get a newer one."""
    floor = SOUND_ASSEMBLER.get(cc)
    if floor and cuda_release(release) < floor.least:
        raise BuildError(f"{what} (CUDA {release}) is older than CUDA {_dotted(floor.least)}, the oldest seen to "
                         f"compile the dbunet kernels right on sm_{cc} ({floor.wrong}): {fix}")


def require_driver_reads(ptx: str, driver_cuda: str, what: str) -> None:
    """Refuse PTX newer than the running driver reads: a clear error now instead of a failed launch later."""
    have, most = ptx_isa(ptx), isa_for_cuda(driver_cuda)
    if have > most:
        raise BuildError(f"{what}: PTX ISA {have[0]}.{have[1]} is newer than this CUDA {driver_cuda} driver reads "
                         f"(up to {most[0]}.{most[1]}); export the PTX for it, e.g. --ptx sm_87:{driver_cuda}")

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
# Kernels only Triton's own launcher runs (channel cross-attention has no TensorRT plugin: TensorRT runs its local
# function): checked by tools/ptx_check.py like the plugins' kernels, never exported.
_JIT_KERNELS = {
    "channel_attention_weights": {
        "params": ["*T", "*T", "i32", "i32", "i32", "*fp32"],
        "constants": {"BLOCK_C": 32, "BLOCK_CC": 32, "BLOCK_P": 32},
    },
    "channel_attention_apply": {
        "params": ["*fp32", "*T", "i32", "i32", "i32", "*T"],
        "constants": {"BLOCK_P": 32, "BLOCK_C": 32, "BLOCK_CC": 32},
    },
}


def _pow2(n: int, floor: int = 16) -> int:
    """Block extents are powers of 2 of at least 16 (tl.dot's minimum)."""
    return max(floor, 1 << max(0, (int(n) - 1).bit_length()))


# Block sizes, warps and pipeline stages per kernel, dtype and head size, chosen with `ptxas -v` over a grid
# of candidates (sm_87, PTX ISA 8.5): no register spills, <= 48 KB of shared memory (no opt-in launch
# attribute needed, and two blocks fit an SM on every target: each has at least 100 KB), <= 200 registers
# (headroom for the other targets; two blocks per SM of 64K registers, as every target has).
# tests/plugins/test_aot.py assembles every configuration below for the oldest target, Hopper and Blackwell
# under the newest driver, and fails on a spill. Stages None = Triton's default (3 on these targets).
# (dtype, BLOCK_N) -> (BLOCK_P, BLOCK_D, warps), BLOCK_N = the box slots' power of 2, BLOCK_C = 32, default stages.
# Every box token of a pixel block sits in one tile, so the pixel block shrinks as the slots grow (BLOCK_P x BLOCK_N
# <= 2048). Up to 32 slots (sd15's 30 boxes): 122-157 registers. At 64 and 128 slots the former 64-pixel blocks took
# 191-255 registers in FP16 and 72 KB of shared memory in FP32; these take 64-128 (Triton 3.9, sm_87/90/100/120).
# Past 128 slots (over 127 boxes) the 128-slot row's blocks are used unchecked: one tile of every token spills there
# (FP16 at 512 slots 60-72 B, FP32 at 256 slots 20-32 B); a loop over the tokens would be needed.
_BOX_CONFIG = {
    ("fp16", 16): (64, 32, 4), ("fp16", 32): (64, 32, 4), ("fp16", 64): (32, 32, 8), ("fp16", 128): (16, 32, 8),
    ("fp32", 16): (64, 32, 8), ("fp32", 32): (64, 32, 8), ("fp32", 64): (32, 32, 8), ("fp32", 128): (16, 16, 8),
}
_SCA_CONFIG = {  # (dtype, BLOCK_DK) -> (BLOCK_M, BLOCK_N, warps, stages); BLOCK_DV follows the value head size
    ("fp16", 16): (64, 64, 4, None), ("fp16", 32): (64, 64, 4, None), ("fp16", 64): (64, 64, 4, None),
    ("fp16", 128): (64, 64, 4, None), ("fp16", 256): (32, 32, 4, None),
    # 512: (32, 16, 8 warps) took 144 registers on sm_90 under Triton 3.7 (one block per SM); this one takes
    # 126-198 under every Triton from 3.6 to 3.9 on every swept target
    ("fp16", 512): (16, 16, 4, None),
    ("fp32", 16): (64, 64, 4, None), ("fp32", 32): (64, 32, 8, None), ("fp32", 64): (64, 16, 8, None),
    ("fp32", 128): (32, 16, 4, None), ("fp32", 256): (32, 16, 8, 1),
    # fp32 at 512 (sd15's deepest level) stages 64 KB of q and k tiles whatever the tiling: it would need
    # opt-in shared memory. Engines are FP16 (strongly typed FP16 graphs hand the plugins FP16), so it is
    # refused rather than shipped unverified.
}
# Triton's own launcher (dbunet.plugins.launch: the kernels under PyTorch on a CUDA device) opts in to more than
# 48 KB of shared memory where a kernel needs it; TensorRT's AOT launch does not. So the JIT launch also takes
# fp32 attention at head size 512, in one stage: 64 KB, 64-108 registers, no spill on sm_87/90/100/120 under
# Triton 3.6, 3.7 and 3.9, under the 99 KB a block may opt in to on sm_89 and sm_120, the least of the targets.
# Its former fixed 32 x 32 blocks in three stages needed 260 KB there, more than any GPU gives a block.
_SCA_OPT_IN_CONFIG = {("fp32", 512): (16, 16, 8, 1)}
OPT_IN_SHARED_LIMIT = 99 * 1024
# kernel -> dtype -> (constants replacing _JIT_KERNELS' defaults, warps). In fp32, 32^3 blocks in 4 warps spilled: the
# weights kernel 8-28 B at 255 registers on every swept target, apply 12 B on sm_87 (Triton 3.9). These take 64-102
# registers without spills under Triton 3.6, 3.7 and 3.9 (the weights kernel in 4 warps spilled 16 B on sm_100).
_CCA_CONFIG = {
    "channel_attention_weights": {"fp16": ({}, 4), "fp32": ({"BLOCK_P": 16}, 8)},
    "channel_attention_apply": {"fp16": ({}, 4), "fp32": ({}, 8)},
}
# head sizes (BLOCK_DK, BLOCK_DV) the models use: tiny (C 32/64, 4 heads) and sd15 (C 320/640/1280, 8 heads)
SCA_HEAD_BLOCKS = ((16, 16), (32, 16), (32, 32), (128, 64), (256, 128), (512, 256))


def plugin_configurations() -> list[tuple[str, str, dict]]:
    """(kernel, dtype, shape) for every launch configuration the plugins can compile: every box-slot block of the
    table, every head-size block (fp32 at 512 is refused by kernel_config)."""
    configs = []
    for dtype in ("fp16", "fp32"):
        configs += [("box_constraint", dtype, {"slots": slots}) for d, slots in _BOX_CONFIG if d == dtype]
        configs += [("spatial_attention", dtype, {"dk": dk, "dv": dv}) for dk, dv in SCA_HEAD_BLOCKS
                    if (dtype, dk) in _SCA_CONFIG]
    return configs


def opt_in_configurations() -> list[tuple[str, str, dict]]:
    """(kernel, dtype, shape) for the launch configurations only Triton's own launcher takes (kernel_config with
    opt_in): more than 48 KB of shared memory."""
    return [("spatial_attention", dtype, {"dk": dk, "dv": dv}) for dtype in ("fp16", "fp32")
            for dk, dv in SCA_HEAD_BLOCKS if (dtype, dk) in _SCA_OPT_IN_CONFIG]


@dataclass(frozen=True)
class LaunchConfig:
    constants: dict
    num_warps: int
    num_stages: int | None  # None: Triton's default


def kernel_config(kernel: str, dtype: str, slots: int = 31, dk: int = 80, dv: int = 40,
                  opt_in: bool = False) -> LaunchConfig:
    """Constants, warps and stages for a kernel at a shape: `slots` = N + 1 box tokens (BoxConstraint),
    `dk` / `dv` = query / value head sizes (SpatialCrossAttention). Defaults: 30 boxes, sd15's first level.
    opt_in: for a launcher that opts in to more than 48 KB of shared memory (Triton's own, not TensorRT's)."""
    if kernel == "box_constraint":
        block_n = _pow2(slots)
        block_p, block_d, warps = _BOX_CONFIG[dtype, min(block_n, max(n for d, n in _BOX_CONFIG if d == dtype))]
        return LaunchConfig({"BLOCK_P": block_p, "BLOCK_D": block_d, "BLOCK_C": 32, "BLOCK_N": block_n}, warps, None)
    if kernel in _CCA_CONFIG:
        constants, warps = _CCA_CONFIG[kernel][dtype]
        return LaunchConfig({**_JIT_KERNELS[kernel]["constants"], **constants}, warps, None)
    if kernel == "spatial_attention":
        block_dk, block_dv = _pow2(dk), _pow2(dv)
        table = {**_SCA_CONFIG, **_SCA_OPT_IN_CONFIG} if opt_in else _SCA_CONFIG
        if (dtype, block_dk) not in table:
            supported = max(b for d, b in table if d == dtype)
            raise BuildError(f"spatial attention in {dtype} supports head sizes up to {supported}, got {dk}"
                             + (" (build FP16 engines: dbunet-build does)" if dtype == "fp32" and not opt_in else ""))
        block_m, block_n, warps, stages = table[dtype, block_dk]
        return LaunchConfig({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_DK": block_dk, "BLOCK_DV": block_dv},
                            warps, stages)
    raise BuildError(f"no kernel {kernel!r}; valid: {', '.join({**_KERNELS, **_JIT_KERNELS})}")


@dataclass(frozen=True)
class CompiledKernel:
    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    constants: dict
    target: str
    stages: int | None = None  # software pipeline stages; None: Triton's default


SHARED_WITHOUT_OPT_IN = 48 * 1024  # dynamic shared memory a launch gets without cuFuncSetAttribute
TRITON_DEFAULT_STAGES = 3  # what num_stages=None means on every target here


def compile_config(kernel: str, dtype: str, cc: int, isa: tuple[int, int] | None = None, opt_in: bool = False,
                   **shape) -> CompiledKernel:
    """The kernel configuration for `shape` (kernel_config) compiled for `cc`. Where its pipeline stages need more
    than 48 KB of shared memory on that architecture (sm_100's tensor-core path keeps barriers there too: 24 bytes
    past 48 KB for FP16 attention at head size 128), one stage fewer until it fits; refused if one does not.
    opt_in: a configuration for Triton's own launcher, held to OPT_IN_SHARED_LIMIT instead."""
    config = kernel_config(kernel, dtype, opt_in=opt_in, **shape)
    limit = OPT_IN_SHARED_LIMIT if opt_in else SHARED_WITHOUT_OPT_IN
    stages = config.num_stages
    while True:
        compiled = compile_ptx(kernel, dtype, cc, config.num_warps, isa, stages, **config.constants)
        if compiled.shared_mem <= limit:
            return dataclasses.replace(compiled, stages=stages)
        stages = (stages or TRITON_DEFAULT_STAGES) - 1
        if stages < 1:
            raise BuildError(f"{kernel} ({dtype}, {shape}) needs {compiled.shared_mem} B of shared memory on "
                             f"sm_{cc} in one stage, more than the {limit} B a launch gets")


def _check_compiler() -> None:
    """Triton installed, in a release whose compile dbunet has checked, and its compiler, not its interpreter."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise BuildError("AOT compilation needs TRITON_INTERPRET unset: the interpreter replaces the compiler")
    require("triton", BuildError, "--ptx (the kernels are compiled with Triton)", "plugins")


def check_toolchain(targets: tuple[str, ...]) -> None:
    """What compiling PTX for `targets` needs, checked before an export spends its time on the graphs: Triton,
    its compiler (not its interpreter), and the ptxas it assembles with, whose release caps each target's ISA."""
    _check_compiler()
    for target in map(PtxTarget.parse, targets):
        target.isa  # noqa: B018 -- its ptxas found, run and read, and an ISA both it and the driver take


def compilable_targets() -> tuple[tuple[str, ...], dict[str, str]]:
    """What `--ptx` without a target compiles: every target this Triton's ptxas can write PTX for at its default
    CUDA release (Triton 3.6's ptxas 12.9 cannot write the ISA 9.0 that names sm_110), and why each other is not."""
    check_toolchain(())
    usable, left_out = [], {}
    for name in TARGETS:
        try:
            PtxTarget.parse(name).isa  # noqa: B018 -- raises where no ISA fits
            usable.append(name)
        except BuildError as exc:
            left_out[name] = str(exc)
    return tuple(usable), left_out


def _kernel_fn(kernel: str):
    _check_compiler()
    from dbunet.plugins import kernels

    return getattr(kernels, f"{kernel}_kernel")


@contextlib.contextmanager
def _without_line_info():
    """Triton writes line info into PTX by default: the absolute source paths of the machine that compiled it
    (from its cache, of whichever checkout compiled a kernel first), so the PTX an export ships named the build
    machine's directories and differed by where it ran. Every Triton in TRITON_RANGE has `knobs`; setting the
    knob also sets TRITON_DISABLE_LINE_INFO, which is part of Triton's cache key, and the scope restores both."""
    from triton import knobs

    with knobs.compilation.scope():
        knobs.compilation.disable_line_info = True
        yield


def compile_ptx(kernel: str, dtype: str, cc: int, num_warps: int = 4, isa: tuple[int, int] | None = None,
                stages: int | None = None, **constants) -> CompiledKernel:
    """PTX of one kernel for one dtype ("fp16" or "fp32") and compute capability, of PTX ISA `isa`
    (default: the newest Triton's ptxas knows, which older drivers refuse)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    specs = {**_KERNELS, **_JIT_KERNELS}
    if kernel not in specs:
        raise BuildError(f"no kernel {kernel!r}; valid: {', '.join(specs)}")
    if dtype not in ("fp16", "fp32"):
        raise BuildError(f"dtype must be fp16 or fp32, got {dtype!r}")
    fn = _kernel_fn(kernel)
    spec = specs[kernel]
    consts = {**spec["constants"], **constants, "IEEE": dtype == "fp32"}
    names = [n for n in fn.arg_names if n not in consts]
    if len(names) != len(spec["params"]):
        raise BuildError(f"{kernel}: kernel takes {names}, the AOT table lists {len(spec['params'])} parameters")
    signature = {n: t.replace("T", dtype) for n, t in zip(names, spec["params"], strict=True)}
    signature |= {n: "constexpr" for n in consts}
    with _without_line_info():
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=consts),
            target=GPUTarget("cuda", cc, 32),
            # fp fusion explicit: the default changes in 3.10
            options={"num_warps": num_warps, "enable_fp_fusion": True,
                     **({"ptx_version": isa[0] * 10 + isa[1]} if isa else {}),
                     **({"num_stages": stages} if stages else {})},
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
    """Compile every AOT kernel for each target (`sm_87` or `sm_87:12.6`) and dtype into `out_dir`, of the
    PTX ISA the target's CUDA driver reads; return manifest entries."""
    from dbunet import atomic

    parsed = [PtxTarget.parse(t) for t in targets]
    entries = []
    for kernel in _KERNELS:
        for dtype in dtypes:
            for target in parsed:
                c = compile_config(kernel, dtype, target.cc, target.isa)
                path = Path(out_dir) / f"{kernel}.{dtype}.{target.name}.ptx"
                atomic.write_text(path, c.ptx)
                entries.append({"kernel": kernel, "dtype": dtype, "target": target.name, "cuda": target.cuda,
                                "ptx_isa": ".".join(map(str, target.isa)), "file": path.name, "entry": c.name,
                                "num_warps": c.num_warps, "num_stages": c.stages, "shared_mem": c.shared_mem,
                                "constants": {k: v for k, v in c.constants.items()}})
    return entries


@dataclass(frozen=True)
class PtxasReport:
    registers: int
    spill_bytes: int  # spill stores
    stack_bytes: int  # stack frame per thread


def ptxas_report(ptx: str) -> PtxasReport:
    """Assemble PTX with the ptxas triton.compile uses for its target (`-v`): registers, spills and stack
    per thread."""
    import subprocess
    import tempfile

    target = re.search(r"^\.target (\S+)", ptx, flags=re.M)
    if not target:
        raise BuildError("no .target line in the PTX")
    tool = triton_ptxas(int(re.sub(r"\D", "", target.group(1)))).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([str(tool), "-v", "--gpu-name", target.group(1), str(src), "-o", os.devnull],
                              capture_output=True, text=True)
    if proc.returncode:
        raise BuildError(f"ptxas refused the PTX: {proc.stderr.strip()[-300:]}")
    numbers = {key: re.search(pattern, proc.stderr) for key, pattern in (
        ("registers", r"Used (\d+) registers"), ("spill_bytes", r"(\d+) bytes spill stores"),
        ("stack_bytes", r"(\d+) bytes stack frame"))}
    return PtxasReport(**{k: int(m.group(1)) if m else 0 for k, m in numbers.items()})
