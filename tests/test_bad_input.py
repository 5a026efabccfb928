"""The whole command surface under bad input, as a table (ggml's op-test style): every case must end in
exactly one `error:` line on stderr, exit status 2, no traceback, no output file, and an artifacts
directory left exactly as it was."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from net import free_port

from dbunet.cli import bench as bench_cli
from dbunet.cli import build as build_cli
from dbunet.cli import export as export_cli
from dbunet.cli import run as run_cli
from dbunet.cli import serve as serve_cli
from dbunet.config import tiny

Damage = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    label: str
    command: str  # run | export | bench | build
    argv: tuple[str, ...]  # {art} = artifacts dir, {out} = output path, {tmp} = scratch dir, {port} = a free port
    says: str  # a fragment the error line must contain
    damage: Damage | None = None  # applied to a private copy of the artifacts first
    hidden: str | None = None  # a library made unimportable, as where its extra is not installed


def _manifest_edit(edit: Callable[[dict], None]) -> Damage:
    def damage(art: Path) -> None:
        m = json.loads((art / "manifest.json").read_text())
        edit(m)
        (art / "manifest.json").write_text(json.dumps(m))
    return damage


def _with_defaults(config, **defaults) -> dict:
    d = config.to_dict()
    d["defaults"].update(defaults)
    return d


def _report_of(*components: str) -> dict:
    """A dbunet-bench report of the tiny export at its defaults, with these components timed."""
    from dbunet.bench.runner import SCHEMA

    return {"schema": SCHEMA, "backend": "ort", "precision": "fp32", "config": "tiny", "peak_rss_mb": 100.0,
            "machine": {"processor": "x", "cpu_count": 2}, "versions": {},
            "results": {c: {"samples_ms": [1.0, 1.1, 0.9]} for c in components}}


def _first_file(m: dict) -> dict:
    return next(a for a in m["artifacts"] if a["component"] == "text_encoder" and a["precision"] == "fp32")


def _point_at(path: str) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        a = _first_file(m)
        old = a["files"][0]
        a["files"][0], a["sha256"][path] = path, a["sha256"].pop(old)
    return edit


def _symlink_out(art: Path) -> None:
    target = art.parent / "elsewhere.onnx"
    shutil.copy(art / "fp32" / "text_encoder.onnx", target)
    (art / "fp32" / "text_encoder.onnx").unlink()
    os.symlink(target, art / "fp32" / "text_encoder.onnx")


def _truncate(rel: str) -> Damage:
    def damage(art: Path) -> None:
        data = (art / rel).read_bytes()
        (art / rel).write_bytes(data[: len(data) // 2])
    return damage


def _nan_weights(component: str) -> Damage:
    """Weights that make NaN (corrupt, or an overflow), with the manifest's hash updated: every check passes."""
    def damage(art: Path) -> None:
        import hashlib

        import numpy as np
        import onnx
        from onnx import numpy_helper

        m = json.loads((art / "manifest.json").read_text())
        a = next(a for a in m["artifacts"] if a["component"] == component and a["precision"] == "fp32")
        model = onnx.load(str(art / a["files"][0]))
        init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.dims)
        init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
        onnx.save(model, str(art / a["files"][0]))
        a["sha256"][a["files"][0]] = hashlib.sha256((art / a["files"][0]).read_bytes()).hexdigest()
        (art / "manifest.json").write_text(json.dumps(m))
    return damage


def _graph_swapped(component: str, donor: str) -> Damage:
    """Another valid graph in place of one, its hash updated in the manifest: only the graph's own IO betrays it."""
    def damage(art: Path) -> None:
        import hashlib

        m = json.loads((art / "manifest.json").read_text())
        a = next(a for a in m["artifacts"] if a["component"] == component and a["precision"] == "fp32")
        shutil.copyfile(art / "fp32" / f"{donor}.onnx", art / a["files"][0])
        a["sha256"][a["files"][0]] = hashlib.sha256((art / a["files"][0]).read_bytes()).hexdigest()
        (art / "manifest.json").write_text(json.dumps(m))
    return damage


def _tokenizer_too_large(art: Path) -> None:
    """A tokenizer whose ids run past the text encoder's embedding table (hash updated)."""
    import hashlib

    m = json.loads((art / "manifest.json").read_text())
    m["config"]["text"]["vocab_size"] = 100  # the tiny tokenizer has more ids than that
    m["tokenizer"]["sha256"] = hashlib.sha256((art / m["tokenizer"]["file"]).read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(m))


def _deep_json(rel: str) -> Damage:
    """A JSON file nested past Python's recursion limit (json.loads raised RecursionError on it)."""
    def damage(art: Path) -> None:
        (art / rel).write_text("[" * 100_000 + "]" * 100_000)
    return damage


RUN = ("--artifacts", "{art}", "--prompt", "a red cat", "--output", "{out}", "--quiet")
CASES = [
    # sampling options
    Case("steps zero", "run", RUN + ("--steps", "0"), "steps must be"),
    Case("steps negative", "run", RUN + ("--steps", "-3"), "steps must be"),
    Case("steps not a number", "run", RUN + ("--steps", "many"), "invalid int value"),
    Case("steps absurd", "run", RUN + ("--steps", "100000"), "1..1000"),
    Case("height not a multiple", "run", RUN + ("--height", "100"), "multiple of 8"),
    Case("height zero", "run", RUN + ("--height", "0"), "multiple of 8"),
    Case("height negative", "run", RUN + ("--height", "-64"), "multiple of 8"),
    Case("height beyond the model", "run", RUN + ("--height", "100000"), "beyond this model's maximum of 512"),
    Case("width absurd", "run", RUN + ("--width", "99999999999999999992"), "beyond this model's maximum"),
    Case("guidance nan", "run", RUN + ("--guidance-scale", "nan"), "guidance scale"),
    Case("guidance inf", "run", RUN + ("--guidance-scale", "inf"), "guidance scale"),
    Case("guidance negative", "run", RUN + ("--guidance-scale", "-1"), "guidance scale"),
    Case("box fraction above 1", "run", RUN + ("--box-fraction", "2"), "box fraction"),
    Case("box fraction nan", "run", RUN + ("--box-fraction", "nan"), "box fraction"),
    Case("refiner strength negative", "run", RUN + ("--refiner-strength", "-0.5"), "refiner strength"),
    Case("refiner steps negative", "run", RUN + ("--refiner-steps", "-1"), "refiner steps"),
    Case("refiner steps absurd", "run", RUN + ("--refiner-steps", "5000"), "refiner steps"),
    Case("seed negative", "run", RUN + ("--seed", "-1"), "seed must be"),
    # values the schedule cannot take: refused up front, named, never an IndexError or a black image
    Case("ddim steps past the schedule", "run", RUN + ("--steps", "1000"), "ddim takes at most 999 steps"),
    Case("dpm++ steps past the schedule", "run", RUN + ("--steps", "1000", "--scheduler", "dpm++"),
         "dpm++ takes at most 998 steps"),
    Case("guidance overflowing float32", "run", RUN + ("--guidance-scale", "1e300"), "guidance scale must be"),
    Case("guidance past the documented range", "run", RUN + ("--guidance-scale", "101"), "0..100"),
    Case("refiner schedule past its end", "run", RUN + ("--refiner-steps", "1000", "--refiner-strength", "1"),
         "the refiner's ddim takes at most"),
    Case("refiner strength tiny", "run", RUN + ("--refiner-strength", "0.001"), "use a strength of at least"),
    Case("refiner strength denormal", "run", RUN + ("--refiner-strength", "1e-320"), "use a strength of at least"),
    Case("unknown scheduler", "run", RUN + ("--scheduler", "lms"), "invalid choice"),
    Case("karras sigmas with ddim", "run", RUN + ("--karras-sigmas",), "ddim sampler has no Karras sigmas"),
    Case("karras sigmas with ddim named", "run", RUN + ("--scheduler", "ddim", "--karras-sigmas"),
         "they are euler, dpm++ and dpm++-sde's"),
    Case("threads zero", "run", RUN + ("--threads", "0"), "threads"),
    Case("unknown device", "run", RUN + ("--device", "tpu"), "device must be"),
    Case("unknown backend", "run", RUN + ("--backend", "jax"), "invalid choice"),
    Case("missing prompt", "run", ("--artifacts", "{art}", "--output", "{out}"), "--prompt"),
    # bytes that are not UTF-8 reach Python's argv as lone surrogates (PEP 383): the tokenizer raised a TypeError
    Case("prompt not UTF-8", "run", ("--artifacts", "{art}", "--prompt", "a \udcff cat", "--output", "{out}"),
         "prompt: character 3 is not text"),
    Case("box phrase not UTF-8", "run", RUN + ("--box", "0.1,0.1,0.5,0.5:\udcff"),
         "box phrase: character 1 is not text"),
    Case("prompt absurdly long", "run", ("--artifacts", "{art}", "--prompt", "cat " * 5000, "--output", "{out}"),
         "characters"),
    # boxes
    Case("box malformed", "run", RUN + ("--box", "0.1,0.1,0.5"), "malformed box"),
    Case("box not numbers", "run", RUN + ("--box", "a,b,c,d:cat"), "coordinates must be numbers"),
    Case("box out of range", "run", RUN + ("--box", "0.1,0.1,1.2,0.5:cat"), "[0, 1]"),
    Case("box starting with a minus", "run", RUN + ("--box", "-0.1,0,1,1:cat"),
         "a value that starts with '-' goes after '=': --box=-0.1,0,1,1:cat"),
    Case("box negative", "run", RUN + ("--box=-0.1,0,1,1:cat",), "[0, 1]"),
    Case("box degenerate", "run", RUN + ("--box", "0.5,0.1,0.5,0.9:cat"), "x1 > x0"),
    Case("box nan", "run", RUN + ("--box", "nan,0,1,1:cat"), "box nan,0,1,1:cat: coordinates must be finite"),
    Case("box without phrase", "run", RUN + ("--box", "0,0,1,1:  "), "phrase is empty"),
    Case("too many boxes", "run", RUN + ("--box", "0,0,1,1:cat") * 31, "at most 30"),
    # output paths
    Case("output not png", "run", ("--artifacts", "{art}", "--prompt", "a cat", "--output", "{tmp}/o.jpg"), ".png"),
    Case("output in a missing folder", "run", ("--artifacts", "{art}", "--prompt", "a cat", "--output",
                                                "{tmp}/no/such/o.png"), "does not exist"),
    Case("output is a directory", "run", ("--artifacts", "{art}", "--prompt", "a cat", "--output", "{tmp}/dir.png"),
         "is a directory"),
    Case("output name past 255 bytes", "run", ("--artifacts", "{art}", "--prompt", "a cat", "--output",
                                               "{tmp}/" + "n" * 300 + ".png"), "longer than the 255 bytes"),
    # resources without bounds
    Case("threads oversubscribed", "run", RUN + ("--threads", "10000"), "more than twice this machine's"),
    Case("box phrase huge", "run", RUN + ("--box", "0,0,1,1:" + "cat " * 1000), "at most 1000"),
    Case("sdxl size numbers on a dbunet model", "run", RUN + ("--target-size", "64x64"), "no micro-conditioning"),
    Case("size numbers malformed", "run", RUN + ("--original-size", "64xx"), "must look like 1024x1024"),
    # artifacts: missing, corrupt, truncated, foreign, hostile
    Case("artifacts missing", "run", RUN[:1] + ("{tmp}/nothing",) + RUN[2:], "does not exist"),
    Case("artifacts is a file", "run", RUN[:1] + ("{tmp}/a-file",) + RUN[2:],
         "a-file is a file; the artifacts are the directory dbunet-export wrote"),  # "does not exist" before
    Case("manifest missing", "run", RUN, "no manifest.json", lambda a: (a / "manifest.json").unlink()),
    Case("manifest not json", "run", RUN, "not valid JSON", lambda a: (a / "manifest.json").write_text("{oops")),
    Case("manifest truncated", "run", RUN, "not valid JSON", _truncate("manifest.json")),
    Case("manifest a list", "run", RUN, "not a manifest", lambda a: (a / "manifest.json").write_text("[1, 2]")),
    Case("manifest foreign version", "run", RUN, "exported by dbunet 9.1.0",
         _manifest_edit(lambda m: m.update(dbunet_version="9.1.0", format_version=7))),
    Case("manifest config wrong type", "run", RUN, "malformed",
         _manifest_edit(lambda m: m["config"]["text"].update(hidden_size="wide"))),
    Case("manifest dims absurd", "run", RUN, "malformed",
         _manifest_edit(lambda m: _first_file(m)["io"]["inputs"][0].update(dims=[10**12]))),
    # schema-valid but absurd config values: refused before anything is allocated
    Case("manifest text length absurd", "run", RUN, "text.max_length",
         _manifest_edit(lambda m: m["config"]["text"].update(max_length=2**31 - 1))),
    Case("manifest latent channels absurd", "run", RUN, "latent_channels",
         _manifest_edit(lambda m: (m["config"]["vae"].update(latent_channels=2**20),
                                   m["config"]["unet"].update(in_channels=2**20)))),
    Case("manifest timesteps absurd", "run", RUN, "num_train_timesteps",
         _manifest_edit(lambda m: m["config"]["schedule"].update(num_train_timesteps=2**31 - 1))),
    Case("manifest steps offset absurd", "run", RUN, "steps_offset",
         _manifest_edit(lambda m: m["config"]["schedule"].update(steps_offset=2**31 - 1))),
    Case("manifest vae without blocks", "run", RUN, "block_out_channels",
         _manifest_edit(lambda m: m["config"]["vae"].update(block_out_channels=[]))),
    Case("manifest scaling factor zero", "run", RUN, "scaling_factor",
         _manifest_edit(lambda m: m["config"]["vae"].update(scaling_factor=0))),
    # defaults no request may ask for: refused as the manifest's, not as if the caller had asked (before: "unknown
    # scheduler 'lms'" from a run that named none)
    Case("manifest default steps zero", "run", RUN,
         "its sampling defaults make no valid request: steps must be an integer in 1..1000, got 0",
         _manifest_edit(lambda m: m["config"]["defaults"].update(steps=0))),
    Case("manifest default scheduler unknown", "run", RUN, "its sampling defaults make no valid request: unknown "
         "scheduler 'lms'", _manifest_edit(lambda m: m["config"]["defaults"].update(scheduler="lms"))),
    # an image from NaN would quantise to black: the run ends with the stage named, nothing written
    Case("denoiser makes NaN", "run", RUN, "the denoising loop produced NaN", _nan_weights("dbunet_step")),
    Case("decoder makes NaN", "run", RUN, "the VAE decoder produced NaN", _nan_weights("vae_decoder")),
    Case("refiner makes NaN", "run", RUN, "the refiner produced NaN", _nan_weights("refiner_step")),
    # checked at load, not at the first inference: a graph that is not the declared one, ids past the vocabulary
    Case("graph swapped for another", "run", RUN, "is not the graph its manifest declares",
         _graph_swapped("gae", "refiner_encoder")),
    Case("manifest outputs renamed", "run", RUN, "is not the graph its manifest declares",
         _manifest_edit(lambda m: next(a for a in m["artifacts"] if a["component"] == "gae"
                                       and a["precision"] == "fp32")["io"]["outputs"][0].update(name="z_other"))),
    Case("tokenizer past the vocabulary", "run", RUN, "token ids, the text encoder only 100", _tokenizer_too_large),
    Case("manifest path with ..", "run", RUN, "not a relative path inside", _manifest_edit(_point_at("../x.onnx"))),
    Case("manifest absolute path", "run", RUN, "not a relative path inside",
         _manifest_edit(_point_at("/etc/hostname"))),
    Case("symlink leaving the directory", "run", RUN, "resolves outside", _symlink_out),
    Case("graph truncated", "run", RUN, "corrupted", _truncate("fp32/vae_decoder.onnx")),
    Case("graph missing", "run", RUN, "missing artifact file", lambda a: (a / "fp32" / "gae.onnx").unlink()),
    Case("run an export of some components", "run", RUN,
         "cannot run: it lacks dbunet_step, gae in fp32",  # every graph missing, named at once (the first alone before)
         _manifest_edit(lambda m: m.update(artifacts=[a for a in m["artifacts"]
                                                      if a["component"] not in ("dbunet_step", "gae")]))),
    Case("tokenizer replaced", "run", RUN, "corrupted", lambda a: (a / "tokenizer.json").write_text("{}")),
    # dbunet-export
    # an empty path (an unset shell variable) was Path("."): the current directory
    Case("run artifacts empty", "run", ("--artifacts", "", "--prompt", "x", "--output", "{out}"),
         "argument --artifacts: expected a path, got an empty string"),
    Case("run output empty", "run", ("--artifacts", "{art}", "--prompt", "x", "--output", ""),
         "argument --output: expected a path, got an empty string"),
    Case("export out empty", "export", ("--out", "", "--components", "gae"),
         "argument --out: expected a path, got an empty string"),
    Case("bench json empty", "bench", ("--artifacts", "{art}", "--json", ""), "argument --json: expected a path"),
    Case("build timing cache empty", "build", ("--artifacts", "{art}", "--timing-cache", ""),
         "argument --timing-cache: expected a path"),
    Case("serve artifacts empty", "serve", ("--artifacts", ""), "argument --artifacts: expected a path"),
    Case("export out is a file", "export", ("--out", "{tmp}/a-file", "--components", "gae"), "is a file"),
    Case("export over a folder of the user's", "export", ("--out", "{tmp}", "--components", "gae"),
         "but no manifest.json: it is not an artifacts directory"),
    Case("export out under a file", "export", ("--out", "{tmp}/a-file/sub", "--components", "gae"), "not a directory"),
    Case("export opset too old", "export", ("--out", "{out}", "--opset", "7"), "opset"),
    Case("export unknown preset", "export", ("--out", "{out}", "--config", "sd99"), "sd99"),
    Case("export config not json", "export", ("--out", "{out}", "--config", "{tmp}/a-file"), "config"),
    Case("export config is a folder", "export", ("--out", "{out}", "--config", "{tmp}"),
         "is a directory: give a preset"),
    Case("export config misses fields", "export", ("--out", "{out}", "--config", "{art}/config.json"),
         "config.json: config top level: 'name' is a required property",
         lambda a: (a / "config.json").write_text("{}")),
    Case("export config default past the schedule", "export", ("--out", "{out}", "--config", "{art}/config.json"),
         "model tiny: its sampling defaults make no valid request: ddim takes at most 999 steps",
         lambda a: (a / "config.json").write_text(json.dumps(_with_defaults(tiny(), steps=1000)))),
    Case("export odd height", "export", ("--out", "{out}", "--height", "100"), "multiple of 8"),
    Case("export batch zero", "export", ("--out", "{out}", "--batch", "0"), "batch"),
    Case("export batch huge", "export", ("--out", "{out}", "--batch", "100000"), "batch must lie in 1..16"),
    Case("export height beyond the model", "export", ("--out", "{out}", "--config", "tiny", "--height", "4096"),
         "--height 4096 is beyond this model's maximum of 512"),
    Case("export unknown component", "export", ("--out", "{out}", "--components", "unet3"), "unet3"),
    Case("export weights missing", "export", ("--out", "{out}", "--weights", "{tmp}/nothing"),
         "/nothing does not exist"),
    Case("export weights a single-file checkpoint", "export",
         ("--out", "{out}", "--weights", "{art}/model/model.safetensors"),
         "is a file, not a folder (a dbunet model folder, or a diffusers SD 1.x/2.x or SDXL folder); a single-file "
         "checkpoint becomes one with diffusers"),
    Case("run artifacts a model folder", "run", ("--artifacts", "{art}/model", "--prompt", "x", "--output", "{out}"),
         "has no manifest.json: not an artifacts directory, or its export did not finish; it is a dbunet model "
         "folder: export it first (dbunet-export --weights "),
    Case("export weights an artifacts directory", "export", ("--out", "{out}", "--weights", "{art}"),
         "is an artifacts directory written by dbunet-export; the model folder it was exported from is "),
    Case("export refiner missing", "export",
         ("--out", "{out}", "--weights", "{tmp}", "--arch", "sdxl", "--refiner", "{tmp}/nothing"),
         "/nothing does not exist"),
    Case("export refiner a single-file checkpoint", "export",
         ("--out", "{out}", "--weights", "{tmp}", "--arch", "sdxl", "--refiner", "{art}/model/model.safetensors"),
         "model.safetensors is a file, not a folder (an SDXL refiner folder); a single-file checkpoint becomes one "
         "with diffusers: StableDiffusionXLImg2ImgPipeline.from_single_file(FILE)"),
    Case("export weights a file", "export", ("--out", "{out}", "--weights", "{art}/manifest.json"),
         "manifest.json is a file, not a folder (a dbunet model folder, or a diffusers SD 1.x/2.x or SDXL folder)"),
    Case("export weights truncated", "export", ("--out", "{out}", "--weights", "{art}/model"),
         "model.safetensors: not a readable safetensors file", _truncate("model/model.safetensors")),
    Case("export weights config a list", "export", ("--out", "{out}", "--weights", "{art}/model"),
         "config.json: expected a JSON object, got list", lambda a: (a / "model" / "config.json").write_text("[1]")),
    # options the model source would have ignored
    Case("export config with a model folder", "export",
         ("--out", "{out}", "--weights", "{art}/model", "--config", "sd15"),
         "is a dbunet model folder, whose config.json decides"),
    Case("export arch other than the model folder's", "export",
         ("--out", "{out}", "--weights", "{art}/model", "--arch", "sdxl"), "is a dbunet model folder of architecture"),
    Case("export config with an sd1 folder", "export",
         ("--out", "{out}", "--weights", "{tmp}", "--arch", "sd1", "--config", "sd15"),
         "--config sd15 is not used with --arch sd1"),
    Case("export config nested too deeply", "export", ("--out", "{out}", "--config", "{art}/deep.json"),
         "deep.json: not valid JSON (nested too deeply)", _deep_json("deep.json")),
    Case("export weights config nested too deeply", "export", ("--out", "{out}", "--weights", "{art}/model"),
         "config.json: not valid JSON (nested too deeply)", _deep_json("model/config.json")),
    Case("manifest nested too deeply", "run", RUN, "manifest.json is not valid JSON (nested too deeply)",
         _deep_json("manifest.json")),
    Case("manifest with a name twice", "run", RUN, "manifest.json is not valid JSON ('artifacts' given twice",
         lambda art: (art / "manifest.json").write_text('{"artifacts": [],' + (art / "manifest.json").read_text()[1:])),
    Case("bench baseline nested too deeply", "bench", ("--artifacts", "{art}", "--compare", "{art}/deep.json"),
         "is not a dbunet-bench report: not valid JSON (nested too deeply)", _deep_json("deep.json")),
    # before: each was exported twice and listed twice in the manifest (two PTX files of one name for sm_90:12.6 and
    # sm_90:12.8, the second overwriting the first, whose hash then no longer held)
    Case("export a component twice", "export", ("--out", "{out}", "--components", "gae", "gae"),
         "--components names gae more than once"),
    Case("export a ptx target twice", "export", ("--out", "{out}", "--ptx", "sm_90:12.6", "sm_90:12.8"),
         "--ptx names sm_90 more than once"),
    Case("manifest lists an artifact twice", "run", RUN, "artifact 'gae' in fp32 is listed twice",
         _manifest_edit(lambda m: m["artifacts"].append(next(a for a in m["artifacts"] if a["component"] == "gae")))),
    Case("export unknown ptx target", "export", ("--out", "{out}", "--ptx", "sm_10"), "sm_10"),
    # dbunet-bench and dbunet-build
    # before: --record over the export's manifest.json replaced it with a bench report, and the export was gone
    Case("bench record over the manifest", "bench", ("--artifacts", "{art}", "--record", "{art}/manifest.json"),
         "is inside the artifacts directory"),
    Case("bench json among the graphs", "bench", ("--artifacts", "{art}", "--json", "{art}/fp32/report.json"),
         "is inside the artifacts directory"),
    Case("run output inside the artifacts", "run", ("--artifacts", "{art}", "--prompt", "x", "--output",
                                                   "{art}/model/x.png"), "is inside the artifacts directory"),
    Case("run artifacts named by their manifest", "run", ("--artifacts", "{art}/manifest.json", "--prompt", "x",
                                                          "--output", "{out}"),
         "manifest.json is a file; the artifacts are the directory dbunet-export wrote ("),  # "does not exist" before
    Case("bench repeat zero", "bench", ("--artifacts", "{art}", "--repeat", "0"),
         "--repeat must be an integer >= 1, got 0"),
    Case("bench tolerance nan", "bench", ("--artifacts", "{art}", "--tolerance", "nan"), "--tolerance"),
    Case("bench tolerance negative", "bench", ("--artifacts", "{art}", "--tolerance", "-1"), "--tolerance"),
    Case("bench json into a directory", "bench", ("--artifacts", "{art}", "--json", "{tmp}/dir.png"),
         "is a directory"),
    Case("bench plot not png", "bench", ("--artifacts", "{art}", "--plot", "{tmp}/p.txt"), "--plot must be a .png"),
    # before: the report was written over the baseline it was compared with; a regression exited 1 once and was
    # the next run's baseline
    Case("bench record over its baseline", "bench", ("--artifacts", "{art}", "--compare", "{tmp}/b.json", "--record",
                                                     "{tmp}/b.json"),
         "b.json: the new report would replace the baseline it is compared with, and a regression would become the "
         "next baseline; give each its own file"),
    Case("bench json and record one file", "bench", ("--artifacts", "{art}", "--json", "{tmp}/r.json", "--record",
                                                     "{tmp}/./r.json"),
         "--record and --json both name "),
    Case("bench plot of the pipeline alone", "bench", ("--artifacts", "{art}", "--components", "pipeline", "--plot",
                                                      "{tmp}/p.png"),
         "--plot draws the per-stage breakdown, and the pipeline alone has no stages"),  # an empty chart before
    # before: nothing was compared and the run passed (exit 0), a budget that checked nothing
    Case("bench baseline of other components", "bench", ("--artifacts", "{art}", "--components", "vae_decoder",
                                                          "--compare", "{art}/b.json"),
         "the baseline measured text_encoder, this run would measure vae_decoder: nothing to compare",
         lambda a: (a / "b.json").write_text(json.dumps(_report_of("text_encoder")))),
    Case("bench warmup negative", "bench", ("--artifacts", "{art}", "--warmup", "-1"),
         "--warmup must be an integer >= 0, got -1"),
    Case("bench unknown component", "bench", ("--artifacts", "{art}", "--components", "unet9"), "invalid choice"),
    Case("bench baseline not a report", "bench", ("--artifacts", "{art}", "--compare", "{art}/b.json"),
         "b.json: not a dbunet-bench report", lambda a: (a / "b.json").write_text("[1, 2]")),
    Case("bench baseline missing", "bench",
         ("--artifacts", "{art}", "--compare", "{tmp}/nothing.json"), "nothing.json"),
    Case("bench artifacts missing", "bench", ("--artifacts", "{tmp}/nothing",), "does not exist"),
    Case("bench height beyond the model", "bench", ("--artifacts", "{art}", "--height", "4096", "--width", "64"),
         "beyond this model's maximum"),
    Case("build unpaired sizes", "build", ("--artifacts", "{art}", "--height", "64"), "error"),
    # dbunet-serve: refused before Ray starts
    Case("serve artifacts missing", "serve", ("--artifacts", "{tmp}/nothing"), "no manifest.json"),
    Case("serve artifacts a model folder", "serve", ("--artifacts", "{art}/model"),
         "no manifest.json; it is a dbunet model folder: export it first (dbunet-export --weights "),
    Case("serve autoscale backwards", "serve", ("--artifacts", "{art}", "--autoscale", "4:2"), "MIN:MAX"),
    Case("serve autoscale not numbers", "serve", ("--artifacts", "{art}", "--autoscale", "a:b"), "MIN:MAX"),
    Case("serve delays not numbers", "serve", ("--artifacts", "{art}", "--autoscale", "1:2", "--scale-delays",
                                              "soon:later"), "UP:DOWN"),
    Case("serve replicas zero", "serve", ("--artifacts", "{art}", "--replicas", "0"),
         "replicas (--replicas) must be an integer >= 1, got 0"),
    Case("serve port zero", "serve", ("--artifacts", "{art}", "--port", "0"), "--port must lie in 1..65535"),
    Case("serve port too high", "serve", ("--artifacts", "{art}", "--port", "70000"), "--port must lie in 1..65535"),
    Case("serve host of another machine", "serve", ("--artifacts", "{art}", "--host", "10.255.255.1"),
         "cannot listen on 10.255.255.1:8000"),
    Case("serve timeout nan", "serve", ("--artifacts", "{art}", "--timeout", "nan"),
         "--timeout must be a positive finite number"),
    Case("serve cpus infinite", "serve", ("--artifacts", "{art}", "--num-cpus", "inf"),
         "num_cpus (--num-cpus) must be a positive finite number, got inf"),
    Case("serve delays starting with a minus", "serve", ("--artifacts", "{art}", "--autoscale", "1:2",
                                                        "--scale-delays", "-1:2"),
         "expected one argument; a value that starts with '-' goes after '=': --scale-delays=-1:2"),
    Case("serve delays negative", "serve", ("--artifacts", "{art}", "--autoscale", "1:2", "--scale-delays=-1:2"),
         "UP:DOWN"),
    Case("serve delays without autoscale", "serve", ("--artifacts", "{art}", "--scale-delays", "1:1"),
         "--scale-delays goes with --autoscale"),
    Case("serve cpus zero", "serve", ("--artifacts", "{art}", "--num-cpus", "0"), "must be a positive finite number"),
    Case("serve replicas and autoscale", "serve", ("--artifacts", "{art}", "--replicas", "2", "--autoscale", "1:2"),
         "not allowed with"),
    Case("serve whole loops on openvino", "serve", ("--artifacts", "{art}", "--backend", "openvino", "--whole-loops"),
         "backend openvino never runs each denoising loop in one call"),
    # whole loops: ONNX Runtime has the choice; the others are refused the value they cannot honour, before loading
    Case("run whole loops on openvino", "run", ("--artifacts", "{art}", "--prompt", "x", "--output", "{out}",
                                                "--backend", "openvino", "--whole-loops"), "turned on there"),
    Case("run no whole loops on trt", "run", ("--artifacts", "{art}", "--prompt", "x", "--output", "{out}",
                                              "--backend", "trt", "--no-whole-loops"),
         "backend trt always runs each denoising loop in one call"),
    Case("run whole loops on the reference", "run", ("--artifacts", "{art}", "--prompt", "x", "--output", "{out}",
                                                     "--backend", "torch", "--whole-loops"), "backend torch never"),
    Case("run whole loops with bf16", "run", ("--artifacts", "{art}", "--prompt", "x", "--output", "{out}",
                                              "--precision", "bf16", "--whole-loops"), "backend openvino never"),
    # precisions: each backend refuses what it does not compute (the registry says), before loading anything
    Case("run bf16 on onnx runtime", "run", RUN + ("--backend", "ort", "--precision", "bf16"),
         "backend ort computes in fp32 or fp16, not bf16; bf16 runs on openvino"),
    Case("run fp16 on openvino", "run", RUN + ("--backend", "openvino", "--precision", "fp16"),
         "backend openvino computes in fp32 or bf16, not fp16"),
    Case("run fp16 on the reference", "run", RUN + ("--backend", "torch", "--precision", "fp16"),
         "backend torch computes in fp32, not fp16"),
    Case("run fp32 on trt", "run", RUN + ("--backend", "trt", "--precision", "fp32"),
         "backend trt computes in fp16, not fp32"),
    Case("run on a device that does not exist", "run", RUN + ("--device", "gpu"),
         "device must be one of auto, cpu, cuda, got 'gpu'"),
    Case("run the reference on a device it lacks", "run", RUN + ("--backend", "torch", "--device", "gpu"),
         "PyTorch runs the models on cpu or cuda here, not 'gpu'"),
    Case("run a precision not exported", "run", RUN + ("--precision", "fp16"), "precision fp16 was not exported to",
         _manifest_edit(lambda m: m.update(artifacts=[a for a in m["artifacts"] if a["precision"] == "fp32"]))),
    # before Ray starts: the replicas found these only after their start, 16 s in
    Case("serve a precision not exported", "serve", ("--artifacts", "{art}", "--precision", "fp16"),
         "holds no fp16 graphs, only fp32 (dbunet-export --fp16 writes it)",
         _manifest_edit(lambda m: m.update(artifacts=[a for a in m["artifacts"] if a["precision"] == "fp32"]))),
    Case("serve an export of some components", "serve", ("--artifacts", "{art}"),
         "cannot run: it lacks dbunet_step in fp16; dbunet_step in fp32",
         _manifest_edit(lambda m: m.update(artifacts=[a for a in m["artifacts"] if a["component"] != "dbunet_step"]))),
    Case("serve bf16 from fp32 graphs that lack one", "serve", ("--artifacts", "{art}", "--precision", "bf16"),
         "lacks vae_decoder in fp32",
         _manifest_edit(lambda m: m.update(artifacts=[
             a for a in m["artifacts"] if (a["component"], a["precision"]) != ("vae_decoder", "fp32")]))),
    Case("serve fp16 on the reference", "serve", ("--artifacts", "{art}", "--backend", "torch", "--precision", "fp16"),
         "backend torch computes in fp32, not fp16"),
    Case("serve whole loops with bf16", "serve", ("--artifacts", "{art}", "--precision", "bf16", "--whole-loops"),
         "backend openvino never runs each denoising loop in one call"),
    # an extra not installed: the error names the library and prints the command the README installs with
    Case("export without onnxscript", "export", ("--out", "{out}", "--components", "gae"),
         "the export's graph clean-up needs onnxscript, which is not installed; pip install -e \".[export]\"",
         hidden="onnxscript"),
    Case("export without torch", "export", ("--out", "{out}", "--components", "gae"),
         'dbunet-export needs torch, which is not installed; pip install -e ".[export]"', hidden="torch"),
    Case("export without diffusers", "export", ("--out", "{out}", "--weights", "{art}/model"),
         'dbunet-export needs diffusers, which is not installed; pip install -e ".[export]"', hidden="diffusers"),
    Case("run the reference without torch", "run", RUN + ("--backend", "torch"),
         '--backend torch needs torch, which is not installed; pip install -e ".[export]"', hidden="torch"),
    Case("export without polygraphy", "export", ("--out", "{out}", "--components", "gae"),
         'parity check needs polygraphy, which is not installed; pip install -e ".[export]"', hidden="polygraphy"),
    Case("run openvino not installed", "run", RUN + ("--backend", "openvino"),
         '--backend openvino needs openvino, which is not installed; pip install -e ".[openvino]"', hidden="openvino"),
    Case("serve without Ray", "serve", ("--artifacts", "{art}", "--port", "{port}"),
         'dbunet-serve needs ray, which is not installed; pip install -e ".[serve]"', hidden="ray"),
    Case("build without TensorRT", "build", ("--artifacts", "{art}"),
         'not installed (import of tensorrt halted; None in sys.modules); pip install -e ".[trt]" on the target',
         hidden="tensorrt"),
    Case("bench plot without matplotlib", "bench", ("--artifacts", "{art}", "--plot", "{out}.png"),
         '--plot needs matplotlib (pip install -e ".[bench]")', hidden="matplotlib"),
]
MAINS = {"run": run_cli.main, "export": export_cli.main, "bench": bench_cli.main, "build": build_cli.main,
         "serve": serve_cli.main}


@pytest.fixture(scope="module")
def shared_artifacts(tiny_artifacts, tmp_path_factory):
    art = tmp_path_factory.mktemp("bad-input") / "art"
    shutil.copytree(tiny_artifacts, art)
    return art


def test_the_table_is_large_and_labels_are_unique():
    assert len(CASES) >= 40 and len({c.label for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_changes_nothing(case, shared_artifacts, tmp_path, capsys, snapshot,
                                                                monkeypatch):
    art = shared_artifacts
    if case.hidden is not None:
        monkeypatch.setitem(sys.modules, case.hidden, None)
    if case.damage is not None:
        art = tmp_path / "art"
        shutil.copytree(shared_artifacts, art, symlinks=True)
        case.damage(art)
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "dir.png").mkdir()
    out = tmp_path / ("out.png" if case.command == "run" else "out")
    port = free_port() if any("{port}" in a for a in case.argv) else None
    argv = [a.format(art=art, out=out, tmp=tmp_path, port=port) for a in case.argv]
    before_art, before_tmp = snapshot(art), snapshot(tmp_path)
    try:
        code = MAINS[case.command](argv)
    except SystemExit as exc:  # argparse's errors end here
        code = exc.code
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    assert case.says in lines[0], lines[0]
    assert "/proc/self/fd" not in lines[0]  # paths as the user gave them, not the descriptor a run pins them by
    assert snapshot(art) == before_art
    assert snapshot(tmp_path) == before_tmp  # no output file, no half-written export, no lock, nothing beside it


@pytest.mark.skipif(sys.platform != "linux", reason="the subprocess check uses a Linux shell")
def test_a_bad_input_from_the_shell_prints_no_traceback(shared_artifacts):
    """The same through the installed entry point's process: Python prints nothing else on exit."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "dbunet.cli.run", "--artifacts", str(shared_artifacts), "--prompt",
                           "x", "--steps", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
