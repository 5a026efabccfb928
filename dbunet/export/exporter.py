"""dbunet-export's work: model -> one ONNX file per component (+ FP16 copies) -> parity -> manifest.

Layout of an artifacts directory:
    fp32/<component>.onnx     fp16/<component>.onnx (with --fp16); components include the whole-step
                              graphs dbunet_step and refiner_step (UNet + guidance + sampler update)
    tokenizer.json            model/ (the source weights, when the model is a preset)
    manifest.json             written last; its absence means the export did not finish
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from dbunet import architectures, atomic
from dbunet.errors import ConfigError, WeightsError
from dbunet.export import fp16 as fp16_convert
from dbunet.export.graphs import graph_module, run_reference, sample_inputs
from dbunet.export.onnx_export import check_model_file, require_optimizer, save_onnx, trace_to_onnx
from dbunet.export.options import (
    ExportOptions,
    check_model,
    check_options,
    is_model_folder,
    resolve_config,
)
from dbunet.export.parity import ParityResult, measure, require, require_parity_runner, run_onnx, run_rewritten
from dbunet.export.specs import (
    COMPONENTS,
    component_specs,
    components_of,
    default_sizes,
    traced_pixels,
)
from dbunet.export.staging import staged
from dbunet.export.step_graphs import STEP_OF, compose_step, step_module
from dbunet.manifest import Artifact, Manifest, sha256_file, tool_versions
from dbunet.models.cascade import Model, create_preset_model, load_model, saved_config

log = logging.getLogger(__name__)

Report = Callable[[str], None]


def load_source_model(options: ExportOptions, out: Path) -> tuple[Model, str]:
    """The model to export and where TorchPipeline can load it again (recorded in the manifest)."""
    if options.weights is None:
        model_dir = out / "model"
        config = resolve_config(options.config)
        if (model_dir / "config.json").is_file() and saved_config(model_dir) == config:
            return load_model(model_dir), "model"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        return create_preset_model(config, model_dir), "model"
    weights = Path(options.weights)
    if is_model_folder(weights):
        return load_model(weights), str(weights.resolve())
    needs = architectures.get(options.arch).needs_folder
    if needs and not (weights / needs).is_dir():
        raise WeightsError(f"--arch {options.arch}: {weights} is not a diffusers folder with a {needs}/")
    if (weights / "vae").is_dir() and (weights / "text_encoder").is_dir():
        from dbunet.models.sd_folder import load_sd_folder

        model, report = load_sd_folder(weights, resolve_config(options.config), arch=options.arch,
                                       refiner=options.refiner)
        log.info(report.summary())
        model_dir = out / "model"
        from dbunet.models.cascade import save_model

        save_model(model, model_dir)  # the DB-UNet's new layers exist only here
        return model, "model"
    if (weights / "manifest.json").is_file() and is_model_folder(weights / "model"):  # an export's output
        raise WeightsError(f"{weights} is an artifacts directory written by dbunet-export; the model folder it was "
                           f"exported from is {weights / 'model'}")
    if (weights / "text_encoder_2").is_dir() and (weights / "unet").is_dir():  # the second encoder alone
        raise WeightsError(f"{weights} is an SDXL refiner folder (text_encoder_2/ without text_encoder/): give the "
                           "base folder as --weights and this one as --refiner, with --arch sdxl")
    raise WeightsError(f"{weights}: expected a dbunet model folder (config.json + model.safetensors) "
                       "or a diffusers Stable Diffusion 1.x/2.x or SDXL folder (vae/, text_encoder/, tokenizer/, ...)")


def export_tokenizer(tokenizer, out: Path, name: str = "tokenizer.json") -> dict[str, str]:
    """tokenizer.json for the `tokenizers` library: the runtime's only text dependency."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        target = out / name
        atomic.write_bytes(target, (Path(tmp) / "tokenizer.json").read_bytes())
    return {"file": name, "sha256": sha256_file(target)}


UnetGraphs = dict[str, dict[str, onnx.ModelProto]]  # per-call UNet -> {precision: the graph written}


def export_component(model: Model, name: str, options: ExportOptions, out: Path, report: Report,
                     unet_graphs: UnetGraphs | None = None) -> list[Artifact]:
    """Trace, write and check one per-call graph (and its FP16 copy); a UNet's graphs are kept in
    `unet_graphs` for the step graph built around it."""
    config = model.config
    spec = component_specs(config)[name]
    sizes = default_sizes(config, options.batch, options.height, options.width)
    module = graph_module(name, model.cascade, config.arch).eval()
    feeds = sample_inputs(spec, sizes, config.text.vocab_size)
    reference = run_reference(module, spec, feeds)
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)

    graph = trace_to_onnx(module, spec, args, options.opset, options.decomposed)
    save = functools.partial(_save, name=name, spec=spec, options=options, out=out, feeds=feeds, reference=reference,
                             pixels=traced_pixels(spec, sizes))
    artifact, result = save(graph, "fp32")
    report("  " + result.line())
    require([result])
    artifacts, written = [artifact], {"fp32": graph}
    if options.fp16:
        # the converter's defaults first; then with softmax and normalisation kept in fp32; then give up on fp16.
        # A VAE whose config says force_upcast (SDXL's overflows in fp16, as diffusers knows) gives up at once.
        safer = "kept in fp32 against fp16 overflow: " + ", ".join(fp16_convert.SAFER_BLOCK_LIST)
        attempts = ((None, ""), (fp16_convert.SAFER_BLOCK_LIST, safer))
        fallback = "fp16 overflowed even with softmax and normalisation in fp32: this component runs in fp32"
        if name in ("vae_decoder", "vae_encoder") and config.vae.force_upcast:
            attempts, fallback = (), "kept in fp32: this VAE overflows in fp16 (force_upcast in its config)"
        for block, note in attempts:
            written["fp16"] = fp16_convert.to_fp16(graph, block)
            artifact, result = save(written["fp16"], "fp16", note)
            report("  " + result.line())
            if result.passed:
                break
        else:
            note = fallback
            written["fp16"] = graph
            artifact, result = save(graph, "fp16", note, tolerance="fp32")
            require([result])
        if artifact.note:
            report(f"  note: {name}: {artifact.note}")
        artifacts.append(artifact)
    if unet_graphs is not None and name in STEP_OF.values():
        unet_graphs[name] = written
    return artifacts


def export_step(model: Model, name: str, options: ExportOptions, out: Path, report: Report,
                unet_graphs: dict[str, onnx.ModelProto]) -> list[Artifact]:
    """A whole-step graph around each precision's UNet graph, checked against the PyTorch step."""
    spec = component_specs(model.config)[name]
    sizes = default_sizes(model.config, options.batch, options.height, options.width)
    feeds = sample_inputs(spec, sizes, model.config.text.vocab_size)
    reference = run_reference(step_module(name, model.cascade, model.config.arch).eval(), spec, feeds)
    artifacts = []
    for precision, unet in unet_graphs.items():
        note = "the UNet in fp16; c_in scaling, guidance and the sampler update in fp32" if precision == "fp16" else ""
        artifact, result = _save(compose_step(name, unet, spec), precision, note, name=name, spec=spec,
                                 options=options, out=out, feeds=feeds, reference=reference,
                                 pixels=traced_pixels(spec, sizes))
        report("  " + result.line())
        require([result])
        artifacts.append(artifact)
    return artifacts


def _save(graph, precision: str, note: str = "", tolerance: str | None = None, *, name, spec, options, out, feeds,
          reference, pixels) -> tuple[Artifact, ParityResult]:
    """Write one graph under <out>/<precision>/, check it and measure its parity with PyTorch."""
    rel = Path(precision) / f"{name}.onnx"
    files = save_onnx(graph, out / rel)
    check_model_file(files[0])
    result = measure(name, tolerance or precision, run_onnx(files[0], feeds), reference, run_rewritten(files[0], feeds),
                     pixels)
    artifact = Artifact(
        component=name, precision=precision, files=[str(f.relative_to(out)) for f in files],
        sha256={str(f.relative_to(out)): sha256_file(f) for f in files}, spec=spec, opset=options.opset,
        decomposed=options.decomposed, note=note, parity=result.to_dict(),
    )
    return artifact, result


def export(options: ExportOptions, report: Report = log.info) -> Manifest:
    """Write the artifacts to a staging directory beside `options.out` and switch over when complete:
    an interrupted export leaves the previous artifacts in place (dbunet.export.staging)."""
    check_options(options)  # a bad config, size, source or output fails before anything is written
    require_parity_runner()  # an unusable polygraphy or onnxscript would otherwise show after the first trace
    require_optimizer()
    if options.ptx_targets:  # a missing Triton would otherwise show only after every graph
        from dbunet.plugins.aot import check_toolchain

        check_toolchain(options.ptx_targets)
    # resolved: `--out .` names a directory, and two spellings of one directory (a symlink) share one lock
    with staged(Path(options.out).resolve()) as stage:
        return _export_into(options, stage, report)


def _export_into(options: ExportOptions, out: Path, report: Report) -> Manifest:
    model, source = load_source_model(options, out)
    check_model(model.config, options)
    report(f"model {model.config.name}: {sum(p.numel() for p in model.cascade.parameters()) / 1e6:.2f} M parameters")
    artifacts: list[Artifact] = []
    unet_graphs: UnetGraphs = {}
    available = components_of(model.config)
    wanted = options.components or available
    if set(wanted) - set(available):
        raise ConfigError(f"a {model.config.arch} model has no {', '.join(sorted(set(wanted) - set(available)))}; "
                          f"its components: {', '.join(available)}")
    components = sorted(wanted, key=COMPONENTS.index)  # a step graph after the UNet it wraps
    for i, name in enumerate(components, 1):
        report(f"[{i}/{len(components)}] {name}")
        if name not in STEP_OF:
            artifacts += export_component(model, name, options, out, report, unet_graphs)
            continue
        unet = STEP_OF[name]
        if unet not in unet_graphs:  # its per-call graph is not wanted on disk: trace it, keep it in memory
            with tempfile.TemporaryDirectory(prefix=".unet-", dir=out) as tmp:
                export_component(model, unet, options, Path(tmp), lambda line: None, unet_graphs)
        artifacts += export_step(model, name, options, out, report, unet_graphs.pop(unet))
    plugins = []
    if options.ptx_targets:
        from dbunet.plugins.aot import write_ptx

        report(f"PTX for {', '.join(options.ptx_targets)}")
        plugins = write_ptx(out / "ptx", options.ptx_targets)
        for p in plugins:
            p["file"] = f"ptx/{p['file']}"
            p["sha256"] = sha256_file(out / p["file"])
    manifest = Manifest(
        config=model.config, weights_sha256=model.weights_sha256(), artifacts=artifacts,
        tokenizer=export_tokenizer(model.tokenizer, out), tools=tool_versions(), weights_source=source,
        plugins=plugins,
        tokenizer_2=export_tokenizer(model.tokenizer_2, out, "tokenizer_2.json") if model.tokenizer_2 else None,
    )
    manifest.write(out)
    return manifest
