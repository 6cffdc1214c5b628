"""Intervals: the exact binomial bounds solve their defining tail equations; the t interval matches by hand."""

import math

import pytest

from tinymem.stats import binomial_interval, mean_interval


def _cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize("k,n", [(0, 41), (1, 41), (20, 41), (40, 60), (41, 41), (3, 10)])
def test_clopper_pearson_bounds_solve_the_tail_equations(k, n):
    low, high = binomial_interval(k, n)
    assert 0.0 <= low <= 100.0 * k / n <= high <= 100.0
    if k < n:  # P(X <= k | p = high) = 2.5%
        assert _cdf(k, n, high / 100) == pytest.approx(0.025, abs=1e-6)
    else:
        assert high == 100.0
    if k > 0:  # P(X >= k | p = low) = 2.5%
        assert 1 - _cdf(k - 1, n, low / 100) == pytest.approx(0.025, abs=1e-6)
    else:
        assert low == 0.0


def test_zero_of_41_rows_is_not_zero_percent():
    assert binomial_interval(0, 41) == (0.0, pytest.approx(8.60, abs=0.01))


def test_binomial_interval_rejects_impossible_counts_and_has_none_for_no_rows():
    with pytest.raises(ValueError, match="3 of 2"):
        binomial_interval(3, 2)
    assert all(math.isnan(v) for v in binomial_interval(0, 0))


def test_mean_interval_by_hand():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (mean, low, high) == (2.0, pytest.approx(2 - half), pytest.approx(2 + half))
    assert mean_interval([5.0, float("nan")])[0] == 5.0 and math.isnan(mean_interval([5.0])[1])


def test_seed_intervals_of_a_rate_stay_inside_0_100_and_others_are_not_clipped():
    from tinymem.repeats import summarize_seeds

    # Three seeds with one far-off value: the plain t-interval of the mean would go below 0.
    per_seed = [{"mem_pct": v, "mem_pct_ci_low": 0.0, "mem_pct_ci_high": 10.0, "val_acc_drop": -v}
                for v in (0.0, 1.0, 30.0)]
    out = summarize_seeds(per_seed, [0, 1, 2])
    assert out["mem_pct"] == pytest.approx(31.0 / 3)
    assert out["mem_pct_seeds_ci_low"] == 0.0 and 0.0 < out["mem_pct_seeds_ci_high"] <= 100.0
    # A utility loss is not a rate: its interval keeps its sign (here well below zero).
    assert out["val_acc_drop_seeds_ci_low"] < -30.0
