"""The README's main-job command does what the README says (its install step is CI's own command)."""

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_states_the_two_setup_commands_and_ci_runs_the_second():
    blocks = _blocks()
    main_job, tests = blocks[0].strip(), blocks[1].strip()
    assert "dbunet-export --fp16" in main_job and "dbunet-run" in main_job
    ci = (README.parent / ".ci" / "run").read_text()
    assert tests in ci


def _scripts_dir() -> Path:
    """Where pip put dbunet's console scripts: beside the interpreter running the tests (a venv's bin/),
    whether or not that directory is on PATH."""
    try:
        metadata.distribution("dbunet")
    except metadata.PackageNotFoundError:
        pytest.skip("dbunet is not installed in this interpreter's environment (pip install -e .)")
    bindir = Path(sys.executable).parent
    assert (bindir / "dbunet-export").is_file(), f"dbunet is installed but {bindir} has no dbunet-export script"
    return bindir


def test_main_job_exports_and_writes_a_png(tmp_path):
    main_job = _blocks()[0].strip()
    commands = main_job.split("&& dbunet-export", 1)[1]  # skip the venv and install steps
    env = dict(os.environ, PATH=f"{_scripts_dir()}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run("dbunet-export" + commands, shell=True, cwd=tmp_path, check=True, timeout=600,
                   capture_output=True, env=env)
    img = Image.open(tmp_path / "out.png")
    assert img.size == (64, 64) and img.text["prompt"] == "a red circle and a blue square"
    assert (tmp_path / "dbunet-artifacts" / "manifest.json").is_file()
