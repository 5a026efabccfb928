"""Compile every plugin kernel configuration with the installed Triton at the PTX ISA dbunet chooses, and
assemble each with the ptxas that Triton uses (`ptxas -v`): registers, spills, shared memory.

    python tools/ptx_check.py                 # markdown table on stdout, exit 1 on any failure
    python tools/ptx_check.py --json          # what tests/plugins/test_aot.py reads
    /other/venv/bin/python tools/ptx_check.py # the same against another Triton (PYTHONPATH=. there)

Run it in a side environment to check a Triton the project does not test with (the GPU machine has
Triton 3.6, whose ptxas 12.8 refuses the ISA 9.0 a CUDA 13.0 driver would read). No GPU needed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Every target at its default CUDA release with the default shape; every configuration for the oldest
# target (Orin on JetPack 6), and for Hopper and both Blackwells under the newest driver the table knows.
SWEEP_TARGETS = ("sm_87", "sm_90:13.0", "sm_100:13.0", "sm_120:13.0")


def check(kernel: str, dtype: str, target: str, opt_in: bool = False, **shape) -> dict:
    from dbunet.errors import DbunetError
    from dbunet.plugins import aot

    t = aot.PtxTarget.parse(target)
    row = {"kernel": kernel, "dtype": dtype, "target": target, "shape": shape}
    try:
        row["isa"] = list(t.isa)
    except DbunetError as exc:  # no ISA both this Triton's ptxas and the driver take names the target
        return {**row, "unavailable": str(exc)}
    try:
        c = aot.compile_config(kernel, dtype, t.cc, t.isa, opt_in, **shape)
        r = aot.ptxas_report(c.ptx)
    except (DbunetError, RuntimeError, OSError) as exc:  # Triton's PTXASError is a RuntimeError
        return {**row, "error": f"{type(exc).__name__}: {str(exc).strip()[-400:]}"}
    return {**row, "name": c.name, "ptx": c.ptx, "warps": c.num_warps, "stages": c.stages, "shared": c.shared_mem,
            "registers": r.registers, "spill": r.spill_bytes, "stack": r.stack_bytes}


def configurations() -> dict[str, tuple]:
    """{row key: (kernel, dtype, target, shape)} for every row of the table."""
    from dbunet.plugins import aot

    out = {}
    for kernel in aot._KERNELS:
        for dtype in ("fp16", "fp32"):
            for target in aot.TARGETS:
                out[f"{kernel}/{dtype}/{target}"] = (kernel, dtype, target, {})
    def tag(shape: dict) -> str:
        return "".join(f"{k}{v}" for k, v in shape.items())

    for target in SWEEP_TARGETS:
        for kernel, dtype, shape in aot.plugin_configurations():
            out[f"{kernel}/{dtype}/{target}/{tag(shape)}"] = (kernel, dtype, target, shape)
        # what only Triton's own launcher takes (dbunet.plugins.launch), held to the shared memory it may opt in to
        for kernel, dtype, shape in aot.opt_in_configurations():
            out[f"{kernel}/{dtype}/{target}/{tag(shape)}/opt-in"] = (kernel, dtype, target, {**shape, "opt_in": True})
        for kernel in aot._JIT_KERNELS:  # the kernels only that launcher runs
            for dtype in ("fp16", "fp32"):
                out[f"{kernel}/{dtype}/{target}/jit"] = (kernel, dtype, target, {})
    return out


def _check_row(row: tuple) -> dict:
    kernel, dtype, target, shape = row
    return check(kernel, dtype, target, **shape)


def allow_any_triton() -> None:
    from dbunet import releases

    releases.CHECKS["triton"] = lambda version, error: None


def check_all(jobs: int = 1, any_triton: bool = False) -> dict[str, dict]:
    """Every row; with `jobs` > 1 in that many processes (each compile is one CPU-bound LLVM run: 84 rows took
    3.6 min in one process on a 2-core machine with Triton's cache empty)."""
    rows = configurations()
    if jobs <= 1:
        return {key: _check_row(row) for key, row in rows.items()}
    # spawned, not forked: the parent has imported Triton, whose compiler state a fork would share
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=allow_any_triton if any_triton else None) as pool:
        return dict(zip(rows, pool.map(_check_row, rows.values()), strict=True))


def environment() -> dict:
    import triton

    from dbunet.plugins import aot

    return {"triton": triton.__version__, "python": sys.version.split()[0],
            "ptxas": {f"sm_{cc}": aot.triton_ptxas(cc).release for cc in sorted(aot.TARGETS.values())}}


def table(env: dict, rows: dict[str, dict]) -> str:
    lines = [f"Triton {env['triton']} (Python {env['python']}), ptxas per target: "
             + ", ".join(f"{k} {v}" for k, v in env["ptxas"].items()), "",
             "| configuration | ISA | result |", "|---|---|---|"]
    for key, r in rows.items():
        isa = ".".join(map(str, r.get("isa", []))) or "-"
        result = (r["error"].splitlines()[0][:120] if "error" in r else
                  f"not with this Triton: {r['unavailable'][:120]}" if "unavailable" in r else
                  f"{r['registers']} registers, {r['spill']} B spilled, {r['shared']} B shared, "
                  f"{r['stages'] or 'default'} stages")
        lines.append(f"| {key} | {isa} | {result} |")
    failed = sum("error" in r for r in rows.values())
    unavailable = sum("unavailable" in r for r in rows.values())
    lines += ["", f"{len(rows) - failed - unavailable} of {len(rows)} assembled, {failed} failed"
              + (f", {unavailable} need a newer Triton (dbunet refuses them with the reason)" if unavailable else "")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON (environment and every row, PTX included)")
    parser.add_argument("--any-triton", action="store_true",
                        help="compile with a Triton outside dbunet.releases.TRITON_RANGE too (to judge a new release)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="compile in this many processes (default: the CPUs this process may use)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the compiler")
    from dbunet.errors import DbunetError
    from dbunet.plugins import aot

    if args.any_triton:
        allow_any_triton()
    try:
        aot.check_toolchain(())
    except DbunetError as exc:
        parser.exit(2, f"error: {exc}\n")
    env, rows = environment(), check_all(args.jobs, args.any_triton)
    print(json.dumps({"environment": env, "rows": rows}) if args.json else table(env, rows))
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
