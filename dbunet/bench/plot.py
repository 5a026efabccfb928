"""A bar chart of the per-stage breakdown (matplotlib, optional: the `bench` extra)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dbunet import atomic
from dbunet.bench.runner import BenchReport
from dbunet.errors import ConfigError
from dbunet.releases import install


def stages(components: Iterable[str]) -> list[str]:
    """The bars of the chart: every component but the whole pipeline, which is their sum and more."""
    return [c for c in components if c != "pipeline"]


def check_plot(components: Iterable[str]) -> None:
    """What a chart needs, checked before the measurement it would draw: matplotlib, and a stage to draw."""
    _pyplot()
    if not stages(components):
        raise ConfigError("--plot draws the per-stage breakdown, and the pipeline alone has no stages: add "
                          "components to --components or leave --plot out")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(f"--plot needs matplotlib ({install('bench')})") from None
    return plt


def plot_reports(reports: list[BenchReport], path: str | Path, title: str = "") -> Path:
    plt = _pyplot()
    components = stages(reports[0].results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(reports)
    for i, r in enumerate(reports):
        xs = [j + i * width for j in range(len(components))]
        med = [r.results[c].median_ms for c in components]
        err = [[m - r.results[c].min_ms for m, c in zip(med, components, strict=True)],
               [r.results[c].p90_ms - m for m, c in zip(med, components, strict=True)]]
        ax.bar(xs, med, width, yerr=err, capsize=3, label=f"{r.backend}/{r.precision}")
    ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(components))], components)
    ax.set_ylabel("ms per call (median; bars: min to p90)")
    ax.set_title(title or f"{reports[0].config}: per-stage latency")
    ax.legend()
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return Path(path)
