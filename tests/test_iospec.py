"""The runtime's input check (GraphSpec.check_feeds), which every backend runs before a graph: each kind of wrong
feed is named, all of them in one error, and a right feed gives the sizes of its symbolic dims."""

import numpy as np
import pytest

from dbunet.errors import InputError
from dbunet.iospec import GraphSpec, TensorSpec

SPEC = GraphSpec("step", (TensorSpec("latents", "float32", ("batch", 4, "h", "w")),
                          TensorSpec("ids", "int64", ("batch", 77))),
                 (TensorSpec("out", "float32", ("batch", 4, "h", "w")),))


def _feeds(**changes):
    feeds = {"latents": np.zeros((2, 4, 8, 16), np.float32), "ids": np.zeros((2, 77), np.int64)}
    return {k: v for k, v in {**feeds, **changes}.items() if v is not None}


def test_a_right_feed_gives_the_symbolic_sizes():
    assert SPEC.check_feeds(_feeds()) == {"batch": 2, "h": 8, "w": 16}


@pytest.mark.parametrize("changes, says", [
    ({"ids": None}, "inputs ['latents'] != expected ['ids', 'latents']"),
    ({"mask": np.zeros(1)}, "inputs ['ids', 'latents', 'mask'] != expected ['ids', 'latents']"),
    ({"latents": np.zeros((2, 4, 8, 16), np.float16)}, "latents: dtype float16, expected float32"),
    ({"ids": np.zeros((2, 77), np.int32)}, "ids: dtype int32, expected int64"),
    ({"latents": np.zeros((2, 4, 8), np.float32)}, "latents: rank 3 (2, 4, 8), expected dims ('batch', 4, 'h', 'w')"),
    ({"latents": np.zeros((2, 3, 8, 16), np.float32)}, "latents: axis 1 is 3, expected 4"),
    ({"ids": np.zeros((2, 76), np.int64)}, "ids: axis 1 is 76, expected 77"),
    ({"ids": np.zeros((3, 77), np.int64)}, "ids: 'batch' is 3 here but 2 elsewhere"),
])
def test_each_wrong_feed_is_named(changes, says):
    with pytest.raises(InputError) as caught:
        SPEC.check_feeds(_feeds(**changes))
    assert str(caught.value).startswith("step: ") and says in str(caught.value), str(caught.value)


def test_every_problem_is_in_one_error():
    bad = _feeds(latents=np.zeros((2, 3, 8, 16), np.float16), ids=np.zeros((5, 77), np.int64))
    with pytest.raises(InputError) as caught:
        SPEC.check_feeds(bad)
    assert str(caught.value).count("; ") == 2, str(caught.value)  # dtype, fixed axis, batch disagreement


def test_a_loaded_graph_that_is_not_the_declared_one_is_named():
    declared = [("latents", "float32", 4), ("ids", "int64", 2)], [("out", "float32", 4)]
    assert SPEC.mismatches(*declared) == []
    problems = SPEC.mismatches([("ids", "int64", 2), ("latents", "float32", 4)], [("out", "float16", 4)])
    assert len(problems) == 2 and problems[0].startswith("inputs ") and problems[1].startswith("outputs "), problems
