"""Caller-given initial latents (diffusers' `latents=`): the seed's own noise reproduces the seeded
image exactly; other latents change it; latents that do not fit are refused."""

import numpy as np
import pytest

from dbunet.errors import InputError
from dbunet.noise import NoiseSource
from dbunet.runtime import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_artifacts):
    return Pipeline.from_artifacts(tiny_artifacts, precision="fp32")


def _shape(pipe):
    cfg = pipe.config
    f = cfg.vae.downscale
    return (1, cfg.vae.latent_channels, cfg.defaults.height // f, cfg.defaults.width // f)


def test_the_seeds_noise_given_as_latents_reproduces_the_seeded_image(pipe):
    opts = dict(seed=11, steps=3, refiner_steps=2)
    seeded = pipe("a red cat", **opts)
    given = pipe("a red cat", latents=NoiseSource(11).normal(_shape(pipe)), **opts)
    np.testing.assert_array_equal(given.latents, seeded.latents)
    np.testing.assert_array_equal(given.image, seeded.image)  # the refiner's noise is the seed's too
    unbatched = pipe("a red cat", latents=NoiseSource(11).normal(_shape(pipe))[0], **opts)
    np.testing.assert_array_equal(unbatched.latents, seeded.latents)


def test_other_latents_give_another_image(pipe):
    other = np.random.default_rng(0).standard_normal(_shape(pipe)).astype(np.float32)
    a = pipe("a red cat", seed=11, steps=3, refiner_steps=0)
    b = pipe("a red cat", seed=11, steps=3, refiner_steps=0, latents=other)
    assert np.abs(a.latents - b.latents).max() > 0.1


def test_the_torch_reference_takes_latents_too(tiny_artifacts, pipe):
    from dbunet.models.pipeline import TorchPipeline

    torch_pipe = TorchPipeline.from_artifacts(tiny_artifacts)
    latents = np.random.default_rng(1).standard_normal(_shape(pipe)).astype(np.float32)
    ref = torch_pipe("a red cat", seed=3, steps=3, refiner_steps=0, latents=latents)
    out = pipe("a red cat", seed=3, steps=3, refiner_steps=0, latents=latents)
    np.testing.assert_allclose(out.latents, ref.latents, atol=1e-4)  # FP32 graphs vs PyTorch, as in test_runtime


@pytest.mark.parametrize("latents, message", [
    (np.zeros((1, 4, 3, 3), np.float32), "do not fit"),
    (np.zeros((2, 4, 16, 16), np.float32), "do not fit"),
    (np.full((1, 4, 16, 16), np.nan, np.float32), "NaN"),
    ("noise", "float array"),
    (np.zeros((1, 4, 16, 16), np.complex64), "complex64"),  # would lose its imaginary part
    ([["0.5"]], "float array of shape"),  # strings that numpy would parse as numbers
    (np.zeros((1, 4, 16, 16), bool), "bool"),
    ([[0.0], [1.0, 2.0]], "float array of shape"),  # ragged
])
def test_latents_that_do_not_fit_are_refused(pipe, latents, message):
    with pytest.raises(InputError, match=message):
        pipe("a red cat", seed=1, steps=2, latents=latents)
