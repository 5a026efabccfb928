"""What a wheel ships: every folder of Python modules under dbunet/ is a package setuptools finds."""

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_folder_is_a_package():
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dbunet").rglob("*.py")}
    found = set(find_packages(str(ROOT), include=["dbunet*"]))
    assert folders <= found, f"not packages (no __init__.py), left out of a wheel: {sorted(folders - found)}"


def test_the_extras_pin_the_releases_dbunet_checks_at_run_time():
    """pip installs what dbunet.releases accepts: every extra that brings polygraphy, onnxscript, OpenVINO,
    Triton or Ray asks for the releases the run-time check lets through, so a fresh install is never refused by its own
    check."""
    import tomllib

    from dbunet.releases import MIN_ONNXSCRIPT, MIN_POLYGRAPHY, OPENVINO_PIN, RAY_PIN, TRITON_PIN

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wants = {name: [r for r in reqs if r.startswith(("polygraphy", "openvino"))] for name, reqs in extras.items()}
    polygraphy = {r for reqs in wants.values() for r in reqs if r.startswith("polygraphy")}
    openvino = {r for reqs in wants.values() for r in reqs if r.startswith("openvino")}
    assert polygraphy == {f"polygraphy>={'.'.join(map(str, MIN_POLYGRAPHY))}"}, polygraphy
    assert openvino == {OPENVINO_PIN}, openvino
    assert {n for n, reqs in wants.items() if reqs} >= {"export", "trt", "trt-cuda12", "openvino", "bench", "dev"}
    triton = {n: [r for r in reqs if r.startswith("triton")] for n, reqs in extras.items()}
    assert {r for reqs in triton.values() for r in reqs} == {TRITON_PIN}
    assert {n for n, reqs in triton.items() if reqs} == {"plugins", "trt", "dev"}
    onnxscript = {n: [r for r in reqs if r.startswith("onnxscript")] for n, reqs in extras.items()}
    floor = ".".join(map(str, MIN_ONNXSCRIPT))
    assert {n: r for n, r in onnxscript.items() if r} == {"export": [f"onnxscript>={floor}"]}
    ray = {n: [r for r in reqs if r.startswith("ray")] for n, reqs in extras.items()}
    assert {n: r for n, r in ray.items() if r} == {"serve": [RAY_PIN], "dev": [RAY_PIN]}


def _argument(call, position: int | None, keyword: str):
    """The argument a call passes at `position` or as `keyword` (None where it passes neither)."""
    if position is None:
        return None
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def test_every_install_command_dbunet_prints_names_an_extra_of_pyproject():
    """Missing libraries are named with dbunet.releases.install(extra), the README's form (`pip install -e
    ".[extra]"` from the checkout): before, some errors printed `pip install 'dbunet[trt]'`, which asks an index
    for a package named dbunet. Every extra named in the code exists, and no message spells the other forms."""
    import ast
    import re
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named, spelled = {}, []
    for path in (ROOT / "dbunet").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                callee = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                extra = _argument(node, *{"install": (0, "extra"), "require": (3, "extra")}.get(callee, (None, "")))
                if isinstance(extra, ast.Constant):
                    named.setdefault(extra.value, []).append(path.name)
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and path.name != "releases.py"
                  and re.search(r"pip install (['\"]dbunet\[|-e '\.\[)", node.value)):
                spelled.append(f"{path.name}: {node.value}")
    assert {"export", "openvino", "serve", "trt", "trt-cuda12", "plugins", "bench"} <= set(named), named
    assert set(named) <= extras, {e: where for e, where in named.items() if e not in extras}
    assert not spelled, spelled


def _imported_libraries(folder: Path) -> dict[str, set[str]]:
    """Top-level names of what the modules under `folder` import (at any depth: lazy imports too), by file."""
    import ast
    import sys

    names: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "dbunet":
                    names.setdefault(top, set()).add(path.name)
    return names


IMPORT_NAMES = {"pillow": "PIL"}  # distributions whose import name differs


def _import_names(requirements: list[str]) -> set[str]:
    """'torch==2.13.0', 'pillow>=10' -> {'torch', 'PIL'}: what the requirements' distributions are imported as."""
    import re

    names = (re.match(r"[A-Za-z0-9_.-]+", r).group().lower() for r in requirements)
    return {IMPORT_NAMES.get(n, n) for n in names}


def test_the_libraries_the_models_import_are_the_ones_checked_before_an_export():
    """releases.require_models checks MODEL_LIBRARIES before a command builds the PyTorch models: a library
    dbunet.models imports that is neither there nor in the base install would end a run without it in a
    ModuleNotFoundError traceback again."""
    import tomllib

    from dbunet.releases import MODEL_LIBRARIES

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _import_names(project["dependencies"])
    imported = _imported_libraries(ROOT / "dbunet" / "models")
    assert {"torch", "diffusers", "transformers"} <= set(imported)  # the walk sees lazy imports too
    unchecked = {name: files for name, files in imported.items() if name not in base | set(MODEL_LIBRARIES)}
    assert not unchecked, f"dbunet.models imports, not in releases.MODEL_LIBRARIES nor the base install: {unchecked}"
    export = _import_names(project["optional-dependencies"]["export"])
    assert set(MODEL_LIBRARIES) <= export, "every library require_models checks comes with the export extra"


def test_onnxruntime_is_recorded_whichever_distribution_installed_it(tmp_path):
    """onnxruntime-gpu (and onnxruntime-openvino, ...) install the `onnxruntime` module under another distribution
    name: the manifest's and the benchmark reports' tool versions left ONNX Runtime out there. A Python without
    site-packages sees only a stand-in onnxruntime-gpu distribution (its metadata, as pip writes it) and numpy."""
    import json
    import os
    import subprocess
    import sys

    import numpy

    site = tmp_path / "site"
    site.mkdir()
    for folder in (Path(numpy.__file__).parent, Path(numpy.__file__).parents[1] / "numpy.libs"):
        if folder.exists():
            (site / folder.name).symlink_to(folder)
    dist = site / "onnxruntime_gpu-1.31.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    (dist / "RECORD").write_text("onnxruntime/__init__.py,,\nonnxruntime_gpu-1.31.1.dist-info/METADATA,,\n")
    (site / "onnxruntime").mkdir()  # a file RECORD lists must exist: Python 3.12's metadata skips missing ones
    (site / "onnxruntime" / "__init__.py").write_text("")
    code = "import json; from dbunet.manifest import tool_versions; print(json.dumps(tool_versions()))"
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    tools = json.loads(proc.stdout)
    assert tools["onnxruntime"] == "1.31.1 (onnxruntime-gpu)"
    assert "torch" not in tools  # only what is installed


def test_a_relative_pythonpath_reaches_subprocesses_as_an_absolute_one():
    """`PYTHONPATH=. pytest` where dbunet is not installed: the tests that run a command from another folder
    failed with "No module named 'dbunet'" (conftest now rewrites the variable before any test runs)."""
    import os

    from conftest import absolute_pythonpath

    sep = os.pathsep
    assert absolute_pythonpath(f".{sep}src{sep}/opt/x", "/work/tree") == f"/work/tree/.{sep}/work/tree/src{sep}/opt/x"
    assert absolute_pythonpath(f"{sep}/opt/x", "/w") == f"{sep}/opt/x"  # an empty entry is left as Python reads it
    assert all(os.path.isabs(p) for p in os.environ.get("PYTHONPATH", "").split(sep) if p)
