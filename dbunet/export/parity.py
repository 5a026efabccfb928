"""Parity of an exported graph with its PyTorch reference, measured on seeded inputs.

Error measure: max |onnx - torch| divided by max |torch| over each output (relative to the output's
range; a per-element relative error explodes where the reference crosses zero). Tolerances, each
within ~10x of the largest error measured on a real export (onnxruntime 1.31.1, CPU):
  fp32  1e-4  measured: tiny <= 3.2e-6 (VAE decoder), sd15 at 256x256 <= 1.4e-5 (VAE decoder; DB-UNet
              1.1e-6). float32 unit roundoff is 6e-8; reordered sums over the ~100 sequential ops of a
              UNet, and the VAE's 512-channel convolutions, grow it; a wrong op shows as 1e-2 or more.
        x pixels / 256^2 beyond 256x256, at most 5e-3, the pixels of a graph's largest spatial tensor (the
              VAE's images, the UNet's latents; dbunet.export.specs.traced_pixels): ONNX Runtime's CPU
              InstanceNormalization (PyTorch's GroupNorm, exported) sums each group in one running float32
              sum, so its error grows with the group's size. Measured (onnxruntime 1.32.0):
              a GroupNorm(32, 128) alone, against float64, 9.3e-7 at 128x128 and 1.4e-5 at 512x512 while
              PyTorch's stays 1.3e-7; the VAE decoder, tiny 3.2e-6 / 9.9e-6 / 4.7e-5 / 1.6e-4 / 4.0e-4 at
              128^2 / 256^2 / 512^2 / 4096x128 / 1024^2 (1.6e-3 allowed there), sd15 2.6e-4 at 1024x1024,
              its maximum (not measured beyond). ONNX Runtime's LayerNormalization sums accurately (4e-8 at
              1M elements) but ran 2.5-3.6x slower, so the graphs keep InstanceNormalization. The ceiling
              stays 2x below the 1e-2 of a wrong op. An 8-bit image shows none of it (4e-4 of the range is
              a tenth of a level).
  fp16  3e-2  measured: tiny <= 4.8e-3 (DB-UNet). float16 unit roundoff is 4.9e-4; it compounds through
              dozens of normalised layers to a few 1e-3, while an overflow or a lost mask gives O(1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dbunet import releases
from dbunet.errors import AccuracyError, ExportError

TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}
FP32_BASE_PIXELS = 256 * 256  # the FP32 tolerance holds up to this traced size, then grows with the pixels
FP32_CEILING = 5e-3


def tolerance(precision: str, pixels: int = 0) -> float:
    """The tolerance of a graph checked in `precision` whose largest spatial tensor has `pixels` positions as
    traced (0: none, the text encoders)."""
    if precision != "fp32" or pixels <= FP32_BASE_PIXELS:
        return TOLERANCE[precision]
    return min(FP32_CEILING, TOLERANCE["fp32"] * pixels / FP32_BASE_PIXELS)


@dataclass
class ParityResult:
    component: str
    precision: str
    max_abs: float
    mean_abs: float
    max_rel: float  # max_abs / max |reference|
    tolerance: float
    finite: bool
    # the same graph as the ONNX Runtime backend runs it, its attentions rewritten (None: it has none), and how many
    # attentions of each form were rewritten (dbunet.onnx_attention)
    rewritten: ParityResult | None = None
    attention: dict[str, int] | None = None

    @property
    def passed(self) -> bool:
        return self.finite and self.max_rel <= self.tolerance and (self.rewritten is None or self.rewritten.passed)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("rewritten", "attention")} | {"passed": self.passed}
        if self.rewritten is not None:
            d["onnxruntime"] = self.rewritten.to_dict() | {"attention": self.attention}
        return d

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        text = (f"{self.component:<16} {self.precision}  max abs {self.max_abs:.2e}  mean abs {self.mean_abs:.2e}  "
                f"max rel {self.max_rel:.2e}  (tol {_short(self.tolerance)})  {verdict}")
        if self.rewritten is not None:
            text += (f"\n  {'':<16} {self.precision}  as ONNX Runtime runs it ({sum(self.attention.values())} "
                     f"attentions as MultiHeadAttention): max rel {self.rewritten.max_rel:.2e}")
        return text


def _short(value: float) -> str:
    """1e-04, 1.6e-03: one digit where one says it exactly."""
    return f"{value:.0e}" if float(f"{value:.0e}") == value else f"{value:.1e}"


def require_parity_runner() -> None:
    """polygraphy, whose ONNX Runtime runner the parity check uses, installed and recent enough."""
    releases.require("polygraphy", ExportError, "the export's parity check", "export")


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a graph once with ONNX Runtime on the CPU, through polygraphy's runner."""
    require_parity_runner()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING

    with OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"])) as runner:
        out = runner.infer(feeds)
    return [np.asarray(v) for v in out.values()]


def run_rewritten(path: str | Path, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, int]] | None:
    """Run a graph as the ONNX Runtime backend runs it, each attention rewritten into MultiHeadAttention
    (dbunet.onnx_attention); None where it has none to rewrite. Returns (outputs, attentions rewritten by form)."""
    import onnxruntime as ort

    from dbunet.onnx_attention import load_rewritten

    options = ort.SessionOptions()
    options.log_severity_level = 3
    data, report = load_rewritten(path, options)
    if data is None:
        return None
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, feeds)], dict(report.fused)


def measure(component: str, precision: str, got: list[np.ndarray], want: list[np.ndarray],
            rewritten: tuple[list[np.ndarray], dict[str, int]] | None = None, pixels: int = 0) -> ParityResult:
    """Parity of `got` with `want`, and of the rewritten graph's outputs where given (run_rewritten), judged
    by the tolerance of `precision` at `pixels` (tolerance())."""
    result = _measure(component, precision, got, want, pixels)
    if rewritten is not None:
        result.rewritten = _measure(component, precision, rewritten[0], want, pixels)
        result.attention = rewritten[1]
    return result


def _measure(component: str, precision: str, got: list[np.ndarray], want: list[np.ndarray],
             pixels: int) -> ParityResult:
    diffs = [np.abs(g.astype(np.float64) - w.astype(np.float64)) for g, w in zip(got, want, strict=True)]
    finite = all(np.isfinite(g).all() for g in got)
    max_abs = max(float(d.max()) for d in diffs)
    mean_abs = float(np.mean([d.mean() for d in diffs]))
    max_rel = max(float(d.max()) / max(float(np.abs(w).max()), 1e-12) for d, w in zip(diffs, want, strict=True))
    return ParityResult(component, precision, max_abs, mean_abs, max_rel, tolerance(precision, pixels), finite)


def require(results: list[ParityResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise AccuracyError("parity check failed:\n" + "\n".join(r.line() for r in failed))
