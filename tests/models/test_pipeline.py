import numpy as np
import pytest

from dbunet.boxes import Box
from dbunet.errors import InputError
from dbunet.models.pipeline import TorchPipeline


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return TorchPipeline(tiny_model)


def test_default_image_is_uint8_rgb_and_bit_identical_for_a_seed(pipe):
    kwargs = dict(boxes=["0.1,0.1,0.6,0.7:a cat"], seed=7)
    a = pipe("a photo of a cat", **kwargs)
    b = pipe("a photo of a cat", **kwargs)
    d = pipe.config.defaults
    assert a.image.dtype == np.uint8 and a.image.shape == (d.height, d.width, 3)
    assert np.array_equal(a.image, b.image)
    assert a.image.std() > 1  # not a constant image
    assert set(a.timings) >= {"text", "denoise", "vae", "refiner", "total"}
    assert len(a.step_times) == d.steps


def test_seed_prompt_and_boxes_each_change_the_image(pipe):
    base = pipe("a photo of a cat", seed=1, steps=3).image
    assert not np.array_equal(base, pipe("a photo of a cat", seed=2, steps=3).image)
    assert not np.array_equal(base, pipe("a red house", seed=1, steps=3).image)
    assert not np.array_equal(base, pipe("a photo of a cat", seed=1, steps=3, boxes=[Box(0, 0, 0.5, 0.5, "cat")]).image)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_every_scheduler_runs(pipe, scheduler):
    out = pipe("a dog", seed=0, steps=3, scheduler=scheduler, height=64, width=64, refiner_steps=1)
    assert out.image.shape == (64, 64, 3)


def test_refiner_can_be_skipped_and_changes_the_image(pipe):
    raw = pipe("a dog", seed=0, steps=2, refiner_steps=0).image
    refined = pipe("a dog", seed=0, steps=2, refiner_steps=2).image
    assert not np.array_equal(raw, refined)


def test_progress_reports_every_step(pipe):
    seen = []
    pipe("a dog", seed=0, steps=3, refiner_steps=2, progress=lambda stage, i, n: seen.append((stage, i, n)))
    assert seen == [("denoise", 1, 3), ("denoise", 2, 3), ("denoise", 3, 3), ("refiner", 1, 2), ("refiner", 2, 2)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "steps"),
        (dict(guidance_scale=float("nan")), "guidance"),
        (dict(height=100), "multiple of 8"),
        (dict(width=64.0), r"^width must be an integer, got 64\.0$"),  # as JSON may send it
        (dict(boxes=["0.1,0.1,0.5"]), "malformed box"),
        (dict(boxes=["0.5,0.1,0.2,0.9:x"]), "x1 > x0"),
        (dict(boxes=["0,0,1.5,1:x"]), r"\[0, 1\]"),
        (dict(boxes=["0,0,1,1:x"] * 31), "at most 30"),
        (dict(scheduler="unipc"), "valid: ddim"),
        (dict(refiner_strength=2.0), "strength"),
    ],
)
def test_bad_requests_fail_before_any_work(pipe, kwargs, match):
    with pytest.raises(InputError, match=match):
        pipe("a dog", **kwargs)


@pytest.mark.parametrize(("cuda_build", "says"), [(None, "is a CPU-only build"), ("13.0", "sees no CUDA GPU")])
def test_the_reference_refuses_a_device_it_cannot_reach_in_one_line(tiny_model, monkeypatch, cuda_build, says):
    """Simulated: a PyTorch without a reachable GPU (CPU build, or a CUDA build on a machine without one); PyTorch
    itself would fail on the first tensor with a traceback."""
    import torch

    from dbunet.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    with pytest.raises(ConfigError, match=f"^device 'cuda': this PyTorch .* {says}; use --device cpu$"):
        TorchPipeline(tiny_model, "cuda")
    for device in ("gpu", "mps", "cuda:x"):
        with pytest.raises(ConfigError, match=f"on cpu or cuda here, not '{device}'"):
            TorchPipeline(tiny_model, device)
