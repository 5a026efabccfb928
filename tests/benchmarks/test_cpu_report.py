"""The CPU report script's own logic: case names, and rewriting only its blocks of the page."""

import subprocess
import sys

import pytest
from bench_scripts import BENCHMARKS, benchmark_script
from locales import ASCII_LOCALE


@pytest.fixture(scope="module")
def report():
    with benchmark_script("cpu_report") as module:
        yield module


def test_case_names(report):
    case = report.Case.parse("sd15@256/1")
    assert (case.config, case.size, case.steps, case.slug, str(case)) == ("sd15", 256, 1, "sd15-256", "sd15@256/1")
    assert report.Case.parse("tiny") == report.Case("tiny") and report.Case("tiny").slug == "tiny"
    with pytest.raises(SystemExit, match="config\\[@size\\]"):
        report.Case.parse("sd15@big")


def test_readme_blocks_are_replaced_and_the_rest_kept(report):
    page = "# CPU\n\nhand-written analysis\n"
    once = report.update_readme(page, "tiny", "table v1")
    assert once.startswith(page.rstrip("\n")) and "table v1" in once
    both = report.update_readme(once, "sd15-256", "big table")
    again = report.update_readme(both, "tiny", "table v2")
    assert "table v1" not in again and "table v2" in again and "big table" in again
    assert again.index("table v2") < again.index("big table")  # a replaced block keeps its place
    assert "hand-written analysis" in again


def test_a_block_is_written_into_the_page_as_utf8(report, tmp_path):
    page = tmp_path / "README.md"
    report.write_block(page, "tiny", "table v1")  # no page yet: a titled one
    assert page.read_text(encoding="utf-8").startswith("# CPU benchmarks\n")
    page.write_text("# CPU\n\n2 cores \u2014 AVX2\n", encoding="utf-8")  # the page holds dashes and x signs
    # read with the locale's encoding, the page failed to load where that is ASCII
    code = (f"import pathlib, sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import cpu_report; "
            f"cpu_report.write_block(pathlib.Path({str(page)!r}), 'tiny', 'table v2 \\u00d72')")
    done = subprocess.run([sys.executable, "-c", code], env=ASCII_LOCALE, capture_output=True, text=True,
                          encoding="utf-8")
    assert done.returncode == 0, done.stderr
    block = "<!-- cpu_report:tiny -->\ntable v2 \u00d72\n<!-- /cpu_report:tiny -->\n"
    assert page.read_text(encoding="utf-8") == "# CPU\n\n2 cores \u2014 AVX2\n\n" + block
