"""Whole-step graphs (docs/architecture.md 3.4): N steps of the exported step graph equal the numpy loop over the
per-call graph, the update stays FP32 inside the FP16 graph, and the runtime needs no per-call UNet."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dbunet.export.exporter import ExportOptions, export
from dbunet.export.graphs import sample_inputs
from dbunet.export.specs import component_specs, default_sizes
from dbunet.runtime import Pipeline
from dbunet.schedulers import DDIMScheduler, make_scheduler
from dbunet.schedulers.table import ROW


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_dbunet_step_graph_equals_the_numpy_loop_over_the_per_call_graph(tiny_artifacts, scheduler):
    cfg = Pipeline.from_artifacts(tiny_artifacts, precision="fp32").config
    spec = component_specs(cfg)["dbunet_step"]
    feeds = sample_inputs(spec, default_sizes(cfg, batch=2, boxes=3), cfg.text.vocab_size, seed=4)
    cond = {k: feeds[k] for k in ("text", "boxes", "box_phrases", "box_valid")}
    cond["box_valid"][0] = 0.0  # the unconditional half sees no boxes
    per_call, step = _session(tiny_artifacts / "fp32/dbunet.onnx"), _session(tiny_artifacts / "fp32/dbunet_step.onnx")
    sampler = make_scheduler(scheduler, cfg.schedule)
    sampler.set_timesteps(8)
    rows = sampler.table(guidance_scale=7.5, box_steps=3)
    x = (feeds["x"] * sampler.init_noise_sigma).astype(np.float32)
    y, x0 = x.copy(), np.zeros_like(x)
    for i, row in enumerate(rows):  # the numpy loop: per-call graph, guidance and step() on the host
        sample = np.concatenate([sampler.scale_model_input(x, i)] * 2)
        eps = per_call.run(None, dict(cond, sample=sample, timestep=np.full(2, sampler.timesteps[i], np.float32),
                                      box_scale=np.array(1.0 if i < 3 else 0.0, np.float32)))[0]
        x = sampler.step(eps[:1] + np.float32(7.5) * (eps[1:] - eps[:1]), i, x)
        y, x0 = step.run(None, dict(cond, x=y, x0_prev=x0, coeffs=row))
    # measured 5.5e-7 (ddim), 1.2e-6 (euler), 5.1e-7 (dpm++) of the final latent's range
    assert _rel(y, x) <= 1e-5, (scheduler, _rel(y, x))


def test_refiner_step_graph_equals_the_numpy_loop(tiny_artifacts):
    cfg = Pipeline.from_artifacts(tiny_artifacts, precision="fp32").config
    spec = component_specs(cfg)["refiner_step"]
    feeds = sample_inputs(spec, default_sizes(cfg, batch=1), cfg.text.vocab_size, seed=5)
    per_call = _session(tiny_artifacts / "fp32/refiner_unet.onnx")
    step = _session(tiny_artifacts / "fp32/refiner_step.onnx")
    sampler = DDIMScheduler(cfg.refiner.schedule)  # clips x0 to [-1, 1]
    sampler.set_timesteps(13)
    x = sampler.add_noise(np.clip(feeds["x"], -1, 1), feeds["x0_prev"], 9)
    y, x0 = x.copy(), np.zeros_like(x)
    for k, row in enumerate(sampler.table(start=9)):
        i = 9 + k
        eps = per_call.run(None, {"sample": x, "timestep": np.full(1, sampler.timesteps[i], np.float32),
                                  "z_dis": feeds["z_dis"]})[0]
        x = sampler.step(eps, i, x)
        y, x0 = step.run(None, {"x": y, "x0_prev": x0, "coeffs": row, "z_dis": feeds["z_dis"]})
    assert _rel(y, x) <= 8e-6, _rel(y, x)  # measured 8.3e-7


def test_unguided_step_is_the_plain_noise_prediction(tiny_artifacts):
    """A text batch of 1 is a step without guidance, whatever the row's guidance scale says."""
    cfg = Pipeline.from_artifacts(tiny_artifacts, precision="fp32").config
    spec = component_specs(cfg)["dbunet_step"]
    feeds = sample_inputs(spec, default_sizes(cfg, batch=1, boxes=2), cfg.text.vocab_size, seed=6)
    step = _session(tiny_artifacts / "fp32/dbunet_step.onnx")
    plain = step.run(None, feeds)
    feeds["coeffs"] = feeds["coeffs"].copy()
    feeds["coeffs"][ROW.index("guidance")] = 3.0
    np.testing.assert_array_equal(step.run(None, feeds)[0], plain[0])


def test_fp16_step_graph_keeps_its_update_in_fp32(tiny_artifacts):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_artifacts / "fp16/dbunet_step.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input,
                                                             *model.graph.output)}
    update = [n for n in model.graph.node if n.name.startswith("step/")]
    assert len(update) > 20
    for node in update:
        for name in (*node.input, *node.output):
            assert types.get(name, onnx.TensorProto.FLOAT) in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), \
                (node.name, name, types.get(name))
    # ...while the UNet inside is FP16
    assert sum(types.get(o) == onnx.TensorProto.FLOAT16 for n in model.graph.node for o in n.output) > 100


def test_artifacts_without_the_per_call_unets_run(tiny_artifacts, tmp_path):
    components = ("text_encoder", "vae_decoder", "refiner_encoder", "gae", "dbunet_step", "refiner_step")
    export(ExportOptions(out=tmp_path, weights=tiny_artifacts / "model", components=components),
           report=lambda line: None)
    assert not (tmp_path / "fp32" / "dbunet.onnx").exists() and not list(tmp_path.glob("**/.unet-*"))
    request = dict(boxes=["0.1,0.1,0.6,0.8:a cat"], seed=2, steps=3, refiner_steps=2)
    lean = Pipeline.from_artifacts(tmp_path, precision="fp32")("a cat", **request)
    full = Pipeline.from_artifacts(tiny_artifacts, precision="fp32")("a cat", **request)
    np.testing.assert_array_equal(lean.pixels, full.pixels)  # the same step graphs, traced from the same weights
