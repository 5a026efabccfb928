"""PTX for every target without a GPU, shaped for TensorRT's AOT launch (no hidden parameters)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason='Triton is not installed (pip install -e ".[dev]")')

from dbunet.errors import BuildError
from dbunet.plugins import aot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    """tools/ptx_check.py --json: every kernel configuration compiled by the installed Triton at the ISA dbunet
    chooses and assembled by the ptxas Triton uses. A fresh process: this test session runs Triton's
    interpreter, which replaces the compiler."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ptx_check.py"), "--json"], capture_output=True,
                          text=True, env=env, timeout=900)
    report = json.loads(proc.stdout)
    failed = {k: r["error"] for k, r in report["rows"].items() if "error" in r}
    assert proc.returncode == 0 and not failed, failed or proc.stderr[-3000:]
    return report["rows"]


@pytest.fixture(scope="module")
def compiled(report):
    """The rows this Triton compiled; a target its ptxas cannot write PTX for (Triton 3.6: sm_110) is a row
    with the reason dbunet refuses it, checked below."""
    return {k: r for k, r in report.items() if "unavailable" not in r}


def test_ptx_for_every_kernel_dtype_and_target(report, compiled, monkeypatch):
    defaults = {k for k in report if k.count("/") == 2}
    assert len(defaults) == 2 * 2 * len(aot.TARGETS)
    for key, r in report.items():  # left out: a target no ISA fits, with the error dbunet gives for it
        try:
            aot.PtxTarget.parse(key.split("/")[2]).isa  # noqa: B018 -- raises where no ISA fits
            assert "unavailable" not in r, key
        except BuildError as exc:
            assert r.get("unavailable") == str(exc), key
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # only reads the toolchain: nothing is compiled here
    usable, _ = aot.compilable_targets()  # what --ptx with no target compiles: the default rows compiled here
    assert {k.split("/")[2] for k in compiled if k.count("/") == 2} == set(usable)
    for key, c in compiled.items():
        kernel, _, target = key.split("/")[:3]
        name = target.split(":")[0]
        assert re.search(rf"^\.target {name}a?$", c["ptx"], flags=re.M), key
        # the PTX ISA the target's driver reads and this Triton's ptxas writes, not the newest Triton knows
        t = aot.PtxTarget.parse(target)
        assert aot.ptx_isa(c["ptx"]) == tuple(c["isa"]) == aot.target_isa(t.cc, t.cuda), key
        entry = c["ptx"].split(f".entry {c['name']}(")[1].split(")")[0]
        params = re.findall(rf"{c['name']}_param_(\d+)", entry)
        # inputs, int32 scalars, outputs: exactly TensorRT's AOT launch, nothing hidden after them
        assert len(params) == len({**aot._KERNELS, **aot._JIT_KERNELS}[kernel]["params"]), key


def test_no_kernel_spills_and_two_blocks_fit_an_sm(compiled):
    """ptxas -v on every configuration: no spills, no stack, <= 48 KB shared memory (what a TensorRT plugin launch
    gets; the opt-in rows of Triton's own launcher: what a block may opt in to on every target), <= 200 registers
    and room for two blocks per SM by registers (64K per SM on sm_87, sm_89 and sm_90)."""
    opt_in = {k for k in compiled if k.endswith("/opt-in")}
    assert {k.split("/")[2] for k in opt_in} == {k.split("/")[2] for k in compiled if k.count("/") > 2}  # all swept
    problems = []
    for key, c in compiled.items():
        threads = c["warps"] * 32
        if c["spill"] or c["stack"]:
            problems.append(f"{key}: {c['spill']} B spilled, {c['stack']} B stack ({c['registers']} registers)")
        if c["shared"] > (aot.OPT_IN_SHARED_LIMIT if key in opt_in else 48 * 1024):
            problems.append(f"{key}: {c['shared']} B shared memory")
        if c["registers"] > 200 or 2 * c["registers"] * threads > 65536:
            problems.append(f"{key}: {c['registers']} registers x {threads} threads leave room for one block per SM")
    assert not problems, "\n".join(problems)


def test_sm100_attention_drops_a_pipeline_stage_to_fit_48_kb(compiled):
    """On sm_100 Triton's tensor-core path keeps its barriers in shared memory: FP16 attention at head size 128
    needs 24 bytes past 48 KB with Triton's default stages. compile_config takes stages away until it fits."""
    row = compiled["spatial_attention/fp16/sm_100:13.0/dk128dv64"]
    assert row["shared"] <= 48 * 1024 and row["stages"] is not None and row["stages"] < 3, row["shared"]
    assert compiled["spatial_attention/fp16/sm_90:13.0/dk128dv64"]["stages"] is None  # Hopper keeps the default


def test_a_configuration_that_fits_in_no_stage_is_refused(monkeypatch):
    tried = []

    def too_big(kernel, dtype, cc, warps, isa, stages, **constants):
        tried.append(stages)
        return aot.CompiledKernel("k", "", warps, 64 * 1024, constants, f"sm_{cc}")

    monkeypatch.setattr(aot, "compile_ptx", too_big)
    with pytest.raises(BuildError, match="needs 65536 B of shared memory on sm_100 in one stage, more than the 49152"):
        aot.compile_config("spatial_attention", "fp16", 100, (9, 0), dk=128, dv=64)
    assert tried == [None, 2, 1]


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


def test_an_export_without_a_ptx_toolchain_is_refused_before_any_graph(tmp_path, monkeypatch):
    # before: every graph was traced, checked and written first, then the PTX step failed (minutes for sd15)
    from dbunet.errors import BuildError
    from dbunet.export import exporter

    monkeypatch.setattr(exporter, "staged", lambda out: pytest.fail("began the export before refusing"))
    options = exporter.ExportOptions(config="tiny", components=("gae",), ptx_targets=("sm_90",), out=tmp_path / "a")
    with pytest.raises(BuildError, match="AOT compilation needs TRITON_INTERPRET unset"):  # as this session runs
        exporter.export(options)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setitem(sys.modules, "triton", None)  # as where the `plugins` extra is not installed
    with pytest.raises(BuildError, match=r"--ptx \(the kernels are compiled with Triton\) needs triton, which is "
                                         r'not installed; pip install -e "\.\[plugins\]"'):
        exporter.export(options)


@pytest.mark.parametrize(("release", "why"), [("3.3.1", "another API"), ("3.5.1", "another API"),
                                             ("3.10.0", "not checked yet")])
def test_a_triton_outside_the_checked_releases_is_refused_before_any_graph(tmp_path, monkeypatch, release, why):
    """Triton 3.3-3.5 were run (tools/ptx_check.py in side environments): their get_ptxas takes no architecture
    or returns a tuple, so every --ptx failed with "cannot find the ptxas"; taught the older API, their attention
    kernel spills. A release not yet out may move the hidden parameters dbunet strips."""
    import triton

    from dbunet.export import exporter

    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(triton, "__version__", release)
    says = rf"Triton {release} cannot compile the plugins' PTX \(.*{why}.*\); pip install 'triton>=3.6,<3.10'"
    with pytest.raises(BuildError, match=says):
        aot.compilable_targets()
    with pytest.raises(BuildError, match=says):
        aot.compile_config("box_constraint", "fp16", 90, (8, 0))
    monkeypatch.setattr(exporter, "staged", lambda out: pytest.fail("began the export before refusing"))
    options = exporter.ExportOptions(config="tiny", components=("gae",), ptx_targets=("sm_90",), out=tmp_path / "a")
    with pytest.raises(BuildError, match=says):
        exporter.export(options)


def _triton_36(cc: int) -> aot.Ptxas:
    """The ptxas Triton 3.6 (the GPU machine's) bundles per target, as tools/ptx_check.py read it there."""
    return aot.Ptxas(Path("ptxas-blackwell"), "12.9") if cc >= 100 else aot.Ptxas(Path("ptxas"), "12.8")


def test_ptx_alone_takes_every_target_this_triton_can_compile_for_and_says_which_not(tmp_path, monkeypatch, capsys):
    from dbunet.cli import export as export_cli
    from dbunet.export import exporter

    monkeypatch.delenv("TRITON_INTERPRET")
    usable, left_out = aot.compilable_targets()  # Triton 3.9 (ptxas 13.x from sm_90): every target
    assert "sm_90" in usable and set(usable) | set(left_out) == set(aot.TARGETS)
    assert export_cli.default_ptx_targets() == usable
    assert capsys.readouterr().err == "".join(f"--ptx: {t} left out: {why}\n" for t, why in left_out.items())
    monkeypatch.setattr(aot, "triton_ptxas", _triton_36)  # ptxas 12.9 writes ISA 8.8; sm_110 is named from 9.0
    assert export_cli.default_ptx_targets() == ("sm_87", "sm_89", "sm_90", "sm_100", "sm_120")
    assert capsys.readouterr().err == ("--ptx: sm_110 left out: sm_110 needs PTX ISA 9.0 or newer, but this Triton's "
                                       "ptxas (CUDA 12.9) writes at most 8.8: a newer Triton is needed\n")
    # named, it is refused before any graph
    monkeypatch.setattr(exporter, "staged", lambda out: pytest.fail("began the export before refusing"))
    options = exporter.ExportOptions(config="tiny", components=("gae",), ptx_targets=("sm_110",), out=tmp_path / "a")
    with pytest.raises(BuildError, match="sm_110 needs PTX ISA 9.0 or newer"):
        exporter.export(options)


def test_export_writes_ptx_listed_in_the_manifest(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "dbunet.cli.export", "--components", "gae", "--ptx", "sm_87:12.6",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FP_FUSION" not in proc.stderr  # the fusion choice is explicit
    plugins = json.loads((tmp_path / "manifest.json").read_text())["plugins"]
    assert {(p["kernel"], p["dtype"], p["target"], p["cuda"], p["ptx_isa"]) for p in plugins} == {
        (k, d, "sm_87", "12.6", "8.5") for k in ("box_constraint", "spatial_attention") for d in ("fp16", "fp32")}
    for p in plugins:
        ptx = (tmp_path / p["file"]).read_text()
        assert ".target sm_87" in ptx and aot.ptx_isa(ptx) == (8, 5)  # what JetPack 6's CUDA 12.6 driver reads
        # no line info: it named this checkout's and Triton's directories, and the cache's first compiler's
        assert ".file" not in ptx and ".loc" not in ptx and str(ROOT) not in ptx


@pytest.mark.parametrize("before", [None, "0"])
def test_line_info_is_off_only_while_compiling(monkeypatch, before):
    """The export turns Triton's line info off for its PTX and gives the process back as it was: a Triton
    kernel the user's own code compiles later keeps its setting (and its cache key)."""
    from triton import knobs

    if before is None:
        monkeypatch.delenv("TRITON_DISABLE_LINE_INFO", raising=False)
    else:
        monkeypatch.setenv("TRITON_DISABLE_LINE_INFO", before)
    with aot._without_line_info():
        assert knobs.compilation.disable_line_info is True
        assert os.environ["TRITON_DISABLE_LINE_INFO"] == "1"  # what Triton's cache key reads
    assert os.environ.get("TRITON_DISABLE_LINE_INFO") == before
    assert knobs.compilation.disable_line_info is False


@pytest.mark.parametrize("text,error", [("sm_86", "unknown PTX target"), ("sm_87:11.4", "too old"),
                                        ("sm_87:twelve", "look like 12.6"),
                                        # before: an empty release after the colon meant the default one
                                        ("sm_87:", "CUDA version must look like 12.6, got ''")])
def test_bad_ptx_targets_are_refused_before_any_work(text, error):
    with pytest.raises(Exception, match=error):
        aot.PtxTarget.parse(text)


def test_ptx_isa_per_cuda_release():
    assert aot.isa_for_cuda("12.6") == (8, 5) and aot.isa_for_cuda("13.0") == (9, 0)
    assert aot.isa_for_cuda("12.7") == (8, 5)  # between table rows: what the previous release introduced
    assert aot.isa_for_cuda("13.3") == (9, 0)  # past the table: its newest, which such a driver reads
    aot.require_driver_reads(".version 8.5\n", "12.6", "k")
    with pytest.raises(Exception, match="newer than this CUDA 12.6 driver"):
        aot.require_driver_reads(".version 8.7\n", "12.6", "k")


def test_fp32_spatial_attention_beyond_its_shared_memory_is_refused():
    with pytest.raises(Exception, match="fp32 supports head sizes up to 256.*FP16"):
        aot.kernel_config("spatial_attention", "fp32", dk=320, dv=160)
    assert aot.kernel_config("spatial_attention", "fp16", dk=320, dv=160).constants["BLOCK_DK"] == 512
    # Triton's own launcher opts in to the shared memory it needs, up to its own limit (and no TensorRT advice)
    assert aot.kernel_config("spatial_attention", "fp32", dk=320, dv=160, opt_in=True).num_stages == 1
    with pytest.raises(BuildError, match=r"fp32 supports head sizes up to 512, got 640$"):
        aot.kernel_config("spatial_attention", "fp32", dk=640, dv=320, opt_in=True)


def test_isa_is_the_lower_of_the_driver_and_the_installed_ptxas(monkeypatch):
    """Triton 3.6 (the GPU machine's) bundles ptxas 12.8, which refuses ISA 9.0: a CUDA 13.0 driver must get 8.7
    there. tools/ptx_check.py run under Triton 3.6 assembles every configuration at that ISA (README)."""
    ptxas = {"12.8": aot.Ptxas(Path("ptxas"), "12.8"), "13.4": aot.Ptxas(Path("ptxas-blackwell"), "13.4")}
    monkeypatch.setattr(aot, "triton_ptxas", lambda cc: ptxas["12.8"])  # Triton 3.6, any target below sm_100
    assert aot.target_isa(90, "13.0") == (8, 7) and aot.PtxTarget.parse("sm_90:13.0").isa == (8, 7)
    assert aot.target_isa(87, "12.6") == (8, 5)  # the driver is the lower one: JetPack 6
    monkeypatch.setattr(aot, "triton_ptxas", lambda cc: ptxas["13.4"])  # Triton 3.9 from sm_90
    assert aot.target_isa(90, "13.0") == (9, 0) and aot.target_isa(90, "12.9") == (8, 8)


def test_an_isa_too_old_for_the_architecture_is_refused_before_triton_compiles(monkeypatch):
    """Each architecture has an oldest ISA that can name it (sm_121: 8.8). Below it triton.compile does not raise:
    LLVM aborts the process. Ptxas 12.8 (Triton 3.6) caps the ISA at 8.7; a 12.8 driver reads 8.7."""
    ptxas = {"12.8": aot.Ptxas(Path("ptxas"), "12.8"), "13.4": aot.Ptxas(Path("ptxas-blackwell"), "13.4")}
    monkeypatch.setattr(aot, "triton_ptxas", lambda cc: ptxas["12.8"])
    with pytest.raises(BuildError, match=r"sm_121 needs PTX ISA 8\.8 .*ptxas \(CUDA 12\.8\) writes at most 8\.7: "
                                         "a newer Triton"):
        aot.target_isa(121, "13.0")
    assert aot.target_isa(120, "13.0") == (8, 7)  # sm_120a is named from 8.7
    monkeypatch.setattr(aot, "triton_ptxas", lambda cc: ptxas["13.4"])
    with pytest.raises(BuildError, match=r"sm_110 needs PTX ISA 9\.0 .*CUDA 12\.9 driver reads at most 8\.8"):
        aot.target_isa(110, "12.9")
    assert aot.target_isa(110, "13.0") == (9, 0) and aot.target_isa(87, "12.0") == (8, 0)
    with pytest.raises(BuildError, match="sm_130 is newer than the dbunet kernels know"):
        aot.target_isa(130, "13.0")


def test_a_kernel_for_an_architecture_the_isa_cannot_name_is_an_error_not_an_abort():
    """The real Triton, in a child process (an LLVM abort would end pytest): sm_121 PTX for a CUDA 12.8 driver
    is a one-line BuildError, exit 1."""
    code = ("from dbunet.errors import BuildError\n"
            "from dbunet.plugins.tensorrt_plugins import plugin_kernel\n"
            "try:\n    plugin_kernel('box_constraint', 'fp16', 121, '12.8', slots=16)\n"
            "except BuildError as exc:\n    raise SystemExit(f'refused: {exc}')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert run.returncode == 1 and "refused: sm_121 needs PTX ISA 8.8" in run.stderr, (run.returncode,
                                                                                         run.stderr[-800:])


def test_the_ptxas_triton_uses_is_found_and_read():
    """The real lookup: Triton's own choice of ptxas for each target, and its CUDA release."""
    for cc in aot.TARGETS.values():
        ptxas = aot.triton_ptxas(cc)
        assert ptxas.path.is_file() and re.fullmatch(r"\d+\.\d+", ptxas.release), ptxas
        assert aot.isa_for_cuda(ptxas.release) >= (8, 5)
