import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from sd1_folder import other_clip_layout

from dbunet.config import tiny
from dbunet.errors import ConfigError, WeightsError
from dbunet.models.cascade import build_model, load_model, save_model


def test_save_load_round_trip_is_bitwise(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "copy")
    loaded = load_model(tmp_path / "copy")
    a, b = tiny_model.cascade.state_dict(), loaded.cascade.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert loaded.config == tiny_model.config
    # a second save writes the same bytes
    save_model(loaded, tmp_path / "again")
    copy, again = (tmp_path / name / "model.safetensors" for name in ("copy", "again"))
    assert copy.read_bytes() == again.read_bytes()
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no temp files


def test_weights_saved_under_the_other_transformers_release_load(tiny_model_dir, tmp_path):
    """CLIPTextModel's keys lost their `text_model.` level in transformers 5: a model saved under either release
    (the shapes preset was saved under 5) loads under the installed one, to the same weights."""
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    flipped = other_clip_layout(state, "text_encoder.")
    assert flipped.keys() != state.keys()
    save_file(flipped, str(weights))
    loaded = load_model(tmp_path / "m").cascade.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_seeded_init_is_deterministic_and_seed_dependent(tiny_model_dir):
    tok = tiny_model_dir / "tokenizer"
    a, b = build_model(tiny(), tok), build_model(tiny(), tok)
    assert a.weights_sha256() == b.weights_sha256()
    assert build_model(tiny(), tok, seed=1).weights_sha256() != a.weights_sha256()


def test_loading_draws_no_initial_weights(tiny_model_dir, monkeypatch):
    """load_model allocates the weights it is about to load instead of drawing random ones first (for sd15 the draw
    took 5 of the 6 s a load took): no convolution (VAE, UNet, refiner) is initialised on the CPU while loading."""
    drawn, draw = [], torch.nn.init.kaiming_uniform_

    def recorded(tensor, *args, **kwargs):
        if tensor.device.type != "meta":
            drawn.append(tuple(tensor.shape))
        return draw(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", recorded)
    loaded = load_model(tiny_model_dir).cascade.state_dict()
    assert not [shape for shape in drawn if len(shape) == 4]
    build_model(tiny(), tiny_model_dir / "tokenizer")  # the recorder sees the convolutions a build draws
    assert [shape for shape in drawn if len(shape) == 4]
    saved = load_file(str(tiny_model_dir / "model.safetensors"))
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_buffers_computed_at_construction_survive_loading(tiny_model_dir):
    """A buffer a module computes when built and does not save (CLIP's position ids) is not in the weights file:
    the loaded model has the value a build gives it, not uninitialised memory."""
    loaded = dict(load_model(tiny_model_dir).cascade.named_buffers())
    built = build_model(tiny(), tiny_model_dir / "tokenizer").cascade
    unsaved = {name: buffer for name, buffer in built.named_buffers() if name not in built.state_dict()}
    assert unsaved
    for name, buffer in unsaved.items():
        assert torch.equal(loaded[name], buffer), name


class Toy(torch.nn.Module):
    """Two linears sharing a weight, and a buffer computed from a parameter when built."""

    def __init__(self, derived: bool) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
        self.b.weight = self.a.weight
        self.register_buffer("ids", torch.arange(3), persistent=False)
        if derived:
            self.register_buffer("scale", self.a.bias.detach().abs() + 1, persistent=False)


@pytest.mark.parametrize("derived", [False, True])
def test_allocated_keeps_shared_weights_and_computed_buffers(derived):
    from dbunet.models.cascade import allocated

    toy = allocated(lambda: Toy(derived))
    assert toy.a.weight is toy.b.weight  # loading one name fills both, as in the module built for real
    assert not any(t.is_meta for t in (*toy.parameters(), *toy.buffers()))
    assert torch.equal(toy.ids, torch.arange(3))
    assert all(torch.isnan(p).all() for p in toy.parameters())
    if derived:  # computed from a parameter: built for real, so the buffer holds what the build computed
        assert torch.isfinite(toy.scale).all() and (toy.scale >= 1).all()


def test_a_model_built_beside_an_allocation_keeps_its_initial_weights():
    """Parameters go to the meta device only in the thread inside allocated(): another thread's model, built at
    the same time, and any model built afterwards are initialised as usual."""
    import threading

    from dbunet.models.cascade import allocated

    beside = []

    def build():
        thread = threading.Thread(target=lambda: beside.append(torch.nn.Linear(4, 4)))
        thread.start()
        thread.join()
        return torch.nn.Linear(4, 4)

    assert torch.isnan(allocated(build).weight).all()
    after = torch.nn.Linear(4, 4)
    for linear in (beside[0], after):
        assert not linear.weight.is_meta and torch.isfinite(linear.weight).all() and linear.weight.abs().sum() > 0


def test_weights_a_caller_does_not_load_are_nan(tiny_model_dir):
    """Without initial weights every weight is NaN until loaded: one a caller forgets makes a non-finite output,
    which the pipelines refuse, never a plausible image."""
    state = build_model(tiny(), tiny_model_dir / "tokenizer", initial_weights=False).cascade.state_dict()
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert {k.split(".")[0] for k in floats} == {"text_encoder", "vae", "unet", "refiner"}
    assert all(torch.isnan(v).all() for v in floats.values())


def test_the_weights_hash_is_the_one_manifests_record(tiny_model):
    """Manifests written by every earlier export record this hash (TorchPipeline.from_artifacts compares it): over
    the sorted state dict, each name's bytes then its tensor's raw bytes."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(tiny_model.cascade.state_dict().items()):
        h.update(name.encode() + tensor.contiguous().numpy().tobytes())
    assert tiny_model.weights_sha256() == h.hexdigest()


def test_weights_file_holds_every_component(tiny_model_dir):
    keys = load_file(str(tiny_model_dir / "model.safetensors")).keys()
    for prefix in ("text_encoder.", "vae.", "unet.down_blocks.0.dcas.0.", "unet.mid_block.box.", "refiner.gae."):
        assert any(k.startswith(prefix) for k in keys), prefix


def test_mismatched_weights_are_reported(tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["unet"]["block_out_channels"] = [32, 64, 128]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="wrong shape"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_model(tmp_path / "m")
    cfg["unet"]["block_out_channels"] = [30, 64, 64]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="divisible"):
        load_model(tmp_path / "m")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="not a dbunet model folder"):
        load_model(tmp_path)
