"""Probability calibration: per-class temperature scaling and expected calibration error.

A model trained on one source is overconfident on another; thresholds tuned on its raw
probabilities then transfer badly (weights/MODEL_CARD.md). Temperature scaling (Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017) divides each class's logit by one
positive number fitted on validation data: it never changes the ranking (AUC), only how
sure the model says it is, so thresholds chosen afterwards sit where probabilities mean
what they say.

NumPy in, NumPy out. Shapes: ``(N, K)`` slices by classes; labels in {0, 1}, with -1 (or any
negative value) meaning "unknown, leave out".
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = [
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "logit",
]

#: Temperatures are searched in [1/20, 20]: wider than any fit on real validation data.
_LOG_T_BOUNDS = (-3.0, 3.0)
_EPS = 1e-7


def logit(prob: np.ndarray) -> np.ndarray:
    """Inverse sigmoid, clipped so that 0 and 1 stay finite. Same shape as ``prob``."""
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _bce(z: np.ndarray, y: np.ndarray) -> float:
    # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, computed stably.
    return float(np.mean(np.logaddexp(0.0, np.where(y > 0, -z, z))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One temperature per class minimising binary cross-entropy on held-out data.

    Args:
        logits: ``(N, K)`` raw logits (use `logit` on probabilities).
        labels: ``(N, K)`` in {0, 1}; negative values are left out.

    Returns:
        ``(K,)`` float64 temperatures ``T > 0``; calibrated probability = sigmoid(logit / T).
        A class without both a positive and a negative keeps ``T = 1``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.shape != y.shape or z.ndim != 2:
        raise ValueError(f"logits {z.shape} and labels {y.shape} must be the same (N, K)")
    out = np.ones(z.shape[1])
    for k in range(z.shape[1]):
        keep = y[:, k] >= 0
        zk, yk = z[keep, k], y[keep, k]
        if yk.size == 0 or yk.min() == yk.max():
            continue
        res = minimize_scalar(lambda s, zk=zk, yk=yk: _bce(zk * np.exp(-s), yk),
                              bounds=_LOG_T_BOUNDS, method="bounded")
        out[k] = float(np.exp(res.x))
    return out


def apply_temperature(prob: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logit(prob) / T)``; ``(N, K)`` float32."""
    t = np.asarray(temperature, dtype=np.float64)
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("temperatures must be finite and positive")
    z = logit(prob) / t
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def expected_calibration_error(labels: np.ndarray, prob: np.ndarray,
                               n_bins: int = 15) -> np.ndarray:
    """Expected calibration error per class (equal-width bins over [0, 1]).

    ECE = sum over bins of (bin size / N) * |mean label - mean probability| in the bin.
    Returns ``(K,)`` float64; NaN for a class with no known label.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    y = np.asarray(labels)
    p = np.asarray(prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and prob {p.shape} must be the same (N, K)")
    out = np.full(y.shape[1], np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for k in range(y.shape[1]):
        keep = y[:, k] >= 0
        yk, pk = y[keep, k].astype(np.float64), p[keep, k]
        if yk.size == 0:
            continue
        bins = np.clip(np.digitize(pk, edges[1:-1]), 0, n_bins - 1)
        count = np.bincount(bins, minlength=n_bins)
        gap = np.abs(np.bincount(bins, yk, n_bins) - np.bincount(bins, pk, n_bins))
        out[k] = float(gap.sum() / yk.size) if count.sum() else np.nan
    return out
