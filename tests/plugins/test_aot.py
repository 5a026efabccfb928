"""PTX for every target without a GPU, shaped for TensorRT's AOT launch (no hidden parameters)."""

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")

from dbunet.plugins import aot

_COMPILE_ALL = """
import json
from dbunet.plugins import aot
out = {}
for kernel in ("box_constraint", "spatial_attention"):
    for dtype in ("fp16", "fp32"):
        for target, cc in aot.TARGETS.items():
            c = aot.compile_ptx(kernel, dtype, cc)
            out[f"{kernel}/{dtype}/{target}"] = {"name": c.name, "ptx": c.ptx, "warps": c.num_warps, "shared": c.shared_mem}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled():
    # a fresh process: this test session runs Triton's interpreter, which replaces the compiler
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_ALL], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_ptx_for_every_kernel_dtype_and_target(compiled):
    assert len(compiled) == 2 * 2 * len(aot.TARGETS)
    for key, c in compiled.items():
        kernel, _, target = key.split("/")
        assert re.search(rf"^\.target {target}a?$", c["ptx"], flags=re.M), key
        entry = c["ptx"].split(f".entry {c['name']}(")[1].split(")")[0]
        params = re.findall(rf"{c['name']}_param_(\d+)", entry)
        # inputs, int32 scalars, outputs: exactly TensorRT's AOT launch, nothing hidden after them
        assert len(params) == len(aot._KERNELS[kernel]["params"]), key
        assert c["warps"] == 4


def test_hidden_parameters_are_only_stripped_when_unused():
    ptx = ".entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n\tld.param.u64 %rd1, [k_param_0];\n}\n"
    stripped = aot.strip_hidden_params(ptx, "k", 1)
    assert "k_param_1" not in stripped and "k_param_0" in stripped
    used = ptx.replace("[k_param_0]", "[k_param_1]")
    with pytest.raises(Exception, match="used by the kernel"):
        aot.strip_hidden_params(used, "k", 1)


def test_kernels_that_need_scratch_memory_are_refused():
    """Triton >= 3.3 gives a kernel hidden global/profile scratch pointers; TensorRT's AOT launch passes none."""
    from types import SimpleNamespace

    ptx = ".entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n\tld.param.u64 %rd1, [k_param_0];\n}\n"
    clean = SimpleNamespace(global_scratch_size=0, profile_scratch_size=0)
    assert "k_param_1" not in aot.strip_hidden_params(ptx, "k", 1, clean)
    for attr in ("global_scratch_size", "profile_scratch_size"):
        needy = SimpleNamespace(**{**vars(clean), attr: 256})
        with pytest.raises(Exception, match=f"{attr}=256"):
            aot.strip_hidden_params(ptx, "k", 1, needy)


def test_interpreter_mode_refuses_to_compile():
    with pytest.raises(Exception, match="TRITON_INTERPRET"):
        aot.compile_ptx("box_constraint", "fp16", 90)


def test_export_writes_ptx_listed_in_the_manifest(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "dbunet.cli.export", "--components", "gae", "--ptx", "sm_87",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FP_FUSION" not in proc.stderr  # the fusion choice is explicit
    plugins = json.loads((tmp_path / "manifest.json").read_text())["plugins"]
    assert {(p["kernel"], p["dtype"], p["target"]) for p in plugins} == {
        (k, d, "sm_87") for k in ("box_constraint", "spatial_attention") for d in ("fp16", "fp32")}
    for p in plugins:
        assert ".target sm_87" in (tmp_path / p["file"]).read_text()
