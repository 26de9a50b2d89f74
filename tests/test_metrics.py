"""Metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import fbeta_score, log_loss, roc_auc_score

from hohoho_core.labels import CLASSES
from hohoho_core.metrics import (
    f2_report,
    fbeta_per_class,
    roc_auc_per_class,
    rsna_log_loss,
    search_thresholds,
    study_level,
)


def _data(seed: int = 0, n: int = 200, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.2).astype(int)
    # Informative but noisy probabilities, some ties (rounded).
    prob = np.clip(0.35 * y + rng.random((n, k)) * 0.65, 0.001, 0.999).round(2)
    return y, prob


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
def test_fbeta_matches_sklearn(beta: float) -> None:
    y, prob = _data()
    pred = prob >= 0.5
    # Edge cases: a class never true nor predicted (sklearn gives 0), one never predicted.
    y[:, 0] = 0
    pred[:, 0] = False
    pred[:, 1] = False
    got = fbeta_per_class(y, pred, beta=beta)
    want = fbeta_score(y, pred.astype(int), beta=beta, average=None, zero_division=0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.shape == (6,)


def test_fbeta_hand_value() -> None:
    # tp = 1, fp = 1, fn = 1: P = R = 0.5, F2 = 5PR / (4P + R) = 0.5.
    y = np.array([[1], [1], [0], [0]])
    p = np.array([[1], [0], [1], [0]])
    assert fbeta_per_class(y, p)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fbeta_per_class(y, np.array([[2], [0], [1], [0]]))


def _brute_best_f2(y: np.ndarray, p: np.ndarray) -> float:
    cuts = np.unique(np.r_[p, 0.0, 1.1])
    return max(fbeta_score(y, (p >= t).astype(int), beta=2, zero_division=0) for t in cuts)


def test_search_thresholds_is_optimal() -> None:
    y, prob = _data(1, n=150)
    thr = search_thresholds(y, prob)
    assert thr.shape == (6,)
    for k in range(6):
        got = fbeta_score(y[:, k], (prob[:, k] >= thr[k]).astype(int), beta=2, zero_division=0)
        assert got == pytest.approx(_brute_best_f2(y[:, k], prob[:, k]), abs=1e-12)
        # The threshold lies strictly between probabilities (a margin), not on one.
        assert not np.isclose(prob[:, k], thr[k]).any()


def test_search_thresholds_grid_and_no_positive_class() -> None:
    y, prob = _data(2, n=120)
    y[:, 3] = 0
    grid = np.linspace(0.05, 0.95, 19)
    thr = search_thresholds(y, prob, grid=grid)
    assert thr[3] == 0.5  # no positives: F2 is 0 everywhere, the documented fallback
    for k in (0, 1, 2, 4, 5):
        assert np.isclose(grid, thr[k]).any()
        best = max(
            fbeta_score(y[:, k], (prob[:, k] >= t).astype(int), beta=2, zero_division=0)
            for t in grid
        )
        got = fbeta_score(y[:, k], (prob[:, k] >= thr[k]).astype(int), beta=2, zero_division=0)
        assert got == pytest.approx(best)


def test_study_level_max() -> None:
    vals = np.array([[0.1, 0.0], [0.7, 0.2], [0.3, 0.9], [0.2, 0.1]])
    ids = np.array(["b", "b", "a", "a"])
    keys, out = study_level(vals, ids)
    assert keys.tolist() == ["a", "b"]
    np.testing.assert_allclose(out, [[0.3, 0.9], [0.7, 0.2]])
    _, flags = study_level(vals > 0.5, ids)
    assert flags.dtype == bool and flags.tolist() == [[False, True], [True, False]]


def test_f2_report_slice_and_study() -> None:
    y, prob = _data(3, n=60)
    thr = np.full(6, 0.5)
    ids = np.repeat(np.arange(6), 10)
    rep = f2_report(y, prob, thr, study_ids=ids)
    want = fbeta_score(y, (prob >= 0.5).astype(int), beta=2, average=None, zero_division=0)
    assert list(rep["slice"]["per_class"]) == list(CLASSES)
    np.testing.assert_allclose(list(rep["slice"]["per_class"].values()), want)
    assert rep["slice"]["macro"] == pytest.approx(want.mean())
    # Study level by hand: a study is positive when any slice is; predicted by max prob.
    ys = y.reshape(6, 10, 6).max(axis=1)
    ps = prob.reshape(6, 10, 6).max(axis=1) >= 0.5
    want_s = fbeta_score(ys, ps.astype(int), beta=2, average=None, zero_division=0)
    np.testing.assert_allclose(list(rep["study"]["per_class"].values()), want_s)
    assert rep["study"]["macro"] == pytest.approx(want_s.mean())
    assert f2_report(y, prob, thr)["study"] is None


def test_rsna_log_loss_matches_sklearn() -> None:
    y, prob = _data(4, n=80)
    w = np.array([1, 1, 1, 1, 1, 2], dtype=float)
    per_class = np.array([log_loss(y[:, k], prob[:, k], labels=[0, 1]) for k in range(6)])
    want = float((per_class * w).sum() / w.sum())
    assert rsna_log_loss(y, prob) == pytest.approx(want, rel=1e-7)
    # Hand value: one slice, all p = 0.5: ln 2 whatever the weights.
    assert rsna_log_loss(np.zeros((1, 6)), np.full((1, 6), 0.5)) == pytest.approx(np.log(2))
    # Clipping keeps a confident mistake finite.
    assert np.isfinite(rsna_log_loss(np.ones((1, 6)), np.zeros((1, 6))))


def test_roc_auc_matches_sklearn_with_ties_and_nan() -> None:
    y, prob = _data(5, n=90)
    y[:, 2] = 1  # one label value only
    got = roc_auc_per_class(y, prob)
    assert np.isnan(got[2])
    for k in (0, 1, 3, 4, 5):
        assert got[k] == pytest.approx(roc_auc_score(y[:, k], prob[:, k]), rel=1e-12)
