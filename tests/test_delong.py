"""DeLong's test of paired AUCs: the fast midrank version against the O(m n) definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from medai import resampling


def _slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong, DeLong & Clarke-Pearson (1988) from the pairwise kernel, written out directly."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    v10, v01 = [], []
    for scores in (a, b):
        x, z = scores[pos][:, None], scores[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)  # m x n
        v10.append(psi.mean(axis=1))  # per positive
        v01.append(psi.mean(axis=0))  # per negative
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m
    variance += (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (v10[0].mean() - v10[1].mean()) / np.sqrt(variance)
    return float(z), float(2 * norm.sf(abs(z)))


@pytest.mark.parametrize("ties", [False, True])
def test_fast_delong_matches_the_pairwise_definition(ties: bool) -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.35).astype(np.int8)
    a = np.clip(0.4 + 0.25 * y + rng.normal(0, 0.2, y.size), 0, 1)
    b = np.clip(a + rng.normal(0, 0.25, y.size), 0, 1)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    fast = resampling.delong_test(y, a, b)
    z, p = _slow_delong(y, a, b)
    assert fast["auc_a"] == pytest.approx(skm.roc_auc_score(y, a), abs=1e-12)
    assert fast["auc_b"] == pytest.approx(skm.roc_auc_score(y, b), abs=1e-12)
    assert fast["z"] == pytest.approx(z, rel=1e-9)
    assert fast["p_value"] == pytest.approx(p, rel=1e-9)
    assert 0 < fast["p_value"] < 1


def test_delong_on_a_known_example() -> None:
    # Worked by hand: a ranks every positive above every negative (AUC 1), b gets one pair
    # wrong of 4 (AUC 0.75). Per-positive/negative components of b: v10 = (1, .5), v01 = (1, .5)
    # -> var(a - b) = var(v10_b)/2 + var(v01_b)/2 = 0.125/2 + 0.125/2 = 0.125.
    y = np.array([1, 1, 0, 0])
    a = np.array([0.9, 0.8, 0.2, 0.1])
    b = np.array([0.9, 0.3, 0.4, 0.1])
    result = resampling.delong_test(y, a, b)
    assert (result["auc_a"], result["auc_b"]) == (1.0, 0.75)
    assert result["z"] == pytest.approx(0.25 / np.sqrt(0.125))
    assert result["p_value"] == pytest.approx(2 * norm.sf(0.25 / np.sqrt(0.125)))


def test_identical_rankings_give_p_one_and_comparisons_carry_the_p_value() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(np.int8)
    good = np.clip(0.4 + 0.3 * y + rng.normal(0, 0.2, y.size), 0, 1)
    assert resampling.delong_test(y, good, good * 0.5)["p_value"] == 1.0  # same ranking
    noisy = np.clip(good + rng.normal(0, 0.4, y.size), 0, 1)
    result, reasons = resampling.paired_auc_difference(y, good, noisy, 200, 0)
    assert reasons == []
    assert result["delong_p_value"] == resampling.delong_test(y, good, noisy)["p_value"]
    assert result["delong_p_value"] < 0.05  # the noisy copy is clearly worse
