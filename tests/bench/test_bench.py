"""dbunet-bench: the report's schema, record/compare, and that --compare catches a real slowdown."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dbunet import schemas
from dbunet.bench import runner
from dbunet.bench.baseline import compare, format_verdicts, load_report
from dbunet.bench.runner import COMPONENTS, BenchOptions, run_bench
from dbunet.bench.stats import Timing
from dbunet.cli import bench as bench_cli
from dbunet.errors import ConfigError

pytest_plugins = ["pytester"]


def test_smoke_report_schema(tiny_artifacts, tmp_path, capsys):
    """CI's latency smoke: every component measured, the JSON complete; no absolute times judged."""
    out = tmp_path / "r.json"
    assert bench_cli.main(["--artifacts", str(tiny_artifacts), "--repeat", "3", "--warmup", "1", "--steps", "2",
                           "--height", "96", "--json", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == runner.SCHEMA == 2 and data["backend"] == "ort" and data["precision"] == "fp32"
    assert set(data["results"]) == set(COMPONENTS)
    assert data["settings"]["size"] == [96, 128] and data["settings"]["steps"] == 2
    for r in data["results"].values():
        assert len(r["samples_ms"]) == 3 and r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
        assert r["cv"] >= 0
    assert data["peak_rss_mb"] > 0 and data["machine"]["cpu_count"] >= 1 and "onnxruntime" in data["versions"]
    assert "device_memory_mb" in data  # null here: the CPU provider holds no GPU memory
    assert schemas.problem(data, schemas.BENCH_REPORT) is None  # what --compare reads back
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dbunet_step" in capsys.readouterr().out


def _report_dict() -> dict:
    return runner.BenchReport("ort", "fp32", "tiny", {"text_encoder": Timing([1.0, 2.0])}, 100.0).to_dict()


@pytest.mark.parametrize("text,says", [
    ("{}", 'not a dbunet-bench report [(]no "schema" field[)]'),
    ("[1, 2]", 'not a dbunet-bench report [(]no "schema" field[)]'),
    ('{"schema": 1}', "schema 1 is not 2; record a new baseline"),
    (json.dumps({**_report_dict(), "results": {"text_encoder": {"samples_ms": []}}}),
     "results/text_encoder/samples_ms: .. (should be non-empty|is too short)"),
    (json.dumps({**_report_dict(), "machine": "x"}), "machine: 'x' is not of type 'object'"),
    (json.dumps({k: v for k, v in _report_dict().items() if k != "backend"}), "'backend' is a required property"),
    (json.dumps({**_report_dict(), "peak_rss_mb": "lots"}), "peak_rss_mb: 'lots' is not of type 'number'"),
])
def test_a_baseline_that_is_not_a_report_is_refused_in_one_line(tmp_path, text, says):
    """Read back as untrusted input against its JSON Schema (dbunet.schemas.BENCH_REPORT): a list or a wrong
    field was an AttributeError or KeyError traceback before."""
    from dbunet.errors import ConfigError

    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: .*{says}"):
        load_report(path)
    path.write_text(json.dumps(_report_dict()))
    assert load_report(path).results["text_encoder"].median_ms == 1.5


_BENCH = """
import sys, time
from dbunet.cli import bench
from dbunet.runtime.stages import GraphStages
extra = float(sys.argv[1])
if extra:
    original = GraphStages.denoise_step
    def slowed(self, *a):
        end = time.perf_counter() + extra
        while time.perf_counter() < end:  # busy: a sleep would add wake-up jitter of its own
            pass
        return original(self, *a)
    GraphStages.denoise_step = slowed
sys.exit(bench.main(sys.argv[2:]))
"""


def _bench(extra_s: float, *argv) -> subprocess.CompletedProcess:
    # each run in a fresh process, as a user's CI job would run dbunet-bench
    return subprocess.run([sys.executable, "-c", _BENCH, str(extra_s), *argv], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(not os.environ.get("DBUNET_TIMING_TESTS"),
                    reason="timing-sensitive: on a shared 2-core VM the same build measured in separate processes "
                           "spreads up to 1.3-1.4x even after the machine-speed calibration, as much as the 30% "
                           "injected here; set DBUNET_TIMING_TESTS=1 on a quiet machine")
def test_compare_flags_a_30_percent_slowdown_and_not_a_rerun(tiny_artifacts, tmp_path):
    base = tmp_path / "base.json"
    args = ["--artifacts", str(tiny_artifacts), "--repeat", "10", "--warmup", "3", "--components", "dbunet_step",
            "vae_decoder"]
    assert _bench(0, *args, "--record", str(base)).returncode == 0
    rerun = _bench(0, *args, "--compare", str(base), "--tolerance", "0.10")
    assert rerun.returncode == 0 and "REGRESSED" not in rerun.stdout, rerun.stdout

    # the same build with every DB-UNet call made 30% slower
    extra = 0.3 * load_report(base).results["dbunet_step"].median_ms / 1000
    slowed = _bench(extra, *args, "--compare", str(base), "--tolerance", "0.10")
    assert "Traceback" not in slowed.stderr, slowed.stderr  # a crash also exits non-zero
    assert slowed.returncode == bench_cli.EXIT_REGRESSION, slowed.stdout + slowed.stderr
    verdicts = slowed.stdout.split("verdict")[1].splitlines()  # the comparison table follows the timing table
    assert "REGRESSED" in next(line for line in verdicts if line.startswith("dbunet_step"))
    assert "ok" in next(line for line in verdicts if line.startswith("vae_decoder"))


@pytest.mark.parametrize("second_ms, exit_code", [(10.0, 0), (13.0, bench_cli.EXIT_REGRESSION)])
def test_a_suspect_is_measured_again_and_the_runs_judged_are_the_runs_written(tiny_artifacts, tmp_path, monkeypatch,
                                                                             capsys, second_ms, exit_code):
    """--compare measures a regressed component once more and keeps the faster run: a burst of load passes, a real
    slowdown fails. The measurements are set here (the timing test above, which runs them for real, needs a quiet
    machine): before, the table and --json held the first, slower run while the verdict judged the second."""
    from dbunet.bench.baseline import save_report

    def report(ms: float) -> runner.BenchReport:
        return runner.BenchReport("ort", "fp32", "tiny", {"dbunet_step": Timing([ms] * 5)}, 100.0, 2.0)

    base, out = tmp_path / "base.json", tmp_path / "now.json"
    save_report(report(10.0), base)
    runs = iter([report(13.0), report(second_ms)])  # +30%, then the confirmation
    asked = []
    monkeypatch.setattr(runner, "run_bench", lambda options, *more: asked.append(options.components) or next(runs))
    code = bench_cli.main(["--artifacts", str(tiny_artifacts), "--components", "dbunet_step", "--compare", str(base),
                           "--json", str(out)])
    captured = capsys.readouterr()
    assert code == exit_code and asked == [("dbunet_step",), ("dbunet_step",)]
    assert "re-measuring dbunet_step to confirm" in captured.err
    assert load_report(out).results["dbunet_step"].median_ms == second_ms  # the run the verdict judged
    table, verdicts = captured.out.split("verdict")
    assert f"{second_ms:.2f}" in table and (second_ms == 13.0 or "13.00" not in table)
    assert ("REGRESSED" in verdicts) == bool(exit_code)


def test_verdict_needs_both_tolerance_and_noise():
    from dbunet.bench.runner import BenchReport

    def report(samples):
        return BenchReport("ort", "fp32", "tiny", {"x": Timing(samples)}, 1.0, 2.0, {}, {})

    steady = report([10.0, 10.1, 10.0, 10.2, 10.1])
    assert compare(steady, report([13.0, 13.1, 13.0, 13.2, 13.1]))[0].regressed  # +30%, quiet runs
    assert not compare(steady, report([10.5, 10.6, 10.5, 10.4, 10.6]))[0].regressed  # +5%: within tolerance
    noisy = report([10.0, 16.0, 10.5, 15.0, 11.0])
    assert not compare(noisy, report([12.0, 12.5, 11.8, 16.0, 12.2]))[0].regressed  # +11% but inside the noise
    # a machine running 25% slower (its calibration GEMM too) excuses +25%, not +60%
    slow_machine = report([12.5, 12.6, 12.5, 12.7, 12.6])
    slow_machine.calibration_ms = 2.5
    assert not compare(steady, slow_machine)[0].regressed
    slow_machine.results["x"] = Timing([16.0, 16.1, 16.0, 16.2, 16.1])
    assert compare(steady, slow_machine)[0].regressed
    # a faster machine excuses nothing, and does not lower the bar either
    fast_machine = report([11.5, 11.6, 11.5, 11.7, 11.6])
    fast_machine.calibration_ms = 1.6
    verdict = compare(steady, fast_machine)[0]
    assert verdict.regressed and verdict.machine_speed == 1.0
    assert "0% slower" in format_verdicts([verdict], 0.1)


def test_device_memory_is_read_for_this_process_only():
    from dbunet.bench.stats import parse_compute_apps

    listing = "4242, 1536\n77, 900\n4242, 512\n"  # nvidia-smi lists one row per process and context
    assert parse_compute_apps(listing, 4242) == 2048.0
    assert parse_compute_apps(listing, 5) is None
    assert parse_compute_apps("4242, [N/A]\n", 4242) is None
    assert parse_compute_apps("", 4242) is None


def test_compare_refuses_a_baseline_of_other_settings():
    from dbunet.bench.runner import BenchReport
    from dbunet.errors import ConfigError

    def report(size, backend="ort"):
        return BenchReport(backend, "fp32", "tiny", {"x": Timing([10.0, 10.1, 10.0])}, 1.0, 2.0, {}, {},
                           settings={"steps": 8, "size": size, "threads": None, "repeat": 3})
    assert not compare(report([128, 128]), report([128, 128]))[0].regressed
    with pytest.raises(ConfigError, match=r"size \[128, 128\] -> \[256, 256\]"):
        compare(report([128, 128]), report([256, 256]))
    with pytest.raises(ConfigError, match="backend ort -> torch"):
        compare(report([128, 128]), report([128, 128], "torch"))
    whole, per_step, older = (report([128, 128]) for _ in range(3))
    whole.settings["whole_loops"], per_step.settings["whole_loops"] = True, False
    with pytest.raises(ConfigError, match="whole_loops False -> True"):
        compare(per_step, whole)
    assert not compare(older, whole)[0].regressed  # a report from before the setting: not judged on it


def test_whole_loops_are_measured_when_asked_and_a_baseline_of_the_other_form_is_refused(tiny_artifacts, tmp_path,
                                                                                          capsys, monkeypatch):
    base = ["--artifacts", str(tiny_artifacts), "--backend", "ort", "--components", "dbunet_step", "pipeline",
            "--repeat", "1", "--warmup", "0", "--steps", "2"]
    assert bench_cli.main([*base, "--whole-loops", "--record", str(tmp_path / "whole.json")]) == 0
    assert json.loads((tmp_path / "whole.json").read_text())["settings"]["whole_loops"] is True
    capsys.readouterr()
    calls = []
    monkeypatch.setattr(runner, "measure", lambda *a, **k: calls.append(a) or Timing([1.0, 1.0, 1.0]))
    assert bench_cli.main([*base, "--compare", str(tmp_path / "whole.json")]) == 2  # ONNX Runtime's CPU default
    out, err = capsys.readouterr()
    assert "whole_loops True -> False" in err
    assert not calls and "milliseconds per call" not in out  # refused before the first timed call, not after all


def test_bad_options_are_user_errors(tiny_artifacts, tmp_path, capsys):
    assert bench_cli.main(["--artifacts", str(tiny_artifacts), "--compare", str(tmp_path / "none.json")]) == 2
    assert "--record" in capsys.readouterr().err
    assert bench_cli.main(["--artifacts", str(tiny_artifacts), "--backend", "trt", "--repeat", "1"]) == 2
    assert "--backend trt needs tensorrt" in capsys.readouterr().err  # not installed here
    assert bench_cli.main(["--artifacts", str(tiny_artifacts), "--height", "100", "--repeat", "1"]) == 2
    assert "100" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^repeat must be an integer >= 1, got 0$"):
        BenchOptions(repeat=0)
    with pytest.raises(ConfigError, match=r"^warmup must be an integer >= 0, got 1.5$"):
        BenchOptions(warmup=1.5)  # before: accepted, and range() failed with a TypeError in the measurement
    with pytest.raises(ConfigError, match=r"^repeat must be an integer >= 1, got np.True_$"):
        BenchOptions(repeat=np.True_)
    assert BenchOptions(repeat=np.int64(3), warmup=np.uint8(0)).repeat == 3  # NumPy's integers, as in the API


def _latency_plugin() -> tuple[str, ...]:
    """Where dbunet is installed, the plugin comes in through its pytest11 entry point, as in a user's suite (so a
    broken entry point fails here); a source tree on PYTHONPATH (the GPU machine's way) has no entry point, so
    there it is named."""
    from importlib import metadata

    try:
        metadata.distribution("dbunet")
    except metadata.PackageNotFoundError:
        return ("-p", "dbunet.bench.pytest_plugin")
    return ()


def test_latency_marker_in_a_users_suite(pytester, tiny_artifacts, tmp_path):
    baseline = tmp_path / "base.json"
    from dbunet.bench.baseline import save_report

    save_report(run_bench(BenchOptions(tiny_artifacts, components=("vae_decoder",), repeat=3, warmup=1)), baseline)
    pytester.makepyfile(f"""
        import time
        import pytest
        from dbunet.runtime import Pipeline

        pipe = Pipeline.from_artifacts({str(tiny_artifacts)!r})
        import numpy as np
        z = np.zeros((1, 4, 16, 16), dtype=np.float32)

        # a generous budget: this checks the plugin's flow, not how steady this machine is
        @pytest.mark.latency(baseline={str(baseline)!r}, component="vae_decoder", repeat=5, tolerance=1.0)
        def test_within_budget(latency):
            latency(lambda: pipe.stages.decode(z))

        @pytest.mark.latency(baseline={str(baseline)!r}, component="vae_decoder", repeat=5)
        def test_over_budget(latency):
            latency(lambda: (pipe.stages.decode(z), time.sleep(0.2)))

        @pytest.mark.latency(baseline="missing.json", component="vae_decoder")
        def test_no_baseline(latency):
            latency(lambda: None)
    """)
    result = pytester.runpytest(*_latency_plugin())
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*vae_decoder: median*beyond the 10% tolerance*"])  # +200 ms on ~15 ms


def test_latency_marker_options_that_judge_nothing_are_refused(pytester, tiny_artifacts, tmp_path):
    # before: tolerance=float("nan") passed every slowdown (no comparison with NaN is true), and repeat=0 ended in
    # statistics' error about an empty median
    baseline = tmp_path / "base.json"
    from dbunet.bench.baseline import save_report

    save_report(run_bench(BenchOptions(tiny_artifacts, components=("vae_decoder",), repeat=1, warmup=0)), baseline)
    pytester.makepyfile(f"""
        import time
        import pytest

        @pytest.mark.latency(baseline={str(baseline)!r}, component="vae_decoder", tolerance=float("nan"))
        def test_nan_tolerance(latency):
            latency(lambda: time.sleep(0.5))

        @pytest.mark.latency(baseline={str(baseline)!r}, component="vae_decoder", tolerance=-0.5)
        def test_negative_tolerance(latency):
            latency(lambda: None)

        @pytest.mark.latency(baseline={str(baseline)!r}, component="vae_decoder", repeat=0)
        def test_no_repeat(latency):
            latency(lambda: None)

        @pytest.mark.latency(baseline={str(baseline)!r}, component="vae_decoder", warmup=1.5)
        def test_fractional_warmup(latency):
            latency(lambda: None)
    """)
    result = pytester.runpytest(*_latency_plugin())
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*the latency marker's tolerance must be a fraction in 0..10*got nan*",
                                 "*the latency marker's tolerance must be a fraction in 0..10*got -0.5*",
                                 "*the latency marker's repeat must be an integer >= 1, got 0*",
                                 "*the latency marker's warmup must be an integer >= 0, got 1.5*"],
                                consecutive=False)


def test_a_plot_without_matplotlib_is_refused_before_the_measurement(tiny_artifacts, tmp_path, monkeypatch, capsys):
    # before: the whole measurement ran, then --plot said matplotlib was missing and the report was lost
    import sys

    from dbunet.bench import runner

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as where the `bench` extra is not installed
    monkeypatch.setattr(runner, "run_bench", lambda *a, **k: pytest.fail("measured before refusing"))
    assert bench_cli.main(["--artifacts", str(tiny_artifacts), "--plot", str(tmp_path / "p.png")]) == 2
    assert capsys.readouterr().err == 'error: --plot needs matplotlib (pip install -e ".[bench]")\n'


def test_components_the_baseline_lacks_are_named_as_not_judged(tiny_artifacts, tmp_path, capsys):
    base = tmp_path / "base.json"
    args = ["--artifacts", str(tiny_artifacts), "--repeat", "2", "--warmup", "0", "--tolerance", "10"]
    assert bench_cli.main([*args, "--components", "text_encoder", "--record", str(base)]) == 0
    capsys.readouterr()
    assert bench_cli.main([*args, "--components", "text_encoder", "vae_decoder", "--compare", str(base)]) == 0
    out = capsys.readouterr().out
    assert "text_encoder" in out.split("baseline ms")[1]  # judged
    assert out.rstrip().endswith("not in the baseline, so not judged: vae_decoder")  # said, not passed in silence


@pytest.mark.parametrize(("args", "says"), [
    (["--steps", "0"], "steps must be an integer in 1..1000, got 0"),
    (["--height", "4096", "--width", "64"], "height 4096 is beyond this model's maximum"),
])
def test_a_bad_size_or_step_count_is_refused_before_any_graph_loads(tiny_artifacts, capsys, monkeypatch, args, says):
    """Checked against the manifest's model first: it had waited for every session to load (3.5 s for the tiny
    model on ONNX Runtime, 13 s on the PyTorch reference)."""
    monkeypatch.setattr(runner.backends, "open_pipeline", lambda *a, **k: pytest.fail("a pipeline was opened"))
    code = bench_cli.main(["--artifacts", str(tiny_artifacts), *args])
    said = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(said) == 1 and said[0].startswith("error: ") and says in said[0], said
