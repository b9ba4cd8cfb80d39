"""Statistics of the report: one-sided t-tests, p-value text, interpolation along a sweep.

Dowser vs Random (paper Tables 4/6/7) is tested two ways, both one-sided (H1: Dowser's
H is larger):

- Welch: Dowser's seeds (probe seeds) against Random's seeds (mask seeds), unequal
  variances (`welch_greater`). Needs >= 2 values on each side.
- The paper's one-sample form: Random's seeds against Dowser's mean as a fixed value
  (`one_sample_less`; the paper reports one Dowser number per cell). Needs >= 2 Random seeds.

A test that cannot be computed returns p None with the reason, and `p_text` prints the
reason ('n/a (1 Dowser seed)') instead of a number, never 'None'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Test:
    t: float | None
    df: float | None
    p: float | None
    why: str = ""  # why p is None


def _clean(x) -> np.ndarray:
    a = np.asarray(list(x), dtype=float)
    return a[~np.isnan(a)]


def welch_greater(a, b, a_name: str = "Dowser", b_name: str = "Random") -> Test:
    """Welch's t-test of mean(a) > mean(b), by hand (t, Welch-Satterthwaite df, t.sf)."""
    from scipy.stats import t as student

    a, b = _clean(a), _clean(b)
    for x, name in ((a, a_name), (b, b_name)):
        if len(x) < 2:
            return Test(None, None, None, f"n/a ({len(x)} {name} seed{'s' if len(x) != 1 else ''})")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return Test(None, None, None, "n/a (no variance on either side)")
    t = float((a.mean() - b.mean()) / math.sqrt(va + vb))
    df = float((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)))
    return Test(t, df, float(student.sf(t, df)))


def one_sample_less(b, value: float, b_name: str = "Random") -> Test:
    """One-sample t-test of mean(b) < value (paper: Random's seeds vs Dowser's value)."""
    from scipy.stats import t as student

    b = _clean(b)
    if len(b) < 2:
        return Test(None, None, None, f"n/a ({len(b)} {b_name} seed{'s' if len(b) != 1 else ''})")
    sd = b.std(ddof=1)
    if sd == 0:
        return Test(None, None, None, f"n/a (no variance across {b_name} seeds)")
    t = float((b.mean() - value) / (sd / math.sqrt(len(b))))
    df = float(len(b) - 1)
    return Test(t, df, float(student.cdf(t, df)))


def p_text(test: Test) -> str:
    """'0.003', '<1e-4' or the reason it is undefined."""
    if test.p is None:
        return test.why or "n/a"
    return "<1e-4" if test.p < 1e-4 else f"{test.p:.3g}" if test.p < 0.01 else f"{test.p:.3f}"


def mean_sd(x) -> str:
    x = _clean(x)
    if len(x) == 0:
        return ""
    return f"{x.mean():.1f}" if len(x) == 1 else f"{x.mean():.1f} ± {x.std(ddof=1):.1f}"


def interp_up(a_down, a_up, at: float) -> float | None:
    """A_up at A_down = `at` by linear interpolation between a method's sweep points,
    ordered by A_down (ties averaged); None outside the points' range (no extrapolation)."""
    d, u = _clean(a_down), np.asarray(list(a_up), dtype=float)
    if len(d) != len(u) or len(d) == 0:
        return None
    xs = np.unique(d)
    ys = np.array([u[d == x].mean() for x in xs])
    if not xs[0] - 1e-9 <= at <= xs[-1] + 1e-9:
        return None
    return float(np.interp(at, xs, ys))


def spearman(x, y) -> float | None:
    """Rank correlation (None for fewer than 2 distinct points)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if len(x) < 2 or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)
