"""ONNX Runtime's whole-loop path (dbunet.runtime.backends.ort_loop): the loop's tensors resident in OrtValues,
x / x0 alternating between two buffer pairs, a session per shape with the symbolic dims pinned.

Everything runs on ONNX Runtime's CPU provider over the tiny preset's real exports. Where a test needs what
only the CUDA provider does (accept or refuse a CUDA-graph session), the session constructor is replaced: the
GPU is the one thing that cannot exist here, and the refusal text is ONNX Runtime's own."""

import threading
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dbunet.errors import ArtifactError, ConfigError
from dbunet.manifest import Manifest
from dbunet.request import build_request, plan_schedules
from dbunet.runtime.backends.onnxruntime import OrtBackend, OrtGraph, session_options
from dbunet.runtime.backends.ort_loop import OrtLoopStages, OrtStepLoop, box_slots
from dbunet.runtime.pipeline import Pipeline
from dbunet.runtime.stages import conditioning_feeds

BOX = ["0.1,0.1,0.6,0.6:a red circle"]
CONTROL_FLOW = ("If", "Loop", "Scan")  # ONNX Runtime's CUDA graphs refuse these


@pytest.fixture(scope="module")
def pipelines(tiny_artifacts):
    steps = Pipeline.from_artifacts(tiny_artifacts, OrtBackend("cpu"), "fp32")
    loops = Pipeline.from_artifacts(tiny_artifacts, OrtBackend("cpu", whole_loops=True), "fp32")
    yield steps, loops
    steps.close()
    loops.close()


def _step_graph(artifacts, name="dbunet_step", precision="fp32"):
    a = Manifest.read(artifacts).find(name, precision)
    return OrtBackend("cpu").load(artifacts / a.path, a.spec)


def _loop_inputs(pipe, prompt="a red circle", boxes=BOX, side=128):
    """A real request's coefficient rows, starting latents and conditioning (the per-step pipeline's stages)."""
    from dbunet.generation import build_conditioning

    # DPM++ 2M: its update reads x0_prev, so a loop that carries x0 wrongly shows (DDIM's does not)
    req = build_request(pipe.config, prompt, seed=3, height=side, width=side, steps=4, boxes=boxes, scheduler="dpm++")
    sampler, rows, *_ = plan_schedules(pipe.config, req)
    f = pipe.config.vae.downscale
    x = np.random.default_rng(3).standard_normal((1, 4, side // f, side // f), dtype=np.float32)
    x *= np.float32(sampler.init_noise_sigma)
    cond = build_conditioning(pipe.stages, pipe.config, req)
    return np.stack(rows), x, conditioning_feeds(cond, True)


def test_the_loop_is_the_steps_run_one_by_one_on_the_same_pinned_graph(pipelines, tiny_artifacts):
    """Bit for bit: the loop binds step i's outputs as step i+1's inputs, so any mix-up of the two buffer pairs,
    a coefficient row off by one or a stale x0_prev shows up as a different latent."""
    rows, x, fixed = _loop_inputs(pipelines[0])
    graph = _step_graph(tiny_artifacts)
    loop = OrtStepLoop(graph, cuda_graph=False)
    got = loop.run(rows, x, fixed)
    sizes = graph.spec.check_feeds({"x": x, "x0_prev": x, "coeffs": rows[0], **fixed})
    pinned = graph.pinned(sizes)
    want, x0 = x, np.zeros_like(x)
    for row in rows:
        want, x0 = pinned.run({"x": want, "x0_prev": x0, "coeffs": row, **fixed})
    assert np.array_equal(got, want)
    assert not np.array_equal(got, x)
    # an odd number of steps ends in the other buffer pair
    want3, x0 = x, np.zeros_like(x)
    for row in rows[:3]:
        want3, x0 = pinned.run({"x": want3, "x0_prev": x0, "coeffs": row, **fixed})
    assert np.array_equal(loop.run(rows[:3], x, fixed), want3)


def test_a_second_image_overwrites_every_input_the_first_left_on_the_device(pipelines, tiny_artifacts):
    """The buffers stay (their addresses are what a CUDA graph replays): a second call with another prompt,
    other boxes and other latents must give what a fresh loop gives, not reuse anything of the first."""
    graph = _step_graph(tiny_artifacts)
    first = _loop_inputs(pipelines[0])
    second = _loop_inputs(pipelines[0], "a blue square", ["0.5,0.5,0.9,0.9:a blue square"])
    second = (second[0], second[1][:, :, ::-1].copy(), second[2])
    reused = OrtStepLoop(graph, cuda_graph=False)
    reused.run(*first)
    assert np.array_equal(reused.run(*second), OrtStepLoop(graph, cuda_graph=False).run(*second))
    assert len(reused.buffers) == 1


def test_whole_loop_images_match_per_step_images(pipelines):
    """Through Pipeline: the loop and the per-step path make the same image. Not bit for bit: the pinned
    session folds the shape arithmetic and fuses differently, which reorders some FP32 sums (measured: latents
    within 1.2e-6 of their largest value, the uint8 image within one level)."""
    steps, loops = pipelines
    assert loops.stages.whole_loops and not steps.stages.whole_loops
    # Euler ancestral, LCM and SDE DPM-Solver++ add noise between steps, and PNDM's x0_prev is computed on the host,
    # which a loop graph has no input for: they run step by step
    for prompt, boxes, side, scheduler in (("a red circle", BOX, 128, "dpm++"), ("a blue square", [], 128, "euler"),
                                           ("a red circle", BOX, 64, "ddim"), ("a red circle", BOX, 128, "euler-a"),
                                           ("a blue square", BOX, 64, "lcm"), ("a red circle", BOX, 64, "dpm++-sde"),
                                           ("a blue square", BOX, 64, "pndm")):
        a = steps(prompt, seed=5, boxes=boxes, height=side, width=side, scheduler=scheduler)
        b = loops(prompt, seed=5, boxes=boxes, height=side, width=side, scheduler=scheduler)
        rel = np.abs(a.latents - b.latents).max() / np.abs(a.latents).max()
        assert rel < 1e-5, (prompt, side, rel)
        assert np.abs(a.image.astype(int) - b.image).max() <= 1
    shapes = loops.stages.loops["dbunet_step"].describe()
    # 128 with one box and with none share the one-slot session (a zero-size box axis: box_slots), 64 has its own
    assert sorted(shapes) == ["batch=2, boxes=1, latent_height=16, latent_width=16",
                              "batch=2, boxes=1, latent_height=8, latent_width=8"]
    assert {s["device"] for s in shapes.values()} == {"cpu"} and not any(s["cuda_graph"] for s in shapes.values())
    assert len(loops.stages.loops["refiner_step"].describe()) == 2


def test_whole_loop_stages_hold_each_step_graph_once_and_run_single_steps_pinned(tiny_artifacts):
    """The session a step graph was loaded in (it checked the graph against the manifest) is released: every run
    of a step graph, a single step too (dbunet-bench times those), goes through the loop's pinned session of its
    shape, so the step graph's weights are not resident twice. A single step takes and returns x0 (DPM++ reads
    x0_prev), bit for bit what the pinned session gives run directly."""
    pipe = Pipeline.from_artifacts(tiny_artifacts, OrtBackend("cpu", whole_loops=True), "fp32")
    try:
        stages = pipe.stages
        assert stages.graphs["dbunet_step"].session is None and stages.graphs["refiner_step"].session is None
        assert stages.graphs["text_encoder"].session is not None and stages.graphs["vae_decoder"].session is not None
        rows, x, fixed = _loop_inputs(pipe)
        from dbunet.generation import Step, build_conditioning

        req = build_request(pipe.config, "a red circle", seed=3, height=128, width=128, steps=4, boxes=BOX,
                            scheduler="dpm++")
        cond = build_conditioning(stages, pipe.config, req)
        x0_prev = np.random.default_rng(4).standard_normal(x.shape, dtype=np.float32)
        got_x, got_x0 = stages.denoise_step(Step(1, rows[1], None), x, x0_prev, cond)
        loop = stages.loops["dbunet_step"]
        (b,) = loop.buffers.values()
        want_x, want_x0 = b.graph.run({"x": x, "x0_prev": x0_prev, "coeffs": rows[1], **fixed})
        assert np.array_equal(got_x, want_x) and np.array_equal(got_x0, want_x0)
        assert not np.array_equal(got_x0, x0_prev)
        # the whole loop at the same shape reuses that session and its buffers
        stages.denoise_loop([Step(i, row, None) for i, row in enumerate(rows)], x, cond)
        assert len(loop.buffers) == 1
        with pytest.raises(RuntimeError, match="session was closed"):
            stages.graphs["dbunet_step"].run({"x": x, "x0_prev": x, "coeffs": rows[0], **fixed})
    finally:
        pipe.close()


@pytest.mark.parametrize("n, limit, slots", [(0, 8, 1), (1, 8, 1), (2, 8, 2), (3, 8, 4), (4, 8, 4), (5, 8, 8),
                                              (8, 8, 8), (9, 30, 16), (17, 30, 30), (30, 30, 30), (6, 6, 6)])
def test_box_counts_run_in_power_of_two_slots_up_to_the_models_maximum(n, limit, slots):
    assert box_slots(n, limit) == slots


def test_box_counts_share_a_padded_shape_and_make_the_same_image(pipelines):
    """3 boxes run in 4 slots, the fourth with validity 0: the image is the per-step path's (unpadded) within
    the FP32 bounds above, and 4 boxes then reuse that session."""
    steps, loops = pipelines
    three = ["0.0,0.0,0.5,0.5:a red circle", "0.5,0.0,1.0,0.5:a blue square", "0.0,0.5,0.5,1.0:a green triangle"]
    a = steps("shapes", seed=6, boxes=three, height=64, width=64, scheduler="dpm++")
    b = loops("shapes", seed=6, boxes=three, height=64, width=64, scheduler="dpm++")
    assert np.abs(a.latents - b.latents).max() / np.abs(a.latents).max() < 1e-5
    assert np.abs(a.image.astype(int) - b.image).max() <= 1
    loop = loops.stages.loops["dbunet_step"]
    padded = [k for k in loop.describe() if "boxes=4" in k and "latent_height=8" in k]
    assert len(padded) == 1, list(loop.describe())
    before = len(loop.buffers)
    loops("shapes", seed=6, boxes=[*three, "0.5,0.5,1.0,1.0:a red circle"], height=64, width=64)
    assert len(loop.buffers) == before


def test_a_loop_keeps_at_most_max_shapes_sessions_and_releases_the_least_recently_used(tiny_artifacts, caplog):
    a = Manifest.read(tiny_artifacts).find("refiner_step", "fp32")
    graph = OrtBackend("cpu").load(tiny_artifacts / a.path, a.spec)
    loop = OrtStepLoop(graph, cuda_graph=False, max_shapes=2)
    rows = np.random.default_rng(1).uniform(0.0, 0.5, (2, 11)).astype(np.float32)
    fixed = {"z_dis": np.zeros((1, 128), np.float32)}
    xs = {side: np.random.default_rng(side).standard_normal((1, 3, side, side), dtype=np.float32)
          for side in (32, 48, 64)}
    first = loop.run(rows, xs[32], fixed)
    loop.run(rows, xs[48], fixed)
    loop.run(rows, xs[32], fixed)  # 32 is now the most recently used: 48 goes next
    oldest = loop.buffers[next(iter(loop.buffers))]
    with caplog.at_level("INFO"):
        loop.run(rows, xs[64], fixed)
    assert [dict(k)["height"] for k in loop.buffers] == [32, 64]
    assert oldest.graph.session is None
    assert "refiner_step: released the session for batch=1, height=48, width=48" in caplog.text
    assert np.array_equal(loop.run(rows, xs[32], fixed), first)
    assert np.array_equal(loop.run(rows, xs[48], fixed), OrtStepLoop(graph, cuda_graph=False).run(rows, xs[48], fixed))
    with pytest.raises(ConfigError, match="loop_shapes"):
        OrtBackend("cpu", whole_loops=True, loop_shapes=0)


def test_pinned_cpu_sessions_keep_no_memory_pattern(tiny_artifacts):
    """A pinned session on the CPU provider runs without ONNX Runtime's memory pattern (one more activation block
    per fixed shape, no faster here); the sessions as loaded keep ONNX Runtime's default."""
    graph = _step_graph(tiny_artifacts)
    pinned = graph.pinned({"batch": 2, "latent_height": 16, "latent_width": 16, "boxes": 1})
    assert not pinned.session.get_session_options().enable_mem_pattern
    assert graph.session.get_session_options().enable_mem_pattern


def test_concurrent_images_on_one_pipeline_each_get_their_own_result(pipelines):
    """A Pipeline may be shared by threads: the loop's buffers are one per shape, so calls take turns."""
    steps, loops = pipelines
    prompts = ["a red circle", "a blue square", "a green triangle"]
    want = {p: steps(p, seed=9).image for p in prompts}
    got = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, loops(p, seed=9).image)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in prompts:
        assert np.abs(want[p].astype(int) - got[p]).max() <= 1, p


@pytest.mark.parametrize("name", ["dbunet_step", "refiner_step"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_pinned_step_graphs_keep_no_shape_arithmetic(tiny_artifacts, tmp_path, name, precision):
    """What ONNX Runtime's CUDA graphs need and a CPU can show: no control flow, and with the dims pinned, its
    optimizer leaves no Shape node and every Reshape / Expand target a constant, so nothing is left for the CUDA
    provider to place on the CPU (which makes it refuse the capture). Whether the CUDA provider then takes every
    node is for a GPU to say (tools/gpu_check.py, ort_loop)."""
    graph = _step_graph(tiny_artifacts, name, precision)
    side = 128 // (8 if name == "dbunet_step" else 1)
    sizes = {"latent_height": side, "latent_width": side, "batch": 2, "boxes": 2, "height": side, "width": side}
    counts = {}
    for pinned in (False, True):
        options = session_options(1)
        for dim, size in sizes.items():
            if pinned and any(dim in t.dims for t in graph.spec.inputs):
                options.add_free_dimension_override_by_name(dim, size)
        options.optimized_model_filepath = str(tmp_path / f"{pinned}.onnx")
        from dbunet.runtime.backends.onnxruntime import _graph_source

        source, _ = _graph_source(graph.path, options, True)
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(tmp_path / f"{pinned}.onnx"), load_external_data=False)
        constants = {i.name for i in model.graph.initializer}
        counts[pinned] = Counter(n.op_type for n in model.graph.node if n.op_type in ("Shape", *CONTROL_FLOW) or (
            n.op_type in ("Reshape", "Expand") and n.input[1] not in constants))
    assert counts[False]["Shape"] > 0  # the dynamic graph computes shapes at run time
    assert counts[True] == Counter(), counts[True]


REFUSAL = ("[ONNXRuntimeError] : 1 : FAIL : This session cannot use the graph capture feature as requested by the "
           "user as all compute graph nodes have not been partitioned to the CUDAExecutionProvider")


def _cuda_sessions(monkeypatch, refuse: str | None, on_cuda: bool = True):
    """ONNX Runtime's session constructor as a CUDA build would answer a CUDA-graph request (refuse: its error
    text, or None to accept); the session itself is a real CPU session, which says it runs on the CUDA provider
    unless `on_cuda` is False (then the loop's buffers can be allocated here). Returns the provider lists asked."""
    real, asked = ort.InferenceSession, []

    class Session(real):
        def __init__(self, source, options=None, providers=None, **kwargs):
            asked.append(providers)
            wants_graph = any(isinstance(p, tuple) and p[1].get("enable_cuda_graph") == "1" for p in providers)
            if wants_graph and refuse:
                raise RuntimeError(refuse)
            super().__init__(source, options, providers=["CPUExecutionProvider"], **kwargs)

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_cuda else super().get_providers()

    monkeypatch.setattr(ort, "InferenceSession", Session)
    return asked


def _graph_with(tiny_artifacts, **kwargs):
    a = Manifest.read(tiny_artifacts).find("refiner_step", "fp32")
    return OrtGraph(tiny_artifacts / a.path, a.spec, ["CUDAExecutionProvider", "CPUExecutionProvider"], 1, **kwargs)


def test_a_refused_cuda_graph_falls_back_to_the_same_session_without_it(tiny_artifacts, monkeypatch):
    asked = _cuda_sessions(monkeypatch, REFUSAL)
    graph = _graph_with(tiny_artifacts, fixed_dims={"batch": 1, "height": 64, "width": 64}, cuda_graph=True)
    assert not graph.cuda_graph and "graph capture feature" in graph.cuda_graph_refused
    assert asked[0][0] == ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})
    assert asked[1] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # per-step sessions never ask for one
    asked.clear()
    assert not _graph_with(tiny_artifacts).cuda_graph and len(asked) == 1 and "enable_cuda_graph" not in str(asked)


def test_a_loop_whose_capture_was_refused_runs_and_says_why(tiny_artifacts, monkeypatch, caplog):
    _cuda_sessions(monkeypatch, REFUSAL, on_cuda=False)
    graph = _graph_with(tiny_artifacts)
    loop = OrtStepLoop(graph, cuda_graph=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    rows = np.random.default_rng(1).uniform(0.0, 0.5, (2, 11)).astype(np.float32)
    with caplog.at_level("WARNING"):
        got = loop.run(rows, x, {"z_dis": np.zeros((1, 128), np.float32)})
    assert np.isfinite(got).all() and not np.array_equal(got, x)
    (shape,) = loop.describe().values()
    assert not shape["cuda_graph"] and "graph capture feature" in shape["refused"]
    assert "refiner_step at batch=1, height=64, width=64 runs without CUDA graphs" in caplog.text


def test_other_session_errors_are_not_taken_for_a_refusal(tiny_artifacts, monkeypatch):
    _cuda_sessions(monkeypatch, "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")
    with pytest.raises(ArtifactError, match="out of memory"):
        _graph_with(tiny_artifacts, cuda_graph=True)


def test_an_accepted_cuda_graph_session_says_so(tiny_artifacts, monkeypatch):
    asked = _cuda_sessions(monkeypatch, None)
    graph = _graph_with(tiny_artifacts, fixed_dims={"batch": 1, "height": 64, "width": 64}, cuda_graph=True)
    assert graph.cuda_graph and graph.cuda_graph_refused is None and len(asked) == 1


def test_each_parity_runs_under_its_own_cuda_graph_id(tiny_artifacts, monkeypatch):
    """ONNX Runtime captures one CUDA graph per `gpu_graph_id`: the two buffer parities bind different
    addresses, so they need two ids (0 is ONNX Runtime's own default). The pinned session here is a CPU one
    marked as capturing (the CPU provider ignores the id); what is checked is what the loop asks for."""
    original = OrtGraph.pinned

    def capturing(self, sizes, cuda_graph=False):
        pinned = original(self, sizes)
        pinned.cuda_graph = cuda_graph
        return pinned

    monkeypatch.setattr(OrtGraph, "pinned", capturing)
    a = Manifest.read(tiny_artifacts).find("refiner_step", "fp32")
    graph = OrtBackend("cpu").load(tiny_artifacts / a.path, a.spec)
    loop = OrtStepLoop(graph, cuda_graph=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    rows = np.random.default_rng(1).uniform(0.0, 0.5, (3, 11)).astype(np.float32)
    fixed = {"z_dis": np.zeros((1, 128), np.float32)}
    first = loop.run(rows, x, fixed)
    b = next(iter(loop.buffers.values()))
    assert b.graph.fixed_dims == {"batch": 1, "height": 64, "width": 64}
    ids = [options.get_run_config_entry("gpu_graph_id") for options in b.run_options]
    assert ids == ["1", "2"]
    assert np.array_equal(loop.run(rows, x, fixed), first)
    assert not np.array_equal(OrtStepLoop(graph, cuda_graph=False).run(rows[:2], x, fixed), first)


def test_the_backend_uses_whole_loops_on_the_cuda_provider_only_unless_told(tiny_artifacts):
    assert not OrtBackend("cpu").whole_loops and OrtBackend("cpu", whole_loops=True).whole_loops
    pipe = Pipeline.from_artifacts(tiny_artifacts, OrtBackend("cpu", whole_loops=True), "fp32")
    try:
        assert isinstance(pipe.stages, OrtLoopStages)
        assert set(pipe.stages.loops) == {"dbunet_step", "refiner_step"}
    finally:
        pipe.close()
