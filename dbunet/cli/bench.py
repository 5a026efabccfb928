"""dbunet-bench: latency of each component and of the whole pipeline; baselines and regressions."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dbunet import backends
from dbunet.cli.common import Parser, ProgressBar, add_precision, add_whole_loops, check_output, guarded, path_arg
from dbunet.errors import InputError

DESCRIPTION = """Measure per-component latency (text encoder, one DB-UNet step, VAE decode, one refiner
step, the whole pipeline): median, p90, min, max, coefficient of variation, peak RSS. Record a
baseline and compare later runs against it: exit status 1 when a component got slower than the
tolerance and the measured noise allow."""

EXIT_REGRESSION = 1


def parser() -> argparse.ArgumentParser:
    from dbunet.bench.runner import COMPONENTS

    p = Parser(prog="dbunet-bench", description=DESCRIPTION)
    what = p.add_argument_group("what to measure")
    what.add_argument("--artifacts", type=path_arg, default=Path("dbunet-artifacts"), help="default: dbunet-artifacts")
    what.add_argument("--backend", choices=backends.CHOICES, default=backends.DEFAULT, help=backends.describe())
    add_precision(what)
    what.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS), metavar="NAME",
                      help=f"any of {', '.join(COMPONENTS)} (default: all)")
    what.add_argument("--steps", type=int, help="denoising steps of the pipeline run (default: the model's)")
    what.add_argument("--height", type=int, help="image height (default: the model's)")
    what.add_argument("--width", type=int, help="image width (default: the model's)")
    what.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    add_whole_loops(what)
    how = p.add_argument_group("how")
    how.add_argument("--repeat", type=int, default=10, help="timed calls per component (default: 10)")
    how.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=path_arg, help="write the report here")
    out.add_argument("--record", type=path_arg, metavar="BASELINE", help="write the report as a baseline")
    out.add_argument("--compare", type=path_arg, metavar="BASELINE", help="compare against a recorded baseline")
    out.add_argument("--tolerance", type=float, default=0.10, help="allowed slowdown with --compare (default: 0.10)")
    out.add_argument("--plot", type=path_arg, help="bar chart of the per-stage breakdown (PNG)")
    return p


def _table(report) -> str:
    lines = [f"{report.config} on {report.backend}/{report.precision}, {report.machine['processor']} "
             f"({report.machine['cpu_count']} cores); peak RSS {report.peak_rss_mb:.0f} MB"
             + (f", GPU memory {report.device_memory_mb:.0f} MB" if report.device_memory_mb is not None else ""),
             f"{'component':<14} {'median':>9} {'p90':>9} {'min':>9} {'max':>9} {'cv':>6}"]
    for name, t in report.results.items():
        lines.append(f"{name:<14} {t.median_ms:9.2f} {t.p90_ms:9.2f} {t.min_ms:9.2f} {t.max_ms:9.2f} {t.cv:6.1%}")
    lines.append("(milliseconds per call)")
    return "\n".join(lines)


def check_bench_options(args) -> None:
    """What would fail only after the measurement is refused before it: a tolerance that is not a fraction
    (nan passes every slowdown), report paths that cannot be written, a chart that cannot be drawn, and two of
    the files (the baseline among them) that are one."""
    from dbunet.bench.baseline import check_tolerance
    from dbunet.bench.stats import check_counts

    check_tolerance(args.tolerance, "--tolerance")
    check_counts(args.repeat, args.warmup, ("--repeat", "--warmup"))
    if args.plot is not None:
        from dbunet.bench.plot import check_plot

        check_plot(args.components)
    for flag, path, suffix in (("--json", args.json, None), ("--record", args.record, None),
                               ("--plot", args.plot, ".png")):
        if path is not None:
            check_output(Path(path), flag, suffix, artifacts=args.artifacts)
    files = [(flag, Path(path)) for flag, path in (("--compare", args.compare), ("--record", args.record),
                                                   ("--json", args.json), ("--plot", args.plot)) if path is not None]
    for i, (flag, path) in enumerate(files):
        for other, other_path in files[i + 1:]:
            if path.resolve() == other_path.resolve():
                why = (": the new report would replace the baseline it is compared with, and a regression would "
                       "become the next baseline" if flag == "--compare" else "")
                raise InputError(f"{flag} and {other} both name {path}{why}; give each its own file")


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_bench_options(args)
    from dbunet.bench.baseline import check_comparable, compare, format_verdicts, load_report, save_report, unjudged
    from dbunet.bench.runner import BenchOptions, run_bench

    baseline = load_report(args.compare) if args.compare else None  # fail early on a bad baseline
    missing = unjudged(baseline, tuple(args.components)) if baseline is not None else []
    options = BenchOptions(args.artifacts, args.backend, args.precision, tuple(args.components), args.steps,
                           args.height, args.width, args.repeat, args.warmup, args.threads, args.whole_loops)
    report = run_bench(options, ProgressBar(),  # a baseline of something else is refused before any timing
                       None if baseline is None else lambda plan: check_comparable(baseline, plan))
    if baseline is not None:
        verdicts = compare(baseline, report, args.tolerance)
        suspects = tuple(v.component for v in verdicts if v.regressed)
        if suspects:
            # confirm before failing a build: measure the suspects once more and keep the faster run, so a passing
            # burst of load on a shared machine does not read as a regression; before anything is printed or
            # written, so the table, the files and the verdicts all show the runs judged
            print(f"re-measuring {', '.join(suspects)} to confirm", file=sys.stderr)
            again = run_bench(dataclasses.replace(options, components=suspects))
            for name in suspects:
                if again.results[name].median_ms < report.results[name].median_ms:
                    report.results[name] = again.results[name]
            verdicts = compare(baseline, report, args.tolerance)
    print(_table(report))
    if report.backend == "trt" and report.details:
        from dbunet.bench.tensorrt import format_figures

        print(format_figures(report.details))
    for path in (args.json, args.record):
        if path:
            save_report(report, path)
            print(f"wrote {path}")
    if args.plot:
        from dbunet.bench.plot import plot_reports

        plot_reports([report], args.plot)
        print(f"wrote {args.plot}")
    if baseline is not None:
        print(format_verdicts(verdicts, args.tolerance))
        if missing:
            print(f"not in the baseline, so not judged: {', '.join(missing)}")
        if any(v.regressed for v in verdicts):
            print("latency regression", file=sys.stderr)
            return EXIT_REGRESSION
    return 0


if __name__ == "__main__":
    sys.exit(main())
