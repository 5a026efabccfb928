"""What a wheel ships: every folder of Python modules under dbunet/ is a package setuptools finds."""

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_folder_is_a_package():
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dbunet").rglob("*.py")}
    found = set(find_packages(str(ROOT), include=["dbunet*"]))
    assert folders <= found, f"not packages (no __init__.py), left out of a wheel: {sorted(folders - found)}"
