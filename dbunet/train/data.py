"""The shapes dataset: a seeded generator of images whose right answer is known.

Each sample is a plain light background with 1 to 3 non-overlapping shapes (circle, square,
triangle) in distinct colors (red, green, blue, yellow), each inside a square box whose side is
20% to 60% of the image side; a prompt naming them ("a red circle and a blue square") and one
phrase per box ("a red circle"). Sample i of a given seed is always the same, so the generator is
the dataset: training draws from seed 0, held-out layouts from other seeds. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dbunet.boxes import Box

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 75, 215),
    "yellow": (235, 195, 25),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (236, 234, 226)
MIN_SIDE, MAX_SIDE = 0.2, 0.6  # box side as a fraction of the image side
MAX_SHAPES = 3
SUPERSAMPLE = 4  # shapes are drawn 4x larger and averaged down: anti-aliased edges

# Every word a prompt can contain: the tokenizer of the shapes preset is learned from these.
VOCABULARY = ["a", "and", *COLORS, *SHAPES]


@dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 normalized

    @property
    def phrase(self) -> str:
        return f"a {self.color} {self.kind}"


@dataclass(frozen=True)
class Layout:
    shapes: tuple[Shape, ...]

    @property
    def prompt(self) -> str:
        phrases = [s.phrase for s in self.shapes]
        return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]

    @property
    def boxes(self) -> tuple[Box, ...]:
        return tuple(Box(*s.box, s.phrase) for s in self.shapes)


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def sample_layout(rng: np.random.Generator, max_shapes: int = MAX_SHAPES) -> Layout:
    """1..max_shapes shapes with distinct colors in non-overlapping boxes (rejection sampling)."""
    count = int(rng.integers(1, max_shapes + 1))
    colors = rng.permutation(list(COLORS))[:count]
    while True:  # a few retries at most: three 60% boxes cannot fit, smaller ones can
        placed: list[tuple[float, float, float, float]] = []
        for _ in range(count):
            for _attempt in range(50):
                side = float(rng.uniform(MIN_SIDE, MAX_SIDE))
                x0, y0 = (float(v) for v in rng.uniform(0.0, 1.0 - side, size=2))
                box = (x0, y0, x0 + side, y0 + side)
                if not any(_overlaps(box, other, 0.02) for other in placed):
                    placed.append(box)
                    break
            else:
                break
        if len(placed) == count:
            kinds = rng.choice(SHAPES, size=count)
            return Layout(tuple(Shape(str(c), str(k), b) for c, k, b in zip(colors, kinds, placed, strict=True)))


def render(layout: Layout, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the layout's shapes filling their boxes on the plain background."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in layout.shapes:
        x0, y0, x1, y1 = (v * big for v in shape.box)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:  # triangle: apex at the top centre, base along the bottom edge
            draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


class ShapesDataset:
    """Sample i of `seed`: (layout, image). Deterministic and unbounded."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed = size, seed

    def layout(self, index: int) -> Layout:
        return sample_layout(np.random.default_rng([self.seed, index]))

    def __getitem__(self, index: int) -> tuple[Layout, np.ndarray]:
        layout = self.layout(index)
        return layout, render(layout, self.size)

    def batch(self, indices) -> tuple[list[Layout], np.ndarray]:
        """Layouts and images as float32 [B,3,H,W] in [-1, 1]."""
        layouts = [self.layout(int(i)) for i in indices]
        images = np.stack([render(lay, self.size) for lay in layouts]).astype(np.float32)
        return layouts, images.transpose(0, 3, 1, 2) / 127.5 - 1.0


HELD_OUT_SEED = 1_000_003  # the quality measurement's layouts; training uses seed 0
