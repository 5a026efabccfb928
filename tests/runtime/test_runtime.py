"""The torch-free runtime: end-to-end parity with TorchPipeline, and no torch import."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from dbunet.errors import ArtifactError
from dbunet.runtime import Pipeline
from dbunet.runtime.tokenizer import ClipTokenizer

# Image parity with TorchPipeline and with an independent reference loop, in float: tests/test_reference_loop.py


def test_runtime_tokenizer_matches_the_reference(tiny_artifacts):
    from dbunet.models.cascade import load_model
    from dbunet.models.components import tokenize

    ref = load_model(tiny_artifacts / "model").tokenizer
    texts = ["a photo of a cat", "A  Photo, of a CAT!", "", "zebra " * 100, "ünïcödé prompt"]
    assert np.array_equal(ClipTokenizer(tiny_artifacts / "tokenizer.json", 77)(texts), tokenize(ref, texts, 77))


def test_runtime_never_imports_torch(tiny_artifacts):
    code = (
        "import sys\n"
        "from dbunet.runtime import Pipeline\n"
        f"p = Pipeline.from_artifacts({str(tiny_artifacts)!r})\n"
        "p('a cat', steps=1, refiner_steps=1, boxes=['0,0,0.5,0.5:cat'])\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers') "
        "or m.startswith(('dbunet.models', 'dbunet.export')))\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_hash_mismatch_and_other_versions_are_refused(tiny_artifacts, tmp_path):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(tiny_artifacts, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["dbunet_version"] = "0.0.1"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="re-export"):
        Pipeline.from_artifacts(art)
    shutil.copy(tiny_artifacts / "manifest.json", art / "manifest.json")
    with open(art / "fp32" / "dbunet_step.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="corrupted"):
        Pipeline.from_artifacts(art, precision="fp32")


@pytest.mark.parametrize("given", [{"device": "cpu"}, {"threads": 1}, {"whole_loops": True}])
def test_settings_given_beside_a_backend_object_are_refused_not_ignored(tiny_artifacts, given):
    """A backend object was made with its own device, threads and whole_loops; the same given to from_artifacts
    beside it used to be dropped silently (a caller asking for one thread got the backend's own count)."""
    from dbunet.errors import ConfigError
    from dbunet.runtime.backends.onnxruntime import OrtBackend

    backend = OrtBackend("cpu")
    name = next(iter(given))
    with pytest.raises(ConfigError, match=f"{name}=.*OrtBackend.*its own settings"):
        Pipeline.from_artifacts(tiny_artifacts, backend, "fp32", **given)
    with Pipeline.from_artifacts(tiny_artifacts, backend, "fp32", device="auto") as pipe:  # the defaults: accepted
        assert pipe.backend is backend


def test_run_command_imports_no_torch(tiny_artifacts, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dbunet.cli.run", "--artifacts", str(tiny_artifacts), "--prompt",
         "a cat", "--steps", "1", "--refiner-steps", "1", "--quiet", "--output", str(tmp_path / "o.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "dbunet.runtime.pipeline" in imported and "onnxruntime" in imported
    assert not [m for m in imported if m.split(".")[0] in ("torch", "diffusers", "transformers")]
    if importlib.util.find_spec("tensorrt") is None:  # `auto` passes over --backend trt without its CUDA bindings
        assert not [m for m in imported if m.startswith("cuda.bindings")]


def test_outputs_written_in_place_match_a_plain_run_and_never_alias(tiny_artifacts):
    """Outputs bound to fresh numpy arrays (the step's x_next and x0, text) and left to ONNX Runtime (the VAE
    decoder's image size does not follow from its inputs) equal a plain InferenceSession.run of the same graph
    (its attentions rewritten as the backend loads them)."""
    import onnxruntime as ort

    from dbunet.export.graphs import sample_inputs
    from dbunet.export.specs import default_sizes
    from dbunet.runtime.backends.onnxruntime import _graph_source

    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32")
    sizes = default_sizes(pipe.config, batch=2, boxes=3)
    for name in ("dbunet_step", "text_encoder", "vae_decoder"):
        graph = pipe.stages.graphs[name]
        feeds = sample_inputs(graph.spec, sizes, pipe.config.text.vocab_size)
        first, second = graph.run(feeds), graph.run(feeds)
        options = ort.SessionOptions()
        source, _ = _graph_source(tiny_artifacts / "fp32" / f"{name}.onnx", options, fuse=True)
        plain = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feeds)
        for a, b, ref in zip(first, second, plain, strict=True):
            np.testing.assert_array_equal(a, ref)
            assert not np.shares_memory(a, b)  # a later call never overwrites an earlier result


def test_a_negative_prompt_guidance_does_not_run_with_is_said(tiny_artifacts, caplog):
    """At a guidance scale of 1 or less only the prompt runs (as diffusers, which drops a negative prompt silently):
    the run says the negative prompt was not used, and says nothing where guidance runs or none was given."""
    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32")
    said = "the negative prompt is not used at guidance scale"
    for options, warned in (({"negative_prompt": "blurry", "guidance_scale": 1.0}, True),
                            ({"negative_prompt": "blurry", "guidance_scale": 1.5}, False),
                            ({"guidance_scale": 0.5}, False)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            pipe("a cat", steps=2, refiner_steps=0, **options)
        assert (said in caplog.text) == warned, (options, caplog.text)
