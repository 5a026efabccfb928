"""The shapes generator is the dataset: deterministic, within its stated bounds, and scorable."""

import numpy as np
import pytest
from bench_scripts import benchmark_script

from dbunet.train.data import COLORS, MAX_SIDE, MIN_SIDE, SHAPES, VOCABULARY, ShapesDataset, render


@pytest.fixture(scope="module")
def quality():
    with benchmark_script("quality") as module:
        yield module


def test_same_index_same_sample_other_seed_other_sample():
    a, b = ShapesDataset(64, seed=0), ShapesDataset(64, seed=1)
    assert a.layout(7) == ShapesDataset(64, seed=0).layout(7)
    np.testing.assert_array_equal(a[7][1], ShapesDataset(64, seed=0)[7][1])
    assert a.layout(7) != b.layout(7) and a.layout(7) != a.layout(8)


def test_layouts_keep_the_stated_bounds():
    data = ShapesDataset(64, seed=3)
    counts = set()
    for i in range(300):
        layout = data.layout(i)
        counts.add(len(layout.shapes))
        colors = [s.color for s in layout.shapes]
        assert len(set(colors)) == len(colors) and set(colors) <= set(COLORS)
        for s in layout.shapes:
            x0, y0, x1, y1 = s.box
            assert s.kind in SHAPES and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert MIN_SIDE <= x1 - x0 <= MAX_SIDE and abs((x1 - x0) - (y1 - y0)) < 1e-9
            assert s.phrase in layout.prompt and s.phrase == f"a {s.color} {s.kind}"
        for i_, a in enumerate(layout.shapes):
            for b in layout.shapes[i_ + 1:]:  # no two boxes overlap
                assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
        assert set(layout.prompt.replace(",", "").split()) <= set(VOCABULARY)
    assert counts == {1, 2, 3}


def test_render_puts_each_color_in_its_box():
    data = ShapesDataset(64, seed=5)
    for i in range(20):
        layout, image = data[i]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        for s in layout.shapes:  # the box centre lies inside every shape kind (triangle: lower half)
            x = int((s.box[0] + s.box[2]) / 2 * 64)
            y = int((s.box[1] + 3 * s.box[3]) / 4 * 64)
            assert np.abs(image[y, x].astype(int) - COLORS[s.color]).max() < 30, (s, image[y, x])


def test_scorer_finds_rendered_shapes_and_rejects_misplaced_ones(quality):
    layouts = quality.held_out_layouts(60)
    right = quality.Summary.of([quality.score_image(render(lay, 64), lay) for lay in layouts])
    # anti-aliased edges fall outside the colour match, so a perfect image scores ~0.93, not 1
    assert right.iou > 0.9 and right.color == 1.0 and right.shape > 0.95
    wrong = quality.Summary.of([quality.score_image(render(layouts[(i + 1) % 60], 64), lay)
                                for i, lay in enumerate(layouts)])
    assert wrong.iou < 0.15 and wrong.color < 0.4
    blank = np.full((64, 64, 3), 236, dtype=np.uint8)
    scores, _ = quality.score_image(blank, layouts[0])
    assert all(s.iou == 0 and not s.color_ok for s in scores)
