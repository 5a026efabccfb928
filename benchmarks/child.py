"""One measurement in a fresh Python process, for the benchmark scripts. A figure taken in a process of its own is
not skewed by what earlier measurements left behind (allocator, thread pools, oneDNN's caches, peak RSS), and a
measurement the kernel kills for memory ends only its own process.

The parent calls `in_child(script, name, *args)`; the script's `main` starts with `if serve_child(MEASURES): return`,
which, in the child, runs MEASURES[name](*args) and prints its result as JSON on the last line of stdout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLAG = "--child"


class ChildFailed(RuntimeError):
    def __init__(self, why: str, out_of_memory: bool) -> None:
        super().__init__(why)
        self.out_of_memory = out_of_memory  # killed by SIGKILL: what the out-of-memory killer sends


def in_child(script: str | Path, name: str, *args: Any, cwd: str | Path | None = None) -> Any:
    """MEASURES[name](*args) of `script`, run in a new process; its JSON result. Raises ChildFailed."""
    proc = subprocess.run([sys.executable, str(script), FLAG, json.dumps([name, *args])], capture_output=True,
                          text=True, cwd=cwd)
    if proc.returncode:
        oom = proc.returncode == -signal.SIGKILL
        why = (f"killed by signal {-proc.returncode}" + (" (what the out-of-memory killer sends)" if oom else "")
               if proc.returncode < 0 else (proc.stderr.strip().splitlines() or ["?"])[-1][:200])
        raise ChildFailed(why, oom)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serve_child(measures: dict[str, Callable[..., Any]], argv: list[str] | None = None) -> bool:
    """In a child (argv is FLAG JSON): run the measurement it names, print its JSON, return True. Else False."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != FLAG:
        return False
    name, *args = json.loads(argv[1])
    print(json.dumps(measures[name](*args)), flush=True)
    return True
