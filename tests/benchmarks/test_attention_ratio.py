"""The arithmetic behind benchmarks/attention.py's tiny 512/256 ratio block."""

import pytest
from bench_scripts import benchmark_script


@pytest.mark.parametrize("attention, rest", [((13.3, 154.9), (16.6, 52.8)), ((10.0, 160.0), (10.0, 30.0))])
def test_the_needed_speed_up_brings_the_ratio_to_exactly_five(attention, rest):
    with benchmark_script("attention") as script:
        k = script.needed_speedup(attention, rest)
    (a1, a2), (r1, r2) = attention, rest
    assert k > 1
    assert (r2 + a2 / k) / (r1 + a1 / k) == pytest.approx(5.0)
    assert (r2 + a2 / (0.9 * k)) / (r1 + a1 / (0.9 * k)) > 5.0  # any less speed-up falls short


def test_no_speed_up_suffices_where_the_rest_alone_grows_more_than_five_times():
    with benchmark_script("attention") as script:
        assert script.needed_speedup((10.0, 100.0), (10.0, 60.0)) is None


def test_a_step_already_within_five_times_needs_no_speed_up():
    with benchmark_script("attention") as script:
        assert script.needed_speedup((10.0, 40.0), (10.0, 30.0)) <= 1
