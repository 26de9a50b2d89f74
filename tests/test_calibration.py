import numpy as np
import pytest

from hohoho_core.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logit,
)


def _overconfident(n: int, k: int, factor: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    z_true = rng.normal(0, 2, (n, k))
    y = (rng.random((n, k)) < 1 / (1 + np.exp(-z_true))).astype(np.int8)
    return z_true * factor, y


def test_fit_temperature_recovers_the_overconfidence_factor():
    z, y = _overconfident(20000, 3, factor=3.0)
    t = fit_temperature(z, y)
    assert t.shape == (3,)
    np.testing.assert_allclose(t, 3.0, rtol=0.1)


def test_temperature_lowers_calibration_error_and_keeps_the_order():
    z, y = _overconfident(5000, 2, factor=4.0, seed=1)
    p = 1 / (1 + np.exp(-z))
    cal = apply_temperature(p, fit_temperature(z, y))
    before = expected_calibration_error(y, p)
    after = expected_calibration_error(y, cal)
    assert np.all(after < before / 2)
    for k in range(2):  # monotone: the ranking (AUC) cannot change
        order = np.argsort(p[:, k], kind="stable")
        assert np.all(np.diff(cal[order, k]) >= 0)


def test_unknown_labels_are_left_out_and_one_class_sets_keep_t_1():
    z, y = _overconfident(4000, 2, factor=2.0, seed=2)
    y = y.astype(np.int8)
    y[:, 1] = 0  # no positive: nothing to fit
    y_unknown = y.copy()
    y_unknown[:100, 0] = -1
    t_full = fit_temperature(z[100:], y[100:])
    t_masked = fit_temperature(z, y_unknown)
    assert t_masked[1] == 1.0
    assert t_masked[0] == pytest.approx(t_full[0], rel=1e-6)


def test_ece_by_hand():
    # Two bins used (n_bins=2): [0, 0.5) holds p=0.2, 0.4 with labels 0, 1; [0.5, 1] holds
    # p=0.9 with label 1. ECE = (2/3)|0.5 - 0.3| + (1/3)|1 - 0.9| = 0.1333 + 0.0333.
    y = np.array([[0], [1], [1]])
    p = np.array([[0.2], [0.4], [0.9]])
    assert expected_calibration_error(y, p, n_bins=2)[0] == pytest.approx(0.5 / 3)


def test_ece_nan_without_labels_and_bad_inputs_raise():
    assert np.isnan(expected_calibration_error(np.full((3, 1), -1), np.zeros((3, 1))))[0]
    with pytest.raises(ValueError):
        apply_temperature(np.full((2, 1), 0.5), np.array([0.0]))
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 2)), np.zeros((3, 1)))


def test_logit_is_finite_at_the_ends():
    assert np.all(np.isfinite(logit(np.array([0.0, 1.0]))))
