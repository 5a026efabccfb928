"""--arch sd1: a plain Stable Diffusion folder through the exporter and the torch-free runtime, against
diffusers' own StableDiffusionPipeline on the same folder (a small random one, saved here: no hub).

Same initial latents, prompt, sampler, 8 steps, guidance 7.5: the runtime's uint8 image must equal
diffusers' within mean 1 / max 8 levels in FP32 (measured in the comments below); FP16 within the
bound its graphs' parity tolerance implies.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)
from diffusers_samplers import NAMES, diffusers_sampler
from sd1_folder import SIZE, make_sd_folder, set_pad_token
from step_noise import noise_of_seed

from dbunet.errors import ConfigError, InputError
from dbunet.export.exporter import ExportOptions, export
from dbunet.manifest import Manifest
from dbunet.runtime import Pipeline

STEPS, GUIDANCE = 8, 7.5
PROMPT = "a photo of a red cat on a table"


def diffusers_image(folder, sampler: str, latents: np.ndarray, guidance: float = GUIDANCE, **options) -> np.ndarray:
    """The image of diffusers' pipeline over the folder, with `sampler`'s class configured from the folder's scheduler
    file (and `options` over it); Euler ancestral's step noise is what a dbunet run with seed 0 draws."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers_sampler(sampler, pipe.scheduler.config, **options)
    pipe.set_progress_bar_config(disable=True)
    with noise_of_seed(0, latents.shape):
        out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
                   latents=torch.from_numpy(latents), output_type="np")
    return (out.images[0] * 255).round().astype(np.uint8)


def _latents(seed=5):
    return np.random.default_rng(seed).standard_normal((1, 4, SIZE // 4, SIZE // 4)).astype(np.float32)


def _ours(artifacts, precision, sampler, latents, guidance=GUIDANCE, **options):
    pipe = Pipeline.from_artifacts(artifacts, precision=precision)
    return pipe(PROMPT, scheduler=sampler, steps=STEPS, guidance_scale=guidance, latents=latents, **options).image


@pytest.mark.parametrize("sampler", NAMES)
def test_fp32_runtime_equals_diffusers_pipeline(sd1_folder, sd1_artifacts, sampler):
    latents = _latents()
    want = diffusers_image(sd1_folder, sampler, latents)
    got = _ours(sd1_artifacts, "fp32", sampler, latents)
    diff = np.abs(got.astype(int) - want.astype(int))
    # measured (AMD EPYC, diffusers 0.42): mean <= 0.0013, max 1 level for every sampler; the reference
    # image's std is 35-41 levels, so it is not flat and a wrong step moves it by far more than 8. Euler
    # ancestral's noise drawn from another seed moves it by mean 3.2, max 25 (tests/step_noise.py), SDE
    # DPM-Solver++'s by 4.8 / 32; DPM-Solver++'s ODE form is 5.9 / 44 from the SDE form's image
    assert want.std() > 10, "the reference image is flat: the comparison would prove nothing"
    assert diff.mean() <= 1.0 and diff.max() <= 8, (sampler, diff.mean(), diff.max())


@pytest.mark.parametrize("guidance", [0.0, 0.5, 1.0, 1.5])
def test_every_guidance_scale_equals_diffusers(sd1_folder, sd1_artifacts, guidance):
    """diffusers guides above a scale of 1 only: at 1 or below its step is the prompt's prediction alone. Before,
    the runtime guided at every scale but 1, and scale 0 (the unconditional prediction alone) was 16 levels (mean)
    from diffusers' image, 0.5 was 10."""
    latents = _latents()
    want = diffusers_image(sd1_folder, "ddim", latents, guidance)
    diff = np.abs(_ours(sd1_artifacts, "fp32", "ddim", latents, guidance).astype(int) - want.astype(int))
    assert diff.mean() <= 1.0 and diff.max() <= 8, (guidance, diff.mean(), diff.max())  # measured: 0.000 / 1


def diffusers_at_any_size(pipe, side: int, latents: np.ndarray, prompt: str = PROMPT, **call) -> np.ndarray:
    """diffusers' image at a side its pipeline's input check refuses: the check asks for multiples of 8 (it assumes
    f = 8; the test VAE's f is 4), so it is set aside; the UNet and VAE under it take any size."""
    pipe.check_inputs = lambda *args, **kwargs: None
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, height=side, width=side, num_inference_steps=STEPS, latents=torch.from_numpy(latents),
               output_type="np", **call)
    return (out.images[0] * 255).round().astype(np.uint8)


@pytest.mark.parametrize("side", [68, 60])
def test_a_latent_the_unet_cannot_halve_evenly_equals_diffusers(sd1_folder, sd1_artifacts, side):
    """Latents of 17 and 15 (SD 1.5 at 520 pixels has 65): the UNet's downsampling rounds up, so each upsampling
    must meet its skip connection at the skip's size, as diffusers' UNet does. Before, the exported graph doubled
    the size as at the export size and ONNX Runtime failed at the first skip (17 against 18)."""
    latents = np.random.default_rng(1).standard_normal((1, 4, side // 4, side // 4)).astype(np.float32)
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    want = diffusers_at_any_size(pipe, side, latents, guidance_scale=GUIDANCE)
    got = Pipeline.from_artifacts(sd1_artifacts, "ort", "fp32")(PROMPT, scheduler="ddim", steps=STEPS,
                                                                 guidance_scale=GUIDANCE, latents=latents,
                                                                 height=side, width=side).image
    diff = np.abs(got.astype(int) - want.astype(int))
    # measured: mean 0.002 / max 1 level (OpenVINO's run at these sizes: tests/runtime/test_openvino_backend.py)
    assert want.std() > 10 and diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "pndm"])
def test_fp16_runtime_stays_near_diffusers(sd1_folder, sd1_artifacts, sampler):
    latents = _latents()
    want = diffusers_image(sd1_folder, sampler, latents)
    got = _ours(sd1_artifacts, "fp16", sampler, latents)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() <= FP16_MEAN and diff.max() <= FP16_MAX, (sampler, diff.mean(), diff.max())


def test_other_latents_give_another_image(sd1_artifacts):
    a = _ours(sd1_artifacts, "fp32", "ddim", _latents(5))
    b = _ours(sd1_artifacts, "fp32", "ddim", _latents(6))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_manifest_records_the_architecture_and_the_runtime_refuses_what_sd1_lacks(sd1_artifacts):
    manifest = Manifest.read(sd1_artifacts)
    assert manifest.config.arch == "sd1" and not manifest.config.has_refiner
    assert {a.component for a in manifest.artifacts} == {"text_encoder", "dbunet", "vae_decoder", "vae_encoder",
                                                         "dbunet_step"}
    step = manifest.find("dbunet_step", "fp32").spec
    assert [t.name for t in step.inputs] == ["x", "x0_prev", "coeffs", "text"]
    pipe = Pipeline.from_artifacts(sd1_artifacts, precision="fp32")
    with pytest.raises(InputError, match="no box conditioning"):
        pipe(PROMPT, boxes=["0.1,0.1,0.5,0.5:a cat"], steps=2)
    with pytest.raises(InputError, match="no refiner"):
        pipe(PROMPT, refiner_steps=3, steps=2)
    # options that would be ignored (before: silently)
    with pytest.raises(InputError, match="no DiffuseGAE refiner; refiner strength"):
        pipe(PROMPT, refiner_strength=0.5, steps=2)
    with pytest.raises(InputError, match="no box conditioning; the box fraction"):
        pipe(PROMPT, box_fraction=0.5, steps=2)


def test_v_prediction_folder_matches_diffusers(tmp_path):
    folder = make_sd_folder(tmp_path, prediction_type="v_prediction", seed=1)
    out = tmp_path / "artifacts"
    export(ExportOptions(weights=folder, arch="sd1", out=out, components=("text_encoder", "dbunet_step",
                                                                          "vae_decoder")),
           report=lambda line: None)
    assert Manifest.read(out).config.schedule.prediction_type == "v_prediction"
    latents = _latents(7)
    for sampler in ("ddim", "euler", "dpm++"):  # measured: mean 0.000, max 1 for each
        want = diffusers_image(folder, sampler, latents)
        got = _ours(out, "fp32", sampler, latents)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.mean() <= 1.0 and diff.max() <= 8, (sampler, diff.mean(), diff.max())


def test_a_karras_sigmas_folder_matches_diffusers(tmp_path):
    """DPM++ 2M Karras, the most common community setting: a folder whose scheduler file has use_karras_sigmas. Before,
    the export said its runs sampled without them, and the images were not diffusers'. The folder's own DPM-Solver
    and Euler (from_config keeps the option, as diffusers' users swap samplers) are compared."""
    folder = make_sd_folder(tmp_path, seed=3)
    path = folder / "scheduler" / "scheduler_config.json"
    DPMSolverMultistepScheduler.from_config(json.loads(path.read_text()), use_karras_sigmas=True).save_config(
        path.parent)
    index = folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()),
                                 "scheduler": ["diffusers", "DPMSolverMultistepScheduler"]}))
    out = tmp_path / "artifacts"
    export(ExportOptions(weights=folder, arch="sd1", out=out, components=("text_encoder", "dbunet_step",
                                                                          "vae_decoder")),
           report=lambda line: None)
    latents = _latents(3)
    for sampler in ("dpm++", "euler"):
        want = diffusers_image(folder, sampler, latents)
        got = _ours(out, "fp32", sampler, latents)
        diff = np.abs(got.astype(int) - want.astype(int))
        # measured (AMD EPYC, diffusers 0.42): dpm++ mean 0, max 0; euler mean 0.0005, max 1. The image without
        # Karras sigmas (what runs drew before) is outside the bound: dpm++ mean 6.5, max 47; euler mean 1.4, max 11
        plain = diffusers_image(folder, sampler, latents, use_karras_sigmas=False).astype(int)
        assert np.abs(plain - want).mean() > 1.0 or np.abs(plain - want).max() > 8, (sampler, "no Karras effect")
        assert diff.mean() <= 1.0 and diff.max() <= 8, (sampler, diff.mean(), diff.max())
        # a run may switch them off, as from_config(use_karras_sigmas=False) does (measured: max 1 level)
        off = np.abs(_ours(out, "fp32", sampler, latents, karras_sigmas=False).astype(int) - plain)
        assert off.mean() <= 1.0 and off.max() <= 8, (sampler, off.mean(), off.max())
    assert Manifest.read(out).config.schedule.use_karras_sigmas


@pytest.mark.parametrize("sampler", ["euler", "dpm++"])
def test_a_run_takes_karras_sigmas_as_diffusers_from_config_does(sd1_folder, sd1_artifacts, sampler):
    """Diffusers' users switch Karras sigmas on per pipeline (`from_config(config, use_karras_sigmas=True)`) for
    a folder whose file leaves them off, as SD 1.5's does; a run's karras_sigmas does the same."""
    assert not Manifest.read(sd1_artifacts).config.schedule.use_karras_sigmas
    latents = _latents(3)
    want = diffusers_image(sd1_folder, sampler, latents, use_karras_sigmas=True)
    got = _ours(sd1_artifacts, "fp32", sampler, latents, karras_sigmas=True)
    diff = np.abs(got.astype(int) - want.astype(int))
    plain = np.abs(diffusers_image(sd1_folder, sampler, latents).astype(int) - want.astype(int))
    assert plain.mean() > 1.0 or plain.max() > 8, (sampler, "Karras sigmas change nothing here")
    # measured (AMD EPYC, diffusers 0.42.1): mean <= 0.0004, max 1; without them (what a run drew before it could
    # ask): euler mean 1.3, max 10; dpm++ mean 6.0, max 43
    assert diff.mean() <= 1.0 and diff.max() <= 8, (sampler, diff.mean(), diff.max())


def test_the_default_sampler_is_the_class_diffusers_loads_from_model_index(tmp_path):
    """diffusers' from_pretrained takes the scheduler's class from model_index.json and only its settings from
    scheduler_config.json. Before, dbunet read the class from the latter, so a folder whose two files differ (a
    scheduler swapped by editing model_index.json) defaulted to another sampler than diffusers' pipeline uses."""
    from dbunet.models.sd_folder import sd1_config_from_folder

    folder = make_sd_folder(tmp_path, seed=2)
    index = folder / "model_index.json"
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    euler = ["diffusers", "EulerDiscreteScheduler"]
    index.write_text(json.dumps({**json.loads(index.read_text()), "scheduler": euler}))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert sd1_config_from_folder(folder).defaults.scheduler == "euler"


def test_what_cannot_be_honoured_is_refused(tmp_path):
    folder = make_sd_folder(tmp_path, seed=2)
    sched = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(sched.read_text())
    sched.write_text(json.dumps({**config, "prediction_type": "sample"}))
    with pytest.raises(ConfigError, match="prediction_type"):
        export(ExportOptions(weights=folder, arch="sd1", out=tmp_path / "a"), report=lambda line: None)
    sched.write_text(json.dumps(config))
    unet_cfg = folder / "unet" / "config.json"
    unet = json.loads(unet_cfg.read_text())
    unet_cfg.write_text(json.dumps({**unet, "in_channels": 9}))
    with pytest.raises(ConfigError, match="inpainting"):
        export(ExportOptions(weights=folder, arch="sd1", out=tmp_path / "b"), report=lambda line: None)
    unet_cfg.write_text(json.dumps({**unet, "class_embed_type": "timestep"}))
    with pytest.raises(ConfigError, match="class_embed_type"):
        export(ExportOptions(weights=folder, arch="sd1", out=tmp_path / "c"), report=lambda line: None)
    unet_cfg.write_text(json.dumps(unet))
    # the folder's own maximum side (its config is read in the staging directory) bounds the tracing size
    with pytest.raises(ConfigError, match="--width 2048 is beyond this model's maximum of 1024"):
        export(ExportOptions(weights=folder, arch="sd1", out=tmp_path / "e", width=2048), report=lambda line: None)
    assert not any((tmp_path / d).exists() for d in "abce")  # nothing half-written
    with pytest.raises(ConfigError, match="--weights"):
        ExportOptions(arch="sd1", out=tmp_path / "d")


def test_torch_reference_runs_the_sd1_model(sd1_artifacts):
    from dbunet.models.pipeline import TorchPipeline

    ref = TorchPipeline.from_artifacts(sd1_artifacts)
    assert dataclasses.asdict(ref.config) == dataclasses.asdict(Manifest.read(sd1_artifacts).config)
    latents = _latents()
    a = ref(PROMPT, steps=3, latents=latents)
    b = Pipeline.from_artifacts(sd1_artifacts, precision="fp32")(PROMPT, steps=3, latents=latents)
    # measured: max 2.1e-4 on latents up to 1.6 (FP32 graphs vs the PyTorch modules, 3 steps of guidance 7.5)
    np.testing.assert_allclose(b.latents, a.latents, atol=1e-3)


# measured: DDIM mean 1.13 / max 10, Euler 0.15 / 2, DPM++ 0.16 / 2 (the UNet in FP16, the update in FP32)
FP16_MEAN, FP16_MAX = 3.0, 24


def test_an_sd2_tokenizer_padding_with_bang_equals_diffusers(tmp_path):
    """SD 2.x tokenizers pad with "!" (the text encoder then sees "!" in every padded position): exported and run
    with that padding, the image equals diffusers' on the same folder, and differs from EOS padding."""
    folder = make_sd_folder(tmp_path, seed=3)
    set_pad_token(folder / "tokenizer", "!")
    export(ExportOptions(weights=folder, arch="sd1", out=tmp_path / "art"), report=lambda line: None)
    assert Manifest.read(tmp_path / "art").config.text.pad_token == "!"
    latents = _latents()
    want = diffusers_image(folder, "euler", latents)
    got = _ours(tmp_path / "art", "fp32", "euler", latents)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() <= 1.0 and diff.max() <= 8, (diff.mean(), diff.max())
    set_pad_token(folder / "tokenizer", "<|endoftext|>")
    eos_padded = diffusers_image(folder, "euler", latents)
    assert np.abs(eos_padded.astype(int) - want.astype(int)).mean() > 1  # the padding token matters here
