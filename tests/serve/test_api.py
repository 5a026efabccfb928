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
