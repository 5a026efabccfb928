"""Import of a diffusers-format SD 1.x folder, on a tiny pipeline saved locally (no hub access)."""

import json
import re

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from sd1_folder import other_clip_layout
from transformers import CLIPTextConfig, CLIPTextModel

from dbunet.config import tiny
from dbunet.errors import DbunetError, WeightsError
from dbunet.models.components import build_vae
from dbunet.models.pipeline import TorchPipeline
from dbunet.models.sd_folder import load_sd_folder
from dbunet.schedulers import NoiseSchedule
from dbunet.tokenizer import learn_bpe, write_clip_tokenizer


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    cfg = tiny()
    torch.manual_seed(123)
    build_vae(cfg.vae).save_pretrained(root / "vae")
    vocab, merges = learn_bpe(1024)
    write_clip_tokenizer(root / "tokenizer", vocab, merges)
    CLIPTextModel(
        CLIPTextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77, bos_token_id=1022, eos_token_id=1023)
    ).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1).save_pretrained(
        root / "scheduler"
    )
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def test_a_text_encoder_in_the_hub_layout_loads_under_either_transformers(sd_folder, tmp_path):
    """SD 1.x folders on the Hub keep CLIPTextModel's weights under `text_model.` (transformers 4); transformers
    5 saves them without that level. The folder's text encoder rewritten to the layout the installed release
    does not write loads all the same, to the same weights."""
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    path = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(path))
    save_file(other_clip_layout(state), str(path), metadata={"format": "pt"})
    model, _ = load_sd_folder(folder, base=tiny())
    own = model.cascade.text_encoder.state_dict()
    assert own.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def _assert_same(module, path):
    state = load_file(str(path))
    own = module.state_dict()
    for k, v in state.items():
        if k in own:
            assert torch.equal(own[k], v), k


def test_imports_vae_text_encoder_tokenizer_and_matching_unet_layers(sd_folder):
    model, report = load_sd_folder(sd_folder, base=tiny())
    c = model.cascade
    _assert_same(c.vae, sd_folder / "vae" / "diffusion_pytorch_model.safetensors")
    _assert_same(c.text_encoder, sd_folder / "text_encoder" / "model.safetensors")
    unet_src = load_file(str(sd_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    for key in (
        "conv_in.weight",
        "time_embedding.linear_1.weight",
        "down_blocks.0.resnets.0.conv1.weight",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "up_blocks.0.resnets.1.conv1.weight",
        "up_blocks.2.attentions.1.transformer_blocks.0.ff.net.2.weight",
        "up_blocks.1.upsamplers.0.conv.weight",
        "conv_out.weight",
    ):
        assert key in report.unet_loaded, key
        assert torch.equal(c.unet.state_dict()[key], unet_src[key]), key
    # the DB-UNet's own layers have no source and keep their seeded initialisation
    assert any(k.startswith("down_blocks.0.dcas.0.") for k in report.unet_kept)
    assert any(k.startswith("mid_block.box.") for k in report.unet_kept)
    # every UNet tensor whose name and shape exist on both sides was taken
    own = c.unet.state_dict()
    expected = {k for k, v in unet_src.items() if k in own and own[k].shape == v.shape}
    assert set(report.unet_loaded) == expected and len(expected) > 100
    assert model.config.schedule.steps_offset == 1 and model.config.text.hidden_size == 64
    assert model.tokenizer.eos_token_id == 1023


def test_imported_model_generates(sd_folder):
    model, _ = load_sd_folder(sd_folder, base=tiny())
    image = TorchPipeline(model)("a red house", steps=2, refiner_steps=1, height=64, width=64).image
    assert image.shape == (64, 64, 3)


class NotATensor:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_refuses_pickled_weights(sd_folder, tmp_path):
    import shutil

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()

    torch.save({"weight": NotATensor()}, root / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsError, match="refused to load"):
        load_sd_folder(root, base=tiny())
    # what weights_only loads but is no state dict: a traceback (TypeError, AttributeError) before
    for thing, says in (([1, 2, 3], "a list"), ({1: torch.zeros(1)}, "1 is not a tensor name"),
                        ({"conv.weight": torch.zeros(1), "conv.bias": 3}, "'conv.bias': int where a tensor belongs")):
        torch.save(thing, root / "vae" / "diffusion_pytorch_model.bin")
        with pytest.raises(WeightsError, match=f"not a state dict of named tensors \\({says}\\)"):
            load_sd_folder(root, base=tiny())
    (root / "vae" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(WeightsError, match=r"expected diffusion_pytorch_model.safetensors \(or diffusion_pytorch_model"
                                           r"\.safetensors\.index\.json and its shards; or their fp16 variant\)"):
        load_sd_folder(root, base=tiny())
    (root / "vae" / "diffusion_pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(WeightsError, match=r"sharded \.bin weights \(diffusion_pytorch_model\.bin\.index\.json\) "
                                           "are not read; save them as safetensors"):
        load_sd_folder(root, base=tiny())


def _shard(folder, model_class, size, variant=None):
    """Save a component again as its own library saves one past its shard size (an index and numbered shards, as
    an SDXL UNet in FP32 is), in place of its whole file; `variant`: named as that variant (e.g. "fp16")."""
    import shutil

    model_class.from_pretrained(folder).save_pretrained(folder.parent / "resaved", max_shard_size=size,
                                                        variant=variant)
    for whole in folder.glob("*.safetensors"):
        whole.unlink()
    for part in (folder.parent / "resaved").iterdir():
        if part.name != "config.json":
            shutil.move(part, folder / part.name)
    shutil.rmtree(folder.parent / "resaved")


@pytest.fixture(scope="module")
def sharded_folder(sd_folder, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("sharded") / "sd"
    shutil.copytree(sd_folder, root)
    _shard(root / "unet", UNet2DConditionModel, "300KB")
    _shard(root / "text_encoder", CLIPTextModel, "100KB")
    assert len(list((root / "unet").glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 2
    return root


@pytest.mark.parametrize("arch", ["dbunet", "sd1"])
def test_a_sharded_checkpoint_loads_as_its_whole_files(sd_folder, sharded_folder, arch):
    """diffusers and transformers shard what passes their shard size (an SDXL UNet in FP32); before, such a folder
    was "no weights". The same tensors, to the bit, as from the whole files."""
    whole, _ = load_sd_folder(sd_folder, base=tiny(), arch=arch)
    sharded, _ = load_sd_folder(sharded_folder, base=tiny(), arch=arch)
    want, got = whole.cascade.state_dict(), sharded.cascade.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_sharded_fp16_variant_loads_as_its_whole_files(sd_folder, tmp_path):
    """save_pretrained(variant="fp16") past the shard size names its index diffusion_pytorch_model.safetensors.index
    .fp16.json (transformers: model.safetensors.index.fp16.json); before, such a folder was "no weights"."""
    import shutil

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    _shard(root / "unet", UNet2DConditionModel, "300KB", variant="fp16")
    _shard(root / "text_encoder", CLIPTextModel, "100KB", variant="fp16")
    assert (root / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    assert (root / "text_encoder" / "model.safetensors.index.fp16.json").is_file()
    whole, _ = load_sd_folder(sd_folder, base=tiny(), arch="sd1")
    variant, _ = load_sd_folder(root, base=tiny(), arch="sd1")
    want, got = whole.cascade.state_dict(), variant.cascade.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def _index(root):
    return root / "unet" / "diffusion_pytorch_model.safetensors.index.json"


def _edit_index(root, change):
    index = json.loads(_index(root).read_text())
    change(index["weight_map"])
    _index(root).write_text(json.dumps(index))


def _first_two_shards(root):
    weight_map = json.loads(_index(root).read_text())["weight_map"]
    return [root / "unet" / s for s in sorted(set(weight_map.values()))[:2]]


def _in_two_shards(root):
    from safetensors.torch import save_file

    first, second = _first_two_shards(root)
    save_file({**load_file(str(second)), **dict(list(load_file(str(first)).items())[:1])}, str(second))


def _listed_in_another(root):
    first, second = _first_two_shards(root)
    name = next(iter(load_file(str(first))))
    _edit_index(root, lambda m: m.__setitem__(name, second.name))


@pytest.mark.parametrize("damage, says", [
    (lambda r: _index(r).write_text("{oops"), "safetensors.index.json: not valid JSON"),
    (lambda r: _index(r).write_text('{"metadata": {}}'), "weight_map must map tensor names to shard files"),
    (lambda r: _edit_index(r, lambda m: m.update({k: 7 for k in list(m)[:1]})), "weight_map must map"),
    (lambda r: _edit_index(r, lambda m: m.update({k: "../vae/diffusion_pytorch_model.safetensors" for k in m})),
     "shard '../vae/diffusion_pytorch_model.safetensors' is not a file name in its folder"),
    (lambda r: _first_two_shards(r)[0].unlink(), "its shard diffusion_pytorch_model-00001-of-.* is missing"),
    (lambda r: _truncate(_first_two_shards(r)[1]), "00002-of-.*safetensors: not a readable safetensors file"),
    (_listed_in_another, "00002-of-.*safetensors lacks '.*', which diffusion_pytorch_model.safetensors.index.json"),
    (_in_two_shards, "is in more than one shard"),
    (lambda r: _edit_index(r, lambda m: m.pop(next(iter(m)))), "is in a shard but not in the index"),
])
def test_a_damaged_sharded_checkpoint_is_one_error_naming_the_file(sharded_folder, tmp_path, damage, says):
    import shutil

    root = tmp_path / "sd"
    shutil.copytree(sharded_folder, root)
    damage(root)
    with pytest.raises(WeightsError, match=says):
        load_sd_folder(root, base=tiny(), arch="sd1")


def test_the_sdxl_preset_has_sdxl_base_sizes():
    """The `sdxl` preset (random weights at SDXL's sizes, for benchmarks): its UNet, built on the meta device
    (no memory), has SDXL base's 2,567,463,684 parameters; both text encoders attend at 768 + 1280 = 2048."""
    import torch

    from dbunet.config import preset
    from dbunet.models.components import build_sdxl_unet, build_text_encoder

    cfg = preset("sdxl")
    with torch.device("meta"):
        unet = build_sdxl_unet(cfg.unet)
        clip_g = build_text_encoder(cfg.text_2, 49406, 49407)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert cfg.text_width == unet.config.cross_attention_dim == 2048
    assert clip_g.config.projection_dim == 1280 and cfg.unet.projection_class_embeddings_input_dim == 6 * 256 + 1280
    assert sum(p.numel() for p in clip_g.parameters()) == 694_659_840  # OpenCLIP ViT-bigG's text tower


def _edit(path, **changes):
    """Set keys of a JSON file; None removes the key."""
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


# A damaged folder is one error naming the file, for every arch; before, each of these but the last was a traceback
# from the parser underneath (TypeError, SafetensorError, KeyError, UnicodeDecodeError).
@pytest.mark.parametrize("damage, says", [
    (lambda r: (r / "vae" / "config.json").write_text("[1, 2]"), "vae/config.json: expected a JSON object, got list"),
    (lambda r: (r / "unet" / "config.json").write_bytes(b"\xff\xfe{}"), "unet/config.json: not valid JSON"),
    (lambda r: _truncate(r / "vae" / "diffusion_pytorch_model.safetensors"),
     "vae/diffusion_pytorch_model.safetensors: not a readable safetensors file"),
    (lambda r: (r / "text_encoder" / "model.safetensors").write_bytes(b""),
     "text_encoder/model.safetensors: not a readable safetensors file"),
    (lambda r: ((r / "tokenizer" / "vocab.json").unlink(), (r / "tokenizer" / "tokenizer.json").write_text('{"m": 3}')),
     "the tokenizer in .*tokenizer could not be read"),
    (lambda r: (r / "tokenizer" / "vocab.json").write_text("[]"), "the tokenizer in .*tokenizer could not be read"),
    (lambda r: _edit(r / "text_encoder" / "config.json", hidden_size=None),
     "text_encoder/config.json: no 'hidden_size'"),
    (lambda r: _edit(r / "vae" / "config.json", block_out_channels=5), "block_out_channels must be a list, got 5"),
    (lambda r: _edit(r / "unet" / "config.json", block_out_channels=5), "block_out_channels must be a list, got 5"),
    (lambda r: _edit(r / "vae" / "config.json", latent_channels="4"), "latent_channels: '4' is not a number"),
])
@pytest.mark.parametrize("arch", ["dbunet", "sd1"])
def test_a_damaged_folder_is_one_error_naming_the_file(sd_folder, tmp_path, damage, says, arch):
    import shutil

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    damage(root)
    with pytest.raises(DbunetError, match=says):
        load_sd_folder(root, base=tiny(), arch=arch)


@pytest.mark.parametrize("arch", ["dbunet", "sd1"])
def test_the_scheduler_is_honoured_or_refused_alike_for_both_archs_and_a_missing_one_is_said(sd_folder, tmp_path,
                                                                                            arch, caplog):
    import shutil

    from dbunet.errors import ConfigError
    from dbunet.schedulers import NoiseSchedule

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "rescale_betas_zero_snr": True}))
    with pytest.raises(ConfigError, match="cannot honour rescale_betas_zero_snr"):  # --arch dbunet ignored it before
        load_sd_folder(root, base=tiny(), arch=arch)
    path.write_text(json.dumps({**config, "beta_start": 0.001, "timestep_spacing": "trailing"}))
    model, _ = load_sd_folder(root, base=tiny(), arch=arch)
    assert model.config.schedule == NoiseSchedule.from_diffusers({**config, "beta_start": 0.001,
                                                                  "timestep_spacing": "trailing"})
    shutil.rmtree(root / "scheduler")
    # model_index.json naming a scheduler whose files are missing: the fallback, said once
    index = root / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()),
                                 "scheduler": ["diffusers", "DPMSolverMultistepScheduler"]}))
    with caplog.at_level("WARNING"):
        model, _ = load_sd_folder(root, base=tiny(), arch=arch)
    assert "has no scheduler/scheduler_config.json: sampling with a scaled_linear schedule" in caplog.text
    assert "scheduler, DPMSolverMultistepScheduler" not in caplog.text
    assert model.config.defaults.scheduler == (tiny().defaults.scheduler if arch == "dbunet" else "ddim")


@pytest.mark.parametrize(("named", "sampler", "said"), [
    ("EulerDiscreteScheduler", "euler", False), ("DPMSolverMultistepScheduler", "dpm++", False),
    ("DDIMScheduler", "ddim", False),
    ("PNDMScheduler", "pndm", False),  # SD 1.5's own (before, dbunet had no PNDM: DDIM, said)
    ("EulerAncestralDiscreteScheduler", "euler-a", False), ("LCMScheduler", "lcm", False),
    ("UniPCMultistepScheduler", "ddim", True),
    (["not", "a", "name"], "ddim", True),  # a JSON list is no name (SDXL's reading of it was a TypeError)
])
def test_an_sd1_folder_s_scheduler_is_its_default_sampler_or_the_fallback_is_said(sd_folder, tmp_path, caplog,
                                                                                   named, sampler, said):
    """As SDXL folders already did: the folder's scheduler class is the runs' default sampler where dbunet has it.
    Before, an SD 1.x folder always defaulted to DDIM, and neither architecture said that its pipeline in diffusers
    samples with another."""
    import shutil

    from dbunet.models.sd_folder import sd1_config_from_folder

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "_class_name": named}))
    with caplog.at_level("WARNING"):
        assert sd1_config_from_folder(root).defaults.scheduler == sampler
    assert (f"is not one of dbunet's samplers; runs default to {sampler}" in caplog.text) == said, caplog.text


@pytest.mark.parametrize(("cls", "options", "sampler", "says"), [
    ("DPMSolverMultistepScheduler", {}, "dpm++", None),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "dpm++", None),  # followed: its sigmas
    ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True}, "dpm++",
     "its scheduler, DPMSolverMultistepScheduler with use_exponential_sigmas=True, is dbunet's dpm++ with options "
     "it lacks: runs sample without them"),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "euler", None),
    ("UniPCMultistepScheduler", {}, "ddim", "its scheduler, UniPCMultistepScheduler, is not one of dbunet's samplers"),
    # SD 1.5's PNDM as its folder has it (PLMS steps alone), and with the Runge-Kutta warm-up that a file which
    # leaves skip_prk_steps out runs in diffusers (the class's default)
    ("PNDMScheduler", {"skip_prk_steps": True}, "pndm", None),
    ("PNDMScheduler", {"skip_prk_steps": False}, "pndm",
     "its scheduler, PNDMScheduler with skip_prk_steps=False, is dbunet's pndm with options it lacks"),
    # SDE DPM-Solver++ ("DPM++ 2M SDE", with Karras sigmas too) is a sampler of its own; before, it ran as the ODE
    # form and said so. Its Heun solver is an option it lacks.
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "dpm++-sde", None),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, "dpm++-sde",
     None),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, "dpm++-sde",
     "DPMSolverMultistepScheduler with solver_type='heun', is dbunet's dpm++-sde with options it lacks"),
])
def test_a_scheduler_saved_by_diffusers_exports_with_its_sampler_or_says_what_differs(sd_folder, tmp_path, caplog,
                                                                                      cls, options, sampler, says):
    """The scheduler file as diffusers writes it (`pipe.scheduler = X.from_config(...)`, then save_pretrained).
    Before, DPM-Solver's and UniPC's were refused for keys dbunet did not know (flow sigmas, UniPC's corrector), and
    DPM-Solver++ with Karras sigmas, the most common community setting, refused the whole folder; then it sampled
    without them and said so; now its runs take the Karras sigmas (tests/test_sd1.py compares the images)."""
    import shutil

    import diffusers

    from dbunet.models.sd_folder import sd1_config_from_folder

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    getattr(diffusers, cls).from_config(json.loads(path.read_text()), **options).save_config(path.parent)
    with caplog.at_level("WARNING"):
        config = sd1_config_from_folder(root)
    assert config.defaults.scheduler == sampler
    assert (says in caplog.text) if says else "scheduler" not in caplog.text, caplog.text
    assert config.schedule == NoiseSchedule.from_diffusers(json.loads(path.read_text()))


def test_a_pndm_file_that_leaves_skip_prk_steps_out_is_said(sd_folder, tmp_path, caplog):
    """diffusers' PNDMScheduler runs its Runge-Kutta warm-up unless the file says skip_prk_steps (its default is
    False): a file without the key samples otherwise than dbunet's PLMS, which the export says."""
    import shutil

    from dbunet.models.sd_folder import sd1_config_from_folder

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k != "skip_prk_steps"}
    path.write_text(json.dumps({**config, "_class_name": "PNDMScheduler"}))
    index = root / "model_index.json"  # where diffusers reads the class from
    index.write_text(json.dumps({**json.loads(index.read_text()), "scheduler": ["diffusers", "PNDMScheduler"]}))
    with caplog.at_level("WARNING"):
        assert sd1_config_from_folder(root).defaults.scheduler == "pndm"
    assert "PNDMScheduler with skip_prk_steps=False, is dbunet's pndm with options it lacks" in caplog.text


def test_a_sampler_option_newer_than_dbunet_s_tables_reads_at_the_installed_diffusers_default(sd_folder, tmp_path,
                                                                                               caplog, monkeypatch):
    """A diffusers release adds options to its samplers at defaults that keep the older behaviour (DPM-Solver gained
    four in 0.32 and 0.35, each of which refused every such folder). One missing from dbunet's tables, simulated by
    taking use_flow_sigmas out of them, is read at the installed class's default: at it, nothing is said; away from
    it, the export says so; a key the installed diffusers does not know either is still refused."""
    import shutil

    import diffusers

    from dbunet.errors import ConfigError
    from dbunet.models.sd_folder import sd1_config_from_folder
    from dbunet.schedulers import schedule

    monkeypatch.setattr(schedule, "SAMPLER_OPTIONS",
                        {k: v for k, v in schedule.SAMPLER_OPTIONS.items() if k != "use_flow_sigmas"})
    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    diffusers.DPMSolverMultistepScheduler.from_config(json.loads(path.read_text())).save_config(path.parent)
    config = json.loads(path.read_text())
    with caplog.at_level("WARNING"):
        assert sd1_config_from_folder(root).defaults.scheduler == "dpm++"
    assert "scheduler" not in caplog.text, caplog.text
    path.write_text(json.dumps({**config, "use_flow_sigmas": True}))
    with caplog.at_level("WARNING"):
        assert sd1_config_from_folder(root).defaults.scheduler == "dpm++"
    assert "DPMSolverMultistepScheduler with use_flow_sigmas=True, is dbunet's dpm++ with options it lacks" \
        in caplog.text
    path.write_text(json.dumps({**config, "mystery": 1}))
    with pytest.raises(ConfigError, match=r"cannot honour unknown keys \['mystery'\]"):
        sd1_config_from_folder(root)


@pytest.mark.parametrize(("named", "steps", "guidance"), [("LCMScheduler", 4, 1.0),
                                                          ("EulerDiscreteScheduler", 30, 7.5)])
def test_an_lcm_folder_s_runs_default_to_lcm_s_steps_and_guidance(sd_folder, tmp_path, caplog, named, steps, guidance):
    """An LCM-distilled UNet (an LCM-LoRA fused in) draws in 2-8 steps at guidance 1-2. Before, its folder's runs
    took SD's 30 steps at guidance 7.5, which burns the image; now 4 at 1 (one UNet call a step), said at export."""
    import shutil

    from dbunet.models.sd_folder import sd1_config_from_folder

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "_class_name": named}))
    with caplog.at_level("WARNING"):
        defaults = sd1_config_from_folder(root).defaults
    assert (defaults.steps, defaults.guidance_scale) == (steps, guidance)
    said = "its sampler is lcm: runs default to steps 4, guidance scale 1 (dbunet-run --steps and --guidance-scale"
    assert caplog.text.count(said) == (named == "LCMScheduler"), caplog.text


def test_an_lcm_sdxl_folder_s_refiner_takes_the_base_s_steps(sdxl_folder, sdxl_refiner_folder, tmp_path):
    """With SDXL's refiner the refiner's steps default to the base's: 4 with LCM (30 with the others)."""
    import shutil

    from dbunet.models.sdxl_folder import sdxl_config_from_folder

    root = tmp_path / "sdxl"
    shutil.copytree(sdxl_folder, root)
    assert sdxl_config_from_folder(root, sdxl_refiner_folder).defaults.refiner_steps == 30
    for name in ("scheduler/scheduler_config.json", "model_index.json"):
        path = root / name
        data = json.loads(path.read_text())
        if name == "model_index.json":
            data["scheduler"] = ["diffusers", "LCMScheduler"]
        else:
            data["_class_name"] = "LCMScheduler"
        path.write_text(json.dumps(data))
    defaults = sdxl_config_from_folder(root, sdxl_refiner_folder).defaults
    assert (defaults.scheduler, defaults.steps, defaults.guidance_scale, defaults.refiner_steps) == ("lcm", 4, 1.0, 4)


@pytest.mark.parametrize(("named", "sampler", "said"), [
    ("EulerAncestralDiscreteScheduler", "euler-a", False),  # SDXL-Turbo's (it names the class in both files)
    ("UniPCMultistepScheduler", "euler", True),  # one dbunet lacks: SDXL's fallback, said
])
def test_an_sdxl_folder_s_scheduler_is_its_default_sampler_or_the_fallback_is_said(sdxl_folder, tmp_path, caplog,
                                                                                   named, sampler, said):
    import shutil

    from dbunet.models.sdxl_folder import sdxl_config_from_folder

    root = tmp_path / "sdxl"
    shutil.copytree(sdxl_folder, root)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "_class_name": named}))
    index = root / "model_index.json"  # where diffusers reads the class from
    index.write_text(json.dumps({**json.loads(index.read_text()), "scheduler": ["diffusers", named]}))
    with caplog.at_level("WARNING"):
        assert sdxl_config_from_folder(root).defaults.scheduler == sampler
    assert (f"{named}, is not one of dbunet's samplers; runs default to {sampler} (dbunet-run --scheduler chooses "
            "ddim, euler, euler-a, dpm++, dpm++-sde, lcm, pndm)" in caplog.text) == said, caplog.text


@pytest.mark.parametrize("change", [dict(shift_factor=0.1159), dict(act_fn="gelu"), dict(latents_mean=[0.1] * 4),
                                    dict(use_post_quant_conv=False),
                                    dict(up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 2)])
@pytest.mark.parametrize("arch", ["dbunet", "sd1"])
def test_a_vae_setting_the_export_would_drop_is_refused(sd_folder, tmp_path, change, arch):
    # before: the VAE was rebuilt from the keys dbunet carries, so these folders exported and drew wrong images
    # (use_post_quant_conv alone failed later, on its weights)
    import shutil

    from dbunet.errors import ConfigError

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    _edit(root / "vae" / "config.json", **change)
    with pytest.raises(ConfigError, match=f"vae/config.json: cannot honour {next(iter(change))}="):
        load_sd_folder(root, base=tiny(), arch=arch)


@pytest.mark.parametrize("file, key, arches", [("unet/config.json", "use_linear_projection", ["sd1"]),
                                               ("scheduler/scheduler_config.json", "clip_sample", ["sd1", "dbunet"])])
def test_a_setting_that_is_not_a_json_bool_is_refused(sd_folder, tmp_path, file, key, arches):
    # before: the string "false" was kept, and Python reads it as true (SD 2.x's linear projection, DDIM's clipping)
    import shutil

    from dbunet.errors import ConfigError

    for arch in arches:
        root = tmp_path / arch
        shutil.copytree(sd_folder, root)
        _edit(root / file, **{key: "false"})
        with pytest.raises(ConfigError, match=f"{key} must be true or false, got 'false'"):
            load_sd_folder(root, base=tiny(), arch=arch)


@pytest.mark.parametrize(("key", "value", "want"), [("steps_offset", "1", "an integer"),
                                                    ("steps_offset", 1.5, "an integer"),
                                                    ("num_train_timesteps", [1000], "an integer"),
                                                    ("beta_end", "0.012", "a number"),
                                                    ("clip_sample_range", True, "a number")])
def test_a_scheduler_setting_that_is_not_a_json_number_is_refused(sd_folder, tmp_path, key, value, want):
    # before: the value reached a comparison in NoiseSchedule and the export ended in a TypeError's traceback (or,
    # for a fraction, sampled at fractional timesteps); now one ConfigError naming the file and the key
    import shutil

    from dbunet.errors import ConfigError

    for arch in ("sd1", "dbunet"):
        root = tmp_path / arch
        shutil.copytree(sd_folder, root)
        _edit(root / "scheduler" / "scheduler_config.json", **{key: value})
        with pytest.raises(ConfigError, match=rf"scheduler_config.json: schedule.{key} must be {want}, got "
                                              rf"{re.escape(repr(value))}"):
            load_sd_folder(root, base=tiny(), arch=arch)


@pytest.mark.parametrize(("file", "key", "value", "said"), [
    ("text_encoder/config.json", "num_hidden_layers", "12", "text.num_hidden_layers: '12' is not a number"),
    ("text_encoder/config.json", "num_hidden_layers", None, "text.num_hidden_layers: None is not a number"),
    ("vae/config.json", "down_block_types", None, "down_block_types must be a list, got None"),
    ("vae/config.json", "up_block_types", "UpDecoderBlock2D", "up_block_types must be a list, got 'UpDecoderBlock2D'"),
])
def test_a_text_encoder_or_vae_setting_of_the_wrong_json_type_is_refused(sd_folder, tmp_path, file, key, value, said):
    # before: a TypeError's traceback from inside the config's checks (the layer count bounds another field) or from
    # iterating null
    import shutil

    from dbunet.errors import ConfigError

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    path = root / file
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))  # null kept, not removed as _edit does
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_sd_folder(root, base=tiny(), arch="sd1")


@pytest.mark.parametrize("arch", ["dbunet", "sd1"])
def test_the_text_encoders_settings_are_kept_or_refused(sd_folder, tmp_path, arch):
    # before: layer_norm_eps was dropped (the export then drew with 1e-5), and an activation transformers lacks was
    # a KeyError from inside it
    import shutil

    from dbunet.errors import ConfigError

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    _edit(root / "text_encoder" / "config.json", layer_norm_eps=0.05, hidden_act="gelu")
    model, _ = load_sd_folder(root, base=tiny(), arch=arch)
    ids = torch.randint(0, 1024, (1, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = CLIPTextModel.from_pretrained(root / "text_encoder")(ids).last_hidden_state
        got = model.cascade.text_encoder(ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)  # the same module in FP32: measured equal
    _edit(root / "text_encoder" / "config.json", hidden_act="swish_custom")
    with pytest.raises(ConfigError, match="text_encoder/config.json: text.hidden_act must be one of 'quick_gelu', "
                                          "'gelu', got 'swish_custom'"):
        load_sd_folder(root, base=tiny(), arch=arch)


@pytest.mark.parametrize(("checker", "said"), [(["stable_diffusion", "StableDiffusionSafetyChecker"], True),
                                               ([None, None], False)])
def test_a_folder_s_safety_checker_is_said_to_be_left_out(sd_folder, tmp_path, caplog, checker, said):
    """SD 1.5's folder names a safety checker, which diffusers' pipeline runs on every image; dbunet exports none,
    and says so. A folder saved without one ([null, null], as diffusers writes safety_checker=None) is not warned."""
    import shutil

    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "safety_checker": checker}))
    with caplog.at_level("WARNING"):
        load_sd_folder(root, base=tiny(), arch="dbunet")
    assert ("its safety checker (stable_diffusion/StableDiffusionSafetyChecker) is not exported" in caplog.text) == said
