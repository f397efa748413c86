"""numpy metrics agree with scipy (the device side has no scipy)."""

from __future__ import annotations

import numpy as np
import pytest

from kdeploy.runtime.metrics import accuracy, cosine_rows, rankdata, spearman

scipy_stats = pytest.importorskip("scipy.stats")


def test_rankdata_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, size=200).astype(float)  # many ties
    np.testing.assert_allclose(rankdata(x), scipy_stats.rankdata(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=300)
    b = a + rng.normal(scale=2.0, size=300)
    b[:50] = np.round(b[:50])  # ties
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)


def test_cosine_and_accuracy():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [1.0, -1.0])
    assert accuracy(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])) == 0.5
