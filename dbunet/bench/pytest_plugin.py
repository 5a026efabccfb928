"""pytest plugin: latency budgets in a user's own tests, against a recorded dbunet-bench baseline.

    @pytest.mark.latency(baseline="baseline.json", component="dbunet_step", tolerance=0.10)
    def test_unet_step_budget(latency, pipe):
        latency(lambda: pipe.stages.denoise_step(*inputs))

The `latency` fixture times the callable (repeat/warmup from the marker, default 10/2) and fails
the test when its median is slower than the baseline component's by more than the tolerance and
the measured noise, exactly as `dbunet-bench --compare` judges. A relative baseline path is taken
from the test file's folder; a missing baseline skips the test with the command that records one.
Registered through the `pytest11` entry point, so installing dbunet enables it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "latency(baseline, component, tolerance=0.10, repeat=10, warmup=2): latency budget against a "
        "dbunet-bench baseline, measured with the `latency` fixture",
    )


@pytest.fixture
def latency(request):
    marker = request.node.get_closest_marker("latency")
    if marker is None or "baseline" not in marker.kwargs or "component" not in marker.kwargs:
        raise pytest.UsageError("the latency fixture needs @pytest.mark.latency(baseline=PATH, component=NAME)")
    from dbunet.bench.baseline import check_tolerance, judge, load_report
    from dbunet.bench.stats import check_counts, measure
    from dbunet.errors import ConfigError

    opts = marker.kwargs
    repeat, warmup = opts.get("repeat", 10), opts.get("warmup", 2)
    try:
        check_counts(repeat, warmup, ("the latency marker's repeat", "the latency marker's warmup"))
        tolerance = check_tolerance(opts.get("tolerance", 0.10), "the latency marker's tolerance")
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    path = Path(opts["baseline"])
    if not path.is_absolute():
        path = Path(request.node.fspath).parent / path
    if not path.is_file():
        pytest.skip(f"no latency baseline at {path}; record one with: dbunet-bench --record {path}")
    component = opts["component"]
    baseline = load_report(path).results.get(component)
    if baseline is None:
        raise pytest.UsageError(f"baseline {path} has no component {component!r}")

    def probe(fn):
        timing = measure(fn, repeat, warmup)
        verdict = judge(component, baseline, timing, tolerance)
        if verdict.regressed:
            pytest.fail(
                f"{component}: median {timing.median_ms:.2f} ms vs baseline {baseline.median_ms:.2f} ms "
                f"({verdict.change:+.0%}), beyond the {tolerance:.0%} tolerance and the "
                f"{verdict.noise_ms:.2f} ms noise",
                pytrace=False,
            )
        return timing

    return probe
