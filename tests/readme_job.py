"""The README's main job, run as a user would: its commands after the install step, with the console scripts pip
put beside the interpreter running the tests. One run per session (conftest's `readme_main_job`): the README
test checks what it wrote, and the quality test scores the shapes model it exported."""

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from dbunet.cli.synopsis import README


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def scripts_dir() -> Path | None:
    """Where pip put dbunet's console scripts (a venv's bin/, on PATH or not); None where dbunet is not installed
    in this interpreter's environment."""
    try:
        metadata.distribution("dbunet")
    except metadata.PackageNotFoundError:
        return None
    bindir = Path(sys.executable).parent
    assert (bindir / "dbunet-export").is_file(), f"dbunet is installed but {bindir} has no dbunet-export script"
    return bindir


def run_main_job(cwd: Path, bindir: Path) -> None:
    commands = shell_blocks()[0].strip().split("&& dbunet-export", 1)[1]  # skip the venv and install steps
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run("dbunet-export" + commands, shell=True, cwd=cwd, check=True, timeout=600, capture_output=True,
                   env=env)
