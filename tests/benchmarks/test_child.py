"""benchmarks/child.py: one measurement in a fresh process, its result or why it failed (the scripts share it)."""

from __future__ import annotations

import sys

import pytest
from bench_scripts import BENCHMARKS, benchmark_script

SCRIPT = f"""
import os, signal, sys
sys.path.insert(0, {str(BENCHMARKS)!r})
from child import serve_child

def double(n, label):
    return {{"x": 2 * n, "label": label, "pid": os.getpid()}}

def fail():
    raise ValueError("a bad shape")

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    if not serve_child({{"double": double, "fail": fail, "die": die}}):
        print("not a child")
"""


@pytest.fixture()
def child(tmp_path):
    script = tmp_path / "measure.py"
    script.write_text(SCRIPT)
    with benchmark_script("child") as module:
        yield module, script


def test_a_measurement_runs_in_another_process_and_returns_its_json(child):
    module, script = child
    got = module.in_child(script, "double", 21, "seven")
    assert got["x"] == 42 and got["label"] == "seven" and got["pid"] != __import__("os").getpid()


@pytest.mark.skipif(sys.platform != "linux", reason="signals as Linux sends them")
@pytest.mark.parametrize("name, says, oom", [("fail", "ValueError: a bad shape", False),
                                             ("die", "killed by signal 9", True)])
def test_a_failed_measurement_says_why_and_whether_memory_ran_out(child, name, says, oom):
    module, script = child
    with pytest.raises(module.ChildFailed, match=says) as failed:
        module.in_child(script, name)
    assert failed.value.out_of_memory is oom


def test_outside_a_child_serve_child_does_nothing(child):
    module, _ = child
    assert not module.serve_child({"double": None}, ["--repeat", "3"])
