"""The documentation against the code: every function, class, module or setting a page names in backticks
(`name`, `name()`, `dbunet.module.name`) still stands somewhere in the project, and every file or folder of the
repository it names (`tools/gpu_check.py`) exists, so a rename leaves no stale name behind in the pages."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
SOURCES = [ROOT / "pyproject.toml", ROOT / ".ci" / "run",
           *(p for folder in ("dbunet", "tools", "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py"))]
# names of other projects the pages use to say what ours correspond to
FOREIGN = {"crops_coords_top_left"}  # diffusers' SDXL argument behind --crop-top-left

NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)(?:\(\))?`")


def named_in(text: str) -> set[str]:
    """The last part of each backticked identifier, where it is long enough to mean one thing (4+ characters)."""
    return {m.group(1).rsplit(".", 1)[-1] for m in NAME.finditer(text)} - {""}


def test_the_name_finder_reads_what_the_pages_write():
    assert named_in("see `dbunet.onnx_attention.load_rewritten`, `session_options()`, `x0` and `a.b.`") == {
        "load_rewritten", "session_options", "x0"}


def test_every_name_the_pages_mention_is_in_the_code():
    code = set()
    for path in SOURCES:
        code.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text(encoding="utf-8")))
    stale = {f"{page.relative_to(ROOT)}: {name}" for page in PAGES for name in named_in(page.read_text("utf-8"))
             if len(name) >= 4 and name not in code and name not in FOREIGN}
    assert not stale, sorted(stale)


PATH = re.compile(r"`((?:dbunet|tools|benchmarks|tests|docs|deploy|\.ci)/[^`\s]*)`")


def test_every_repository_path_the_pages_mention_exists():
    paths = {m.group(1) for page in PAGES for m in PATH.finditer(page.read_text("utf-8"))}
    assert len(paths) > 20  # the pattern still finds what the pages write
    assert not sorted(p for p in paths if not (ROOT / p).exists())
