"""dbunet-run and dbunet-export as a user meets them: outputs, and one clear line for each mistake."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from locales import ASCII_LOCALE
from PIL import Image

from dbunet.cli import export as export_cli
from dbunet.cli import run as run_cli


def _run(argv, capsys):
    code = run_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_writes_png_with_provenance(tiny_artifacts, tmp_path, capsys):
    out = tmp_path / "cat.png"
    code, stdout, stderr = _run(["--artifacts", str(tiny_artifacts), "--prompt", "a cat",
                                 "--box", "0.1,0.1,0.6,0.8:a cat",
                                 "--steps", "3", "--seed", "5", "--draw-boxes", "--output", str(out)], capsys)
    assert code == 0, stderr
    img = Image.open(out)
    assert img.size == (128, 128) and img.mode == "RGB"
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert img.text["prompt"] == "a cat" and img.text["seed"] == "5"
    assert "negative_prompt" not in img.text  # none given: not recorded as "", which SDXL encodes differently
    assert json.loads(img.text["boxes"]) == ["0.1,0.1,0.6,0.8:a cat"]
    assert img.text["artifact_hash"] == manifest["weights_sha256"]
    assert "denoise (3 steps" in stderr and "total" in stderr  # the timing table
    assert "backend: " in stderr  # --backend auto (the default) says what it chose
    assert "wrote" in stdout


def test_karras_sigmas_asked_for_are_drawn_and_recorded(tiny_artifacts, tmp_path, capsys):
    """--karras-sigmas changes the sampler's sigmas (the image) and the PNG says it was asked; a run that leaves it
    out records nothing, its artifacts' schedule decides."""
    images = {}
    for flag in ("--karras-sigmas", "--no-karras-sigmas", None):
        out = tmp_path / f"{flag}.png"
        code, _, stderr = _run(["--artifacts", str(tiny_artifacts), "--prompt", "a cat", "--scheduler", "dpm++",
                                "--steps", "4", "--quiet", "--output", str(out), *([flag] if flag else [])], capsys)
        assert code == 0, stderr
        img = Image.open(out)
        images[flag] = np.asarray(img)
        assert img.text.get("karras_sigmas") == {"--karras-sigmas": "true", "--no-karras-sigmas": "false"}.get(flag)
    assert np.array_equal(images["--no-karras-sigmas"], images[None])  # the tiny model's schedule has none
    assert not np.array_equal(images["--karras-sigmas"], images[None])


@pytest.mark.parametrize(("artifacts", "options", "says"), [
    ("tiny_artifacts", ["--refiner-steps", "2", "--refiner-strength", "0.5"], "2 steps at strength 0.5"),
    ("tiny_artifacts", ["--refiner-steps", "0"], "none"),
    ("sdxl_refined_artifacts", ["--refiner-steps", "6", "--high-noise-frac", "0.7"],
     "6 steps from high noise fraction 0.7"),
    ("sdxl_refined_artifacts", ["--refiner-steps", "0"], "none"),
    ("sd1_artifacts", [], None),
])
def test_the_png_says_which_refiner_ran_and_how(request, tmp_path, capsys, artifacts, options, says):
    """Provenance names what reached the image. Before, every PNG said "N steps at strength S": SDXL's refiner,
    which starts at the high noise fraction, was recorded with the DiffuseGAE refiner's unused strength and without
    its fraction, and a model with no refiner claimed one."""
    out = tmp_path / "out.png"
    code, _, stderr = _run(["--artifacts", str(request.getfixturevalue(artifacts)), "--prompt", "a cat", "--steps",
                            "4", "--quiet", "--output", str(out), *options], capsys)
    assert code == 0, stderr
    assert Image.open(out).text.get("refiner") == says


def test_a_utf8_prompt_under_an_ascii_locale_is_drawn_as_typed(tiny_artifacts, tmp_path):
    # an ASCII locale decodes argv as ASCII: every byte of a "\u00e9" arrived as a surrogate and the prompt was
    # refused as "not text"; UTF-8 bytes are read as UTF-8
    out = tmp_path / "caf\u00e9.png"
    done = subprocess.run([sys.executable, "-m", "dbunet.cli.run", "--artifacts", str(tiny_artifacts), "--prompt",
                           "a caf\u00e9 \u2014 a cat", "--negative-prompt", "fl\u00fb", "--box",
                           "0.1,0.1,0.6,0.8:a c\u00e4t", "--steps", "2", "--refiner-steps", "0", "--quiet",
                           "--output", str(out)], env=ASCII_LOCALE, capture_output=True, text=True,
                          encoding="utf-8")
    assert done.returncode == 0, done.stderr
    img = Image.open(out)
    assert img.text["prompt"] == "a caf\u00e9 \u2014 a cat" and img.text["negative_prompt"] == "fl\u00fb"
    assert json.loads(img.text["boxes"]) == ["0.1,0.1,0.6,0.8:a c\u00e4t"]


def test_run_shows_warnings_with_their_level_and_module(tiny_artifacts, tmp_path):
    """A warning of a run (here: a negative prompt guidance does not run with) reaches stderr as export's and
    build's do, "WARNING module: ...". Before, dbunet-run set no logging up and Python printed the bare message."""
    done = subprocess.run([sys.executable, "-m", "dbunet.cli.run", "--artifacts", str(tiny_artifacts), "--prompt",
                           "a cat", "--negative-prompt", "blurry", "--guidance-scale", "1", "--steps", "2",
                           "--refiner-steps", "0", "--quiet", "--output", str(tmp_path / "cat.png")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "WARNING dbunet.generation: the negative prompt is not used at guidance scale 1:" in done.stderr


def test_torch_backend_runs_the_reference(tiny_artifacts, tmp_path, capsys):
    code, stdout, stderr = _run(["--artifacts", str(tiny_artifacts), "--prompt", "a cat", "--steps", "2", "--backend",
                                 "torch", "--output", str(tmp_path / "t.png"), "--quiet"], capsys)
    assert code == 0, stderr
    assert "torch/fp32" in stdout and stderr == ""


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--box", "0.1,0.1,0.5"], "malformed box"),
        (["--box", "a,b,c,d:cat"], "coordinates must be numbers"),
        (["--box", "0.1,0.1,1.2,0.5:cat"], r"\[0, 1\]"),
        (["--box", "0.5,0.1,0.5,0.9:cat"], "x1 > x0"),
        (["--box", "0,0,1,1:cat"] * 31, "at most 30"),
        (["--steps", "0"], "steps must be"),
        (["--guidance-scale", "nan"], "guidance scale"),
        (["--guidance-scale", "inf"], "guidance scale"),
        (["--height", "100"], "multiple of 8"),
        (["--output", "x.jpg"], ".png"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tiny_artifacts, tmp_path, capsys, extra, message):
    code, _, stderr = _run(["--artifacts", str(tiny_artifacts), "--prompt", "a cat", "--output",
                            str(tmp_path / "o.png"), *extra] if "--output" not in extra else
                           ["--artifacts", str(tiny_artifacts), "--prompt", "a cat", *extra], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert pytest.importorskip("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "o.png").exists()


def _broken_copy(tiny_artifacts, tmp_path, damage):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    damage(art)
    return art


def _corrupt(art):
    data = bytearray((art / "fp32" / "vae_decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "fp32" / "vae_decoder.onnx").write_bytes(bytes(data))


def _other_version(art):
    m = json.loads((art / "manifest.json").read_text())
    m["dbunet_version"], m["format_version"] = "9.1.0", 7
    (art / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda a: (a / "fp32" / "refiner_step.onnx").unlink(), "missing artifact file"),
        (_corrupt, "corrupted"),
        (lambda a: (a / "tokenizer.json").write_text("{}"), "corrupted"),
        (_other_version, "exported by dbunet 9.1.0"),
        (lambda a: (a / "manifest.json").unlink(), "no manifest.json"),
        (lambda a: (a / "manifest.json").write_text("{oops"), "not valid JSON"),
    ],
)
def test_bad_artifacts_exit_2_with_one_line(tiny_artifacts, tmp_path, capsys, damage, message):
    art = _broken_copy(tiny_artifacts, tmp_path, damage)
    code, _, stderr = _run(["--artifacts", str(art), "--prompt", "a cat", "--output", str(tmp_path / "o.png")], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr


def test_missing_artifacts_directory(tmp_path, capsys):
    code, _, stderr = _run(["--artifacts", str(tmp_path / "nope"), "--prompt", "a cat"], capsys)
    assert code == 2 and "does not exist; run dbunet-export first" in stderr


def test_export_rejects_bad_options(tmp_path, capsys):
    assert export_cli.main(["--config", "sd3", "--out", str(tmp_path)]) == 2
    assert "valid: tiny, sd15" in capsys.readouterr().err
    assert export_cli.main(["--opset", "12", "--out", str(tmp_path), "--components", "gae"]) == 2
    assert "opset 12 not supported" in capsys.readouterr().err
    assert export_cli.main(["--weights", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "expected a dbunet model folder" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_help_explains_the_commands():
    for module in ("dbunet.cli.run", "dbunet.cli.export"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                             text=True, check=True).stdout
        assert "--artifacts" in out or "--out" in out
        assert "default" in out


@pytest.mark.parametrize(("args", "says"), [
    (["--config", "sd99"], "unknown preset 'sd99'"),
    (["--opset", "7"], "opset 7 not supported"),
    (["--config", "tiny", "--height", "4096"], "height 4096"),
    (["--weights", "{tmp}/nothing"], "does not exist"),
    (["--weights", "stabilityai/sdxl-turbo", "--arch", "sdxl"], "does not exist; it reads like a Hugging Face Hub id, "
     "and dbunet-export reads local folders only: download it first (hf download stabilityai/sdxl-turbo --local-dir "
     "DIR) and give DIR"),
    (["--out", "{tmp}"], "is or holds the current directory"),
])
def test_export_options_are_refused_before_torch_is_imported(tmp_path, args, says):
    """A mistake in the options took dbunet-export about 10 s to say on a 2-core CPU (the libraries of the export
    imported first); the options are checked first, without torch, diffusers or transformers."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "art")]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "dbunet.cli.export", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    said = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(said) == 1 and said[0].startswith("error: ") and says in said[0], said
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert not [m for m in imported if m.split(".")[0] in ("torch", "diffusers", "transformers", "onnxscript")]
    assert "dbunet.export.options" in imported
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "says"), [
    (["--steps", "0"], "steps must be an integer in 1..1000, got 0"),
    (["--height", "4096"], "height 4096 is beyond this model's maximum"),
    (["--scheduler", "dpm++", "--steps", "1000"], "dpm++ takes at most"),
    (["--backend", "torch", "--guidance-scale", "nan"], "guidance"),
])
def test_a_bad_request_is_refused_before_any_graph_loads(tiny_artifacts, tmp_path, capsys, monkeypatch, args, says):
    """The request is checked against the manifest's model first: it had waited for every session to load (4 s
    for the tiny model on ONNX Runtime, 10 s on the PyTorch reference, more for a large model)."""
    monkeypatch.setattr(run_cli.backends, "open_pipeline", lambda *a, **k: pytest.fail("a pipeline was opened"))
    code, stdout, stderr = _run(["--artifacts", str(tiny_artifacts), "--prompt", "a cat", *args, "--output",
                                 str(tmp_path / "o.png")], capsys)
    said = stderr.strip().splitlines()
    assert code == 2 and len(said) == 1 and said[0].startswith("error: ") and says in said[0], said
    assert not (tmp_path / "o.png").exists()
