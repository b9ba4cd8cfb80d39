"""dowser.stats: hand-written t-tests against scipy, p-value text, interpolation by hand."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from dowser.stats import interp_up, mean_sd, one_sample_less, p_text, spearman, welch_greater


def test_welch_matches_scipy():
    a, b = [40.1, 38.2, 45.0], [23.8, 25.1, 22.4, 24.0]
    ours = welch_greater(a, b)
    ref = sp.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    assert ours.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 3), rel=1e-12)


def test_one_sample_matches_scipy_and_hand():
    r = [86.9 - 5.3, 86.9, 86.9 + 5.3]
    ours = one_sample_less(r, 7.2)
    ref = sp.ttest_1samp(r, 7.2, alternative="less")
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12) and ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.t == pytest.approx((86.9 - 7.2) / (5.3 / math.sqrt(3)), rel=1e-12)  # sd of (-5.3, 0, 5.3) is 5.3
    assert ours.p > 0.99  # Random far above Dowser: no evidence Dowser is better


def test_undefined_tests_say_why():
    assert p_text(welch_greater([40.0], [20.0, 21.0])) == "n/a (1 Dowser seed)"
    assert p_text(welch_greater([40.0, 41.0], [20.0])) == "n/a (1 Random seed)"
    assert p_text(welch_greater([1.0, 1.0], [2.0, 2.0])) == "n/a (no variance on either side)"
    assert p_text(one_sample_less([5.0], 1.0)) == "n/a (1 Random seed)"
    assert p_text(one_sample_less([5.0, 5.0], 1.0)) == "n/a (no variance across Random seeds)"
    assert p_text(welch_greater([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])) == "0.000193"  # t = 11.02, df 4 (scipy: 1.925e-4)
    assert mean_sd([1.0, 3.0]) == "2.0 ± 1.4" and mean_sd([2.0]) == "2.0" and mean_sd([]) == ""


def test_interp_by_hand():
    # two sweep points (A_down 10 -> A_up 90, 30 -> 50): at 20, halfway
    assert interp_up([30.0, 10.0], [50.0, 90.0], 20.0) == pytest.approx(70.0)
    assert interp_up([10.0, 30.0], [90.0, 50.0], 30.0) == pytest.approx(50.0)
    assert interp_up([10.0, 30.0], [90.0, 50.0], 31.0) is None  # no extrapolation
    assert interp_up([10.0, 10.0, 30.0], [80.0, 100.0, 50.0], 10.0) == pytest.approx(90.0)  # ties averaged
    assert spearman([0.1, 0.5, 0.9], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert spearman([0.1], [1.0]) is None
