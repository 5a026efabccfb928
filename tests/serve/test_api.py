"""dbunet.serve.api without a server: which failure becomes which HTTP status."""

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
