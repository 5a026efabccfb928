"""The TensorRT backend's control flow, on STAND-INS for TensorRT and the CUDA runtime (neither can exist on
this machine; see trt_runtime_stand_in.py for the contract they enforce). The "engines" are the FP16 export's
graphs run by ONNX Runtime on simulated device memory, built by the real dbunet-build code path; so an image
from the stand-in backend must equal ONNX Runtime's FP16 image up to the engines' static padding, and every
address, copy and captured graph the backend gets wrong shows up in the pixels or in the call record.
Real-GPU checks of this code belong to the GPU verification work, not here."""

from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pytest

from dbunet.engines import builder
from dbunet.engines.cache import read_index, write_index
from dbunet.engines.profiles import Resolution
from dbunet.errors import ArtifactError, InputError
from dbunet.generation import Conditioning
from dbunet.runtime import Pipeline

from trt_builder_stand_in import install as install_stand_ins
from trt_runtime_stand_in import StandInCudart

REQUEST = dict(steps=4, seed=3, height=64, width=64, refiner_steps=4, refiner_strength=0.5,
               boxes=("0.1,0.1,0.6,0.7:a red cat", "0.5,0.2,0.9,0.9:a lamp"))


def install(monkeypatch, version: str, capturable: bool = True) -> StandInCudart:
    """Stand-in tensorrt (runtime and builder) and cuda-python modules; dbunet-build runs through the real
    polygraphy on them and writes stand-in plans."""
    return install_stand_ins(monkeypatch, version, capturable)[1]


@pytest.fixture
def engines(monkeypatch, tiny_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    cudart = install(monkeypatch, "10.8.0")
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),), max_boxes=4), report=lambda line: None)
    return art, cudart


@pytest.fixture(scope="module")
def ort_fp16(tiny_artifacts):
    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp16", device="cpu")
    return lambda **kw: pipe("a red cat and a lamp", **{**REQUEST, **kw})


def step_engine(pipe):
    return pipe.stages.engines.runners[("dbunet_step", "64x64")]


def test_image_matches_onnx_runtime_on_the_same_graphs(engines, ort_fp16, tiny_artifacts):
    art, _ = engines
    pipe = Pipeline.from_artifacts(art, "trt")
    # guidance 0.5 is unguided too: the engines' batch of 2 holds the prompt twice, and the row's scale 0.5
    # Euler ancestral and SDE DPM-Solver++: per-step launches, their noise added on the host between them; PNDM
    # likewise, its x0_prev computed on the host from the earlier outputs
    for kw in ({}, {"guidance_scale": 1.0}, {"guidance_scale": 0.5}, {"boxes": ()}, {"scheduler": "dpm++"},
               {"scheduler": "euler-a"}, {"scheduler": "dpm++-sde"}, {"scheduler": "pndm"}):
        got, want = pipe("a red cat and a lamp", **{**REQUEST, **kw}), ort_fp16(**kw)
        # same FP16 graphs, same noise; but the engines' graphs have the profile's static dims, and ONNX Runtime
        # (running them for the stand-in) then folds and fuses differently in FP16. Measured (4 steps, tiny):
        # latents max 0.0174 / mean 0.0042 (range +-18), decoded and pixels max 0.0035 / mean 3.2e-4 (range
        # +-1). Bounds 3x those; a wrong buffer, row or address moves the result by orders of magnitude more.
        for name, bound in BOUNDS.items():
            assert_close(getattr(got, name), getattr(want, name), *bound, what=(kw, name))
    # LCM's first step jumps to its x0 estimate at t = 999, dividing the UNet's FP16 error by sqrt(alpha) ~ 0.07
    # (measured: latents max 0.086 from ORT FP16): judged against FP16's own gap to FP32 on the same request
    lcm = dict(REQUEST, scheduler="lcm")
    fp32 = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32", device="cpu")("a red cat and a lamp", **lcm)
    assert_within_fp16_noise(pipe("a red cat and a lamp", **lcm), ort_fp16(scheduler="lcm"), fp32, "lcm")


BOUNDS = {"latents": (0.06, 0.015), "decoded": (0.01, 1e-3), "pixels": (0.01, 1e-3)}  # (max, mean), see above


def assert_close(got: np.ndarray, want: np.ndarray, most: float, mean: float, what=None) -> None:
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert diff.max() <= most and diff.mean() <= mean, (what, diff.max(), diff.mean())


def assert_within_fp16_noise(engines, ort16, ort32, what=None) -> None:
    """The engines' image against ONNX Runtime's on the same FP16 graphs: the engines' static graphs fold
    differently in FP16, so they may differ from it by about as much as FP16 differs from FP32, no more.
    Measured (sd1 and sdxl test folders, whose UNet outputs are amplified 20x; 7 cases): in latents, engines vs
    ORT FP16 at most 0.98x (max) and 0.89x (mean) of ORT FP16 vs FP32; images within 10 levels where FP16 vs FP32
    differs by 12 (sd1, guided DDIM), 1-7 levels elsewhere. Bounds: 1.5x the FP16-vs-FP32 gap of the same run."""
    def gap(a, b):
        d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        return d.max(), d.mean()

    (most, mean), (noise_most, noise_mean) = gap(engines.latents, ort16.latents), gap(ort16.latents, ort32.latents)
    assert most <= 1.5 * noise_most + 1e-3 and mean <= 1.5 * noise_mean + 1e-4, (what, most, mean, noise_most)
    (most, mean), (noise_most, noise_mean) = gap(engines.image, ort16.image), gap(ort16.image, ort32.image)
    assert most <= max(4, 1.5 * noise_most) and mean <= max(0.5, 1.5 * noise_mean), (what, most, mean)


def test_each_loop_is_one_graph_captured_once_and_buffers_are_reused(engines):
    art, cudart = engines
    pipe = Pipeline.from_artifacts(art, "trt")
    first = pipe("a red cat and a lamp", **REQUEST)
    step = step_engine(pipe)
    assert step.context.executions == REQUEST["steps"]  # the first image runs directly, then captures
    captured, mallocs, launches = cudart.counts["captures"], cudart.counts["malloc"], cudart.counts["launches"]
    loops = [g for g in cudart.execs.values() if sum(node[0] == "execute" for node in g) == REQUEST["steps"]]
    assert len(loops) == 2  # the denoising loop and the refiner loop (4 steps each here)
    assert all([node[0] for node in g] == ["copy", "execute"] * REQUEST["steps"] for g in loops)  # row copy, engine

    second = pipe("a red cat and a lamp", **REQUEST)
    assert cudart.counts["captures"] == captured and cudart.counts["malloc"] == mallocs  # nothing new
    # one launch per loop and one per other engine call: text (prompts, phrases), decoder, encoder, GAE
    assert cudart.counts["launches"] - launches == 2 + 2 + 1 + 2
    assert step.context.executions == 2 * REQUEST["steps"]  # all from the graph
    np.testing.assert_array_equal(first.pixels, second.pixels)
    pipe(**{**REQUEST, "steps": 6}, prompt="a red cat and a lamp")
    assert cudart.counts["captures"] == captured + 1  # another step count: one more loop graph


def test_graphs_off_runs_per_step_launches_with_the_same_result(engines):
    art, cudart = engines
    pipe = Pipeline.from_artifacts(art, "trt")
    with_graphs = [pipe("a red cat and a lamp", **REQUEST).pixels for _ in range(2)]
    pipe.stages.set_graphs(False)
    captured, launches = cudart.counts["captures"], cudart.counts["launches"]
    without = pipe("a red cat and a lamp", **REQUEST).pixels
    assert cudart.counts["captures"] == captured and cudart.counts["launches"] == launches
    np.testing.assert_array_equal(with_graphs[1], without)


def test_a_loop_that_cannot_be_captured_falls_back_and_says_so_once(monkeypatch, tiny_artifacts, tmp_path, caplog,
                                                                    ort_fp16):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    install(monkeypatch, "10.8.0", capturable=False)
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),), max_boxes=4), report=lambda line: None)
    pipe = Pipeline.from_artifacts(art, "trt")
    with caplog.at_level(logging.WARNING, logger="dbunet.runtime.backends.trt_engine"):
        images = [pipe("a red cat and a lamp", **REQUEST).pixels for _ in range(2)]
    fallbacks = [r for r in caplog.records if "capture failed" in r.getMessage()]
    assert len({r.getMessage().split(":")[0] for r in fallbacks}) == len(fallbacks)  # once per engine
    assert any(r.getMessage().startswith("dbunet_step") for r in fallbacks)
    assert_close(images[1], ort_fp16().pixels, *BOUNDS["pixels"])


def test_one_activation_region_sized_for_the_largest_engine(engines):
    art, cudart = engines
    pipe = Pipeline.from_artifacts(art, "trt")
    pipe("a red cat and a lamp", **REQUEST)
    runners = list(pipe.stages.engines.runners.values())
    assert len(runners) == 6
    sizes = [r.engine.header["device_memory"] for r in runners]
    regions = {r.context.memory for r in runners}
    assert regions == {(pipe.stages.engines.region.ptr, max(sizes))}  # every context shares one allocation
    assert max(sizes) < sum(sizes)


@pytest.mark.parametrize("version", ["10.0.1", "10.3.0", "11.4.0"])
def test_device_memory_api_of_each_tensorrt_release(monkeypatch, tiny_artifacts, tmp_path, version, ort_fp16):
    """10.0 has only device_memory_size and the device_memory setter; 11 only the _v2 size and set_device_memory."""
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    install(monkeypatch, version)
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),), max_boxes=4), report=lambda line: None)
    got = Pipeline.from_artifacts(art, "trt")("a red cat and a lamp", **REQUEST)
    assert_close(got.pixels, ort_fp16().pixels, *BOUNDS["pixels"])


def test_engines_of_another_tensorrt_or_missing_ones_are_refused_in_one_line(engines, monkeypatch):
    art, _ = engines
    pipe = Pipeline.from_artifacts(art, "trt")
    # 5 box phrases: the text encoder's batch range (1 to 4) says it first
    with pytest.raises(InputError, match=r"takes input_ids of shape \(1, 77\) to \(4, 77\), not \(5, 77\)"):
        pipe("x", **{**REQUEST, "boxes": ("0,0,0.5,0.5:a",) * 5})
    cond = Conditioning(*(np.zeros(s, np.float32) for s in ((2, 77, 64), (2, 5, 4), (2, 5, 64), (2, 5))))
    with pytest.raises(InputError, match="at most 4; rebuild with dbunet-build --max-boxes 5"):
        pipe.stages.denoise_step(None, np.zeros((1, 4, 8, 8), np.float32), None, cond)
    with pytest.raises(ArtifactError, match=r"no TensorRT engine for dbunet_step at 128x128 \(built: 64x64\)"):
        Pipeline.from_artifacts(art, "trt")("x", **{**REQUEST, "height": 128, "width": 128})
    install(monkeypatch, "10.9.0")  # the index says 10.8.0
    with pytest.raises(ArtifactError, match="run dbunet-build on this machine"):
        Pipeline.from_artifacts(art, "trt")("x", **REQUEST)
    index = read_index(art)
    for e in index:
        e.device = type(e.device)("10.9.0", e.device.gpu, e.device.compute_capability)
    write_index(art, index)  # an index that lies about the version: TensorRT itself refuses the plan
    with pytest.raises(ArtifactError, match="could not deserialize"):
        Pipeline.from_artifacts(art, "trt")("x", **REQUEST)
    # the messages name the directory as the user gave it, not the descriptor the run pinned it through
    (art / "engines" / "index.json").write_text("{")
    with pytest.raises(ArtifactError, match=f"^{re.escape(str(art / 'engines' / 'index.json'))} is malformed"):
        Pipeline.from_artifacts(art, "trt")
    shutil.rmtree(art / "engines")
    with pytest.raises(ArtifactError, match=f"no TensorRT engines in {re.escape(str(art))}; run dbunet-build "
                                            f"--artifacts {re.escape(str(art))} on"):
        Pipeline.from_artifacts(art, "trt")


def test_bench_reports_engine_times_graph_overhead_and_memory(engines):
    from dbunet.bench.runner import BenchOptions, run_bench
    from dbunet.bench.tensorrt import format_figures

    art, cudart = engines
    report = run_bench(BenchOptions(art, "trt", components=("dbunet_step", "vae_decoder", "refiner_step"),
                                    steps=3, height=64, width=64,
                                    repeat=2, warmup=1))
    assert report.backend == "trt" and report.precision == "fp16" and "dbunet_step" in report.results
    d = report.details
    assert set(d["engine_device_ms"]) == {"text_encoder@any", "gae@any", "dbunet_step@64x64", "vae_decoder@64x64",
                                          "refiner_encoder@64x64", "refiner_step@64x64"}
    assert set(d["host_overhead"]) == {"graph", "per_step"}
    assert device_resources(cudart) == NOTHING  # closed: every event, graph, buffer and stream it made destroyed
    for f in d["host_overhead"].values():
        assert 0 < f["issue_ms_per_step"] <= f["wall_ms_per_step"]
    runners = Pipeline.from_artifacts(art, "trt").stages.engines.runners.values()
    largest = max(r.engine.header["device_memory"] for r in runners)
    assert d["device_memory"]["activation_region_mb"] * 2**20 == largest
    assert "per_step" in format_figures(d) and "activations (shared)" in format_figures(d)


def test_a_plain_sd1_model_runs_on_engines_without_box_inputs(monkeypatch, sd1_artifacts, tmp_path):
    """--arch sd1: engines for text encoder, step and decoder only (no refiner), a step engine with no box
    inputs, and the same bytes as ONNX Runtime FP16 on the same graphs, guided and unguided."""
    art = tmp_path / "sd1"
    shutil.copytree(sd1_artifacts, art)
    install(monkeypatch, "10.8.0")
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),)), report=lambda line: None)
    assert {e.component for e in read_index(art)} == {"text_encoder", "dbunet_step", "vae_decoder"}
    pipe = Pipeline.from_artifacts(art, "trt")
    step = next(e for e in read_index(art) if e.component == "dbunet_step")
    assert set(step.shapes) == {"x", "x0_prev", "coeffs", "text"} and step.shapes["text"][0][0] == 2
    ort16 = Pipeline.from_artifacts(sd1_artifacts, "ort", "fp16", device="cpu")
    ort32 = Pipeline.from_artifacts(sd1_artifacts, "ort", "fp32", device="cpu")
    latents = np.random.default_rng(2).standard_normal((1, 4, 16, 16)).astype(np.float32)
    for kw in ({}, {"guidance_scale": 1.0}, {"scheduler": "euler"}):
        run = dict(steps=4, latents=latents, **kw)
        assert_within_fp16_noise(*(p("a photo of a cat", **run) for p in (pipe, ort16, ort32)), what=kw)
    with pytest.raises(InputError, match="no box conditioning"):
        pipe("a photo of a cat", steps=2, boxes=["0.1,0.1,0.5,0.5:a cat"])


def test_an_sdxl_model_runs_on_engines_with_both_encoders_and_micro_conditioning(monkeypatch, sdxl_artifacts,
                                                                                   tmp_path):
    """--arch sdxl: engines for both text encoders, the step (text_embeds and time_ids at the CFG batch of 2,
    the prompt twice when unguided) and the decoder (FP32: force_upcast); the same image as ONNX Runtime FP16."""
    art = tmp_path / "sdxl"
    shutil.copytree(sdxl_artifacts, art)
    install(monkeypatch, "10.8.0")
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),)), report=lambda line: None)
    assert {e.component for e in read_index(art)} == {"text_encoder", "text_encoder_2", "dbunet_step", "vae_decoder"}
    step = next(e for e in read_index(art) if e.component == "dbunet_step")
    assert set(step.shapes) == {"x", "x0_prev", "coeffs", "text", "text_embeds", "time_ids"}
    assert list(step.shapes["time_ids"][0]) == [2, 6]
    pipe = Pipeline.from_artifacts(art, "trt")
    ort16 = Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp16", device="cpu")
    ort32 = Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp32", device="cpu")
    latents = np.random.default_rng(2).standard_normal((1, 4, 16, 16)).astype(np.float32)
    for kw in ({}, {"guidance_scale": 1.0}, {"negative_prompt": "blurry"}, {"scheduler": "ddim"}):
        run = dict(steps=4, latents=latents, scheduler="euler") | kw
        assert_within_fp16_noise(*(p("a photo of a cat", **run) for p in (pipe, ort16, ort32)), what=kw)


def test_sdxl_with_its_refiner_runs_on_engines(monkeypatch, sdxl_refined_artifacts, tmp_path):
    """SDXL's refiner gets its own step engine (CFG batch of 2, the second encoder's text, five time_ids) and its own
    whole-loop graph after the base's; the same image as ONNX Runtime FP16."""
    art = tmp_path / "sdxl-refined"
    shutil.copytree(sdxl_refined_artifacts, art)
    install(monkeypatch, "10.8.0")
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),)), report=lambda line: None)
    step = next(e for e in read_index(art) if e.component == "latent_refiner_step")
    assert list(step.shapes["time_ids"][0]) == [2, 5] and list(step.shapes["text"][0]) == [2, 77, 48]
    pipe = Pipeline.from_artifacts(art, "trt")
    ort16 = Pipeline.from_artifacts(sdxl_refined_artifacts, "ort", "fp16", device="cpu")
    ort32 = Pipeline.from_artifacts(sdxl_refined_artifacts, "ort", "fp32", device="cpu")
    latents = np.random.default_rng(2).standard_normal((1, 4, 16, 16)).astype(np.float32)
    for kw in ({}, {"guidance_scale": 1.0}, {"scheduler": "ddim", "high_noise_frac": 0.6}):
        run = dict(steps=6, refiner_steps=6, latents=latents, scheduler="euler") | kw
        assert_within_fp16_noise(*(p("a photo of a cat", **run) for p in (pipe, ort16, ort32)), what=kw)


def test_auto_takes_the_engines_unless_whole_loops_are_turned_off(engines):
    """TensorRT always runs whole loops (CUDA graphs): `--no-whole-loops` without --backend goes to ONNX Runtime."""
    from dbunet.backends import choose_backend

    art, _ = engines
    assert choose_backend(art)[0] == "trt" and choose_backend(art, whole_loops=True)[0] == "trt"
    assert choose_backend(art, whole_loops=False)[0] == "ort"


def device_resources(cudart: StandInCudart) -> dict:
    """What is still allocated or created on the stand-in device."""
    return {"memory": len(cudart.allocations), "graphs": len(cudart.graphs), "graph execs": len(cudart.execs),
            "events": len(cudart.events), "streams": len(cudart.streams)}


NOTHING = {"memory": 0, "graphs": 0, "graph execs": 0, "events": 0, "streams": 0}


def test_closing_a_pipeline_frees_every_device_resource_it_made(engines):
    """Engines, buffers, the activation region, the loop graphs and the CUDA stream of the backend the pipeline
    made from its name; also where loading failed, and where `auto` only looked for engines."""
    from dbunet.backends import choose_backend, open_pipeline

    art, cudart = engines
    with open_pipeline(art, "trt") as pipe:
        pipe("a red cat and a lamp", **REQUEST)
        assert device_resources(cudart)["graph execs"] >= 2 and cudart.streams
    assert device_resources(cudart) == NOTHING
    assert choose_backend(art)[0] == "trt" and device_resources(cudart) == NOTHING
    with open_pipeline(art, "trt", whole_loops=True) as pipe:
        with pytest.raises(ArtifactError, match="no TensorRT engine for dbunet_step at 128x128"):
            pipe("x", **{**REQUEST, "height": 128, "width": 128})
    (art / "engines" / "index.json").write_text("{")
    with pytest.raises(ArtifactError, match="is malformed"):
        Pipeline.from_artifacts(art, "trt")
    assert device_resources(cudart) == NOTHING


def test_a_failed_load_reports_its_own_error_when_closing_the_backend_fails_too(engines, monkeypatch):
    from dbunet.errors import CudaError
    from dbunet.runtime.backends.tensorrt import TrtBackend

    def fails(self):
        raise CudaError("cudaStreamDestroy: an illegal memory access was encountered")

    art, _ = engines
    monkeypatch.setattr(TrtBackend, "close", fails)
    (art / "engines" / "index.json").write_text("{")
    with pytest.raises(ArtifactError, match="is malformed"):
        Pipeline.from_artifacts(art, "trt")


def test_a_backend_handed_to_pipelines_stays_open_for_the_next(engines):
    from dbunet.runtime.backends.tensorrt import TrtBackend

    art, cudart = engines
    backend = TrtBackend()
    for _ in range(2):
        with Pipeline.from_artifacts(art, backend) as pipe:
            pipe("a red cat and a lamp", **REQUEST)
        assert device_resources(cudart) == {**NOTHING, "streams": 1}  # the caller's backend and its stream
    backend.close()
    assert device_resources(cudart) == NOTHING
