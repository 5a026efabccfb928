"""Baselines: record a report, compare a new one against it, and say what regressed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dbunet import atomic, jsonfile
from dbunet.bench.runner import BenchReport
from dbunet.bench.stats import Timing
from dbunet.errors import ConfigError
from dbunet.scalars import is_real

MAX_TOLERANCE = 10.0  # 10 = ten times slower allowed: beyond it a budget checks nothing


def check_tolerance(tolerance, name: str = "tolerance") -> float:
    """The allowed slowdown as a fraction in 0..MAX_TOLERANCE (0.10 = 10% slower allowed). NaN would pass every
    slowdown (no comparison with NaN is true), a negative one fail every run."""
    if not (is_real(tolerance) and 0 <= tolerance <= MAX_TOLERANCE):
        raise ConfigError(f"{name} must be a fraction in 0..{MAX_TOLERANCE:g} (0.10 = 10% slower allowed), "
                          f"got {tolerance!r}")
    return float(tolerance)


def save_report(report: BenchReport, path: str | Path) -> Path:
    atomic.write_text(path, json.dumps(report.to_dict(), indent=2))
    return Path(path)


def load_report(path: str | Path) -> BenchReport:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"baseline {path} does not exist; create one with --record {path}")
    data = jsonfile.loads(path.read_bytes(), lambda why: ConfigError(f"{path} is not a dbunet-bench report: {why}"))
    try:
        return BenchReport.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass
class Verdict:
    component: str
    baseline_ms: float
    current_ms: float
    noise_ms: float
    regressed: bool
    machine_speed: float = 1.0  # current / baseline calibration, >= 1

    @property
    def change(self) -> float:
        return self.current_ms / self.baseline_ms - 1.0


def machine_speed_ratio(baseline: BenchReport, current: BenchReport) -> float:
    """How much slower the machine itself ran now than at the baseline (fixed-GEMM calibration
    taken between the components of each run), >= 1.

    Only a slower machine excuses a slower component. Scaling both ways would also catch a regression
    that coincides with a faster machine, but the calibration tracks this shared VM's drift only
    loosely (eight processes of the same build: the tiny DB-UNet step spread 1.51x raw, 1.31x
    calibrated in one series; 1.27x raw, 1.41x calibrated in another), and a spuriously "faster"
    machine would then fail a build for nothing."""
    if baseline.calibration_ms <= 0 or current.calibration_ms <= 0:
        return 1.0
    return max(1.0, current.calibration_ms / baseline.calibration_ms)


def _what_was_measured(report: BenchReport) -> dict:
    keys = ("steps", "size", "threads", "whole_loops")
    return {"config": report.config, "backend": report.backend, "precision": report.precision,
            **{k: report.settings[k] for k in keys if k in report.settings}}


def check_comparable(baseline: BenchReport, current: BenchReport) -> None:
    """Latencies of a different model, backend, precision, size, step count, thread count or loop form say
    nothing about a regression: refuse instead of reporting one. A setting an older report lacks is not judged."""
    base, cur = _what_was_measured(baseline), _what_was_measured(current)
    differ = [f"{k} {base[k]} -> {cur[k]}" for k in base if k in cur and base[k] != cur[k]]
    if differ:
        raise ConfigError(f"the baseline measured something else ({'; '.join(differ)}); "
                          "compare with the same options or record a new baseline")


def unjudged(baseline: BenchReport, components: tuple[str, ...]) -> list[str]:
    """The components a run would measure that the baseline has no figure for; refused when that is all of them
    (the comparison would judge nothing and pass)."""
    missing = [c for c in components if c not in baseline.results]
    if missing and len(missing) == len(components):
        raise ConfigError(f"the baseline measured {', '.join(baseline.results) or 'nothing'}, this run would measure "
                          f"{', '.join(components)}: nothing to compare; measure the baseline's components or "
                          "record a new baseline")
    return missing


def judge(component: str, base: Timing, current: Timing, tolerance: float, speed: float = 1.0) -> Verdict:
    """The one regression rule (dbunet-bench --compare and the pytest `latency` marker): slower than
    the baseline scaled by `speed` by more than `tolerance` AND by more than the larger noise."""
    expected = base.median_ms * speed
    noise = max(base.noise_ms, current.noise_ms)
    diff = current.median_ms - expected
    return Verdict(component, base.median_ms, current.median_ms, noise,
                   diff > tolerance * expected and diff > noise, speed)


def compare(baseline: BenchReport, current: BenchReport, tolerance: float = 0.10) -> list[Verdict]:
    """A component regressed when its median is slower than the baseline's (scaled by the machine's
    own slowdown, see machine_speed_ratio) by more than `tolerance` AND by more than the measured
    noise (the larger of the two runs' Timing.noise_ms)."""
    check_tolerance(tolerance)
    check_comparable(baseline, current)
    speed = machine_speed_ratio(baseline, current)
    verdicts = []
    for name, base in baseline.results.items():
        if name in current.results:
            verdicts.append(judge(name, base, current.results[name], tolerance, speed))
    return verdicts


def format_verdicts(verdicts: list[Verdict], tolerance: float) -> str:
    lines = [f"{'component':<14} {'baseline ms':>12} {'current ms':>11} {'change':>8} {'noise ms':>9}  verdict"]
    for v in verdicts:
        verdict = "REGRESSED" if v.regressed else "ok"
        lines.append(f"{v.component:<14} {v.baseline_ms:12.2f} {v.current_ms:11.2f} {v.change:+8.1%} "
                     f"{v.noise_ms:9.2f}  {verdict}")
    speed = verdicts[0].machine_speed if verdicts else 1.0
    lines.append(f"(regressed = slower by more than {tolerance:.0%} and by more than the noise, after allowing "
                 f"for the machine running {speed - 1:.0%} slower than at the baseline)")
    return "\n".join(lines)
