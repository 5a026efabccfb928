"""The exported graphs: validity, custom-domain nodes, dynamic axes, manifest, decomposed mode."""

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dbunet.architectures import DBUNET
from dbunet.config import tiny
from dbunet.errors import ConfigError
from dbunet.export import parity
from dbunet.export.exporter import ExportOptions, export
from dbunet.export.graphs import GRAPHS, run_reference, sample_inputs
from dbunet.export.parity import TOLERANCE, measure
from dbunet.export.specs import component_specs, traced_pixels
from dbunet.export.step_graphs import STEP_MODULES
from dbunet.manifest import Manifest, sha256_file
from dbunet.models.cascade import load_model


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_component_exported_and_passes_the_full_checker(tiny_artifacts):
    manifest = Manifest.read(tiny_artifacts)
    assert {(a.component, a.precision) for a in manifest.artifacts} == {
        (c, p) for c in DBUNET.graphs for p in ("fp32", "fp16")
    }
    for a in manifest.artifacts:
        path = tiny_artifacts / a.path
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert max(i.version for i in model.opset_import if i.domain == "") >= 18
        assert sha256_file(path) == a.sha256[a.path]
        assert a.parity["passed"] and a.parity["max_rel"] <= TOLERANCE[a.precision]


# Parity of the tiny preset's graphs as measured (max rel; AMD EPYC, onnxruntime 1.31.1). The export's own
# tolerance (1e-4 / 3e-2) must hold for every model, sd15 included (its VAE decoder measures 1.4e-5 in fp32 at
# 256x256); this table holds the tiny graphs to ~10x what they reach, so a regression shows long before that.
MEASURED_PARITY = {
    ("text_encoder", "fp32"): 5.9e-7, ("text_encoder", "fp16"): 1.3e-3,
    ("dbunet", "fp32"): 1.0e-6, ("dbunet", "fp16"): 4.8e-3,
    ("vae_decoder", "fp32"): 3.2e-6, ("vae_decoder", "fp16"): 9.6e-4,
    ("refiner_encoder", "fp32"): 2.1e-7, ("refiner_encoder", "fp16"): 3.5e-4,
    ("gae", "fp32"): 1.2e-6, ("gae", "fp16"): 6.2e-4,
    ("refiner_unet", "fp32"): 1.2e-6, ("refiner_unet", "fp16"): 4.1e-3,
    ("dbunet_step", "fp32"): 1.5e-6, ("dbunet_step", "fp16"): 9.7e-4,
    ("refiner_step", "fp32"): 1.7e-6, ("refiner_step", "fp16"): 2.1e-3,
}


@pytest.mark.parametrize("precision,pixels,want", [
    ("fp32", 0, 1e-4), ("fp32", 128 * 128, 1e-4), ("fp32", 256 * 256, 1e-4), ("fp32", 512 * 512, 4e-4),
    ("fp32", 1024 * 1024, 1.6e-3), ("fp32", 2048 * 2048, 5e-3), ("fp16", 1024 * 1024, 3e-2),
])
def test_the_fp32_tolerance_grows_with_the_traced_pixels_up_to_its_ceiling(precision, pixels, want):
    assert parity.tolerance(precision, pixels) == pytest.approx(want)


def test_an_export_at_a_large_size_passes_where_onnx_runtime_sums_its_group_norms_less_exactly(tmp_path):
    """tiny's VAE decoder traced at 1024x1024 (its maximum raised to allow it): ONNX Runtime's InstanceNormalization
    differs from PyTorch's GroupNorm by 4.0e-4 there (measured), four times the 1e-4 that holds up to 256x256,
    and the export failed; the tolerance scaled by the pixels (1.6e-3) passes it, recorded in the manifest."""
    data = tiny().to_dict()
    data["defaults"].update(max_height=1024, max_width=1024)
    (tmp_path / "big.json").write_text(json.dumps(data))
    out = tmp_path / "art"
    export(ExportOptions(config=str(tmp_path / "big.json"), out=out, components=("vae_decoder",), height=1024,
                         width=1024), report=lambda line: None)
    (decoder,) = Manifest.read(out).artifacts
    assert decoder.parity["tolerance"] == pytest.approx(1.6e-3) and decoder.parity["passed"]
    # 4.0e-4 on an AVX2 CPU (the case it is for); wider vectors sum in more lanes, so no lower bound is asserted
    assert decoder.parity["max_rel"] < 1.6e-3 / 2
    # the UNet works on the latents (128x128 there): its tolerance stays the 1e-4 its error keeps to (2.7e-6)
    specs = component_specs(tiny())
    sizes = {"batch": 2, "height": 1024, "width": 1024, "latent_height": 128, "latent_width": 128, "boxes": 3}
    assert traced_pixels(specs["dbunet_step"], sizes) == 128 * 128 and traced_pixels(specs["text_encoder"], sizes) == 0
    assert traced_pixels(specs["vae_decoder"], sizes) == 1024 * 1024


def test_tiny_parity_stays_near_its_measured_figures(tiny_artifacts):
    for a in Manifest.read(tiny_artifacts).artifacts:
        if (a.component, a.precision) in MEASURED_PARITY:
            measured = MEASURED_PARITY[a.component, a.precision]
            assert a.parity["max_rel"] <= 10 * measured, (a.component, a.precision, a.parity["max_rel"], measured)


def test_custom_ops_are_single_nodes_with_local_functions(tiny_artifacts):
    model = onnx.load(str(tiny_artifacts / "fp32" / "dbunet.onnx"))
    custom = [n for n in model.graph.node if n.domain == "dbunet"]
    ops = ("BoxConstraint", "ChannelCrossAttention", "SpatialCrossAttention")
    counts = {t: sum(n.op_type == t for n in custom) for t in ops}
    cfg = tiny().unet
    encoder_layers = 3 * cfg.layers_per_block
    assert counts == {"BoxConstraint": encoder_layers + 1, "ChannelCrossAttention": encoder_layers,
                      "SpatialCrossAttention": encoder_layers}
    assert {(f.domain, f.name) for f in model.functions} == {("dbunet", t) for t in counts}
    assert any(i.domain == "dbunet" for i in model.opset_import)
    sca = next(n for n in custom if n.op_type == "SpatialCrossAttention")
    assert [a.i for a in sca.attribute if a.name == "num_heads"] == [cfg.dca_heads]
    # TensorRT finds the plugin by op_type and plugin_namespace; the namespace is the plugins' own
    from dbunet.plugins.tensorrt_plugins import NAMESPACE

    for n in custom:
        assert [a.s.decode() for a in n.attribute if a.name == "plugin_namespace"] == [NAMESPACE]


def test_graph_dims_are_the_declared_symbols(tiny_artifacts):
    specs = component_specs(tiny())
    for name, spec in specs.items():
        model = onnx.load(str(tiny_artifacts / "fp32" / f"{name}.onnx"), load_external_data=False)
        got = {v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
               for v in (*model.graph.input, *model.graph.output)}
        assert got == {t.name: t.dims for t in (*spec.inputs, *spec.outputs)}, name


@pytest.mark.parametrize("batch,height,width,boxes", [(1, 64, 96, 1), (2, 120, 72, 0), (3, 128, 128, 30)])
def test_dynamic_axes_really_work(tiny_artifacts, batch, height, width, boxes):
    """The DB-UNet and refiner graphs at sizes and batches they were not traced at, against PyTorch."""
    model = load_model(tiny_artifacts / "model")
    cfg = model.config
    sizes = {"batch": batch, "height": height, "width": width, "latent_height": height // 8,
             "latent_width": width // 8, "boxes": boxes}
    for name in ("dbunet", "refiner_unet", "vae_decoder", "dbunet_step", "refiner_step"):
        spec = component_specs(cfg)[name]
        feeds = sample_inputs(spec, sizes, cfg.text.vocab_size, seed=batch + boxes)
        want = run_reference((GRAPHS | STEP_MODULES)[name](model.cascade).eval(), spec, feeds)
        got = _session(tiny_artifacts / "fp32" / f"{name}.onnx").run(None, feeds)
        assert got[0].shape == want[0].shape
        result = measure(name, "fp32", got, want)
        assert result.passed, result.line()


def test_manifest_describes_the_export(tiny_artifacts):
    data = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert data["config"]["name"] == "tiny" and data["format_version"] == 1
    assert {"torch", "onnx", "onnxruntime"} <= set(data["tools"])
    dbunet = next(a for a in data["artifacts"] if a["component"] == "dbunet" and a["precision"] == "fp32")
    names = [t["name"] for t in dbunet["io"]["inputs"]]
    assert names == ["sample", "timestep", "text", "boxes", "box_phrases", "box_valid", "box_scale"]
    assert dbunet["io"]["inputs"][0]["dims"] == ["batch", 4, "latent_height", "latent_width"]
    assert (tiny_artifacts / data["tokenizer"]["file"]).is_file()
    assert load_model(tiny_artifacts / "model").weights_sha256() == data["weights_sha256"]
    assert not list(tiny_artifacts.glob("**/*.tmp")) and not list(tiny_artifacts.glob("**/.tmp-*"))


def test_decomposed_export_has_only_standard_ops_and_the_same_numbers(tiny_artifacts, tmp_path):
    export(ExportOptions(out=tmp_path, decomposed=True, components=("dbunet",)), report=lambda line: None)
    plain = onnx.load(str(tmp_path / "fp32" / "dbunet.onnx"))
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node) and not plain.functions
    onnx.checker.check_model(plain, full_check=True)
    spec = component_specs(tiny())["dbunet"]
    sizes = {"batch": 2, "latent_height": 11, "latent_width": 13, "boxes": 4, "height": 88, "width": 104}
    feeds = sample_inputs(spec, sizes,
                          1024, seed=5)
    a = _session(tmp_path / "fp32" / "dbunet.onnx").run(None, feeds)[0]
    b = _session(tiny_artifacts / "fp32" / "dbunet.onnx").run(None, feeds)[0]
    # measured: bit-identical (ONNX Runtime inlines the functions into the same ops); 1e-6 ~ 10 ulps at |out| ~ 1
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_text_encoder_graph_matches_for_real_prompts(tiny_artifacts):
    model = load_model(tiny_artifacts / "model")
    from dbunet.models.components import tokenize

    ids = tokenize(model.tokenizer, ["a photo of a cat", "", "a red house near a lake at sunset"], 77)
    got = _session(tiny_artifacts / "fp32" / "text_encoder.onnx").run(None, {"input_ids": ids})
    with torch.no_grad():
        out = model.cascade.text_encoder(input_ids=torch.from_numpy(ids))
    # measured: max abs 1.7e-6 (hidden states, |x| ~ 4) and 1.4e-6 (pooled)
    np.testing.assert_allclose(got[0], out.last_hidden_state.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1], out.pooler_output.numpy(), rtol=0, atol=1e-5)


def test_decompose_never_hands_the_weights_to_the_inliner(tiny_artifacts, monkeypatch):
    """onnx's inliner serializes its input, and protobuf stops at 2 GB (sd15's DB-UNet is 3.4 GB in FP32):
    decompose() lifts the weights out while it inlines and puts them back, so what the inliner sees is
    the graph alone, however large the weights."""
    from onnx import inliner

    from dbunet.export.onnx_export import decompose

    source = onnx.load(str(tiny_artifacts / "fp32" / "dbunet.onnx"))
    weights = sum(len(t.raw_data) for t in source.graph.initializer)
    expected = inliner.inline_local_functions(source)
    seen = []
    real = inliner.inline_local_functions
    monkeypatch.setattr(inliner, "inline_local_functions", lambda m, *a: seen.append(m.ByteSize()) or real(m, *a))
    got = decompose(source)
    assert seen and seen[0] < weights / 5  # the graph without its weights (measured: 0.7 MB of 8.4)
    def weights(model):
        return {t.name: t.raw_data for t in model.graph.initializer}

    assert weights(got) == weights(expected)
    assert [n.op_type for n in got.graph.node] == [n.op_type for n in expected.graph.node]


@pytest.mark.parametrize("option, says", [
    ({"height": 64.0}, "height must be an integer, got 64.0"), ({"batch": True}, "batch must be an integer, got True"),
    ({"opset": "18"}, "opset must be an integer, got '18'"),
    ({"components": "gae"}, "components must be a sequence of names, got 'gae'"),  # read as 'g', 'a', 'e'
    ({"ptx_targets": "sm_90"}, "ptx_targets must be a sequence of names, got 'sm_90'"),
    ({"fp16": "no"}, "export options.fp16 must be true or false, got 'no'"),  # a non-empty string is true
])
def test_the_api_refuses_options_of_the_wrong_type(option, says):
    # what the command line's parser guarantees; before, a float size reached the tracing and "no" meant fp16
    with pytest.raises(ConfigError, match=f"^{re.escape(says)}$"):
        ExportOptions(config="tiny", **option)


@pytest.mark.parametrize("old", ["0.3.0", "0.4.0", "0.6.0"])
def test_onnxscript_releases_whose_optimizer_fails_are_refused_before_the_first_trace(monkeypatch, tmp_path, old):
    """With the onnx_ir pip installs today, onnxscript 0.3 and 0.4 fold a Constant reading a function attribute
    into int(None) and 0.5.4 to 0.6.0 ask for Value.rank (each run: dbunet.releases): the export died in a
    PassError traceback after tracing its first graph. It now names the release and the fix before it begins."""
    import onnxscript

    from dbunet.errors import ExportError
    from dbunet.export import exporter, onnx_export

    monkeypatch.setattr(onnxscript, "__version__", old)
    says = rf"onnxscript {old} is older than 0\.6\.2: .*pip install 'onnxscript>=0\.6\.2'"
    monkeypatch.setattr(exporter, "staged", lambda out: pytest.fail("began the export before refusing"))
    with pytest.raises(ExportError, match=says):
        export(ExportOptions(config="tiny", components=("gae",), out=tmp_path / "a"))
    with pytest.raises(ExportError, match=says):
        onnx_export.cleanup(onnx.ModelProto())  # direct callers too
    monkeypatch.setattr(onnxscript, "__version__", "0.6.2")
    onnx_export.require_optimizer()


@pytest.mark.parametrize("component,simplified", [
    ("text_encoder", "Flatten"), ("vae_decoder", "Div"), ("refiner_unet", "Unsqueeze"),
])
def test_the_cleanup_gives_the_graph_of_onnxscripts_whole_optimizer(tiny_model, monkeypatch, component, simplified):
    """cleanup() runs onnxscript's optimizer passes with a chosen set of rewrites (not the default set's
    quadratic Slice-pair rule). On the graphs where those rewrites fire (`simplified`: the op they remove
    some of) the result is the graph onnxscript's whole optimizer makes."""
    import onnx_ir as ir
    import onnxscript.optimizer

    from dbunet.export import onnx_export
    from dbunet.export.graphs import graph_module
    from dbunet.export.specs import default_sizes

    traced, cleanup = [], onnx_export.cleanup
    monkeypatch.setattr(onnx_export, "cleanup", lambda model: traced.append(onnx.ModelProto.FromString(
        model.SerializeToString())) or cleanup(model))
    spec = component_specs(tiny_model.config)[component]
    feeds = sample_inputs(spec, default_sizes(tiny_model.config), tiny_model.config.text.vocab_size)
    module = graph_module(component, tiny_model.cascade, tiny_model.config.arch).eval()
    ours = onnx_export.trace_to_onnx(module, spec, tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs), 18)

    def optimized(simplify: bool) -> onnx.ModelProto:
        model = ir.from_proto(traced[0])
        if simplify:
            onnxscript.optimizer.optimize(model, num_iterations=1, inline=False)
        else:
            onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True)
        return ir.to_proto(model)

    def count(model: onnx.ModelProto) -> int:
        return sum(node.op_type == simplified for node in model.graph.node)

    assert ours.graph.SerializeToString() == optimized(simplify=True).graph.SerializeToString()
    assert count(ours) < count(optimized(simplify=False))  # the rewrites did something here


def test_an_export_over_its_own_model_folder_loads_it_once(tiny_model_dir, tmp_path, monkeypatch):
    """Exporting the same preset again reuses the model folder it saved: its config is read to compare, and the
    weights are loaded once (they were loaded twice: for sd15, 6 s each)."""
    import shutil

    from dbunet.export import exporter

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    loads = []
    monkeypatch.setattr(exporter, "load_model", lambda directory: loads.append(directory) or load_model(directory))
    model, source = exporter.load_source_model(ExportOptions(config="tiny"), tmp_path)
    assert (source, loads, model.config) == ("model", [tmp_path / "model"], tiny())
