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
