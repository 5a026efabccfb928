"""The CPU report script's own logic: case names, and rewriting only its blocks of the page."""

import pytest
from bench_scripts import benchmark_script


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
