"""dbunet.serve.api without a server: which failure becomes which HTTP status."""

import json
import re

import pytest

from dbunet.errors import InputError, NonFiniteError
from dbunet.serve import api


class _Failing:
    def __init__(self, exc):
        self.exc = exc

    def __call__(self, prompt, **options):
        raise self.exc


@pytest.mark.parametrize(("exc", "status"), [(InputError("steps must be an integer in 1..1000, got 0"), 400),
                                             (NonFiniteError("the denoising loop produced NaN or infinity"), 500)])
def test_a_request_the_model_refuses_is_400_and_a_non_finite_result_is_500(exc, status):
    """A bad request is the client's; NaN from the model is the server's: no image either way, one error line."""
    with pytest.raises(api.Refused) as refused:
        api.generate(_Failing(exc), api.parse(b'{"prompt": "a cat"}'))
    assert refused.value.status == status and refused.value.body == f"error: {exc}\n"


def test_a_body_with_a_byte_order_mark_is_read_as_before():
    assert api.parse(b'\xef\xbb\xbf{"prompt": "a cat"}').prompt == "a cat"


@pytest.mark.parametrize("body, says", [
    (b'{"prompt": "a", "seed": ' + b"[" * 30000 + b"]" * 30000 + b"}", "nested too deeply"),  # a RecursionError before
    (b'{"prompt": "a"', "not valid JSON"), (b"[1]", "must be a JSON object"), (b'{"prompt": 3}', "prompt is required"),
    (b'{"prompt": "a", "colour": 1}', "unknown field(s) colour"),
    # parsers differ on which of the two counts (Python's took the last): refused, like any ambiguous document
    (b'{"prompt": "a cat", "steps": 4, "prompt": "a dog"}', "not valid JSON ('prompt' given twice in one object)"),
    (b'{"prompt": "a", "boxes": "0.1,0.1,0.5,0.5:a"}', "boxes must be a list"),
])
def test_a_body_the_api_cannot_read_is_400_with_one_line(body, says):
    assert len(body) <= api.MAX_BODY
    with pytest.raises(api.Refused) as refused:
        api.parse(body)
    assert refused.value.status == 400 and says in refused.value.body and "\n" not in refused.value.body[:-1]


def test_null_for_an_optional_field_is_the_model_s_default():
    """JSON clients write null for "not given" (a generated client, a form with an empty field): every optional
    field then reads as absent, and the prompt, which has no default, stays required."""
    every_optional = {name: None for name in api.FIELDS if name != "prompt"}
    nulls = api.parse(json.dumps({"prompt": "a cat", **every_optional}).encode())
    assert nulls == api.parse(b'{"prompt": "a cat"}') and nulls.response == "png"
    assert nulls.options == {"boxes": ()}
    with pytest.raises(api.Refused, match="prompt is required"):
        api.parse(b'{"prompt": null, "steps": 4}')


def test_a_replica_s_load_error_is_read_back_from_serve_s_status_message():
    """Serve passes a replica constructor's exception on as formatted traceback text inside its deployment
    message; the dbunet error in it comes back as that class with its line, anything else as None."""
    import traceback

    from dbunet.errors import ArtifactError
    from dbunet.serve.app import replica_load_error

    try:
        raise ArtifactError("no TensorRT engines in art; run dbunet-build --artifacts art on this machine")
    except ArtifactError:
        formatted = traceback.format_exc()
    message = ("The deployment failed to start 3 times in a row. See controller logs for details. Error:\n"
               f"RuntimeError: Traceback (most recent call last):\n{formatted}")
    error = replica_load_error(message)
    assert type(error) is ArtifactError
    assert str(error) == ("the replicas could not open the pipeline: no TensorRT engines in art; "
                          "run dbunet-build --artifacts art on this machine")
    assert replica_load_error(message.replace("dbunet.errors.ArtifactError", "MemoryError")) is None
    assert type(replica_load_error("dbunet.errors.Unheard: x")).__name__ == "DbunetError"


@pytest.mark.parametrize(("options", "says"), [
    ({"num_gpus": 1}, "1 replica needs 1 GPU (--num-gpus 1); this machine's Ray instance has 0"),
    ({"replicas": 3}, "3 replicas need 3 CPUs (--num-cpus 1); this machine's Ray instance has 2"),
    ({"num_cpus": 2.5}, "1 replica needs 2.5 CPUs (--num-cpus 2.5)"),
    ({"autoscale": (3, 4)}, "3 replicas need 3 CPUs"),
    ({"replicas": 2}, None), ({"autoscale": (1, 8)}, None), ({"replicas": 4, "num_cpus": 0.5}, None),
])
def test_replicas_this_machine_cannot_place_are_refused_before_serve_waits_for_them(options, says):
    """On a Ray instance of this machine alone (2 CPUs, no GPU here) Serve would wait for them silently, for
    ever; an autoscaling range needs only its minimum placed at once."""
    from pathlib import Path

    from dbunet.errors import ConfigError
    from dbunet.serve.app import ServeOptions, check_fits

    resources = {"CPU": 2.0, "memory": 1e10}
    if says is None:
        check_fits(ServeOptions(Path("art"), **options), resources)
        return
    with pytest.raises(ConfigError, match=re.escape(says)):
        check_fits(ServeOptions(Path("art"), **options), resources)


def test_the_launcher_checks_the_graphs_a_run_would_read_and_the_reference_reads_none(tiny_artifacts, tmp_path):
    import json
    import shutil

    from dbunet.cli.serve import check_export
    from dbunet.errors import ArtifactError

    for backend, precision in (("auto", None), ("trt", None), ("openvino", "bf16"), ("ort", "fp16")):
        check_export(tiny_artifacts, backend, precision)  # a complete export in fp32 and fp16
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"]
                             if (a["component"], a["precision"]) != ("dbunet_step", "fp16")]
    (art / "manifest.json").write_text(json.dumps(manifest))
    check_export(art, "auto", None)  # fp32 is complete: the machine may pick it
    for backend, precision in (("trt", None), ("auto", "fp16")):
        with pytest.raises(ArtifactError, match="lacks dbunet_step in fp16"):
            check_export(art, backend, precision)
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["component"] != "dbunet_step"]
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="lacks dbunet_step in fp16; dbunet_step in fp32"):
        check_export(art, "auto", None)
    check_export(art, "torch", None)  # the PyTorch reference runs from the model folder, not the graphs


def _streamed(chunks, headers=()):
    """A real Starlette request whose body arrives in `chunks` (an iterator, possibly endless); how many were
    pulled is counted."""
    import itertools

    Request = pytest.importorskip("starlette.requests", reason="Starlette comes with the serve extra "
                                  '(pip install -e ".[serve]")').Request
    source, pulled = iter(chunks), itertools.count()

    async def receive():
        next(pulled)
        chunk = next(source, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    scope = {"type": "http", "method": "POST", "headers": [(k.encode(), v.encode()) for k, v in headers]}
    return Request(scope, receive), pulled


def test_a_body_is_read_whole_up_to_the_limit_and_no_further():
    import asyncio
    import itertools

    def read(request):
        return asyncio.run(api.read_body(request.stream(), request.headers.get("content-length")))

    request, _ = _streamed([b'{"prompt": ', b'"a cat"}'])  # chunked: no declared length
    assert api.parse(read(request)).prompt == "a cat"
    # before: an endless chunked body was read into memory whole; now the reading stops just past the limit
    request, pulled = _streamed(itertools.repeat(b"x" * 4096))
    with pytest.raises(api.Refused) as refused:
        read(request)
    assert refused.value.status == 413 and next(pulled) == api.MAX_BODY // 4096 + 1
    request, pulled = _streamed(itertools.repeat(b"x"), headers=[("content-length", str(api.MAX_BODY + 1))])
    with pytest.raises(api.Refused, match=f"request body of {api.MAX_BODY + 1} bytes"):
        read(request)
    assert next(pulled) == 0  # refused on its declared length, before any byte is read
