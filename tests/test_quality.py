"""Quality regression: the trained shapes model still puts the requested shapes in their boxes.

A few held-out layouts at few steps, on ONNX Runtime FP32 and FP16, scored by benchmarks/quality.py
(shape found by its color, IoU of its bounding box with the requested box). Bounds are set below
the figures measured when the weights were trained (in the comments), so an export, FP16 conversion
or runtime change that moves the shapes fails here even when every graph still matches its
reference within tolerance. Skips when the shapes weights are not in the checkout.
"""

import pytest
from bench_scripts import benchmark_script

from dbunet.config import shapes
from dbunet.models.cascade import shipped_model_dir

LAYOUTS, STEPS = 8, 10  # 11 shapes; ~15 s in all on a 2-core CPU after the export

# Measured on these 8 layouts with the shipped weights (ORT, 2-core x86-64 CPU): FP32 IoU 0.862, color 100%;
# FP16 IoU 0.863; boxes off IoU 0.125. The 64-layout table at default steps is in the README.
MIN_IOU = 0.75  # the floor is 0.6 at 64 layouts; 8 layouts vary more, so a margin, not the floor
MIN_COLOR = 0.9  # one wrongly colored shape of 11 still passes, two fail
MAX_FP16_IOU_GAP = 0.03  # the acceptance bound; measured 0.001
MIN_ABLATION_GAP = 0.4  # measured 0.74; the acceptance asks 0.2 at 64 layouts

pytestmark = pytest.mark.skipif(shipped_model_dir(shapes()) is None,
                                reason="the trained shapes weights (dbunet/presets/shapes) are not in this checkout")


@pytest.fixture(scope="module")
def quality():
    with benchmark_script("quality") as module:
        yield module


@pytest.fixture(scope="module")
def shapes_artifacts(request, tmp_path_factory):
    """The shapes model exported with --fp16. The README's main job exports just that (its default model), so its
    artifacts where it runs in this session; an export of our own where it cannot (dbunet not installed)."""
    from readme_job import scripts_dir

    from dbunet.export.exporter import ExportOptions, export
    from dbunet.manifest import Manifest

    if scripts_dir() is not None:
        artifacts = request.getfixturevalue("readme_main_job") / "dbunet-artifacts"
        manifest = Manifest.read(artifacts)
        if manifest.config == shapes() and "fp16" in manifest.precisions():
            return artifacts
    out = tmp_path_factory.mktemp("shapes-artifacts")
    export(ExportOptions(config="shapes", out=out, fp16=True), report=lambda line: None)
    return out


@pytest.fixture(scope="module")
def scores(quality, shapes_artifacts):
    from dbunet.runtime import Pipeline

    layouts = quality.held_out_layouts(LAYOUTS)
    out = {}
    for precision in ("fp32", "fp16"):
        pipe = Pipeline.from_artifacts(shapes_artifacts, backend="ort", precision=precision)
        out[precision] = quality.measure(pipe, layouts, steps=STEPS)["final"]
    pipe = Pipeline.from_artifacts(shapes_artifacts, backend="ort", precision="fp32")
    out["fp32 boxes off"] = quality.measure(pipe, layouts, boxes=False, steps=STEPS)["final"]
    return out


def test_fp32_places_and_colors_the_shapes(scores):
    s = scores["fp32"]
    assert s.iou >= MIN_IOU and s.color >= MIN_COLOR, (s.iou, s.color)


def test_fp16_stays_with_fp32(scores):
    assert abs(scores["fp16"].iou - scores["fp32"].iou) <= MAX_FP16_IOU_GAP, (scores["fp16"].iou, scores["fp32"].iou)
    assert scores["fp16"].color >= MIN_COLOR


def test_the_boxes_are_what_places_the_shapes(scores):
    assert scores["fp32"].iou - scores["fp32 boxes off"].iou >= MIN_ABLATION_GAP
