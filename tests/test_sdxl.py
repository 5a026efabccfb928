"""--arch sdxl: an SDXL base folder through the exporter and the torch-free runtime, against diffusers' own
StableDiffusionXLPipeline on the same folder (a small random one made here, tests/sdxl_folder.py: two CLIP
encoders, "!" padding on the second tokenizer, a text_time UNet, force_zeros_for_empty_prompt).

Same initial latents, prompt, sampler, 8 steps, guidance 5: the runtime's uint8 image must equal diffusers'
within mean 1 / max 8 levels in FP32 (measured in the comments below), and the PyTorch reference exactly.
"""

import io
import json

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers_samplers import NAMES, diffusers_sampler
from PIL import Image
from sdxl_folder import SIZE
from step_noise import noise_of_seed

from dbunet.errors import InputError
from dbunet.manifest import Manifest
from dbunet.runtime import Pipeline

STEPS, GUIDANCE = 8, 5.0
PROMPT = "a photo of a red cat on a table"


def _latents(seed=5):
    return np.random.default_rng(seed).standard_normal((1, 4, SIZE // 4, SIZE // 4)).astype(np.float32)


def diffusers_image(folder, sampler: str, latents: np.ndarray, negative_prompt=None, **extra) -> np.ndarray:
    """diffusers' image as uint8; `extra`: more of its arguments (guidance_scale, original_size,
    crops_coords_top_left, target_size). Euler ancestral's step noise is what a dbunet run with seed 0 draws."""
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.scheduler = diffusers_sampler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    height, width = latents.shape[2] * 4, latents.shape[3] * 4
    with noise_of_seed(0, latents.shape):
        out = pipe(PROMPT, negative_prompt=negative_prompt, height=height, width=width, num_inference_steps=STEPS,
                   latents=torch.from_numpy(latents), output_type="np", **{"guidance_scale": GUIDANCE, **extra})
    return (out.images[0] * 255).round().astype(np.uint8)


def _ours(artifacts, precision, sampler, latents, **options):
    pipe = Pipeline.from_artifacts(artifacts, "ort", precision)
    size = dict(height=latents.shape[2] * 4, width=latents.shape[3] * 4)
    return pipe(PROMPT, scheduler=sampler, steps=STEPS, latents=latents, **size,
                **{"guidance_scale": GUIDANCE, **options}).image


@pytest.mark.parametrize("sampler", NAMES)
def test_fp32_runtime_equals_diffusers_sdxl_pipeline(sdxl_folder, sdxl_artifacts, sampler):
    latents = _latents()
    want = diffusers_image(sdxl_folder, sampler, latents)
    got = _ours(sdxl_artifacts, "fp32", sampler, latents)
    diff = np.abs(got.astype(int) - want.astype(int))
    # measured (AMD EPYC, diffusers 0.42, ORT 1.31 CPU): mean <= 0.0014, max 1 level for every sampler;
    # the reference's std is 40-46 levels, so a wrong conditioning or step moves it by far more than 8
    assert want.std() > 10, "the reference image is flat: the comparison would prove nothing"
    assert diff.mean() <= 1.0 and diff.max() <= 8, (sampler, diff.mean(), diff.max())


# FP16 graphs (the VAE stays FP32: force_upcast), measured against diffusers' FP32 image: Euler and DPM++ mean
# 0.26 / max 2 levels; DDIM mean 2.8 / max 31 (its x0 divides eps by sqrt(alpha) ~ 0.07 at the first steps, and
# the test UNet's output is amplified 20x). Bounds about 2-6x those.
FP16_BOUNDS = {"ddim": (6.0, 64), "euler": (1.5, 16), "dpm++": (1.5, 16)}


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpm++"])
def test_fp16_runtime_stays_near_diffusers_and_finite(sdxl_folder, sdxl_artifacts, sampler):
    latents = _latents()
    want = diffusers_image(sdxl_folder, sampler, latents)
    pipe = Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp16")
    result = pipe(PROMPT, scheduler=sampler, steps=STEPS, guidance_scale=GUIDANCE, latents=latents)
    assert np.isfinite(result.pixels).all()  # (a non-finite image would have raised already: never an image)
    diff = np.abs(result.image.astype(int) - want.astype(int))
    mean, most = FP16_BOUNDS[sampler]
    assert diff.mean() <= mean and diff.max() <= most, (sampler, diff.mean(), diff.max())


def test_pytorch_reference_equals_diffusers(sdxl_folder, sdxl_artifacts):
    from dbunet.backends import open_pipeline

    latents = _latents()
    want = diffusers_image(sdxl_folder, "euler", latents)
    got = open_pipeline(sdxl_artifacts, "torch")(PROMPT, scheduler="euler", steps=STEPS, guidance_scale=GUIDANCE,
                                                 latents=latents).image
    diff = np.abs(got.astype(int) - want.astype(int))
    # measured: mean 8e-5, max 1 level (one pixel rounds the other way: the reference runs the sampler's
    # numpy step(), diffusers its torch one)
    assert diff.mean() <= 0.01 and diff.max() <= 1, (diff.mean(), diff.max())


def test_a_wide_image_gets_its_own_size_numbers(sdxl_folder, sdxl_artifacts):
    """time_ids are (height, width) pairs: a 64x96 image tells the UNet so, as diffusers does."""
    latents = np.random.default_rng(7).standard_normal((1, 4, SIZE // 4, 24)).astype(np.float32)
    want = diffusers_image(sdxl_folder, "euler", latents)
    got = _ours(sdxl_artifacts, "fp32", "euler", latents)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert want.shape == (64, 96, 3) and diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


# SDXL's size numbers as a caller gives them (dbunet-run's --original-size HxW --crop-top-left T,L --target-size HxW)
# and as diffusers takes them
GIVEN = dict(original_size=(32, 48), crop_top_left=(8, 4), target_size=(96, 64))
AS_DIFFUSERS = dict(original_size=(32, 48), crops_coords_top_left=(8, 4), target_size=(96, 64))


def test_given_size_numbers_equal_diffusers_and_each_one_counts(sdxl_folder, sdxl_artifacts):
    """The three pairs reach time_ids in diffusers' order: the same image as diffusers given the same numbers.
    Each moves the image on its own (the test UNet's size embedding is amplified 5x), so a pair that was dropped
    or swapped with another could not pass."""
    latents = _latents()
    want = diffusers_image(sdxl_folder, "euler", latents, **AS_DIFFUSERS)
    got = _ours(sdxl_artifacts, "fp32", "euler", latents, **GIVEN)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())  # measured: 0 levels
    plain = _ours(sdxl_artifacts, "fp32", "euler", latents)
    for name, pair in GIVEN.items():  # measured, each alone against none: mean 12-20 levels
        alone = _ours(sdxl_artifacts, "fp32", "euler", latents, **{name: pair})
        assert np.abs(alone.astype(int) - plain.astype(int)).mean() > 3, name


def test_a_latent_the_unet_cannot_halve_evenly_equals_diffusers(sdxl_folder, sdxl_artifacts):
    """A 68-pixel side (a latent of 17): SDXL's UNet upsamples to its skips' sizes, as diffusers' does (its
    pipeline's multiple-of-8 check set aside, as in test_sd1)."""
    from test_sd1 import diffusers_at_any_size

    latents = np.random.default_rng(1).standard_normal((1, 4, 17, 17)).astype(np.float32)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    want = diffusers_at_any_size(pipe, 68, latents, PROMPT, guidance_scale=GUIDANCE)
    got = _ours(sdxl_artifacts, "fp32", "euler", latents)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert want.std() > 10 and diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


def test_guidance_zero_is_the_prompt_alone_as_sdxl_turbo_is_run(sdxl_folder, sdxl_artifacts):
    """SDXL-Turbo is run with guidance_scale=0.0: diffusers then skips classifier-free guidance (and with it the
    zeroed empty negative) and takes the prompt's prediction. Before, the runtime ran the unconditional one."""
    latents = _latents()
    want = diffusers_image(sdxl_folder, "euler", latents, guidance_scale=0.0)
    got = _ours(sdxl_artifacts, "fp32", "euler", latents, guidance_scale=0.0)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert want.std() > 10 and diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


def test_dbunet_run_writes_the_given_size_numbers_and_the_same_image(sdxl_artifacts, tmp_path):
    from dbunet.cli.run import main

    out = tmp_path / "sized.png"
    assert main(["--artifacts", str(sdxl_artifacts), "--prompt", PROMPT, "--steps", str(STEPS), "--scheduler", "euler",
                 "--guidance-scale", str(GUIDANCE), "--seed", "3", "--original-size", "32x48", "--crop-top-left", "8,4",
                 "--target-size", "96x64", "--output", str(out), "--quiet"]) == 0
    png = Image.open(out)
    assert json.loads(png.text["size_numbers"]) == [32, 48, 8, 4, 96, 64]
    want = Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp32")(PROMPT, scheduler="euler", steps=STEPS,
                                                                   guidance_scale=GUIDANCE, seed=3, **GIVEN).image
    assert np.array_equal(np.asarray(png.convert("RGB")), want)


@pytest.mark.parametrize("given, says", [
    (dict(original_size=(0, 64)), r"original size must be two integers in 1\.\.8192 \(height, width\), got \(0, 64\)$"),
    (dict(target_size=(64, 8193)), r"target size must be two integers in 1\.\.8192 \(height, width\), got"),
    (dict(crop_top_left=(-1, 0)), r"crop top-left must be two integers in 0\.\.8192 \(top, left\), got \(-1, 0\)$"),
    (dict(crop_top_left="-1,0"), r"crop top-left must be two integers in 0\.\.8192 \(top, left\)"),
    (dict(original_size=(True, 64)), r"original size must be two integers"),  # a bool is no size
    (dict(original_size=(64.0, 64)), r"original size must be two integers"),
    (dict(original_size=["64", "64"]), r"original size must be two integers"),  # JSON strings, not numbers
    (dict(original_size="1,2,3"), r"original size must be two integers, got '1,2,3'$"),  # as given, not parsed
    (dict(original_size=[64]), r"original size must be two integers, got \[64\]$"),
    (dict(original_size="64xx"), r"original size must look like 1024x1024 or 0,0, got '64xx'$"),
])
def test_size_numbers_out_of_range_or_malformed_are_refused(sdxl_artifacts, given, says):
    with pytest.raises(InputError, match=says):
        Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp32")(PROMPT, steps=1, **given)


def test_size_numbers_come_over_http_as_json_lists(sdxl_artifacts):
    """A JSON body has no tuples: [32, 48] and "32x48" are the same request as the API's (32, 48)."""
    from dbunet.backends import open_pipeline
    from dbunet.serve import api

    pipe = open_pipeline(sdxl_artifacts, "ort", "fp32")
    bodies = [{"prompt": PROMPT, "steps": 2, "seed": 1, **{k: list(v) for k, v in GIVEN.items()}},
              {"prompt": PROMPT, "steps": 2, "seed": 1, "original_size": "32x48", "crop_top_left": "8,4",
               "target_size": "96x64"}]
    want = pipe(PROMPT, steps=2, seed=1, **GIVEN).image
    for body in bodies:
        _, png, _ = api.generate(pipe, api.parse(json.dumps(body).encode()))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), want), body
    with pytest.raises(api.Refused, match=r"crop top-left must be two integers in 0\.\.8192 \(top, left\)") as refused:
        api.generate(pipe, api.parse(json.dumps({"prompt": PROMPT, "crop_top_left": [1.5, 0]}).encode()))
    assert refused.value.status == 400


def test_a_negative_prompt_is_encoded_and_a_missing_one_is_zeros(sdxl_folder, sdxl_artifacts):
    latents = _latents()
    want = diffusers_image(sdxl_folder, "euler", latents, negative_prompt="blurry")
    got = _ours(sdxl_artifacts, "fp32", "euler", latents, negative_prompt="blurry")
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 8
    zeros = _ours(sdxl_artifacts, "fp32", "euler", latents)
    assert np.abs(got.astype(int) - zeros.astype(int)).mean() > 2  # the negative prompt is not ignored


def test_an_explicit_empty_negative_prompt_is_encoded_as_diffusers_does(sdxl_folder, sdxl_artifacts):
    """diffusers zeros the unconditional rows only where no negative prompt is given (`negative_prompt is None`);
    an explicit "" is encoded like any text. Before, dbunet zeroed both."""
    latents = _latents()
    want = diffusers_image(sdxl_folder, "euler", latents, negative_prompt="")
    got = _ours(sdxl_artifacts, "fp32", "euler", latents, negative_prompt="")
    zeros = _ours(sdxl_artifacts, "fp32", "euler", latents)
    assert np.abs(want.astype(int) - zeros.astype(int)).mean() > 2, "'' and zeros agree: this proves nothing"
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


# SDXL-Turbo's scheduler, as its folder has it: Euler ancestral, trailing timesteps
TURBO_SCHEDULER = {"_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "interpolation_type": "linear", "num_train_timesteps": 1000,
                   "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "trailing",
                   "trained_betas": None}


@pytest.mark.parametrize("steps", [1, 4])
def test_a_turbo_folder_gives_diffusers_image_with_its_euler_ancestral(sdxl_folder, tmp_path, steps):
    """SDXL-Turbo runs one step at guidance 0 with Euler ancestral, its folder's sampler and the runs' default; more
    steps add fresh noise between them (diffusers' drawn as dbunet's seed draws it: tests/step_noise.py). Before,
    runs fell back to Euler: the same image at one step (the last adds no noise), another at more."""
    import shutil

    from conftest import _export_folder

    folder = tmp_path / "turbo"
    shutil.copytree(sdxl_folder, folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(TURBO_SCHEDULER))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", TURBO_SCHEDULER[
        "_class_name"]]}))
    latents = _latents(seed=3)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    pipe.set_progress_bar_config(disable=True)
    with noise_of_seed(0, latents.shape) as drawn:
        out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                   latents=torch.from_numpy(latents), output_type="np")
    assert len(drawn) == steps
    want = (out.images[0] * 255).round().astype(np.uint8)
    ours = Pipeline.from_artifacts(_export_folder(folder, "sdxl", tmp_path / "artifacts"), "ort", "fp32")
    assert ours.config.defaults.scheduler == "euler-a"
    got = ours(PROMPT, steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE, latents=latents).image
    euler = ours(PROMPT, scheduler="euler", steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                 latents=latents).image
    diff = np.abs(got.astype(int) - want.astype(int))
    apart = np.abs(euler.astype(int) - want.astype(int))
    # measured (AMD EPYC, FP32): 0 levels at 1 and 4 steps; Euler's image equal at one step, at 4 mean 2.3, max 16
    assert want.std() > 10 and diff.mean() <= 0.05 and diff.max() <= 2, (diff.mean(), diff.max())
    assert steps == 1 or apart.mean() > 1 or apart.max() > 8, "the step noise changes nothing here"


def test_manifest_graphs_micro_conditioning_and_refusals(sdxl_artifacts):
    manifest = Manifest.read(sdxl_artifacts)
    cfg = manifest.config
    assert cfg.arch == "sdxl" and cfg.text_2.pad_token == "!" and cfg.zero_empty_negative
    assert {a.component for a in manifest.artifacts} == {"text_encoder", "text_encoder_2", "dbunet", "vae_decoder",
                                                         "vae_encoder", "dbunet_step"}
    step = manifest.find("dbunet_step", "fp32").spec
    assert [t.name for t in step.inputs] == ["x", "x0_prev", "coeffs", "text", "text_embeds", "time_ids"]
    assert manifest.find("vae_decoder", "fp16").note.startswith("kept in fp32")
    assert manifest.tokenizer_2 is not None
    pipe = Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp32")
    with pytest.raises(InputError, match="no box conditioning"):
        pipe(PROMPT, boxes=["0.1,0.1,0.5,0.5:a cat"], steps=1)
    with pytest.raises(InputError, match="no refiner"):
        pipe(PROMPT, refiner_steps=3, steps=1)
    # options that would be ignored (before: silently)
    with pytest.raises(InputError, match="no DiffuseGAE refiner; refiner strength"):
        pipe(PROMPT, refiner_strength=0.5, steps=1)
    with pytest.raises(InputError, match="no box conditioning; the box fraction"):
        pipe(PROMPT, box_fraction=0.5, steps=1)


@pytest.mark.parametrize("file, key, value", [("model_index.json", "force_zeros_for_empty_prompt", "false"),
                                              ("vae/config.json", "force_upcast", 0)])
def test_a_pipeline_flag_that_is_not_a_json_bool_is_refused(sdxl_folder, tmp_path, file, key, value):
    # before: bool("false") is True, so the folder's "false" turned the flag on
    import json
    import shutil

    from dbunet.errors import WeightsError
    from dbunet.models.sdxl_folder import sdxl_config_from_folder

    root = tmp_path / "sdxl"
    shutil.copytree(sdxl_folder, root)
    data = json.loads((root / file).read_text())
    (root / file).write_text(json.dumps({**data, key: value}))
    with pytest.raises(WeightsError, match=f"{key} must be true or false, got {value!r}"):
        sdxl_config_from_folder(root)
    (root / file).write_text(json.dumps({**data, key: False}))
    assert sdxl_config_from_folder(root) is not None


def test_an_sdxl_folder_exported_as_sd1_is_named_as_sdxl(sdxl_folder):
    # before: "cannot honour addition_embed_type='text_time', ... (a plain SD 1.x/2.x UNet leaves them at their
    # defaults)", which names the UNet's settings and not the folder's kind
    from dbunet.errors import ConfigError
    from dbunet.models.sd_folder import sd1_config_from_folder

    with pytest.raises(ConfigError, match="is an SDXL folder \\(it has text_encoder_2/\\): export it with --arch sdxl"):
        sd1_config_from_folder(sdxl_folder)
