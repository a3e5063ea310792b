"""Statistics over replicates: what a grid point's mean says, and whether two controls differ.

- `interval`: n, mean, standard deviation and the half-width of a 95 % confidence interval for the
  mean (Student's t with n − 1 degrees of freedom). One replicate has no spread and no interval: NaN,
  never "± 0".
- `paired`: two controls compared replicate by replicate. Replicate i of every control shares its data
  order and, for controls that start from the same weights, its initialisation, so the difference
  within a replicate removes what the replicates share: the mean difference, its 95 % interval and
  the two-sided p-value of the paired t-test (scipy's `ttest_rel`) over the replicates both finished.
- `verdict`: whether a mean is at or above a threshold, said only as far as its interval allows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

LEVEL = 0.95


def interval(values) -> dict:
    """{"n", "mean", "std", "ci95"} of the finite `values`; std NaN below 2 values, ci95 (the
    interval's half-width: mean ± ci95) too."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "ci95": math.nan}
    std = float(v.std(ddof=1))
    return {"n": n, "mean": mean, "std": std, "ci95": _half_width(std, n)}


def paired(a: pd.Series, b: pd.Series) -> dict:
    """`a` − `b`, each indexed by replicate, over the replicates both have: {"n", "difference",
    "ci95", "p_value"} (NaN interval and p-value below 2 pairs; p NaN when every pair differs by the
    same amount, where the t statistic is undefined)."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    d = (both["a"] - both["b"]).to_numpy(dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return {"n": 0, "difference": math.nan, "ci95": math.nan, "p_value": math.nan}
    if n < 2:
        return {"n": 1, "difference": float(d[0]), "ci95": math.nan, "p_value": math.nan}
    std = float(d.std(ddof=1))
    p = float(scipy_stats.ttest_rel(both["a"], both["b"]).pvalue) if std > 0 else math.nan
    return {"n": n, "difference": float(d.mean()), "ci95": _half_width(std, n), "p_value": p}


def verdict(mean: float, ci95: float, n: int, threshold: float) -> str:
    """"at or above", "below" or "undecided" (the interval straddles `threshold`); from the mean
    alone with one replicate ("... (one replicate)"); "no result" without one."""
    if n == 0 or not np.isfinite(mean):
        return "no result"
    if n < 2 or not np.isfinite(ci95):
        return ("at or above" if mean >= threshold else "below") + " (one replicate)"
    if mean - ci95 >= threshold:
        return "at or above"
    if mean + ci95 < threshold:
        return "below"
    return "undecided"


def _half_width(std: float, n: int) -> float:
    return float(scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1) * std / math.sqrt(n))
