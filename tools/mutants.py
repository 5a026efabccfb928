"""Apply known one-line bugs (mutants) one at a time and report which the test suite catches.

    python tools/mutants.py                 # every mutant against its target tests
    python tools/mutants.py --only cfg_sign box_edge_reference
    python tools/mutants.py --full          # every mutant against the whole suite (slow)

Each mutant edits a copy of the source tree (never the working tree), then runs pytest there with
that copy first on PYTHONPATH, so subprocesses spawned by tests import the mutated code too. A mutant
is caught when pytest fails. Its `tests` are where a failure is expected; a failure there implies
the whole suite fails, so the targeted run is the cheap proof, and --full is the thorough one.
A mutant whose original text is not found is an error, not a pass: after a refactor, update the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


LOOP_TESTS = ("tests/test_reference_loop.py",)
TRT_TESTS = "tests/runtime/test_tensorrt_backend.py"

MUTANTS = [
    # guidance lives in the step graph (what the runtime runs) and in the reference step (TorchPipeline)
    Mutant("cfg_ignored", "dbunet/export/step_graphs.py",
           '_node("Add", [_P + "eps_u", _P + "eps_guided_delta"], _P + "eps")',
           '_node("Identity", [_P + "eps_c"], _P + "eps")',
           LOOP_TESTS, "classifier-free guidance ignored in the step graph (eps = cond)"),
    Mutant("cfg_sign", "dbunet/export/step_graphs.py",
           '_node("Sub", [_P + "eps_c", _P + "eps_u"], _P + "eps_delta")',
           '_node("Sub", [_P + "eps_u", _P + "eps_c"], _P + "eps_delta")',
           LOOP_TESTS, "classifier-free guidance with its sign flipped in the step graph"),
    Mutant("cfg_sign_reference", "dbunet/generation.py",
           "eps = eps[:1] + np.float32(step.row[COLUMN[\"guidance\"]]) * (eps[1:] - eps[:1])",
           "eps = eps[:1] - np.float32(step.row[COLUMN[\"guidance\"]]) * (eps[1:] - eps[:1])",
           LOOP_TESTS, "classifier-free guidance with its sign flipped in the reference loop (TorchPipeline)"),
    Mutant("uncond_sees_boxes", "dbunet/generation.py",
           "valid = np.concatenate([np.zeros_like(valid), valid])", "valid = np.concatenate([valid, valid])",
           LOOP_TESTS, "the unconditional half of the batch sees the boxes"),
    Mutant("box_fraction_ignored", "dbunet/request.py",
           "return math.ceil(self.box_fraction * self.steps) if self.boxes else 0",
           "return self.steps if self.boxes else 0",
           LOOP_TESTS, "box_fraction ignored (boxes on at every step)"),
    Mutant("scheduler_ignored", "dbunet/request.py",
           "sampler = make_scheduler(req.scheduler, req.schedule(config.schedule))",
           'sampler = make_scheduler("ddim", req.schedule(config.schedule))',
           LOOP_TESTS, "the scheduler option ignored (always DDIM)"),
    Mutant("vae_scaling_dropped", "dbunet/generation.py",
           "stages.decode(latents / np.float32(config.vae.scaling_factor))", "stages.decode(latents)",
           LOOP_TESTS, "the VAE scaling factor dropped before decoding"),
    Mutant("dpm_second_order_dropped", "dbunet/schedulers/dpm_solver.py",
           "u, v = w + 0.5 * w / r, -0.5 * w / r", "u, v = w, 0.0",
           ("tests/test_schedulers.py",), "DPM-Solver++(2M)'s coefficient table without its second-order term"),
    Mutant("step_clip_dropped", "dbunet/export/step_graphs.py",
           'helper.make_node("Clip", [raw, _P + "neg_clip", c["clip"]], ["x0"], name=_P + "x0")',
           'helper.make_node("Identity", [raw], ["x0"], name=_P + "x0")',
           ("tests/export/test_step_graphs.py::test_refiner_step_graph_equals_the_numpy_loop",),
           "the step graph's x0 clip (the refiner's DDIM clips) dropped"),
    Mutant("plugin_postponed_annotations", "dbunet/plugins/tensorrt_plugins.py",
           '"""\n\nimport functools\nfrom typing import Any, List, Tuple, Union',
           '"""\n\nfrom __future__ import annotations\n\nimport functools\nfrom typing import Any, List, Tuple, Union',
           ("tests/plugins/test_tensorrt_plugins.py",), "postponed annotations in the TensorRT plugin module"),
    Mutant("plugin_aot_unannotated", "dbunet/plugins/tensorrt_plugins.py",
           "def sca_aot(q: Desc, k: Desc, v: Desc, num_heads: int, outputs: Tuple[Desc], tactic: int) -> Aot:",
           "def sca_aot(q, k, v, num_heads: int, outputs, tactic):",
           ("tests/plugins/test_tensorrt_plugins.py",), "an aot_impl without its return annotation"),
    Mutant("plugin_autotune_bare_list", "dbunet/plugins/tensorrt_plugins.py",
           "def sca_tune(q: Desc, k: Desc, v: Desc, num_heads: int, outputs: Tuple[Desc]) -> Tuned:",
           "def sca_tune(q: Desc, k: Desc, v: Desc, num_heads: int, outputs: Tuple[Desc]) -> list:",
           ("tests/plugins/test_tensorrt_plugins.py",), "an autotune annotated to return a bare list"),
    Mutant("aot_grid_fixed_block", "dbunet/plugins/tensorrt_plugins.py",
           'launch.grid_x = trtp.cdiv(P, compiled.constants["BLOCK_M"])', "launch.grid_x = trtp.cdiv(P, 32)",
           ("tests/plugins/test_kernels.py",), "the attention plugin's grid assumes 32 queries per block"),
    Mutant("jit_without_opt_in", "dbunet/plugins/launch.py",
           'dk=dk, dv=dv, opt_in=True)', 'dk=dk, dv=dv)',
           ("tests/plugins/test_kernels.py",), "Triton's own launcher refuses fp32 attention at sd15's deepest level"),
    Mutant("jit_fixed_attention_blocks", "dbunet/plugins/launch.py",
           'grid = (triton.cdiv(P, config.constants["BLOCK_M"]), B * num_heads)',
           'grid = (triton.cdiv(P, 32), B * num_heads)\n    config.constants.update(BLOCK_M=32, BLOCK_N=32)',
           ("tests/plugins/test_kernels.py",), "Triton's own launcher back on fixed 32 x 32 attention blocks"),
    Mutant("cca_config_spills", "dbunet/plugins/aot.py",
           '"channel_attention_weights": {"fp16": ({}, 4), "fp32": ({"BLOCK_P": 16}, 8)},',
           '"channel_attention_weights": {"fp16": ({}, 4), "fp32": ({}, 4)},',
           ("tests/plugins/test_aot.py",), "channel attention's former fp32 weight blocks (255 registers, spills)"),
    Mutant("kernel_config_spills", "dbunet/plugins/aot.py",
           '("fp32", 128): (16, 16, 8)', '("fp32", 128): (16, 32, 4)',
           ("tests/plugins/test_aot.py",), "the box kernel at 128 slots in fp32 with 4 warps (255 registers, spills)"),
    Mutant("box_blocks_ignore_slots", "dbunet/plugins/aot.py",
           'block_p, block_d, warps = _BOX_CONFIG[dtype, min(block_n, max(n for d, n in _BOX_CONFIG if d == dtype))]',
           'block_p, block_d, warps = _BOX_CONFIG[dtype, 32]',
           ("tests/plugins/test_aot.py",), "the box kernel's 64-pixel blocks at every slot count"),
    Mutant("hash_first_file_only", "dbunet/manifest.py",
           "for rel in artifact.files:", "for rel in artifact.files[:1]:",
           ("tests/runtime/test_artifact_checks.py",), "the runtime hashes only the first file of an artifact"),
    Mutant("box_edge_reference", "dbunet/models/ops.py",
           "(cx < b[..., 2:3])", "(cx <= b[..., 2:3])",
           ("tests/test_box_edges.py",), "closed box edge (cx <= x1) in the PyTorch reference"),
    Mutant("box_edge_onnx", "dbunet/export/onnx_functions.py",
           "op.Less(cx, x1)", "op.LessOrEqual(cx, x1)",
           ("tests/test_box_edges.py",), "closed box edge (cx <= x1) in the ONNX function"),
    Mutant("box_edge_kernel", "dbunet/plugins/kernels.py",
           "(cx[:, None] < x1[None, :])", "(cx[:, None] <= x1[None, :])",
           ("tests/test_box_edges.py", "tests/plugins/test_kernels.py"),
           "closed box edge (cx <= x1) in the Triton kernel"),
    Mutant("scratch_guard_removed", "dbunet/plugins/aot.py",
           'raise BuildError(f"{name} needs {attr}={getattr(metadata, attr)}: '
           'TensorRT\'s AOT launch cannot provide it")',
           "pass",
           ("tests/plugins/test_aot.py",), "the check that a Triton kernel needs no scratch memory removed"),
    # the TensorRT backend, on the stand-ins for TensorRT and CUDA
    Mutant("trt_loop_no_swap", "dbunet/runtime/backends/trt_engine.py",
           "r.bind({name: state[name][i % 2], out: state[name][(i + 1) % 2]})",
           "r.bind({name: state[name][0], out: state[name][1]})",
           (TRT_TESTS,), "the whole-loop graph does not swap x / x0_prev between steps"),
    Mutant("trt_loop_same_row", "dbunet/runtime/backends/trt_engine.py",
           "r.cuda.copy(coeffs, table + i * row_bytes, row_bytes)", "r.cuda.copy(coeffs, table, row_bytes)",
           (TRT_TESTS,), "every step of the loop graph reads the first coefficient row"),
    Mutant("trt_private_regions", "dbunet/runtime/backends/trt_engine.py",
           "        if needed > self.size:  # grow",
           "        if True:  # grow",
           (TRT_TESTS,), "each engine gets its own activation allocation instead of the shared region"),
    Mutant("trt_stream_object", "dbunet/runtime/backends/trt_engine.py",
           "self.context.execute_async_v3(int(self.cuda.stream))", "self.context.execute_async_v3(self.cuda.stream)",
           (TRT_TESTS,), "the cuda-python stream handle passed to execute_async_v3 without int()"),
    # the GPU path against the real libraries: polygraphy, cuda-bindings, Triton's ptxas
    Mutant("assembler_floor_dropped", "dbunet/plugins/aot.py",
           'SOUND_ASSEMBLER = {90: Floor((13, 0), "ptxas 12.8', 'SOUND_ASSEMBLER = {91: Floor((13, 0), "ptxas 12.8',
           ("tests/plugins/test_assembler_floor.py",),
           "no floor: ptxas 12.8's wrong FP16 attention cubin on Hopper let through"),
    Mutant("jit_launch_unguarded", "dbunet/plugins/launch.py",
           "        require_sound_ptxas(major * 10 + minor)", "        pass",
           ("tests/plugins/test_assembler_floor.py",), "Triton's own launcher assembles with a ptxas below the floor"),
    Mutant("build_refuses_inside_tensorrt", "dbunet/engines/builder.py",
           "        require_sound_driver(device.compute_capability, driver_cuda)  # before the first engine, "
           "not inside TensorRT",
           "        pass",
           ("tests/plugins/test_assembler_floor.py",),
           "dbunet-build finds a driver below the floor only inside TensorRT's aot_impl, after its first build"),
    Mutant("plugin_kernel_unguarded", "dbunet/plugins/tensorrt_plugins.py",
           "        require_sound_driver(cc, driver_cuda)\n    isa =", "        pass\n    isa =",
           ("tests/plugins/test_assembler_floor.py",), "the plugins' PTX handed to a driver below the floor"),
    Mutant("kernel_switch_ignored", "dbunet/plugins/torch_ops.py",
           "        if _enabled[device_type]:", "        if True:",
           ("tests/plugins/test_torch_switch.py",), "use_triton_kernels(enabled=False) still launches the kernels"),
    Mutant("timing_cache_folder_missing", "dbunet/engines/builder.py",
           "    timing_cache.parent.mkdir(parents=True, exist_ok=True)", "    pass",
           ("tests/runtime/test_build_through_polygraphy.py",),
           "engines/ not made before polygraphy locks the timing cache"),
    Mutant("polygraphy_floor_lowered", "dbunet/releases.py",
           "MIN_POLYGRAPHY = (0, 49, 24)", "MIN_POLYGRAPHY = (0, 49, 9)",
           ("tests/runtime/test_build_through_polygraphy.py", "tests/test_packaging.py"),
           "polygraphy releases that read int8_calibrator (gone in TensorRT 11) let through"),
    Mutant("onnxscript_floor_lowered", "dbunet/releases.py",
           "MIN_ONNXSCRIPT = (0, 6, 2)", "MIN_ONNXSCRIPT = (0, 3, 0)",
           ("tests/export/test_export.py", "tests/test_packaging.py"),
           "onnxscript releases whose optimizer fails on dbunet's graphs let through"),
    Mutant("ray_floor_lowered", "dbunet/releases.py", "MIN_RAY = (2, 58)", "MIN_RAY = (2, 50)",
           ("tests/serve/test_serve.py",), "Ray releases without Serve's BackpressureConfig let through"),
    Mutant("openvino_broken_release_admitted", "dbunet/releases.py",
           "    elif release in BROKEN_OPENVINO:", "    elif False:",
           ("tests/runtime/test_openvino_backend.py",), "OpenVINO 2025.1, whose GeLU fusion throws, let through"),
    Mutant("install_hint_asks_an_index", "dbunet/releases.py",
           """    return f'pip install -e ".[{extra}]"'""", "    return f\"pip install 'dbunet[{extra}]'\"",
           ("tests/test_bad_input.py::test_bad_input_is_one_error_line_exit_2_and_changes_nothing[run openvino not "
            "installed]",), "a missing extra's install command asks an index for a package named dbunet"),
    Mutant("export_extra_unchecked", "dbunet/cli/export.py",
           '    require_models(ExportError, "dbunet-export")', "    pass",
           ("tests/test_bad_input.py::test_bad_input_is_one_error_line_exit_2_and_changes_nothing[export without "
            "torch]",), "dbunet-export without torch ends in a ModuleNotFoundError traceback"),
    Mutant("engines_written_through_a_link", "dbunet/engines/builder.py",
           '    inside(artifacts, ENGINES_DIR, "write engines there")', "    pass",
           ("tests/runtime/test_build_through_polygraphy.py",),
           "dbunet-build writes its engines through an engines folder that links out of the artifacts"),
    Mutant("export_options_checked_after_the_libraries", "dbunet/cli/export.py",
           "    check_options(options)  # a bad option is said before the libraries below take their seconds to import",
           "    import dbunet.export.exporter  # noqa: F401\n    check_options(options)",
           ("tests/cli/test_cli.py",), "dbunet-export imports torch before it refuses a bad option (about 10 s)"),
    Mutant("run_request_checked_after_loading", "dbunet/cli/run.py",
           "    build_request(Manifest.read(args.artifacts).config, args.prompt, **options)", "    pass",
           ("tests/cli/test_cli.py",), "dbunet-run loads every graph before it refuses a bad request"),
    Mutant("clip_hub_layout_not_renamed", "dbunet/models/components.py",
           "            elif not nested and rest.startswith(CLIP_TEXT_NESTING):", "            elif False:",
           ("tests/models/test_sd_folder.py", "tests/models/test_cascade.py"),
           "a CLIP text encoder saved under transformers 4 (every Hub folder) refused under transformers 5"),
    Mutant("triton_range_widened", "dbunet/releases.py",
           "TRITON_RANGE = ((3, 6), (3, 10))", "TRITON_RANGE = ((3, 3), (3, 10))",
           ("tests/plugins/test_aot.py",), "Triton 3.3-3.5, which cannot find their ptxas this way, let through"),
    Mutant("engine_graph_box_axis_dynamic", "dbunet/engines/builder.py",
           "if lo is not None and lo[axis] == hi[axis]", "if lo is not None and False",
           ("tests/runtime/test_build_through_polygraphy.py",),
           "the profile's fixed dims left dynamic in the engines' graphs"),
    Mutant("isa_ignores_triton_ptxas", "dbunet/plugins/aot.py",
           "isa, least = min(driver_isa, ptxas_isa), ARCH_MIN_ISA.get(cc, (0, 0))",
           "isa, least = driver_isa, ARCH_MIN_ISA.get(cc, (0, 0))",
           ("tests/plugins/test_aot.py::test_isa_is_the_lower_of_the_driver_and_the_installed_ptxas",),
           "the PTX ISA chosen by the driver alone (Triton 3.6's ptxas refuses 9.0)"),
    Mutant("shared_memory_not_fitted", "dbunet/plugins/aot.py",
           "if compiled.shared_mem <= limit:",
           "if True:",
           ("tests/plugins/test_aot.py::test_sm100_attention_drops_a_pipeline_stage_to_fit_48_kb",),
           "sm_100 attention launched with 24 bytes past the 48 KB of shared memory a launch gets"),
    Mutant("capture_error_left_pending", "dbunet/runtime/backends/cuda.py",
           "        self.rt.cudaGetLastError()\n", "",
           (TRT_TESTS,), "a failed capture's error left pending for the next enqueue"),
    # never a wrong image: finiteness, planned schedules, cache keys, the pinned directory
    Mutant("nonfinite_image_written", "dbunet/generation.py",
           "    if not np.isfinite(array).all():\n        raise NonFiniteError",
           "    if False:\n        raise NonFiniteError",
           ("tests/test_bad_input.py",), "an image quantised from NaN written (black PNG, exit 0)"),
    Mutant("schedule_not_checked", "dbunet/schedulers/base.py",
           'return rows if np.isfinite(finite).all() else None', "return rows",
           ("tests/test_bad_input.py",), "coefficient tables with infinities accepted (DPM++ past its schedule)"),
    Mutant("ov_cache_without_precision", "dbunet/runtime/backends/openvino.py",
           'return root / f"{identity[:32]}-{precision}-ov{version}-cpu{cpu}"',
           'return root / f"{identity[:32]}-ov{version}-cpu{cpu}"',
           ("tests/runtime/test_openvino_backend.py",), "one OpenVINO cache folder for FP32 and BF16 blobs"),
    Mutant("artifacts_not_pinned", "dbunet/manifest.py",
           'if Path("/proc/self/fd").is_dir() and self.directory.is_dir():', "if False:",
           ("tests/test_reliability.py",), "verified by path, loaded by path again (two exports mixed)"),
    # one place per fact: the manifest's JSON Schema, the Literal choices read from the annotations
    Mutant("manifest_schema_skipped", "dbunet/manifest.py",
           "wrong = schemas.problem(d, schemas.MANIFEST)", "wrong = None",
           ("tests/test_bad_input.py",), "a manifest read without its JSON Schema (absurd dims reach the loader)"),
    Mutant("literal_choices_unchecked", "dbunet/bounds.py",
           "if allowed is not None and value not in allowed:", "if False:",
           ("tests/test_schedulers.py", "tests/test_config.py"), "a schedule or arch outside its Literal accepted"),
    Mutant("bench_report_schema_skipped", "dbunet/bench/runner.py",
           "wrong = schemas.problem(d, schemas.BENCH_REPORT)", "wrong = None",
           ("tests/bench/test_bench.py",), "a bench baseline read without its JSON Schema (a bad field a traceback)"),
    Mutant("config_fields_not_required", "dbunet/schemas.py",
           "required = [f.name for f in fields if f.default is dataclasses.MISSING",
           "required = [f.name for f in () if f.default is dataclasses.MISSING",
           ("tests/test_config.py",), "a config without a required field reaches the constructor's TypeError"),
    # parity: the FP32 tolerance follows the graph's largest spatial tensor, up to a ceiling
    Mutant("parity_tolerance_uncapped", "dbunet/export/parity.py",
           "return min(FP32_CEILING, TOLERANCE[\"fp32\"] * pixels / FP32_BASE_PIXELS)",
           "return TOLERANCE[\"fp32\"] * pixels / FP32_BASE_PIXELS",
           ("tests/export/test_export.py",), "the FP32 tolerance grows without bound (a wrong op passes at 2048^2)"),
    Mutant("parity_pixels_of_the_image_for_every_graph", "dbunet/export/specs.py",
           "largest = max(largest, sizes[h] * sizes[w])",
           "largest = max(largest, sizes[\"height\"] * sizes[\"width\"])",
           ("tests/export/test_export.py",), "the UNet judged at the image's pixels, 64x looser than its error needs"),
    # SDXL's conditioning (--arch sdxl), against diffusers' StableDiffusionXLPipeline
    Mutant("sdxl_empty_negative_encoded", "dbunet/generation.py",
           "_zero_empty_negative(req, config.zero_empty_negative, text, pooled)",
           "_zero_empty_negative(req, False, text, pooled)",
           ("tests/test_sdxl.py",), "an empty negative prompt encoded despite force_zeros_for_empty_prompt"),
    Mutant("sdxl_explicit_empty_negative_zeroed", "dbunet/generation.py",
           "if zero and req.guided and req.negative_prompt is None:",
           "if zero and req.guided and not req.negative_prompt:",
           ("tests/test_sdxl.py",), "an explicit empty negative prompt zeroed (diffusers zeros a missing one only)"),
    Mutant("sampler_options_unsaid", "dbunet/models/folder_scheduler.py", "        if unfollowed:\n",
           "        if False:\n", ("tests/models/test_sd_folder.py",),
           "DPM-Solver's exponential sigmas dropped without a word"),
    Mutant("scheduler_numbers_unchecked", "dbunet/schedulers/schedule.py", '        check_numbers("schedule", self)\n',
           "", ("tests/models/test_sd_folder.py",),
           "a scheduler file's \"1\" for a number ending the export in a TypeError's traceback"),
    Mutant("karras_sigmas_dropped_dpm", "dbunet/schedulers/dpm_solver.py", "        if s.use_karras_sigmas:",
           "        if False:", ("tests/test_sd1.py",),
           "a DPM++ 2M Karras folder sampled at its spaced timesteps: not diffusers' image"),
    Mutant("karras_sigmas_dropped_euler", "dbunet/schedulers/euler.py",
           "        if s.use_karras_sigmas and self.takes_karras_sigmas:", "        if False:",
           ("tests/test_sdxl_refiner.py",),
           "an Euler Karras base and refiner sampled at their spaced timesteps, split where those fall"),
    Mutant("karras_request_ignored", "dbunet/request.py",
           "        if self.karras_sigmas is None or self.karras_sigmas == schedule.use_karras_sigmas:",
           "        if True:", LOOP_TESTS, "a run's karras_sigmas ignored: the artifacts' schedule decides"),
    Mutant("karras_request_base_only", "dbunet/request.py",
           "refiner = make_scheduler(req.scheduler, req.schedule(config.latent_refiner.schedule))",
           "refiner = make_scheduler(req.scheduler, config.latent_refiner.schedule)", ("tests/test_sdxl_refiner.py",),
           "a run's karras_sigmas reach SDXL's base and not its refiner"),
    Mutant("karras_with_ddim_allowed", "dbunet/request.py",
           "        if self.karras_sigmas and self.scheduler not in KARRAS_SAMPLERS:",
           "        if False:", ("tests/test_bad_input.py",),
           "Karras sigmas asked with DDIM, which has none: ignored instead of refused"),
    Mutant("ancestral_noise_dropped", "dbunet/generation.py", "            x = x + step.noise\n",
           "            pass\n", LOOP_TESTS, "Euler ancestral's fresh noise never added: its deterministic part alone"),
    Mutant("ancestral_in_whole_loops", "dbunet/generation.py",
           "history is None and all(step.noise is None for step in steps):",
           "history is None:", ("tests/runtime/test_ort_loop.py",),
           "Euler ancestral run as a whole-loop graph, which has no input for its noise"),
    Mutant("ancestral_steps_to_the_next_sigma", "dbunet/schedulers/euler_ancestral.py",
           "        return self._down_up(index)[0]", "        return float(self.sigmas[index + 1])",
           ("tests/test_schedulers.py",), "Euler ancestral integrating to the next sigma, not to s_down"),
    Mutant("ancestral_noise_unscaled", "dbunet/generation.py",
           "else (noise.normal(shape) * np.float32(scale)).astype(np.float32)",
           "else noise.normal(shape)", ("tests/test_sd1.py",), "Euler ancestral's noise added at unit variance"),
    Mutant("lcm_noise_at_the_last_step", "dbunet/schedulers/lcm.py",
           "        if index == self.num_inference_steps - 1:  # the last step draws none\n",
           "        if False:\n", LOOP_TESTS,
           "LCM drawing noise at its last step, where diffusers' draws none: the refiner's noise comes one draw late"),
    Mutant("lcm_boundary_scaling_dropped", "dbunet/schedulers/lcm.py", "scaled = t * self.schedule.timestep_scaling",
           "scaled = t", ("tests/test_schedulers.py",), "LCM's boundary condition without timestep_scaling"),
    Mutant("clip_default_ddim_for_every_sampler", "dbunet/schedulers/base.py",
           "clips = self.default_clip_sample if s.clip_sample is None else s.clip_sample",
           "clips = True if s.clip_sample is None else s.clip_sample", ("tests/test_sd1.py",),
           "a clip_sample the file leaves out read as DDIM's default for LCM too (x0 clipped to [-1, 1])"),
    # SDE DPM-Solver++ (dpm++-sde): its noise, its decay of the sample, and a folder that names it
    Mutant("sde_noise_dropped", "dbunet/schedulers/dpm_solver_sde.py",
           "return float(sigma_t * _F32(np.sqrt(np.float64(_F32(1) - decay2))))", "return 0.0",
           ("tests/test_sd1.py",), "SDE DPM-Solver++ without its fresh noise (a draw taken, nothing added)"),
    Mutant("sde_decay_dropped", "dbunet/schedulers/dpm_solver_sde.py",
           "return sigma_t / sigma_s * decay, alpha_t * (_F32(1) - decay2)",
           "return sigma_t / sigma_s, alpha_t * (_F32(1) - decay2)",
           ("tests/test_schedulers.py",), "SDE DPM-Solver++ keeping the ODE form's sigma_t / sigma_s, without e^-h"),
    Mutant("sde_folder_runs_ode", "dbunet/models/folder_scheduler.py",
           "sampler = _variant(FOLDER_SAMPLERS.get(named, fallback), scheduler_config)",
           "sampler = FOLDER_SAMPLERS.get(named, fallback)", ("tests/models/test_sd_folder.py",),
           "a DPM++ 2M SDE folder defaulting to the ODE form"),
    Mutant("sde_option_said_unfollowed", "dbunet/schedulers/schedule.py",
           "        if any((option, value) == (key, config[key]) for _, option, value in OPTION_SAMPLERS):\n",
           "        if False:\n", ("tests/models/test_sd_folder.py",),
           "a DPM++ 2M SDE folder's algorithm_type said at export as an option dbunet lacks"),
    Mutant("lcm_defaults_dropped", "dbunet/models/folder_scheduler.py",
           'SAMPLER_DEFAULTS = {"lcm": {"steps": 4, "guidance_scale": 1.0}}', "SAMPLER_DEFAULTS = {}",
           ("tests/models/test_sd_folder.py",), "an LCM folder's runs at SD's 30 steps and guidance 7.5"),
    # PNDM (PLMS): its correction call, its multistep weights, the history the host keeps, its defaults
    Mutant("pndm_correction_from_the_new_sample", "dbunet/schedulers/pndm.py",
           "p=0.0 if call == 1 else a,", "p=a,", ("tests/test_schedulers.py",),
           "PNDM's correction stepping from the second call's sample, not the first's (the row; step() keeps it)"),
    Mutant("pndm_third_order_weights", "dbunet/schedulers/pndm.py",
           "3: (23 / 12, -16 / 12, 5 / 12)", "3: (23 / 12, -17 / 12, 6 / 12)", ("tests/test_schedulers.py",),
           "PNDM's third-order Adams-Bashforth weights off by 1/12"),
    Mutant("pndm_history_ignored", "dbunet/generation.py",
           "            x0 = history(step.index, x_in, x0)\n", "            pass\n", LOOP_TESTS,
           "the loop passing a PNDM step's raw output on as x0_prev, not the earlier outputs' part of eq. 9"),
    Mutant("pndm_whole_loop", "dbunet/generation.py",
           "if whole_loop is not None and history is None and all(",
           "if whole_loop is not None and all(", ("tests/runtime/test_ort_loop.py",),
           "PNDM run in a whole-loop graph, which cannot compute its x0_prev"),
    Mutant("pndm_alpha_to_one_default", "dbunet/schedulers/pndm.py",
           "    default_set_alpha_to_one = False", "    default_set_alpha_to_one = True", ("tests/test_schedulers.py",),
           "a PNDM file without set_alpha_to_one read as DDIM's default (True), where PNDM's is False"),
    Mutant("pndm_prk_default_unsaid", "dbunet/models/folder_scheduler.py",
           "    left_out = {k: v for k, v in defaults.items() if k in SAMPLER_OPTIONS and k not in config}\n",
           "    left_out = {}\n", ("tests/models/test_sd_folder.py",),
           "a PNDM file without skip_prk_steps (diffusers then runs its Runge-Kutta warm-up) exported unsaid"),
    Mutant("pndm_refiner_start_by_steps", "dbunet/request.py",
           "    start = len(refiner.timesteps) - calls", "    start = refiner.num_inference_steps - calls",
           ("tests/test_sdxl_refiner.py",), "SDXL's refiner with PNDM starting one call early (n + 1 calls, n steps)"),
    Mutant("turbo_runs_euler", "dbunet/models/folder_scheduler.py",
           '"EulerAncestralDiscreteScheduler": "euler-a", ', "", ("tests/test_sdxl.py",),
           "SDXL-Turbo's Euler ancestral folder falling back to Euler: the same image at one step only"),
    Mutant("karras_timesteps_unclipped", "dbunet/schedulers/base.py", "0, len(log_train) - 2)",
           "0, len(log_train) - 1)", ("tests/test_schedulers.py",),
           "a Karras sigma above the schedule's top mapped past the last training timestep"),
    Mutant("scheduler_class_from_its_file", "dbunet/models/folder_scheduler.py", "        return entry[1]\n",
           "        pass\n", ("tests/test_sd1.py",),
           "the scheduler class read from scheduler_config.json where diffusers loads model_index.json's"),
    Mutant("newer_sampler_option_refused", "dbunet/models/folder_scheduler.py",
           "return schedule.unfollowed_options({**left_out, **config}, source, defaults)",
           "return schedule.unfollowed_options({**left_out, **config}, source)", ("tests/models/test_sd_folder.py",),
           "a sampler option newer than dbunet's tables refusing the folder though it is at its default"),
    Mutant("lambda_clip_always_counts", "dbunet/schedulers/schedule.py",
           'if key == "lambda_min_clipped" and is_real(config[key]):', "if False:", ("tests/test_schedulers.py",),
           "a DPM-Solver clip below every timestep's log-SNR said to change the image"),
    Mutant("dpm_final_order_options_count", "dbunet/schedulers/schedule.py",
           'final_zero = config.get("final_sigmas_type", "zero") == "zero"', "final_zero = False",
           ("tests/test_schedulers.py",), "DPM-Solver's lower_order_final said to matter where the last step is "
           "first order anyway"),
    Mutant("refiner_sampler_unsaid", "dbunet/models/sdxl_folder.py", "    if own != base_sampler:\n",
           "    if False:\n", ("tests/test_sdxl_refiner.py",),
           "an SDXL refiner folder whose scheduler samples otherwise than the base's exported without a word"),
    Mutant("sdxl_time_ids_transposed", "dbunet/request.py",
           "size = (self.height, self.width)", "size = (self.width, self.height)",
           ("tests/test_sdxl.py",), "SDXL's size numbers as (width, height)"),
    Mutant("sdxl_last_hidden_state", "dbunet/models/sdxl_folder.py",
           "hidden_layer=-2,", "hidden_layer=-1,",
           ("tests/test_sdxl.py",), "SDXL's text embedding from the last hidden state, not the penultimate"),
    # SDXL's refiner (--refiner), against diffusers' denoising_end / denoising_start hand-off
    Mutant("sdxl_refiner_dpm_keeps_history", "dbunet/schedulers/dpm_solver.py",
           "return start < index < self.num_inference_steps - 1", "return 0 < index < self.num_inference_steps - 1",
           ("tests/test_sdxl_refiner.py",), "DPM-Solver++ second-order on the refiner's first step (no x0 before it)"),
    Mutant("sdxl_refiner_cutoff_inclusive", "dbunet/request.py",
           "calls = int((refiner.timesteps < cutoff).sum())", "calls = int((refiner.timesteps <= cutoff).sum())",
           ("tests/test_sdxl_refiner.py",), "the refiner's steps counted up to and including the hand-off timestep"),
    Mutant("sdxl_refiner_scores_swapped", "dbunet/generation.py",
           "rows = [[*sizes[:2], 0, 0, r.negative_aesthetic_score], [*sizes[:4], r.aesthetic_score]]",
           "rows = [[*sizes[:2], 0, 0, r.aesthetic_score], [*sizes[:4], r.negative_aesthetic_score]]",
           ("tests/test_sdxl_refiner.py",), "the refiner's aesthetic scores on the wrong rows"),
    Mutant("sdxl_refiner_negative_crop", "dbunet/generation.py",
           "rows = [[*sizes[:2], 0, 0, r.negative_aesthetic_score], [*sizes[:4], r.aesthetic_score]]",
           "rows = [[*sizes[:4], r.negative_aesthetic_score], [*sizes[:4], r.aesthetic_score]]",
           ("tests/test_sdxl_refiner.py",), "the refiner's unconditional row with the request's crop, not (0, 0)"),
    Mutant("sdxl_refiner_six_zero_crop", "dbunet/generation.py", "rows = [sizes, sizes]",
           "rows = [[*sizes[:2], 0, 0, *sizes[4:]], sizes]", ("tests/test_sdxl_refiner.py",),
           "a refiner without an aesthetic score given the (0, 0) crop on its unconditional row"),
    Mutant("upsampling_doubles", "dbunet/models/components.py", "unet.num_upsamplers = 30",
           "unet.num_upsamplers = unet.num_upsamplers", ("tests/test_sd1.py",),
           "the SD UNets' upsampling frozen to doubling at the export size (a latent of 17 meets a skip of 18)"),
    Mutant("bench_confirm_keeps_slower", "dbunet/cli/bench.py",
           "if again.results[name].median_ms < report.results[name].median_ms:",
           "if again.results[name].median_ms > report.results[name].median_ms:", ("tests/bench/test_bench.py",),
           "--compare's confirmation keeping the slower of its two runs"),
    Mutant("none_not_the_default", "dbunet/request.py",
           "options = {name: python_scalar(value) for name, value in options.items() if value is not None}",
           "options = {name: python_scalar(value) for name, value in options.items()}", ("tests/test_reliability.py",),
           "an option given as None read as a value, not as the model's default"),
    Mutant("folder_sampler_ignored", "dbunet/models/folder_scheduler.py",
           "sampler = _variant(FOLDER_SAMPLERS.get(named, fallback), scheduler_config)", "sampler = fallback",
           ("tests/models/test_sd_folder.py",), "a folder's scheduler class not taken as its default sampler"),
    Mutant("guidance_below_one", "dbunet/request.py", "return self.guidance_scale > 1.0",
           "return self.guidance_scale != 1.0", ("tests/test_sd1.py", "tests/test_sdxl.py"),
           "classifier-free guidance at scales below 1, where diffusers runs the prompt alone"),
    # attention as ONNX Runtime's MultiHeadAttention (dbunet.onnx_attention), against the graphs as exported
    Mutant("mha_one_head", "dbunet/onnx_attention.py",
           'attrs = {"num_heads": match.heads}', 'attrs = {"num_heads": 1}',
           ("tests/runtime/test_attention_rewrite.py",), "a plain attention rewritten with one head, whatever it had"),
    Mutant("mha_scale_dropped", "dbunet/onnx_attention.py",
           '| ({} if match.scale is None else {"scale": match.scale})', "",
           ("tests/runtime/test_attention_rewrite.py",), "an attention's own scale replaced by the default"),
    # SD 1.x folders (--arch sd1) and the schedule options they bring
    Mutant("v_prediction_as_epsilon", "dbunet/schedulers/base.py",
           'if prediction_type == "epsilon":', 'if prediction_type in ("epsilon", "v_prediction"):',
           ("tests/test_schedulers.py",), "a v-prediction model's output taken as noise in the coefficient table"),
    Mutant("spacing_default_ignored", "dbunet/schedulers/base.py",
           "return self.schedule.timestep_spacing or self.default_spacing",
           'return self.schedule.timestep_spacing or "leading"',
           ("tests/test_schedulers.py",), "a folder that names no timestep spacing gets 'leading' for every sampler"),
    Mutant("sd1_clip_default", "dbunet/schedulers/schedule.py",
           'values.setdefault("clip_sample", None)', 'values.setdefault("clip_sample", False)',
           ("tests/test_sd1.py",), "DDIM's clip_sample default (diffusers: True) not applied to a folder's config"),
    Mutant("scheduler_betas_sd_default", "dbunet/schedulers/schedule.py",
           "for key, default in _DIFFUSERS_BETAS.items():\n            values.setdefault(key, default)",
           "for key, default in _DIFFUSERS_BETAS.items():\n            pass",
           ("tests/test_schedulers.py",), "a scheduler config without betas gets SD's, not diffusers' defaults"),
    Mutant("dbunet_arch_scheduler_unread", "dbunet/models/sd_folder.py",
           "schedule, _ = read_schedule(root, base.schedule)", "schedule = base.schedule",
           ("tests/models/test_sd_folder.py",), "--arch dbunet ignores the folder's scheduler config"),
    Mutant("latents_ignored", "dbunet/generation.py",
           "latents = (drawn if given is None else given) * np.float32(sampler.init_noise_sigma)",
           "latents = drawn * np.float32(sampler.init_noise_sigma)",
           ("tests/runtime/test_latents.py",), "caller-given initial latents ignored"),
    # the trained shapes model: a bug every graph-parity check passes but that moves the shapes
    # (the reference loop catches it too; its target here is the quality test)
    Mutant("boxes_transposed", "dbunet/boxes.py",
           "coords[0, i] = (b.x0, b.y0, b.x1, b.y1)", "coords[0, i] = (b.y0, b.x0, b.y1, b.x1)",
           ("tests/test_quality.py",), "box x and y swapped on their way into the graphs"),
    # ONNX Runtime's whole loop: the buffer pairs the steps alternate between
    Mutant("ort_loop_result_parity", "dbunet/runtime/backends/ort_loop.py",
           "last = len(rows) % 2", "last = 1",
           ("tests/runtime/test_ort_loop.py",), "the whole loop returns the second buffer whatever the step count"),
    Mutant("ort_loop_x0_not_carried", "dbunet/runtime/backends/ort_loop.py",
           "binding.bind_ortvalue_output(out, state[name][1 - parity])",
           "binding.bind_ortvalue_output(out, state[name][1 - parity] if name == 'x' else state[name][parity])",
           ("tests/runtime/test_ort_loop.py",), "x0 written back over x0_prev's own buffer (step i reads a stale one)"),
    Mutant("ort_loop_loaded_session_kept", "dbunet/runtime/backends/ort_loop.py",
           "            graphs[name].close()  # its weights", "            pass  # its weights",
           ("tests/runtime/test_ort_loop.py",), "the step graph's load-time session stays resident beside the loop's"),
    Mutant("ort_loop_evicts_newest", "dbunet/runtime/backends/ort_loop.py",
           "self.buffers.popitem(last=False)", "self.buffers.popitem(last=True)",
           ("tests/runtime/test_ort_loop.py",), "a full loop releases the most recently used shape, not the least"),
    Mutant("ort_loop_box_slots_uncapped", "dbunet/runtime/backends/ort_loop.py",
           "max(n, min(limit, 1 << max(n - 1, 0).bit_length()))", "max(n, 1 << max(n - 1, 0).bit_length())",
           ("tests/runtime/test_ort_loop.py",), "box slots padded past the model's maximum"),
    # the API and the server's launcher
    Mutant("whole_loops_truthy", "dbunet/backends.py",
           "if not isinstance(whole_loops, bool | None):", "if False:",
           ("tests/runtime/test_backend_registry.py",), "whole_loops='no' accepted (and, being truthy, turns them on)"),
    Mutant("closed_pipeline_called", "dbunet/lifetime.py",
           "        if self.closed:\n", "        if False:\n",
           ("tests/runtime/test_backend_registry.py",), "a closed pipeline called anyway (fails deep in a session)"),
    Mutant("serve_export_unchecked", "dbunet/manifest.py",
           "if held and not all(missing.values()):", "if True:",
           ("tests/test_bad_input.py",), "dbunet-serve starts Ray for an export no run can be made from"),
    Mutant("pinned_mem_pattern_kept", "dbunet/runtime/backends/onnxruntime.py",
           "            options.enable_mem_pattern = False", "            pass",
           ("tests/runtime/test_ort_loop.py",), "pinned CPU sessions keep a memory-pattern block per shape"),
    Mutant("ort_loop_zero_box_slots", "dbunet/runtime/backends/ort_loop.py",
           "    return max(n, min(limit", "    return 0 if n == 0 else max(n, min(limit",
           ("tests/runtime/test_ort_loop.py",), "no box pins a zero-size box axis (refused by ONNX Runtime 1.31)"),
    Mutant("ort_cuda_listed_taken_for_started", "dbunet/runtime/backends/onnxruntime.py",
           "        if CUDA in session.get_providers():", "        if True:",
           ("tests/runtime/test_ort_cuda_provider.py",),
           "onnxruntime-gpu's listed provider taken for one that starts: FP16 on the CPU under the CUDA label"),
    Mutant("ort_graph_left_on_the_cpu", "dbunet/runtime/backends/onnxruntime.py",
           "if graph.device != self.device:", "if False:",
           ("tests/runtime/test_ort_cuda_provider.py",), "a graph the CUDA provider left on the CPU run there"),
    Mutant("ort_cuda_libraries_only_beside_onnxruntime", "dbunet/runtime/backends/onnxruntime.py",
           "        library_error = load_with_dependencies(library)", "        library_error = None",
           ("tests/runtime/test_cuda_libraries.py",),
           "CUDA's libraries in another site folder than onnxruntime-gpu's left unfound: the provider never loads"),
    Mutant("ort_cudnn_left_to_the_session", "dbunet/runtime/backends/onnxruntime.py",
           "        cudnn_error = load_with_dependencies(CUDNN)", "        cudnn_error = None",
           ("tests/runtime/test_cuda_libraries.py",),
           "cuDNN in another site folder left unfound: the provider loads, its sessions find no cuDNN"),
    Mutant("cuda_driver_taken_from_pip", "dbunet/runtime/cuda_libraries.py",
           "name.startswith(DRIVER) or ", "",
           ("tests/runtime/test_cuda_libraries.py",), "a libcuda.so.1 in an nvidia folder loaded as the driver"),
    Mutant("trt_stream_made_by_auto", "dbunet/backends.py",
           "identity = current_device(tensorrt)[0]", 'identity = factory("trt")().identity',
           (TRT_TESTS,), "auto's look for TensorRT engines makes a backend (and its CUDA stream) and drops it"),
    Mutant("made_backend_left_open", "dbunet/runtime/pipeline.py",
           "        if self.made_backend is not None:", "        if False:",
           (TRT_TESTS,), "a pipeline's close() leaves the backend it made open (TensorRT: its stream)"),
    Mutant("backend_open_on_failed_load", "dbunet/runtime/pipeline.py",
           "                made.close()\n", "                pass\n",
           (TRT_TESTS,), "a load that fails leaves the backend it made open (TensorRT: its stream)"),
    Mutant("load_error_hidden_by_close", "dbunet/runtime/pipeline.py",
           "except Exception:  # the load's error", "except ArithmeticError:  # the load's error",
           (TRT_TESTS,), "a failed load reports the backend's failing close() instead of its own error"),
    Mutant("bench_pipeline_left_open", "dbunet/bench/runner.py",
           "    with pipe:  # closed at the end", "    if pipe:  # closed at the end",
           (TRT_TESTS,), "a bench leaves its pipeline open (sessions, engines and device memory held)"),
    Mutant("backend_settings_ignored", "dbunet/runtime/pipeline.py",
           "    if given:\n        raise ConfigError", "    if False:\n        raise ConfigError",
           ("tests/runtime/test_runtime.py",), "device/threads given beside a backend object silently ignored"),
    Mutant("close_frees_under_a_call", "dbunet/lifetime.py",
           "release = self._calls == 0 and not self._released", "release = not self._released",
           ("tests/runtime/test_backend_registry.py",), "close() frees the sessions under a call still running"),
    Mutant("json_name_twice_kept", "dbunet/jsonfile.py",
           "json.loads(text, object_pairs_hook=_unique_names)", "json.loads(text)",
           ("tests/serve/test_api.py",), "a JSON object naming a field twice read as its last value"),
    Mutant("text_layer_norm_eps_dropped", "dbunet/models/components.py",
           "        layer_norm_eps=cfg.layer_norm_eps,\n", "",
           ("tests/models/test_sd_folder.py",), "a folder's text encoder layer_norm_eps dropped (1e-5 used)"),
    Mutant("export_over_the_current_directory", "dbunet/export/staging.py",
           "if here is not None and out.resolve() in (here, *here.parents):", "if False:",
           ("tests/test_reliability.py",), "an export replaces the directory a shell stands in"),
    Mutant("export_lock_file_replaced_kept", "dbunet/export/staging.py",
           "        if _same_file(path, lock):", "        if True:",
           ("tests/test_reliability.py",), "an export holds a removed lock file while a third holds the new one"),
    Mutant("export_lock_removed_after_release", "dbunet/export/staging.py",
           "            path.unlink()\n        lock.close()",
           "            pass\n        lock.close()\n        path.unlink()",
           ("tests/test_reliability.py",), "the lock file removed after its release: another export may hold it"),
    Mutant("sampling_defaults_unchecked", "dbunet/manifest.py",
           "            check_defaults(manifest.config)\n", "",
           ("tests/test_bad_input.py",), "a manifest whose defaults no request may ask for is read as sound"),
    Mutant("resume_from_unsaved_weights", "dbunet/train/trainer.py",
           "        if self.progress:\n            self._load_weights(",
           "        if (self.ckpt / 'weights.safetensors').is_file():\n            self._load_weights(",
           ("tests/train/test_train.py",), "a run killed before its first progress.json starts from its weights"),
    Mutant("latency_tolerance_nan", "dbunet/bench/baseline.py",
           "is_real(tolerance) and 0 <= tolerance <= MAX_TOLERANCE",
           "isinstance(tolerance, int | float) and not (tolerance < 0 or tolerance > MAX_TOLERANCE)",
           ("tests/bench/test_bench.py",), "a NaN latency tolerance passes every slowdown"),
]


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "dbunet-artifacts",
                                    ".cache")
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def table_problem(m: Mutant) -> str | None:
    """Why the mutant cannot be applied to the current tree, or None. A Python file the edit leaves unparsable
    is refused too: pytest would fail collecting it, and the mutant would count as caught without a test."""
    source = (ROOT / m.file).read_text()
    if source.count(m.old) != 1:
        return f"{m.name}: expected exactly one {m.old!r} in {m.file}, found {source.count(m.old)}"
    if m.file.endswith(".py"):
        try:
            compile(source.replace(m.old, m.new), m.file, "exec")
        except SyntaxError as exc:
            return f"{m.name}: the edit leaves {m.file} unparsable ({exc.msg}, line {exc.lineno})"
    return None


def run_tests(m: Mutant | None, tests: list[str], pytest_args: list[str]) -> tuple[bool, float, str]:
    """pytest over `tests` in a copy of the tree with mutant `m` applied (None: unmutated). -> (failed, s, detail)"""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name if m else 'none'}-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if m is not None:
            target = tree / m.file
            source = target.read_text()
            if source.count(m.old) != 1:
                raise SystemExit(f"{m.name}: expected exactly one {m.old!r} in {m.file}, found "
                                 f"{source.count(m.old)}; update the mutant table")
            target.write_text(source.replace(m.old, m.new))
        env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests,
                               *pytest_args], cwd=tree, env=env, capture_output=True, text=True)
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return proc.returncode != 0, time.perf_counter() - start, (failed[0] if failed else proc.stdout.strip()[-200:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants (default: all)")
    p.add_argument("--full", action="store_true", help="run the whole suite for each mutant instead of its tests")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {m.name for m in MUTANTS})
    if unknown:  # a misspelt name ran the others and said nothing about it
        p.error(f"no mutant named {', '.join(unknown)} (--list shows the table)")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:<28} {m.file:<36} {m.what}")
        return 0
    stale = [problem for m in chosen if (problem := table_problem(m))]
    if stale:  # before any run: a table out of date after a refactor should not cost a half-finished session
        print("\n".join(stale) + "\nupdate the mutant table")
        return 2
    # a test that fails without any mutant would "catch" every mutant: check the baseline first
    baseline = sorted({t for m in chosen for t in m.tests}) if not args.full else []
    failed, seconds, detail = run_tests(None, baseline, args.pytest_args)
    print(f"{'unmutated':<28} {'FAILS' if failed else 'passes':<8} {seconds:7.1f}  {detail if failed else ''}")
    if failed:
        print("the target tests fail without a mutant; fix them first")
        return 2
    missed = 0
    print(f"{'mutant':<28} {'verdict':<8} {'seconds':>7}  first failure")
    for m in chosen:
        caught, seconds, detail = run_tests(m, [] if args.full else list(m.tests), args.pytest_args)
        missed += not caught
        print(f"{m.name:<28} {'caught' if caught else 'MISSED':<8} {seconds:7.1f}  {detail}", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
