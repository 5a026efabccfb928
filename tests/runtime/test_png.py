"""The --draw-boxes overlay: outlines every box, and writes a phrase only where it fits inside its box."""

import numpy as np

from dbunet.boxes import Box
from dbunet.generation import GenerationResult
from dbunet.request import GenerationRequest
from dbunet.runtime.png import draw_boxes


def _overlay(size: int, box: Box) -> np.ndarray:
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    result = GenerationResult(image=image, request=GenerationRequest("p", boxes=(box,), height=size, width=size))
    return np.asarray(draw_boxes(image, result))


def _changed(a: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> int:
    return int((a[y0:y1, x0:x1] != 255).any(-1).sum())


def test_label_drawn_where_it_fits():
    out = _overlay(512, Box(0.1, 0.1, 0.9, 0.5, "a red circle"))
    # inside the 4-px outline (x, y >= 56), the label's pixels
    assert _changed(out, 56, 70, 56, 200) > 20


def test_label_left_out_where_it_would_cover_the_image():
    out = _overlay(64, Box(0.1, 0.1, 0.45, 0.5, "a red circle"))
    # the outline is drawn, nothing inside it and nothing outside
    assert _changed(out, 6, 7, 6, 28) > 0
    assert _changed(out, 8, 30, 8, 27) == 0
    assert _changed(out, 34, 64, 0, 64) == 0 and _changed(out, 0, 64, 30, 64) == 0
