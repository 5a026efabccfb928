"""Box-placement quality of the shapes model, per backend and precision.

Draws held-out layouts from the shapes generator (a seed training never used), generates each
prompt with its boxes, finds every requested shape by its color in the output and reports:

  IoU        requested box vs the bounding box of the largest blob of the requested color
  color      the shape-colored pixels inside the requested box are mostly of the requested color
  shape      the blob's fill of its bounding box is nearest the requested kind's (square 1, circle
             pi/4, triangle 1/2)
  purity     mean RGB distance of a blob's pixels to its palette color (lower: purer color)
  ambiguous  fraction of pixels near no palette or background color (lower: sharper edges)

The same is measured with boxes off (the ablation showing the box constraint places the shapes),
and on the VAE's image before the refiner as well as after it (the refiner's effect).

    python benchmarks/quality.py --artifacts DIR [--layouts 64] [--backends torch ort:fp32 ort:fp16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dbunet import atomic
from dbunet.generation import to_uint8
from dbunet.train.data import BACKGROUND, COLORS, HELD_OUT_SEED, Layout, ShapesDataset

PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)  # class 0: background
COLOR_CLASS = {name: i + 1 for i, name in enumerate(COLORS)}
MATCH = 90.0  # RGB distance within which a pixel counts as a palette color
FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}


def classify(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H,W,3] -> (class per pixel, -1 where no palette color is within MATCH; distance to it)."""
    dist = np.linalg.norm(image[:, :, None, :].astype(np.float32) - PALETTE, axis=-1)  # (H, W, 5)
    cls, best = dist.argmin(-1), dist.min(-1)
    return np.where(best <= MATCH, cls, -1), best


def largest_blob(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected component of a boolean mask (None when the mask is empty)."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        blob, queue = [], deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            blob.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    if not best:
        return None
    out = np.zeros_like(mask)
    ys, xs = zip(*best, strict=True)
    out[list(ys), list(xs)] = True
    return out


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class ShapeScore:
    iou: float
    color_ok: bool
    shape_ok: bool
    purity: float  # NaN when nothing of the color was found


def score_image(image: np.ndarray, layout: Layout) -> tuple[list[ShapeScore], float]:
    """One score per requested shape, and the image's ambiguous-pixel fraction."""
    cls, dist = classify(image)
    h, w = cls.shape
    scores = []
    for shape in layout.shapes:
        want = COLOR_CLASS[shape.color]
        blob = largest_blob(cls == want)
        x0, y0, x1, y1 = shape.box
        inside = cls[int(round(y0 * h)):int(round(y1 * h)), int(round(x0 * w)):int(round(x1 * w))]
        colored = inside[inside > 0]
        color_ok = colored.size >= 0.1 * inside.size and np.bincount(colored, minlength=5).argmax() == want
        if blob is None or blob.sum() < 4:
            scores.append(ShapeScore(0.0, bool(color_ok), False, float("nan")))
            continue
        ys, xs = np.nonzero(blob)
        found = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
        fill = blob.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
        kind = min(FILL, key=lambda k: abs(FILL[k] - fill))
        scores.append(ShapeScore(iou(found, shape.box), bool(color_ok), kind == shape.kind, float(dist[blob].mean())))
    return scores, float((cls == -1).mean())


@dataclass
class Summary:
    iou: float
    color: float
    shape: float
    purity: float
    ambiguous: float
    n_shapes: int
    seconds: float = 0.0
    per_layout_iou: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, results: list[tuple[list[ShapeScore], float]], seconds: float = 0.0) -> Summary:
        shapes = [s for scores, _ in results for s in scores]
        purity = [s.purity for s in shapes if np.isfinite(s.purity)]
        return cls(
            iou=float(np.mean([s.iou for s in shapes])),
            color=float(np.mean([s.color_ok for s in shapes])),
            shape=float(np.mean([s.shape_ok for s in shapes])),
            purity=float(np.mean(purity)) if purity else float("nan"),
            ambiguous=float(np.mean([a for _, a in results])),
            n_shapes=len(shapes),
            seconds=seconds,
            per_layout_iou=[float(np.mean([s.iou for s in scores])) for scores, _ in results],
        )


def held_out_layouts(count: int, seed: int = HELD_OUT_SEED) -> list[Layout]:
    data = ShapesDataset(64, seed=seed)
    return [data.layout(i) for i in range(count)]


def measure(pipe, layouts: list[Layout], boxes: bool = True, **options) -> dict[str, Summary]:
    """Scores of the final image and of the VAE's image before the refiner, over `layouts`."""
    final, before = [], []
    t0 = time.perf_counter()
    for i, layout in enumerate(layouts):
        result = pipe(layout.prompt, boxes=[b.spec() for b in layout.boxes] if boxes else [], seed=i, **options)
        final.append(score_image(result.image, layout))
        before.append(score_image(to_uint8(result.decoded), layout))
    seconds = (time.perf_counter() - t0) / len(layouts)
    return {"final": Summary.of(final, seconds), "before_refiner": Summary.of(before)}


def open_pipeline(spec: str, artifacts: Path):
    """'torch', or 'BACKEND:PRECISION' (ort:fp32, ort:fp16, trt:fp16, openvino:fp32, ...)."""
    if spec == "torch":
        from dbunet.models.pipeline import TorchPipeline

        return TorchPipeline.from_artifacts(artifacts)
    from dbunet.runtime import Pipeline

    backend, _, precision = spec.partition(":")
    return Pipeline.from_artifacts(artifacts, backend=backend, precision=precision or None)


def table(rows: dict[str, dict[str, Summary]]) -> str:
    lines = ["| backend, precision | boxes | IoU | color acc. | shape acc. | before the refiner: IoU, color, shape "
             "| color purity before -> after | ambiguous px before -> after | s/image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        f, b = r["final"], r["before_refiner"]
        backend, precision = name.rsplit(" ", 1)
        lines.append(f"| {backend} | {precision} | {f.iou:.3f} | {f.color:.1%} | {f.shape:.1%} "
                     f"| {b.iou:.3f}, {b.color:.1%}, {b.shape:.1%} | {b.purity:.1f} -> {f.purity:.1f} "
                     f"| {b.ambiguous:.3f} -> {f.ambiguous:.3f} "
                     f"| {f.seconds:.2f} |")
    return "\n".join(lines)


def gallery(pipe, layouts: list[Layout], path: Path, scale: int = 4, columns: int = 4, boxes: bool = True) -> Path:
    """A grid of generated images, upscaled `scale`x (nearest), each requested box outlined in its shape's
    color, the prompt written under it."""
    from PIL import Image, ImageDraw

    tiles = []
    for i, layout in enumerate(layouts):
        result = pipe(layout.prompt, boxes=[b.spec() for b in layout.boxes] if boxes else [], seed=i)
        side = result.image.shape[0] * scale
        tile = Image.new("RGB", (side, side + 28), (255, 255, 255))
        tile.paste(Image.fromarray(result.image).resize((side, side), Image.Resampling.NEAREST))
        draw = ImageDraw.Draw(tile)
        for shape in layout.shapes:
            x0, y0, x1, y1 = (v * side for v in shape.box)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=COLORS[shape.color], width=1)
        words, line = layout.prompt.split(), ""
        lines = []
        for word in words:  # wrap at the tile's width (PIL's default font: ~6 px a character)
            if len(line) + len(word) + 1 > side // 6:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        draw.text((2, side + 1), "\n".join(lines[:2]), fill=(0, 0, 0))
        tiles.append(tile)
    rows = -(-len(tiles) // columns)
    w, h = tiles[0].size
    grid = Image.new("RGB", (columns * w + (columns - 1) * 4, rows * h + (rows - 1) * 4), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * (w + 4), (i // columns) * (h + 4)))
    atomic.write_with(path, lambda p: grid.save(p, format="PNG"))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, required=True,
                   help="a shapes export (dbunet-export --config shapes --fp16)")
    p.add_argument("--layouts", type=int, default=64, help="held-out layouts (default: 64)")
    p.add_argument("--backends", nargs="+", default=["torch", "ort:fp32", "ort:fp16"],
                   help="torch and/or BACKEND:PRECISION (default: torch ort:fp32 ort:fp16)")
    p.add_argument("--ablation", default="ort:fp32", help="the backend also run with boxes off (default: ort:fp32)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--gallery", type=Path,
                   help="also draw the first 8 layouts (ort:fp32, boxes outlined) into this PNG")
    args = p.parse_args(argv)
    layouts = held_out_layouts(args.layouts)
    options = {"steps": args.steps} if args.steps else {}
    rows: dict[str, dict[str, Summary]] = {}
    for spec in args.backends:
        pipe = open_pipeline(spec, args.artifacts)
        rows[f"{spec} on"] = measure(pipe, layouts, boxes=True, **options)
        print(f"{spec}: boxes on  IoU {rows[f'{spec} on']['final'].iou:.3f}", file=sys.stderr, flush=True)
        if spec == args.ablation:
            rows[f"{spec} off"] = measure(pipe, layouts, boxes=False, **options)
            print(f"{spec}: boxes off IoU {rows[f'{spec} off']['final'].iou:.3f}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.gallery:
        gallery(open_pipeline("ort:fp32", args.artifacts), layouts[:8], args.gallery)
    if args.json:
        atomic.write_text(args.json,
                          json.dumps({k: {s: v.__dict__ for s, v in r.items()} for k, r in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
