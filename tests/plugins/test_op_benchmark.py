"""The op benchmark's shapes and work counts (its timings need a GPU; the arithmetic does not)."""

import pytest
import torch
from bench_scripts import benchmark_script


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("ops") as module:
        yield module


def test_sd15_cases_and_work_counts(bench):
    cases = list(bench.sd15_cases(device="meta"))
    assert len(cases) == 9  # 3 ops x 3 latent sizes
    shapes = {(op, tag.split()[0]) for op, tag, _ in cases}
    assert {s for _, s in shapes} == {"64x64", "32x32", "16x16"}
    for op, tag, make in cases:
        args = make(torch.float16)
        out = bench.REFERENCES[op](*args)  # meta tensors: shapes only
        flops, nbytes = bench.flops_and_bytes(op, args, out)
        assert flops > 0 and nbytes > 0, (op, tag)
    box64 = next(make for op, tag, make in cases if op == "box_constraint" and tag.startswith("64x64"))
    x, q = box64(torch.float16)[:2]
    assert tuple(x.shape) == (2, 320, 64, 64) and tuple(q.shape) == (2, 4096, 320)
