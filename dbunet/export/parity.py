"""Parity of an exported graph with its PyTorch reference, measured on seeded inputs.

Error measure: max |onnx - torch| divided by max |torch| over each output (relative to the output's
range; a per-element relative error explodes where the reference crosses zero). Tolerances, each
within ~10x of the largest error measured on a real export (onnxruntime 1.31.1, CPU):
  fp32  1e-4  measured: tiny <= 3.2e-6 (VAE decoder), sd15 at 256x256 <= 1.4e-5 (VAE decoder; DB-UNet
              1.1e-6). float32 unit roundoff is 6e-8; reordered sums over the ~100 sequential ops of a
              UNet, and the VAE's 512-channel convolutions, grow it; a wrong op shows as 1e-2 or more.
  fp16  3e-2  measured: tiny <= 4.8e-3 (DB-UNet). float16 unit roundoff is 4.9e-4; it compounds through
              dozens of normalised layers to a few 1e-3, while an overflow or a lost mask gives O(1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dbunet.errors import AccuracyError

TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}


@dataclass
class ParityResult:
    component: str
    precision: str
    max_abs: float
    mean_abs: float
    max_rel: float  # max_abs / max |reference|
    tolerance: float
    finite: bool

    @property
    def passed(self) -> bool:
        return self.finite and self.max_rel <= self.tolerance

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return (f"{self.component:<16} {self.precision}  max abs {self.max_abs:.2e}  mean abs {self.mean_abs:.2e}  "
                f"max rel {self.max_rel:.2e}  (tol {self.tolerance:.0e})  {verdict}")


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a graph once with ONNX Runtime on the CPU, through polygraphy's runner."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING

    with OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"])) as runner:
        out = runner.infer(feeds)
    return [np.asarray(v) for v in out.values()]


def measure(component: str, precision: str, got: list[np.ndarray], want: list[np.ndarray]) -> ParityResult:
    diffs = [np.abs(g.astype(np.float64) - w.astype(np.float64)) for g, w in zip(got, want, strict=True)]
    finite = all(np.isfinite(g).all() for g in got)
    max_abs = max(float(d.max()) for d in diffs)
    mean_abs = float(np.mean([d.mean() for d in diffs]))
    max_rel = max(float(d.max()) / max(float(np.abs(w).max()), 1e-12) for d, w in zip(diffs, want, strict=True))
    return ParityResult(component, precision, max_abs, mean_abs, max_rel, TOLERANCE[precision], finite)


def require(results: list[ParityResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise AccuracyError("parity check failed:\n" + "\n".join(r.line() for r in failed))
