import dataclasses
import json

import pytest

from dbunet.config import PRESETS, ModelConfig, preset, tiny
from dbunet.errors import ConfigError
from dbunet.schedulers import NoiseSchedule


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())


def test_sd15_has_stable_diffusion_scale():
    cfg = preset("sd15")
    assert cfg.text.hidden_size == 768 and cfg.unet.block_out_channels == (320, 640, 1280)
    assert (cfg.defaults.height, cfg.defaults.width) == (512, 512)
    # DCA pool factors keep P <= 1024 at 512 px: 64x64 -> k=2 (32x32), then 32x32 and 16x16 unpooled
    assert [cfg.unet.dca_pool(level) for level in range(3)] == [2, 1, 1]


def test_tiny_default_size_is_small():
    d = tiny().defaults
    assert d.height <= 256 and d.width <= 256


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda c: dataclasses.replace(c, unet=dataclasses.replace(c.unet, cross_attention_dim=32)),
         "cross_attention_dim"),
        (lambda c: dataclasses.replace(c.refiner, code_dim=99), "attribute groups cover"),
        # they summed to code_dim, so a negative size passed and its slice reached backwards
        (lambda c: dataclasses.replace(c.refiner, attribute_groups=(("layout", 40), ("shape", -20), ("color", 80))),
         r"attribute group 'shape' has -20 dims; each has 1..100"),
        (lambda c: dataclasses.replace(c.refiner, attribute_groups=(("layout", 0), ("shape", 100))),
         r"attribute group 'layout' has 0 dims; each has 1..100"),
        (lambda c: dataclasses.replace(c.vae, norm_num_groups=7), "divisible"),
        (lambda c: dataclasses.replace(c.unet, block_out_channels=(32, 64)), "exactly 3 levels"),
    ],
)
def test_bad_configs_fail_at_construction(change, match):
    with pytest.raises(ConfigError, match=match):
        change(tiny())


def _sdxl_refiner(**unet_changes):
    """SDXL base with a latent refiner whose UNet attends to the second encoder alone (1280 wide), 5 time ids."""
    from dbunet.config import LatentRefinerConfig, SDXLUNetConfig

    unet = SDXLUNetConfig(cross_attention_dim=1280, projection_class_embeddings_input_dim=5 * 256 + 1280)
    return LatentRefinerConfig(dataclasses.replace(unet, **unet_changes))


def _with(name, **changes):
    return lambda: dataclasses.replace(preset(name), **changes)


# What ties a config's parts together (ModelConfig.__post_init__), each refused by name: before these rows only
# the cross-attention width had a test here.
@pytest.mark.parametrize("make, says", [
    (lambda: dataclasses.replace(tiny(), unet=dataclasses.replace(tiny().unet, in_channels=8)),
     "unet.in_channels 8 != vae.latent_channels 4"),
    (lambda: dataclasses.replace(tiny(), arch="sd1"), "arch sd1 needs a SDUNetConfig as its unet, got DBUNetConfig"),
    (lambda: dataclasses.replace(tiny(), text_2=preset("sdxl").text_2), r"arch dbunet takes 1 text encoder\(s\): "
                                                                         "text_2 given"),
    (_with("sdxl", text_2=None), r"arch sdxl takes 2 text encoder\(s\): text_2 missing"),
    (_with("sdxl", defaults=dataclasses.replace(preset("sdxl").defaults, refiner_steps=5)),
     "this sdxl model has no refiner: defaults.refiner_steps must be 0"),
    (_with("sdxl", unet=dataclasses.replace(preset("sdxl").unet, projection_class_embeddings_input_dim=2815)),
     "projection_class_embeddings_input_dim must be 6 x addition_time_embed_dim \\+ text_2.projection_dim = 2816, "
     "got 2815"),
    (lambda: dataclasses.replace(tiny(), defaults=dataclasses.replace(tiny().defaults, height=100)),
     "default image size must be a multiple of 8"),
    (lambda: dataclasses.replace(tiny(), defaults=dataclasses.replace(tiny().defaults, max_width=64)),
     "need 8 <= default <= maximum <= "),
    (lambda: dataclasses.replace(tiny(), latent_refiner=_sdxl_refiner()), "arch dbunet takes no latent refiner"),
    (_with("sdxl", latent_refiner=_sdxl_refiner(cross_attention_dim=2048)),
     "latent_refiner: its UNet attends to both text encoders"),
    (_with("sdxl", latent_refiner=_sdxl_refiner(cross_attention_dim=1024)),
     "latent_refiner: its UNet must attend to the second text encoder's width 1280"),
    (_with("sdxl", latent_refiner=_sdxl_refiner(projection_class_embeddings_input_dim=2816)),
     r"latent_refiner: projection_class_embeddings_input_dim must be 5 x addition_time_embed_dim"),
    (_with("sdxl", latent_refiner=_sdxl_refiner(),
           defaults=dataclasses.replace(preset("sdxl").defaults, high_noise_frac=1.0)),
     "defaults.high_noise_frac must lie strictly between 0 and 1"),
])
def test_parts_that_do_not_fit_together_are_refused(make, says):
    with pytest.raises(ConfigError, match=says):
        make()


def test_an_sdxl_base_with_its_refiner_fits():
    cfg = dataclasses.replace(preset("sdxl"), latent_refiner=_sdxl_refiner())
    assert cfg.has_latent_refiner and ModelConfig.from_json(cfg.to_json()) == cfg


def test_unknown_fields_and_presets_are_named():
    data = tiny().to_dict()
    data["unet"]["channels"] = 3
    with pytest.raises(ConfigError, match="unet: Additional properties are not allowed .'channels' was unexpected"):
        ModelConfig.from_dict(data)
    data = tiny().to_dict()
    data["vae"]["block_out_channels"] = [16, "wide"]
    with pytest.raises(ConfigError, match="vae/block_out_channels/1: 'wide' is not of type 'integer'"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="valid: tiny, sd15"):
        preset("sd3")


@pytest.mark.parametrize("missing", ["name", "text", "vae", "unet", "refiner"])
def test_a_missing_field_without_default_is_named_by_the_schema(missing):
    """Not by the constructor's TypeError ("__init__() missing 1 required positional argument")."""
    data = tiny().to_dict()
    del data[missing]
    with pytest.raises(ConfigError, match=f"^config top level: '{missing}' is a required property$"):
        ModelConfig.from_dict(data)



def test_a_field_with_a_default_may_be_left_out():
    data = tiny().to_dict()
    del data["defaults"], data["unet"]["max_boxes"]
    cfg = ModelConfig.from_dict(data)
    assert cfg.defaults == type(tiny().defaults)() and cfg.unet.max_boxes == 30


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(arch="sd3"), "config.arch"),
    (lambda d: d["schedule"].update(beta_schedule="cosine"), "schedule.beta_schedule"),
    (lambda d: d["schedule"].update(prediction_type="sample"), "schedule.prediction_type"),
    (lambda d: d["schedule"].update(timestep_spacing="karras"), "schedule.timestep_spacing"),
])
def test_a_choice_outside_its_literal_is_refused_by_name(edit, field):
    """The choices are read from the Literal annotations (dbunet.bounds.check_choices), not restated."""
    data = preset("tiny").to_dict()
    edit(data)
    # read as JSON: the schema generated from the annotations says so; built in code: the dataclass does
    owner, name = field.split(".")
    with pytest.raises(ConfigError, match=f"{owner}[./]{name}.*(must be|is not) one of"):
        ModelConfig.from_dict(data)
    if owner == "schedule":
        with pytest.raises(ConfigError, match=f"{field} must be one of"):
            NoiseSchedule(**{name: data["schedule"][name]})
