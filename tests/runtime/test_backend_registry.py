"""One registry of backends: the CLI's choices and defaults, the bench's and the API's all come from it."""

import functools
import inspect
import itertools
from pathlib import Path

import numpy as np
import pytest

from dbunet import backends
from dbunet.cli import bench, run, serve
from dbunet.errors import ConfigError
from dbunet.runtime import Pipeline


def _option(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_cli_bench_and_api_share_choices_and_default():
    for parser in (run.parser(), bench.parser(), serve.parser()):
        action = _option(parser, "--backend")
        assert tuple(action.choices) == backends.CHOICES and action.default == backends.DEFAULT
        precision = _option(parser, "--precision")
        assert tuple(precision.choices) == backends.PRECISIONS and precision.help == backends.describe_precisions()
    assert "ort computes fp32 or fp16, openvino fp32 or bf16, trt fp16, torch fp32" in backends.describe_precisions()
    for api in (backends.open_pipeline, Pipeline.from_artifacts):
        assert inspect.signature(api).parameters["backend"].default == backends.DEFAULT


def test_unknown_backend_names_the_valid_ones_and_objects_are_named_by_the_registry():
    with pytest.raises(ConfigError, match="valid: auto, ort, openvino, trt, torch"):
        backends.info("onnx")
    assert backends.name_of(backends.make_backend("ort", "cpu")) == "ort"


def test_open_pipeline_auto_and_the_reference_give_the_same_image(tiny_artifacts):
    request = dict(steps=2, refiner_steps=1, seed=3, boxes=["0.1,0.1,0.6,0.6:a cat"])
    auto = backends.open_pipeline(tiny_artifacts)
    assert auto.backend_name in ("ort", "openvino") and auto.chosen_because
    torch_pipe = backends.open_pipeline(tiny_artifacts, "torch")
    assert (torch_pipe.backend_name, torch_pipe.precision, torch_pipe.chosen_because) == ("torch", "fp32", "")
    ort = backends.open_pipeline(tiny_artifacts, "ort", "fp32")
    # FP32 graphs vs the FP32 PyTorch reference: within a few uint8 levels (the reference-loop tests bound it)
    diff = np.abs(ort("a cat", **request).image.astype(int) - torch_pipe("a cat", **request).image.astype(int))
    assert diff.max() <= 2


def test_the_reference_refuses_other_precisions_and_graph_runtimes_refuse_it(tiny_artifacts):
    with pytest.raises(ConfigError, match="backend torch computes in fp32, not fp16; fp16 runs on ort or trt"):
        backends.open_pipeline(tiny_artifacts, "torch", "fp16")
    with pytest.raises(ConfigError, match="use open_pipeline"):
        Pipeline.from_artifacts(tiny_artifacts, "torch")


def test_whole_loops_reach_onnx_runtime_and_backends_without_the_choice_refuse_them(tiny_artifacts):
    from dbunet.runtime.backends.ort_loop import OrtLoopStages

    assert not backends.open_pipeline(tiny_artifacts, "ort", "fp32", "cpu").stages.whole_loops  # the CPU's default
    whole = backends.open_pipeline(tiny_artifacts, "ort", "fp32", "cpu", whole_loops=True)
    assert isinstance(whole.stages, OrtLoopStages) and whole.stages.whole_loops
    assert not backends.make_backend("ort", "cpu", whole_loops=False).whole_loops
    for name, value, says in (("openvino", True, "never"), ("torch", True, "never"), ("trt", False, "always")):
        honours = functools.partial(backends.honours_whole_loops, name)
        assert not honours(value) and honours(not value) and honours(None)
        with pytest.raises(ConfigError, match=f"backend {name} {says} runs each denoising loop"):
            backends.open_pipeline(tiny_artifacts, name, whole_loops=value)
    assert backends.honours_whole_loops("ort", True) and backends.honours_whole_loops("ort", False)


@pytest.mark.parametrize("value", ["no", "yes", 1, 0])
def test_whole_loops_is_a_bool_or_none(tiny_artifacts, value):
    # "no" is truthy: before this check it turned whole loops on
    for call in (lambda: backends.open_pipeline(tiny_artifacts, "ort", whole_loops=value),
                 lambda: backends.open_pipeline(tiny_artifacts, whole_loops=value),
                 lambda: backends.make_backend("ort", "cpu", whole_loops=value)):
        with pytest.raises(ConfigError, match="whole_loops must be True, False or None"):
            call()


def test_each_backend_refuses_the_precisions_it_does_not_compute_before_loading(tiny_artifacts, monkeypatch):
    """The registry is the one place that says which backend computes what: every (backend, precision) pair it
    rules out is refused by open_pipeline and by Pipeline.from_artifacts before the backend is even built."""
    monkeypatch.setattr(backends, "factory", lambda name: pytest.fail(f"{name} was built for a refused request"))
    computes = {"ort": {"fp32", "fp16"}, "openvino": {"fp32", "bf16"}, "trt": {"fp16"}, "torch": {"fp32"}}
    assert {b.name: set(b.precisions) for b in backends.REGISTRY.values()} == computes
    assert backends.PRECISIONS == ("fp32", "fp16", "bf16")  # each once, whatever computes it
    for name, precision in itertools.product(computes, backends.PRECISIONS):
        if precision in computes[name]:
            backends.check_precision(name, precision)
            continue
        others = " or ".join(n for n in computes if precision in computes[n])
        says = f"backend {name} computes in {' or '.join(backends.info(name).precisions)}, not {precision}; " \
               f"{precision} runs on {others}"
        with pytest.raises(ConfigError, match=f"^{says}$"):
            backends.open_pipeline(tiny_artifacts, name, precision)
        if not backends.info(name).reference:
            with pytest.raises(ConfigError, match=f"^{says}$"):
                Pipeline.from_artifacts(tiny_artifacts, name, precision)
    with pytest.raises(ConfigError, match="unknown precision 'int8'; valid: fp32, fp16, bf16"):
        backends.open_pipeline(tiny_artifacts, "auto", "int8")


def test_a_request_decides_its_backend_only_where_one_backend_computes_its_precision():
    assert backends.requested_backend("auto", "bf16") == "openvino"
    assert backends.requested_backend("auto", "fp16") is None  # ort or trt: the machine decides
    assert backends.requested_backend("auto", None) is None
    assert backends.requested_backend("trt", None) == "trt"
    assert backends.choose_backend(Path("unused"), "bf16") == ("openvino", "only openvino computes bf16")
    backends.check_request("auto", "fp16", whole_loops=False)  # ort can turn them off
    with pytest.raises(ConfigError, match="backend openvino never runs each denoising loop"):
        backends.check_request("auto", "bf16", whole_loops=True)
    with pytest.raises(ConfigError, match="backend trt computes in fp16, not fp32"):
        backends.check_request("trt", "fp32")


def test_the_files_a_request_reads_come_from_the_registry():
    # OpenVINO computes fp32 and bf16 from the fp32 graphs; every other backend reads its precision's own files;
    # under auto without a precision the machine decides (None)
    assert backends.files_for("openvino", "bf16") == backends.files_for("auto", "bf16") == "fp32"
    assert backends.files_for("openvino", None) == "fp32"
    assert backends.files_for("trt", "fp16") == backends.files_for("auto", "fp16") == "fp16"
    assert backends.files_for("ort", "fp32") == backends.files_for("auto", "fp32") == "fp32"
    assert backends.files_for("auto", None) is None and backends.files_for("ort", None) is None
    assert backends.files_for("trt", None) == "fp16"  # the one precision it computes


@pytest.mark.parametrize("name, options", [("ort", {}), ("ort", {"whole_loops": True}), ("openvino", {}),
                                           ("torch", {})])
def test_every_pipeline_closes_once_refuses_calls_after_and_closes_with_with(tiny_artifacts, name, options):
    # before: ONNX Runtime said "its session was closed" naming a /proc/self/fd path, OpenVINO raised an
    # AttributeError, and the PyTorch reference had no close() at all
    from dbunet.errors import ClosedError

    if name == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    with backends.open_pipeline(tiny_artifacts, name, **options) as pipe:
        assert pipe("a red cat", steps=1, refiner_steps=0).image.dtype == np.uint8
    assert pipe.closed
    pipe.close()  # a second close does nothing
    with pytest.raises(ClosedError, match=f"this {type(pipe).__name__} was closed"):
        pipe("a red cat", steps=1, refiner_steps=0)


@pytest.mark.parametrize("name, options", [("ort", {}), ("ort", {"whole_loops": True}), ("openvino", {}),
                                           ("torch", {})])
def test_a_close_during_a_call_lets_the_call_finish_and_frees_after_it(tiny_artifacts, name, options):
    # before: close() from another thread freed the sessions under the running call, which then failed midway
    import threading

    from dbunet.errors import ClosedError

    if name == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    pipe = backends.open_pipeline(tiny_artifacts, name, **options)
    want = pipe("a red cat", steps=2, refiner_steps=1, seed=3).image
    inside, closed = threading.Event(), threading.Event()

    def progress(stage, done, total):
        if stage == "denoise" and not inside.is_set():  # after the first step (or whole loop): close() runs now
            inside.set()
            assert closed.wait(30)

    result, released_by = {}, []
    release = pipe._release
    pipe._release = lambda: (released_by.append(threading.current_thread()), release())
    call = threading.Thread(target=lambda: result.update(
        image=pipe("a red cat", progress=progress, steps=2, refiner_steps=1, seed=3).image))
    call.start()
    assert inside.wait(60)
    pipe.close()
    closed.set()
    call.join(120)
    assert not call.is_alive()
    np.testing.assert_array_equal(result.get("image"), want)  # the call in flight finished with its image
    assert pipe.closed and released_by == [call]  # freed once, when the call ended, not by close() under it
    with pytest.raises(ClosedError):
        pipe("a red cat", steps=1, refiner_steps=0)
    pipe.close()
    assert released_by == [call]


def test_a_close_from_inside_a_call_does_not_wait_for_itself(tiny_artifacts):
    pipe = backends.open_pipeline(tiny_artifacts, "ort")
    want = pipe("a red cat", steps=2, refiner_steps=1, seed=3).image
    got = pipe("a red cat", steps=2, refiner_steps=1, seed=3, progress=lambda stage, done, total: pipe.close()).image
    np.testing.assert_array_equal(got, want)
    assert pipe.closed
