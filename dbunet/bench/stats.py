"""Timing statistics and the machine a measurement was taken on."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from dbunet.errors import ConfigError
from dbunet.scalars import is_whole, python_scalar


@dataclass
class Timing:
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        s = sorted(self.samples_ms)
        return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)

    @property
    def cv(self) -> float:
        """Coefficient of variation (stdev / mean): the run's own noise."""
        if len(self.samples_ms) < 2:
            return 0.0
        return statistics.stdev(self.samples_ms) / statistics.mean(self.samples_ms)

    @property
    def noise_ms(self) -> float:
        """3 x the median absolute deviation: a robust ~2-sigma width of this run's samples, which
        stray slow samples (a neighbour's burst on a shared host) barely move."""
        med = self.median_ms
        return 3.0 * statistics.median(abs(x - med) for x in self.samples_ms)

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "cv": self.cv, "samples_ms": self.samples_ms}

    @classmethod
    def from_dict(cls, d: dict) -> Timing:
        return cls(list(d["samples_ms"]))


def check_counts(repeat: object, warmup: object, names: tuple[str, str] = ("repeat", "warmup")) -> None:
    """Timed calls >= 1 (a median of none is no figure) and untimed calls >= 0, both whole numbers (NumPy's too,
    as everywhere in the API; never a bool); `names` are what the caller calls them (`--repeat`, the latency
    marker's `repeat`)."""
    for name, value, least in ((names[0], repeat, 1), (names[1], warmup, 0)):
        if not (is_whole(python_scalar(value)) and value >= least):
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")


def measure(fn: Callable[[], object], repeat: int, warmup: int) -> Timing:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return Timing(samples)


def calibration_ms(samples: int = 15) -> float:
    """Median time of a fixed fp32 GEMM (384^3, two threads' worth of work): this machine's speed right now.

    Reports store it, and comparisons scale the baseline by the ratio of the two calibrations, so a
    machine that is slower today (frequency, neighbours on a shared host) is not read as a regression.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((384, 384), dtype=np.float32), rng.standard_normal((384, 384), dtype=np.float32)
    return measure(lambda: a @ b, samples, 3).median_ms


def parse_compute_apps(csv_text: str, pid: int) -> float | None:
    """MB of GPU memory `pid` holds, from `nvidia-smi --query-compute-apps=pid,used_memory
    --format=csv,noheader,nounits`; None when the process is not listed (it holds no GPU memory)."""
    used = []
    for line in csv_text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[0] == str(pid):
            try:
                used.append(float(fields[1]))
            except ValueError:  # "[N/A]" where the driver withholds per-process figures
                return None
    return sum(used) if used else None


def device_memory_mb() -> float | None:
    """GPU memory this process holds now, by the NVIDIA driver; None without an NVIDIA GPU.

    ONNX Runtime's CUDA arena and PyTorch's caching allocator keep what they grew to, so read after
    the run this is the run's peak. Inside a PID namespace the driver may list host PIDs: then None."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_compute_apps(out.stdout, os.getpid()) if out.returncode == 0 else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far: Linux's VmHWM. Not getrusage's ru_maxrss, which Linux carries
    over exec from the parent's copy: a child of a 700 MB process reported a 700 MB peak before doing anything."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 2.0**20)


@dataclass
class Machine:
    system: str
    machine: str
    processor: str
    cpu_count: int
    python: str

    @classmethod
    def current(cls) -> Machine:
        cpu = platform.processor()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        except OSError:
            pass
        return cls(platform.system(), platform.machine(), cpu, os.cpu_count() or 1, platform.python_version())

    def to_dict(self) -> dict:
        return asdict(self)
