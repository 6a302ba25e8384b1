"""Wilson and the stratified bootstrap of tilevl.eval.intervals against published values and
against what a resampling of counts must give."""

from __future__ import annotations

import numpy as np
import pytest

from tilevl.eval.intervals import bootstrap_interval, f1_from_counts, wilson_interval


def _mean(sums):
    return sums[..., 0] / sums[..., 1]


def test_wilson_matches_published_values():
    # Newcombe (1998), Table I: 15/148 → 0.0624–0.1605; 0/20 → 0–0.1611; 81/263 → 0.2553–0.3662.
    for (k, n), (lo, hi) in {(15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                             (81, 263): (0.2553, 0.3662)}.items():
        assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="outside 0..5"):
        wilson_interval(6, 5)


def test_bootstrap_holds_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    units = np.stack([rng.random(300) < 0.4, np.ones(300)], 1).astype(float)
    estimate = _mean(units.sum(0))
    (lo, hi), = bootstrap_interval([units], _mean, seed=5)
    assert lo < estimate < hi and 0.05 < hi - lo < 0.15  # ≈ ±1.96·sqrt(.24/300) = ±0.055
    assert bootstrap_interval([units], _mean, seed=5) == [(lo, hi)]
    assert bootstrap_interval([units], _mean, seed=6) != [(lo, hi)]


def test_bootstrap_resamples_within_strata():
    # All-right and all-wrong strata: resampling within each keeps the pooled mean fixed.
    right, wrong = np.array([[1.0, 1.0]] * 10), np.array([[0.0, 1.0]] * 30)
    (lo, hi), = bootstrap_interval([right, wrong], _mean)
    assert lo == hi == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least one unit"):
        bootstrap_interval([right, right[:0]], _mean)
    with pytest.raises(ValueError, match="widths"):
        bootstrap_interval([right, np.ones((3, 3))], _mean)


def test_f1_from_counts():
    # tp 3, fp 1, fn 2 of 10 questions: P 3/4, R 3/5, F1 2/3; 4 "yes" replies.
    assert f1_from_counts(np.array([3.0, 1.0, 2.0, 10.0])).tolist() == pytest.approx([2 / 3, 0.4])
    assert f1_from_counts(np.array([0.0, 0.0, 0.0, 0.0])).tolist() == [0.0, 0.0]
