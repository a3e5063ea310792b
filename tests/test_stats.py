"""Statistics over replicates, against their definitions."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tickets import stats


def test_interval_is_students_t_and_one_replicate_has_none():
    i = stats.interval([0.5, 0.6, 0.7])
    assert i["n"] == 3 and i["mean"] == pytest.approx(0.6) and i["std"] == pytest.approx(0.1)
    assert i["ci95"] == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))  # t(0.975, 2)
    one = stats.interval([0.42, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.42 and math.isnan(one["std"]) and math.isnan(one["ci95"])
    assert stats.interval([])["n"] == 0


def test_paired_differences_are_replicate_by_replicate():
    control = pd.Series([0.70, 0.65, 0.80, 0.50], index=[0, 1, 2, 3])
    ticket = pd.Series([0.80, 0.70, 0.90], index=[0, 1, 2])  # replicate 3 did not finish: no pair
    p = stats.paired(control, ticket)
    d = np.array([-0.10, -0.05, -0.10])
    assert p["n"] == 3 and p["difference"] == pytest.approx(d.mean())
    assert p["ci95"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3))
    assert p["p_value"] == pytest.approx(scipy_stats.ttest_rel(control[:3], ticket).pvalue)
    assert math.isnan(stats.paired(control[:1], ticket)["ci95"])


def test_a_verdict_says_only_what_the_interval_allows():
    assert stats.verdict(0.80, 0.01, 3, 0.78) == "at or above"
    assert stats.verdict(0.70, 0.01, 3, 0.78) == "below"
    assert stats.verdict(0.79, 0.02, 3, 0.78) == "undecided"
    assert stats.verdict(0.79, float("nan"), 1, 0.78) == "at or above (one replicate)"
    assert stats.verdict(float("nan"), float("nan"), 0, 0.78) == "no result"
