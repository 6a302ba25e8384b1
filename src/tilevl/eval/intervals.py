"""95 % intervals for benchmark figures: Wilson for a proportion of independent questions,
and a seeded percentile bootstrap over units (an item with all its circular copies, an image
with all its questions) for figures whose questions are not independent, pooled over strata.

A unit is a vector of counts (e.g. `[right, right with images swapped, 1]`); a resample draws
units with replacement within each stratum (a seed's test split), sums their vectors and hands
the sums to a statistic, so ratios, differences and F1 all come from the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion (no continuity correction).

    Args:
        successes: questions right.
        n: questions asked.
        level: the coverage (0.95: z = 1.96).
    Returns:
        (low, high) as fractions; (0.0, 1.0) when n is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes {successes} outside 0..{n}")
    z = _normal_quantile(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(q: float) -> float:
    # Acklam-free: bisection on erf is plenty for two or three calls per run.
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def bootstrap_interval(strata: Sequence[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray],
                       resamples: int = RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> list[tuple[float, float]]:
    """Percentile bootstrap over units, resampled within each stratum.

    Args:
        strata: one array per stratum, shape (units, d): each unit's count vector.
        statistic: maps summed counts, shape (..., d), to figures, shape (..., m) (or (...,)
            for one figure); it is called once on all resamples at once.
        resamples: bootstrap draws (2 000).
        seed: the generator's seed: the same inputs give the same interval.
        level: the coverage.
    Returns:
        One (low, high) per figure.
    Raises:
        ValueError: when a stratum has no units or the strata disagree on d.
    """
    if not strata or any(len(s) == 0 for s in strata):
        raise ValueError("bootstrap_interval: every stratum needs at least one unit")
    widths = {np.asarray(s).shape[1] for s in strata}
    if len(widths) != 1:
        raise ValueError(f"bootstrap_interval: strata have count vectors of widths {sorted(widths)}")
    rng = np.random.default_rng(seed)
    totals = np.zeros((resamples, widths.pop()))
    for stratum in strata:
        units = np.asarray(stratum, dtype=float)
        picks = rng.integers(0, len(units), size=(resamples, len(units)))
        totals += units[picks].sum(axis=1)  # (resamples, d)
    values = np.asarray(statistic(totals), dtype=float).reshape(resamples, -1)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail], axis=0)
    return [(float(a), float(b)) for a, b in zip(low, high)]


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """POPE's F1 ("yes" positive) and the share of "yes" replies from summed counts.

    Args:
        counts: (..., 4) sums of [true positives, false positives, false negatives, questions].
    Returns:
        (..., 2): F1 and yes ratio; an empty denominator gives 0, as the scorer does.
    """
    tp, fp, fn, n = (counts[..., k] for k in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        yes = np.where(n > 0, (tp + fp) / n, 0.0)
    return np.stack([f1, yes], axis=-1)


__all__ = ["LEVEL", "RESAMPLES", "bootstrap_interval", "f1_from_counts", "wilson_interval"]
