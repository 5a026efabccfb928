"""--backend openvino on the same artifacts: FP32 parity with ONNX Runtime FP32, BF16 where the CPU has it,
the artifacts directory untouched, and --backend auto's choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason='openvino is not installed (pip install -e ".[openvino]")')

from dbunet.errors import ConfigError  # noqa: E402
from dbunet.runtime import Pipeline  # noqa: E402
from dbunet.runtime.backends import openvino as ov_backend  # noqa: E402

REQUEST = dict(steps=4, seed=11, height=64, width=64, refiner_steps=3,
               boxes=("0.1,0.1,0.6,0.7:a red cat", "0.5,0.2,0.9,0.9:a lamp"))


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts, tmp_path_factory):
    art = tmp_path_factory.mktemp("ov") / "art"
    shutil.copytree(tiny_artifacts, art)
    return art


@pytest.fixture(scope="module")
def ort_fp32(artifacts):
    return Pipeline.from_artifacts(artifacts, "ort", "fp32")("a red cat and a lamp", **REQUEST)


def test_fp32_image_matches_onnx_runtime_and_leaves_the_artifacts_alone(artifacts, ort_fp32, tmp_path, monkeypatch,
                                                                          snapshot):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = snapshot(artifacts)
    pipe = Pipeline.from_artifacts(artifacts, "openvino", "fp32")
    got = pipe("a red cat and a lamp", **REQUEST)
    assert pipe.precision == "fp32"
    diff = np.abs(got.image.astype(int) - ort_fp32.image.astype(int))
    # the acceptance bound: mean <= 1, max <= 8 uint8 levels; measured (tiny, AMD EPYC): mean 0.0002, max 1
    assert diff.mean() <= 1 and diff.max() <= 8
    # finer, in float: FP32 both, the same graphs with different kernels; measured max 7e-6
    np.testing.assert_allclose(got.pixels, ort_fp32.pixels, rtol=0, atol=1e-4)
    assert snapshot(artifacts) == before  # the model cache lives in the user's cache folder
    assert any((tmp_path / "cache" / "dbunet" / "openvino").iterdir())


@pytest.mark.skipif(not ov_backend.has_bf16(), reason="this CPU has neither AVX512-BF16 nor AMX")
def test_bf16_runs_and_stays_near_fp32(artifacts, ort_fp32, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipe = Pipeline.from_artifacts(artifacts, "openvino", "bf16")
    got = pipe("a red cat and a lamp", **REQUEST)
    assert pipe.precision == "bf16"
    assert pipe.stages.graphs["dbunet_step"].compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    err = float(np.abs(got.pixels - ort_fp32.pixels).max())
    # BF16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per op, FP32 accumulation); through 4 denoising
    # steps, the decoder and 3 refiner steps of the tiny model, measured on an AMD EPYC (AVX512-BF16) and on an
    # Intel Xeon (AMX) alike: max 0.047 of the [-1, 1] range, mean 0.0055 (uint8: max 6, mean 0.7). Bound: 4x those
    assert err <= 0.2 and float(np.abs(got.pixels - ort_fp32.pixels).mean()) <= 0.022
    assert err > 0  # it really ran in BF16 (FP32 here would be ~1e-6)


def test_bf16_refused_on_a_cpu_without_it(artifacts, monkeypatch):
    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(ConfigError, match="bf16 needs a CPU with AVX512-BF16 or AMX"):
        Pipeline.from_artifacts(artifacts, "openvino", "bf16")


AMX = {"avx512f", "amx_bf16", "avx512_bf16"}
AVX512_BF16 = {"avx512f", "avx512_bf16"}
AVX2 = {"avx2", "fma"}


@pytest.mark.parametrize("flags,large,expected", [
    (AMX, True, "openvino"), (AVX512_BF16, True, "openvino"), (AVX2, True, "ort"),  # BF16 needs the CPU for it
    (AMX, False, "ort"), (AVX512_BF16, False, "ort"),  # a small model runs faster on ONNX Runtime FP32
])
def test_auto_picks_openvino_bf16_where_the_cpu_and_the_model_gain(artifacts, monkeypatch, flags, large, expected):
    from dbunet import backends as pipeline

    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: flags)
    if large:  # the tiny model stands in for one past the size where BF16 pays off
        monkeypatch.setattr(pipeline, "BF16_MIN_WORK", 1.0)
    backend, why = pipeline.choose_backend(artifacts)  # no TensorRT and no CUDA provider on this machine
    assert backend == expected and why
    if expected == "openvino":
        assert Pipeline.from_artifacts(artifacts, "auto").precision == "bf16"


@pytest.mark.parametrize("flags", [AMX, AVX512_BF16, AVX2], ids=["amx", "avx512-bf16", "avx2"])
def test_auto_never_makes_an_explicit_option_fail(artifacts, monkeypatch, flags):
    """--precision fp16 or --device without --backend: never handed to OpenVINO, whatever the CPU."""
    from dbunet import backends as pipeline

    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: flags)
    monkeypatch.setattr(pipeline, "BF16_MIN_WORK", 1.0)
    assert pipeline.choose_backend(artifacts, "fp16")[0] == "ort"
    assert pipeline.choose_backend(artifacts, "fp32")[0] == "ort"
    assert pipeline.choose_backend(artifacts, None, "cpu")[0] == ("openvino" if flags != AVX2 else "ort")
    assert pipeline.choose_backend(artifacts, None, "tpu")[0] == "ort"  # whose error names the valid devices
    assert pipeline.choose_backend(artifacts, None, "cpu", whole_loops=True)[0] == "ort"  # OpenVINO has no loops
    assert pipeline.choose_backend(artifacts, None, "cpu", whole_loops=False)[0] == ("openvino" if flags != AVX2
                                                                                     else "ort")
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda"):
        Pipeline.from_artifacts(artifacts, "auto", device="tpu")
    assert Pipeline.from_artifacts(artifacts, "auto", "fp16").precision == "fp16"


def test_the_size_model_puts_the_measured_models_on_either_side():
    from dbunet.backends import BF16_MIN_WORK, denoiser_work
    from dbunet.config import sd15, shapes

    at_256 = sd15()
    at_256 = type(at_256)(**{**vars(at_256), "defaults": type(at_256.defaults)(height=256, width=256)})
    assert denoiser_work(shapes()) < BF16_MIN_WORK < denoiser_work(at_256)


def test_graphs_with_external_data_load_without_touching_the_directory(artifacts, ort_fp32, tmp_path, monkeypatch,
                                                                        snapshot):
    """OpenVINO reads external data only beside the model file: the inlined graph goes to a temporary folder
    with links to the data, never into the artifacts directory."""
    import json

    import onnx

    from dbunet.manifest import sha256_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    art = tmp_path / "art"
    shutil.copytree(artifacts, art)
    graph = art / "fp32" / "gae.onnx"
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="gae.onnx.data", size_threshold=1024)
    m = json.loads((art / "manifest.json").read_text())
    entry = next(a for a in m["artifacts"] if a["component"] == "gae" and a["precision"] == "fp32")
    entry["files"] = ["fp32/gae.onnx", "fp32/gae.onnx.data"]
    entry["sha256"] = {f: sha256_file(art / f) for f in entry["files"]}
    (art / "manifest.json").write_text(json.dumps(m))
    before = snapshot(art)
    got = Pipeline.from_artifacts(art, "openvino", "fp32")("a red cat and a lamp", **REQUEST)
    np.testing.assert_allclose(got.pixels, ort_fp32.pixels, rtol=0, atol=1e-4)
    assert snapshot(art) == before


def test_a_plain_sd1_model_runs_on_openvino(sd1_artifacts, tmp_path, monkeypatch):
    """--arch sd1 artifacts (no refiner, no box inputs) on OpenVINO FP32 vs ONNX Runtime FP32, same latents."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for side in (16, 17):  # 17: a latent the UNet cannot halve evenly (its upsampling meets each skip's size)
        latents = np.random.default_rng(4).standard_normal((1, 4, side, side)).astype(np.float32)
        size = dict(height=side * 4, width=side * 4)
        want = Pipeline.from_artifacts(sd1_artifacts, "ort", "fp32")("a photo of a cat", steps=4, latents=latents,
                                                                      **size)
        got = Pipeline.from_artifacts(sd1_artifacts, "openvino", "fp32")("a photo of a cat", steps=4,
                                                                          latents=latents, **size)
        # FP32 both; measured max 1.9e-4 (16) and 1.4e-4 (17) of the [-1, 1] range (guided 7.5, real token ids:
        # kernels that sum in another order), bound about 5x that
        np.testing.assert_allclose(got.pixels, want.pixels, rtol=0, atol=1e-3)


def test_compiled_models_are_cached_per_precision_and_checked_before_use(artifacts, ort_fp32, tmp_path, monkeypatch):
    """The cache folder names everything that changes a compiled model; blobs that are not the ones recorded
    (another model's, copied in) are thrown away, not loaded."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "dbunet" / "openvino"
    Pipeline.from_artifacts(artifacts, "openvino", "fp32")
    folders = sorted(p.name for p in root.iterdir())
    assert folders and all("-fp32-ov" in f for f in folders)  # one folder per graph and precision
    for f in root.iterdir():
        record = json.loads((f / ov_backend.CACHE_RECORD).read_text())
        assert record and set(record) == {p.name for p in f.iterdir()} - {ov_backend.CACHE_RECORD}
    if ov_backend.has_bf16():
        Pipeline.from_artifacts(artifacts, "openvino", "bf16")
        assert {p.name.split("-")[1] for p in root.iterdir()} == {"fp32", "bf16"}  # never one key for both
    # another model's blobs copied over this one's: refused, compiled anew, and the image is right
    decoder = next(f for f in root.iterdir() if f.name.endswith(folders[0].split("-", 1)[1]) and f.name != folders[0])
    victim = root / folders[0]
    for blob in victim.iterdir():
        if blob.name != ov_backend.CACHE_RECORD:
            donor = next(b for b in decoder.iterdir() if b.name != ov_backend.CACHE_RECORD)
            shutil.copyfile(donor, blob)
    got = Pipeline.from_artifacts(artifacts, "openvino", "fp32")("a red cat and a lamp", **REQUEST)
    np.testing.assert_allclose(got.pixels, ort_fp32.pixels, rtol=0, atol=1e-4)


@pytest.mark.parametrize("record", ["{not json", "[" * 100_000 + "]" * 100_000, "[1, 2]"])
def test_an_unreadable_cache_record_empties_that_folder_and_keeps_the_cache_on(artifacts, tmp_path, monkeypatch,
                                                                               caplog, record):
    # before: an unparsable record turned the whole cache off, and one nested too deeply raised RecursionError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = ov_backend.default_cache_dir() / "some-model"
    folder.mkdir(parents=True)
    (folder / "blob").write_bytes(b"a compiled model")
    (folder / ov_backend.CACHE_RECORD).write_text(record)
    assert ov_backend.usable_cache(folder) == folder
    assert not any(folder.iterdir())  # the blob it could not vouch for is gone, the record too
    assert not any("cache is off" in r.getMessage() for r in caplog.records)


def test_a_cache_folder_that_cannot_be_written_costs_speed_not_the_run(artifacts, ort_fp32, tmp_path, monkeypatch,
                                                                        caplog):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    got = Pipeline.from_artifacts(artifacts, "openvino", "fp32")("a red cat and a lamp", **REQUEST)
    np.testing.assert_allclose(got.pixels, ort_fp32.pixels, rtol=0, atol=1e-4)
    said = [r.getMessage() for r in caplog.records if "cache is off" in r.getMessage()]
    # one warning for the run, not one per model (each named its own folder, so six reached the screen before)
    assert said == [f"OpenVINO's compiled-model cache is off: {blocked}/dbunet/openvino cannot be used "
                    "(Not a directory)"], said


@pytest.mark.parametrize("value, under_home", [("relative/cache", True), ("", True), ("/abs/cache", False)])
def test_a_relative_xdg_cache_home_is_ignored_as_the_spec_says(monkeypatch, value, under_home):
    from dbunet.runtime.backends.openvino import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", value)
    monkeypatch.setenv("HOME", "/home/someone")
    expected = Path("/home/someone/.cache") if under_home else Path(value)
    assert default_cache_dir() == expected / "dbunet" / "openvino"


def test_a_graph_that_is_not_the_declared_one_is_refused_at_load(artifacts, tmp_path, monkeypatch):
    """OpenVINO would run a graph whose outputs disagree with the manifest; the load refuses it in one line."""
    from dbunet.errors import ArtifactError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    art = tmp_path / "art"
    shutil.copytree(artifacts, art)
    m = json.loads((art / "manifest.json").read_text())
    gae = next(a for a in m["artifacts"] if a["component"] == "gae" and a["precision"] == "fp32")
    gae["io"]["outputs"][0]["name"] = "z_other"
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="is not the graph its manifest declares"):
        Pipeline.from_artifacts(art, "openvino", "fp32")


_MANY_SIZES = """
import resource, sys
import numpy as np
from pathlib import Path
from dbunet.manifest import Manifest
from dbunet.runtime.backends.openvino import OvBackend
art = Path(sys.argv[1])
a = Manifest.read(art).find("vae_decoder", "fp32")
backend = OvBackend("cpu", cache_dir=None)
backend.artifact_precision("fp32")
graph = backend.load(art / a.path, a.spec, "x")
def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
sizes = [(h, w) for h in range(8, 20) for w in range(8, 20)]
for i, (h, w) in enumerate(sizes):
    graph.run({"latent": np.zeros((1, 4, h, w), np.float32)})
    if i == 10:
        start = rss_mb()
print(rss_mb() - start)
"""


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_memory_does_not_grow_with_every_image_size(artifacts):
    """OpenVINO kept ~1.6 MB per distinct input shape (kernels per shape, oneDNN primitives): 144 decoder sizes
    grew a process ~214 MB. With both caches capped it was ~10-15 MB here; the bound leaves room for noise."""
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    proc = subprocess.run([sys.executable, "-c", _MANY_SIZES, str(artifacts)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown = float(proc.stdout.strip().splitlines()[-1])
    assert grown < 80, f"{grown:.0f} MB over 144 image sizes"


def test_an_sdxl_model_runs_on_openvino_as_on_onnx_runtime(sdxl_artifacts, tmp_path):
    """--arch sdxl through the same graph stages: both text encoders, micro-conditioning; FP32 image within
    a level of ONNX Runtime's (measured: max 1, as for the DB-UNet cascade)."""
    latents = np.random.default_rng(4).standard_normal((1, 4, 16, 16)).astype(np.float32)
    run = dict(steps=4, scheduler="euler", latents=latents, negative_prompt="blurry")
    ov = Pipeline.from_artifacts(sdxl_artifacts, ov_backend.OvBackend("cpu", cache_dir=tmp_path / "cache"), "fp32")
    want = Pipeline.from_artifacts(sdxl_artifacts, "ort", "fp32")("a photo of a cat", **run)
    got = ov("a photo of a cat", **run)
    assert np.abs(got.image.astype(int) - want.image.astype(int)).max() <= 1


def test_sdxl_with_its_refiner_runs_on_openvino_as_on_onnx_runtime(sdxl_refined_artifacts, tmp_path):
    """SDXL's refiner step graph (the second encoder's text, five time_ids) through OpenVINO: FP32 image within a
    level of ONNX Runtime's."""
    latents = np.random.default_rng(4).standard_normal((1, 4, 16, 16)).astype(np.float32)
    run = dict(steps=6, refiner_steps=6, high_noise_frac=0.7, scheduler="dpm++", latents=latents)
    ov = Pipeline.from_artifacts(sdxl_refined_artifacts, ov_backend.OvBackend("cpu", cache_dir=tmp_path / "cache"),
                                 "fp32")
    want = Pipeline.from_artifacts(sdxl_refined_artifacts, "ort", "fp32")("a photo of a cat", **run)
    got = ov("a photo of a cat", **run)
    assert np.abs(got.image.astype(int) - want.image.astype(int)).max() <= 1


@pytest.mark.parametrize(("release", "why"), [
    ("2024.0.0-14509-34caeefd078-releases/2024/0", "ONNX reader mistranslates"),
    ("2024.2.0", "ONNX reader mistranslates"),
    ("2025.1.0-18503-fa4c6a2d2ba-releases/2025/1", "GeLU fusion"),
])
def test_a_release_that_cannot_load_the_graphs_is_refused_and_auto_passes_over_it(artifacts, monkeypatch, release,
                                                                                  why):
    """Each release run on the tiny preset's graphs: 2024.0-2024.2 and 2025.1 fail inside OpenVINO with a source
    location for a message (dbunet.releases); --backend openvino names the release and the pin, auto takes ONNX
    Runtime instead."""
    import importlib.metadata

    import openvino

    from dbunet import backends

    monkeypatch.setattr(openvino, "__version__", release)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: release.split("-")[0])
    with pytest.raises(ConfigError, match=rf"OpenVINO {release.split('-')[0]} cannot load dbunet's graphs \(its "
                                          rf"{why}.*\); pip install 'openvino>=2024.3,!=2025.1.\*'"):
        Pipeline.from_artifacts(artifacts, "openvino")
    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: AMX)  # where auto would take OpenVINO BF16
    monkeypatch.setattr(backends, "BF16_MIN_WORK", 1.0)
    assert backends.choose_backend(artifacts)[0] == "ort"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2024.3.0")
    assert backends.choose_backend(artifacts)[0] == "openvino"


def test_a_load_failure_says_what_openvino_says_without_its_source_locations():
    """OpenVINO 2024.2's refusal of the refiner encoder, as it printed it (the first line was all dbunet showed)."""
    said = ("Exception from src/inference/src/cpp/core.cpp:94:\n"
            "Check 'false' failed at src/frontends/onnx/frontend/src/frontend.cpp:144:\n"
            "FrontEnd API failed with GeneralFailure:\nErrors during ONNX translation:\n"
            "While validating ONNX node '<Node(Gemm): /encoder/proj_out/Gemm>': Check '(arg0_rank != 0 && "
            "arg1_rank != 0)' failed at src/core/shape_inference/include/matmul_shape_inference.hpp:26:\n"
            "While validating node 'opset1::MatMul MatMul_483' with friendly_name 'MatMul_483':\n"
            "Scalars are not supported as MatMul inputs.\n\n")
    got = ov_backend.load_failure(RuntimeError(said))
    assert got.startswith("While validating ONNX node '<Node(Gemm): /encoder/proj_out/Gemm>'")
    assert got.endswith(" ... Scalars are not supported as MatMul inputs.") and "core.cpp" not in got
    assert ov_backend.load_failure(RuntimeError("Exception from src/x.cpp:1:")) == "Exception from src/x.cpp:1:"
