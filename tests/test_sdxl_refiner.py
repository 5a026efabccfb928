"""SDXL base + refiner (--refiner): the base hands its latents to the refiner at the high noise fraction, as
diffusers' StableDiffusionXLPipeline(denoising_end=0.8) -> StableDiffusionXLImg2ImgPipeline(denoising_start=0.8)
do. The folders are small random ones made here (tests/sdxl_folder.py): the refiner has its own UNet (the second
encoder's width, five size-and-score numbers) and shares the base's second encoder and VAE.

Same latents, prompt, sampler, 8 steps for each pipeline (the refiner runs the 2 of its 8 below the hand-off),
guidance 5: the runtime's uint8 image must equal diffusers' within mean 1 / max 8 levels in FP32.
"""

import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers_samplers import NAMES, diffusers_sampler
from safetensors.torch import load_file, save_file
from sd1_folder import set_pad_token
from sdxl_folder import SIZE
from step_noise import noise_of_seed
from test_sdxl import AS_DIFFUSERS, GIVEN, GUIDANCE, PROMPT, STEPS

from dbunet.backends import open_pipeline
from dbunet.errors import ConfigError, InputError, WeightsError
from dbunet.manifest import Manifest
from dbunet.runtime import Pipeline

FRAC = 0.8


def _latents(seed=5):
    return np.random.default_rng(seed).standard_normal((1, 4, SIZE // 4, SIZE // 4)).astype(np.float32)


def diffusers_refined(base, refiner, sampler: str, latents: np.ndarray, negative_prompt=None, frac=FRAC,
                      output_type="np", micro=None, refiner_micro=None) -> np.ndarray:
    """diffusers' image as uint8 (or, output_type "latent", the refiner's final latents); `micro` and
    `refiner_micro`: size-number arguments for the base and for the refiner pipeline."""
    pipes = []
    for cls, folder in ((StableDiffusionXLPipeline, base), (StableDiffusionXLImg2ImgPipeline, refiner)):
        pipe = cls.from_pretrained(folder)
        pipe.scheduler = diffusers_sampler(sampler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipes.append(pipe)
    common = dict(negative_prompt=negative_prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    with noise_of_seed(0, latents.shape):  # Euler ancestral's step noise: the base's draws, then the refiner's
        handed = pipes[0](PROMPT, height=SIZE, width=SIZE, latents=torch.from_numpy(latents), denoising_end=frac,
                          output_type="latent", **common, **(micro or {})).images
        image = pipes[1](PROMPT, image=handed, denoising_start=frac, output_type=output_type, **common,
                         **(refiner_micro or {})).images[0]
    if output_type == "latent":
        return image[None].numpy()
    return (image * 255).round().astype(np.uint8)


def _ours(artifacts, sampler, latents, backend="ort", precision="fp32", **options):
    pipe = open_pipeline(artifacts, backend, precision)
    run = dict(scheduler=sampler, steps=STEPS, refiner_steps=STEPS, guidance_scale=GUIDANCE, latents=latents,
               high_noise_frac=FRAC) | options
    return pipe(PROMPT, **run)


@pytest.mark.parametrize("sampler", NAMES)
def test_fp32_base_and_refiner_equal_diffusers(sdxl_folder, sdxl_refiner_folder, sdxl_refined_artifacts, sampler):
    latents = _latents()
    want = diffusers_refined(sdxl_folder, sdxl_refiner_folder, sampler, latents)
    got = _ours(sdxl_refined_artifacts, sampler, latents).image
    diff = np.abs(got.astype(int) - want.astype(int))
    # measured (AMD EPYC, diffusers 0.42.1, ORT 1.31.1 CPU): mean <= 0.004, max 1 level for every sampler
    assert want.std() > 10, "the reference image is flat: the comparison would prove nothing"
    assert diff.mean() <= 1.0 and diff.max() <= 8, (sampler, diff.mean(), diff.max())
    # the refiner's steps show: the base alone (all 8 steps with its own UNet) is far from diffusers' refined image
    # (measured: mean 40 levels with DDIM, 4.3 with Euler and DPM++, 3.1 with Euler ancestral, 2.5 with SDE DPM++,
    # 1.1 with LCM, whose last step jumps to its x0 estimate from either UNet)
    alone = _ours(sdxl_refined_artifacts, sampler, latents, refiner_steps=0).image
    assert np.abs(alone.astype(int) - want.astype(int)).mean() > (0.5 if sampler == "lcm" else 2), sampler


def test_karras_sigmas_in_base_and_refiner_equal_diffusers(sdxl_folder, sdxl_refiner_folder, sdxl_refined_artifacts,
                                                           tmp_path):
    """Both folders' scheduler files with use_karras_sigmas: each part of a run takes its own folder's sigmas, split
    where diffusers splits them (Euler's Karras timesteps are fractional; DPM-Solver's whole). Before, the export
    said the runs sampled without them. A run's karras_sigmas switches them for both parts, as diffusers' users
    pass use_karras_sigmas to both pipelines' from_config: on for folders without them, off for these."""
    import json

    from dbunet.export.exporter import ExportOptions, export

    folders = {}
    for name, folder in (("base", sdxl_folder), ("refiner", sdxl_refiner_folder)):
        folders[name] = tmp_path / name
        shutil.copytree(folder, folders[name])
        _edit_json(folders[name] / "scheduler" / "scheduler_config.json", use_karras_sigmas=True)
    out = tmp_path / "artifacts"
    export(ExportOptions(weights=folders["base"], arch="sdxl", out=out, refiner=folders["refiner"],
                         components=("text_encoder", "text_encoder_2", "dbunet_step", "latent_refiner_step",
                                     "vae_decoder")),
           report=lambda line: None)
    latents = _latents(2)
    for sampler in ("euler", "dpm++"):
        want = diffusers_refined(folders["base"], folders["refiner"], sampler, latents)
        diff = np.abs(_ours(out, sampler, latents).image.astype(int) - want.astype(int))
        # measured (AMD EPYC, diffusers 0.42.1): mean <= 0.0002, max 1 for both; the image without Karras sigmas
        # (what runs drew before) is outside the bound: euler mean 1.7, max 15; dpm++ mean 6.4, max 38
        plain = diffusers_refined(sdxl_folder, sdxl_refiner_folder, sampler, latents).astype(int)
        assert np.abs(plain - want).mean() > 1.0 or np.abs(plain - want).max() > 8, (sampler, "no Karras effect")
        assert diff.mean() <= 1.0 and diff.max() <= 8, (sampler, diff.mean(), diff.max())
        asked = np.abs(_ours(sdxl_refined_artifacts, sampler, latents, karras_sigmas=True).image.astype(int) - want)
        off = np.abs(_ours(out, sampler, latents, karras_sigmas=False).image.astype(int) - plain)
        # measured: mean <= 0.0002, max 1 for both, each way
        for got in (asked, off):
            assert got.mean() <= 1.0 and got.max() <= 8, (sampler, got.mean(), got.max())
    config = Manifest.read(out).config
    assert config.schedule.use_karras_sigmas and config.latent_refiner.schedule.use_karras_sigmas
    assert json.loads((out / "manifest.json").read_text())["config"]["schedule"]["use_karras_sigmas"] is True


@pytest.mark.parametrize(("sampler", "frac"), [("ddim", 0.749), ("dpm++", 0.7), ("pndm", 0.2)])
def test_hand_off_edges(sdxl_folder, sdxl_refiner_folder, sdxl_refined_artifacts, sampler, frac):
    """DDIM's 8 leading timesteps include 251; a fraction of 0.749 puts the cut exactly there: the base runs it
    (t >= cut), the refiner the two below (t < cut), as diffusers splits them. DPM-Solver++ at 0.7 gives the
    refiner two steps (at 0.8 only its last): the first is first-order, with no x0 from the base's steps. PNDM at
    0.2 hands the refiner both visits of its second timestep: its history starts over there, as diffusers' counter
    does, so the first is a plain step and the second the correction from it.
    Compared in latent space: this test VAE saturates, and a latent 57 off moved the image by 0.7 levels."""
    latents = _latents(3)
    want = diffusers_refined(sdxl_folder, sdxl_refiner_folder, sampler, latents, frac=frac, output_type="latent")
    got = _ours(sdxl_refined_artifacts, sampler, latents, high_noise_frac=frac).latents
    # measured: max 3.0e-4 (DDIM, whose clipped x0 keeps the latents in [-1, 1]), 4.7e-4 (DPM++, latents up to
    # 212: float32 rounding grows with them), 7.0e-4 (PNDM, up to 412); bound 2e-3 + 1e-5 x magnitude, 7-9x those
    error, scale = np.abs(got - want).max(), np.abs(want).max()
    assert error <= 2e-3 + 1e-5 * scale, (error, scale)


def test_given_size_numbers_reach_the_refiner_as_diffusers_passes_them(sdxl_folder, sdxl_refiner_folder,
                                                                       sdxl_refined_artifacts):
    """The refiner's time_ids are the given original size and crop with the aesthetic score (its folder requires
    one), as diffusers' img2img pipeline builds them from the same arguments. In latent space, as above: the
    refiner's two steps move the image by less than a level here."""
    latents = _latents(3)
    want = diffusers_refined(sdxl_folder, sdxl_refiner_folder, "euler", latents, output_type="latent",
                             micro=AS_DIFFUSERS, refiner_micro=AS_DIFFUSERS)
    got = _ours(sdxl_refined_artifacts, "euler", latents, **GIVEN).latents
    # measured: 4.9e-4 (latents up to 234); 0.49 before, when the unconditional row kept the request's crop
    error, scale = np.abs(got - want).max(), np.abs(want).max()
    bound = 2e-3 + 1e-5 * scale  # test_hand_off_edges' bound
    assert error <= bound, (error, scale)
    # the refiner's own numbers count: diffusers' refiner without them ends 0.86 away
    unsized = diffusers_refined(sdxl_folder, sdxl_refiner_folder, "euler", latents, output_type="latent",
                                micro=AS_DIFFUSERS)
    assert np.abs(got - unsized).max() > 20 * bound, np.abs(got - unsized).max()


def test_a_refiner_without_an_aesthetic_score_takes_the_six_size_numbers(sdxl_folder, tmp_path):
    """A refiner folder that says requires_aesthetics_score false (its UNet takes original size, crop and target
    size, as the base's): both rows carry the request's numbers, the crop included, as diffusers' img2img builds
    them there (it keeps the (0, 0) crop for the score's rows only)."""
    from sdxl_folder import make_sdxl_refiner_folder

    from dbunet.export.exporter import ExportOptions, export

    refiner = make_sdxl_refiner_folder(tmp_path, sdxl_folder, aesthetic=False)
    out = tmp_path / "artifacts"
    export(ExportOptions(weights=sdxl_folder, arch="sdxl", out=out, refiner=refiner,
                         components=("text_encoder", "text_encoder_2", "dbunet_step", "latent_refiner_step",
                                     "vae_decoder")), report=lambda line: None)
    refiner_config = Manifest.read(out).config.latent_refiner
    assert not refiner_config.requires_aesthetics_score and refiner_config.time_ids == 6
    latents = _latents(3)
    want = diffusers_refined(sdxl_folder, refiner, "euler", latents, output_type="latent", micro=AS_DIFFUSERS,
                             refiner_micro=AS_DIFFUSERS)
    got = _ours(out, "euler", latents, **GIVEN).latents
    error, scale = np.abs(got - want).max(), np.abs(want).max()
    bound = 2e-3 + 1e-5 * scale
    assert error <= bound, (error, scale)  # measured: 4.7e-4 (latents up to 224)
    unsized = diffusers_refined(sdxl_folder, refiner, "euler", latents, output_type="latent", micro=AS_DIFFUSERS)
    assert np.abs(got - unsized).max() > 20 * bound, np.abs(got - unsized).max()  # measured: 1.19


# FP16 graphs (the VAE stays FP32: force_upcast) against diffusers' FP32 image, measured: DDIM mean 3.0 / max 41,
# Euler, Euler ancestral, DPM++ (ODE and SDE) and LCM mean 0.2 / max 2 (DDIM divides eps by sqrt(alpha) ~ 0.07 at
# the first steps, and the test refiner's output is amplified 60x). Bounds about 4-8x the mean, 3-8x the max.
FP16_BOUNDS = {"ddim": (15.0, 128), "euler": (1.5, 16), "euler-a": (1.5, 16), "dpm++": (1.5, 16),
               "dpm++-sde": (1.5, 16), "lcm": (1.5, 16), "pndm": (1.5, 16)}


@pytest.mark.parametrize("sampler", NAMES)
def test_fp16_base_and_refiner_stay_near_diffusers(sdxl_folder, sdxl_refiner_folder, sdxl_refined_artifacts,
                                                    sampler):
    latents = _latents()
    want = diffusers_refined(sdxl_folder, sdxl_refiner_folder, sampler, latents)
    got = _ours(sdxl_refined_artifacts, sampler, latents, precision="fp16")
    assert np.isfinite(got.pixels).all()
    diff = np.abs(got.image.astype(int) - want.astype(int))
    mean, most = FP16_BOUNDS[sampler]
    assert diff.mean() <= mean and diff.max() <= most, (sampler, diff.mean(), diff.max())


def test_pytorch_reference_and_a_negative_prompt(sdxl_folder, sdxl_refiner_folder, sdxl_refined_artifacts):
    """The reference loop (per-call UNets, the samplers' own step()) on the refined model, with a negative prompt:
    the refiner encodes it with the second encoder (its folder says no force_zeros_for_empty_prompt)."""
    latents = _latents(9)
    want = diffusers_refined(sdxl_folder, sdxl_refiner_folder, "dpm++", latents, negative_prompt="blurry")
    got = _ours(sdxl_refined_artifacts, "dpm++", latents, backend="torch", negative_prompt="blurry").image
    diff = np.abs(got.astype(int) - want.astype(int))
    # measured: mean 0.0002, max 1 level (the reference's numpy step() vs diffusers' torch one)
    assert diff.mean() <= 0.01 and diff.max() <= 1, (diff.mean(), diff.max())


def test_the_refined_export_and_its_refusals(sdxl_refined_artifacts):
    manifest = Manifest.read(sdxl_refined_artifacts)
    refiner = manifest.config.latent_refiner
    assert refiner.requires_aesthetics_score and not refiner.zero_empty_negative
    assert manifest.config.defaults.refiner_steps == manifest.config.defaults.steps
    assert {"latent_refiner", "latent_refiner_step"} <= {a.component for a in manifest.artifacts}
    step = manifest.find("latent_refiner_step", "fp32").spec
    assert [t.name for t in step.inputs] == ["x", "x0_prev", "coeffs", "text", "text_embeds", "time_ids"]
    assert step.inputs[3].dims[2] == 48 and step.inputs[5].dims[1] == 5  # the second encoder alone; 5 numbers
    pipe = Pipeline.from_artifacts(sdxl_refined_artifacts, "ort", "fp32")
    with pytest.raises(InputError, match="refiner strength is the DiffuseGAE"):
        pipe(PROMPT, steps=2, refiner_strength=0.5)
    with pytest.raises(InputError, match="leaves the base none of its 8 steps"):
        pipe(PROMPT, steps=STEPS, refiner_steps=STEPS, high_noise_frac=0.05)  # hand-off above the first timestep
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        pipe(PROMPT, steps=2, high_noise_frac=1.0)


# before: the refiner folder's scheduler gave its schedule alone; a refiner sampling otherwise than the base (its
# class, or options dbunet's sampler lacks) exported without a word, and its steps ran with the base's sampler
@pytest.mark.parametrize("scheduler, says", [
    ({}, None),  # the test folders' own: the base's Euler, the same config
    ({"_class_name": "DDIMScheduler"}, "its scheduler samples as ddim, the base's as euler"),
    ({"use_exponential_sigmas": True}, "EulerDiscreteScheduler with use_exponential_sigmas=True"),
    ({"use_karras_sigmas": True}, None),  # followed: the refiner's steps take its own sigmas, as in diffusers
    ({"_class_name": "UniPCMultistepScheduler"}, "UniPCMultistepScheduler, is not one of dbunet's samplers; runs "
                                                 "default to euler"),
])
def test_a_refiner_that_samples_otherwise_than_the_base_is_said(sdxl_folder, sdxl_refiner_folder, tmp_path, caplog,
                                                               scheduler, says):
    import json

    from dbunet.models.sdxl_folder import sdxl_config_from_folder

    refiner = tmp_path / "refiner"
    shutil.copytree(sdxl_refiner_folder, refiner)
    _edit_json(refiner / "scheduler" / "scheduler_config.json", **scheduler)
    if "_class_name" in scheduler:  # diffusers' pipeline takes the class from model_index.json
        index = refiner / "model_index.json"
        index.write_text(json.dumps({**json.loads(index.read_text()),
                                     "scheduler": ["diffusers", scheduler["_class_name"]]}))
    with caplog.at_level("WARNING"):
        config = sdxl_config_from_folder(sdxl_folder, refiner)
    assert config.defaults.scheduler == "euler"  # the base's: one sampler for both parts of a run
    said = [r.getMessage() for r in caplog.records if str(refiner) in r.getMessage()]
    if says is None:
        assert said == []
    else:
        assert len(said) == 1 and says in said[0], said


def test_high_noise_frac_needs_the_refiner(sdxl_artifacts):
    pipe = Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp32")
    with pytest.raises(InputError, match="no SDXL refiner"):
        pipe(PROMPT, steps=2, high_noise_frac=0.7)
    with pytest.raises(InputError, match="--refiner FOLDER adds SDXL's refiner"):
        pipe(PROMPT, steps=2, refiner_steps=2)


def test_a_refiner_that_does_not_share_the_base_vae_is_refused(sdxl_folder, sdxl_refiner_folder, tmp_path):
    from dbunet.export.exporter import ExportOptions
    from dbunet.models.sdxl_folder import import_sdxl

    other = tmp_path / "other-refiner"
    shutil.copytree(sdxl_refiner_folder, other)
    weights = other / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    first = sorted(state)[0]
    state[first] = state[first] + 0.01
    save_file(state, str(weights))
    with pytest.raises(WeightsError, match="its vae differs from the base's"):
        import_sdxl(sdxl_folder, other)
    with pytest.raises(ConfigError, match="takes no SDXL refiner"):
        ExportOptions(weights=sdxl_folder, arch="sd1", refiner=sdxl_refiner_folder)


def test_the_base_folder_given_as_refiner_is_named_as_such(sdxl_folder):
    # before: "its UNet must attend to the second text encoder's width 48 ..., got 80 and 4", true but no hint
    from dbunet.models.sdxl_folder import import_sdxl

    with pytest.raises(ConfigError, match=r"its UNet attends to both text encoders \(80 wide\), as SDXL's base UNet "
                                          r"does; a refiner's attends to the second alone \(48\): give the refiner's"):
        import_sdxl(sdxl_folder, sdxl_folder)


@pytest.mark.parametrize("arch", ["sdxl", "sd1", "dbunet"])
def test_the_refiner_folder_given_as_weights_is_named_as_such(sdxl_refiner_folder, tmp_path, arch):
    # before: "expected a dbunet model folder ... or a diffusers Stable Diffusion 1.x folder", with no word of SDXL
    from dbunet.errors import WeightsError
    from dbunet.export.exporter import ExportOptions, export

    options = ExportOptions(weights=sdxl_refiner_folder, arch=arch, out=tmp_path / "out")
    with pytest.raises(WeightsError, match=r"is an SDXL refiner folder \(text_encoder_2/ without text_encoder/\): "
                                           "give the base folder as --weights and this one as --refiner"):
        export(options, report=lambda line: None)
    assert not (tmp_path / "out").exists()


def _edit_json(path, **changes):
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _other_token(path):
    """A tokenizer.json whose vocabulary swaps two tokens' ids: other ids for the same text."""
    import json

    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(data))


# before: only the weights of the shared parts were compared (and tokenizer_2's vocab.json, which a tokenizer.json
# folder lacks): a refiner whose pipeline encodes or decodes otherwise exported, and its images were not diffusers'
@pytest.mark.parametrize("damage, says", [
    (lambda r: _edit_json(r / "vae" / "config.json", scaling_factor=0.25), "its vae config differs"),
    (lambda r: _edit_json(r / "text_encoder_2" / "config.json", layer_norm_eps=0.01),
     "its text_encoder_2 config differs"),
    (lambda r: _edit_json(r / "text_encoder_2" / "config.json", hidden_act="quick_gelu"),
     "its text_encoder_2 config differs"),
    (lambda r: _other_token(r / "tokenizer_2" / "tokenizer.json"), "its tokenizer_2 differs"),
    (lambda r: set_pad_token(r / "tokenizer_2", "<|endoftext|>"),
     "its tokenizer_2 differs"),
])
def test_a_refiner_that_encodes_or_decodes_otherwise_is_refused(sdxl_folder, sdxl_refiner_folder, tmp_path, damage,
                                                               says):
    from dbunet.models.sdxl_folder import import_sdxl

    other = tmp_path / "other-refiner"
    shutil.copytree(sdxl_refiner_folder, other)
    damage(other)
    with pytest.raises(WeightsError, match=says):
        import_sdxl(sdxl_folder, other)


def test_dbunet_run_takes_the_refiner_options(sdxl_refined_artifacts, tmp_path):
    from PIL import Image

    from dbunet.cli.run import main

    out = tmp_path / "refined.png"
    code = main(["--artifacts", str(sdxl_refined_artifacts), "--prompt", PROMPT, "--steps", "8", "--refiner-steps", "8",
                 "--high-noise-frac", "0.7", "--scheduler", "euler", "--output", str(out), "--quiet"])
    assert code == 0
    want = _ours(sdxl_refined_artifacts, "euler", None, high_noise_frac=0.7).image
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), want)
