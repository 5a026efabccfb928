"""Loss curves from a training run's loss.csv: one panel per stage, raw and smoothed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dbunet import atomic


def read_losses(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stage -> (steps, losses); a step logged twice (a resumed run) keeps its last value."""
    rows: dict[str, dict[int, float]] = {}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["stage"], {})[int(row["step"])] = float(row["loss"])
    return {stage: (np.array(sorted(v)), np.array([v[k] for k in sorted(v)])) for stage, v in rows.items()}


def plot_losses(csv_path: Path, png_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = read_losses(csv_path)
    fig, axes = plt.subplots(1, max(1, len(losses)), figsize=(4.2 * max(1, len(losses)), 3.2), squeeze=False)
    for ax, (stage, (steps, values)) in zip(axes[0], losses.items(), strict=True):
        ax.plot(steps, values, color="0.75", linewidth=0.6, label="per step")
        window = max(1, len(values) // 50)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window}")
        ax.set_yscale("log")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    atomic.write_with(png_path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return png_path
