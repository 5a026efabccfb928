"""The README's main-job command does what the README says (its install step is CI's own command)."""

import re
import shutil
import subprocess
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


@pytest.mark.skipif(shutil.which("dbunet-export") is None, reason="console scripts not installed (pip install -e .)")
def test_main_job_exports_and_writes_a_png(tmp_path):
    main_job = _blocks()[0].strip()
    commands = main_job.split("&& dbunet-export", 1)[1]  # skip the venv and install steps
    subprocess.run("dbunet-export" + commands, shell=True, cwd=tmp_path, check=True, timeout=600,
                   capture_output=True)
    img = Image.open(tmp_path / "out.png")
    assert img.size == (128, 128) and img.text["prompt"] == "a red cat on a sofa"
    assert (tmp_path / "dbunet-artifacts" / "manifest.json").is_file()
