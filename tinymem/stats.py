"""Intervals for the numbers we report: exact binomial intervals for a percentage of rows, Student-t intervals
for a mean over seeds.

A memorization rate measured on 41 rows is not known to better than several points; a reported "0%" must say
"0 of 41, 0 to 8.6%". Both intervals are the textbook ones (Clopper-Pearson, and t with n-1 degrees of
freedom), so a reader can recompute them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

LEVEL = 0.95


def binomial_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion, in percent; (nan, nan) when `n` is 0.

    Exact rather than Wald or Wilson: it never leaves [0, 100] and keeps its coverage at 0 or n successes,
    which is where memorization rates live after a mitigation.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"binomial_interval: need 0 <= successes <= n, got {successes} of {n}")
    return _clopper_pearson(int(successes), int(n), float(level))


# A sweep's per-epoch evaluations ask for the same few (successes, n) again and again, and one scipy call
# costs about 15 ms of CPU: a quarter of a checkpoint evaluation on a small model.
@lru_cache(maxsize=4096)
def _clopper_pearson(successes: int, n: int, level: float) -> tuple[float, float]:
    # The beta quantiles, as scipy.stats.beta.ppf computes them (the same numbers), without importing
    # scipy.stats: that import costs about half a second of CPU in every trial process.
    from scipy.special import betaincinv

    if n == 0:
        return math.nan, math.nan
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else float(betaincinv(successes, n - successes + 1, alpha / 2))
    high = 1.0 if successes == n else float(betaincinv(successes + 1, n - successes, 1 - alpha / 2))
    return 100.0 * low, 100.0 * high


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its Student-t interval; NaN bounds for one value.

    NaN values are left out (a failed seed has no number), so the mean is over the seeds that have one.
    """
    from scipy.stats import t

    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = float(t.ppf(1 - (1 - level) / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return mean, mean - half, mean + half
