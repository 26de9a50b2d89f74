"""Evaluation metrics: NumPy in, NumPy out.

Shapes: ``y_true`` and ``y_pred`` are ``(N, K)`` arrays in {0, 1} (bool or int), ``prob``
is ``(N, K)`` float in [0, 1]; column ``k`` is ``labels.CLASSES[k]`` when ``K = 6``.
A slice is predicted positive for class ``k`` when ``prob[:, k] >= thresholds[k]``.

Conventions (documented once, used everywhere):
- F-beta follows scikit-learn's ``fbeta_score(average=None, zero_division=0)``: a class with
  no true and no predicted positives scores 0.
- Macro F-beta is the unweighted mean over all K classes ("any" included).
- Study level: a study is positive for a class when any of its slices is (true labels), and
  predicted positive when its highest slice probability reaches the threshold.
- The RSNA 2019 score is the weighted log loss: per slice ``sum_k w_k ll_k / sum_k w_k``
  with ``w = 2`` for "any" and 1 for each subtype, averaged over slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hohoho_core.labels import ANY_INDEX, CLASSES

__all__ = [
    "f2_report",
    "fbeta_at_cuts",
    "fbeta_per_class",
    "rsna_log_loss",
    "roc_auc_per_class",
    "search_thresholds",
    "study_level",
]


def _as_2d(a: np.ndarray | Sequence[Any], name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, K), got shape {arr.shape}")
    return arr


def _binary(a: np.ndarray | Sequence[Any], name: str) -> np.ndarray:
    arr = _as_2d(a, name)
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1")
        arr = arr.astype(bool)
    return arr


def _pair(y_true: Any, other: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(y_true, "y_true")
    o = _as_2d(other, name)
    if y.shape != o.shape:
        raise ValueError(f"y_true {y.shape} and {name} {o.shape} differ")
    return y, o


def _fbeta_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> np.ndarray:
    """``(1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)``, 0 where the denominator is 0."""
    b2 = beta * beta
    num = (1.0 + b2) * tp.astype(np.float64)
    den = num + b2 * fn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def fbeta_per_class(y_true: np.ndarray, y_pred: np.ndarray, beta: float = 2.0) -> np.ndarray:
    """F-beta of each class.

    Args:
        y_true: ``(N, K)`` in {0, 1}.
        y_pred: ``(N, K)`` in {0, 1}.
        beta: recall weighs ``beta**2`` times precision (2 for F2).

    Returns:
        ``(K,)`` float64; equals ``sklearn.metrics.fbeta_score(y_true, y_pred, beta=beta,
        average=None, zero_division=0)``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    y, p = _pair(y_true, y_pred, "y_pred")
    p = _binary(p, "y_pred")
    tp = (y & p).sum(axis=0)
    fp = (~y & p).sum(axis=0)
    fn = (y & ~p).sum(axis=0)
    return _fbeta_from_counts(tp, fp, fn, beta)


def _sorted_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Probabilities sorted high to low, cumulative true positives, total positives."""
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    ctp = np.cumsum(y[order].astype(np.int64))
    return ps, ctp, int(ctp[-1]) if len(ctp) else 0


def fbeta_at_cuts(y_true: np.ndarray, prob: np.ndarray, cuts: Sequence[float] | np.ndarray,
                  beta: float = 2.0) -> np.ndarray:
    """``(G, K)``: F-beta of each class when every probability ``>= cuts[g]`` is positive.

    Row ``g`` equals ``fbeta_per_class(y_true, prob >= cuts[g], beta)``, from one sort per
    class instead of a pass over the data per cut (a threshold search over a grid).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    y, p = _pair(y_true, prob, "prob")
    if not np.isfinite(p).all():
        raise ValueError("prob must be finite")
    grid = np.asarray(cuts, dtype=np.float64).ravel()
    out = np.empty((len(grid), y.shape[1]))
    for c in range(y.shape[1]):
        ps, ctp, pos = _sorted_counts(y[:, c], p[:, c])
        n_pred = np.searchsorted(-ps, -grid, side="right")  # how many p >= cut
        tp = np.concatenate([[0], ctp])[n_pred]
        out[:, c] = _fbeta_from_counts(tp, n_pred - tp, pos - tp, beta)
    return out


def search_thresholds(
    y_true: np.ndarray,
    prob: np.ndarray,
    beta: float = 2.0,
    grid: np.ndarray | Sequence[float] | None = None,
) -> np.ndarray:
    """Per-class thresholds that maximise F-beta on (validation) data.

    Args:
        y_true: ``(N, K)`` in {0, 1}.
        prob: ``(N, K)`` probabilities.
        beta: F-beta's beta (2 for F2).
        grid: candidate thresholds ``(G,)``. ``None`` searches exactly: every distinct
            probability is a cut, and the threshold returned is the midpoint between the
            lowest probability kept positive and the next lower one (0 below the minimum),
            so it separates the same slices with a margin.

    Returns:
        ``(K,)`` float64 thresholds (rule ``prob >= t``). Ties prefer the higher threshold
        (fewer positives). A class with no positives (F-beta 0 at every cut) gets 0.5.
    """
    y, p = _pair(y_true, prob, "prob")
    p = p.astype(np.float64)
    out = np.full(y.shape[1], 0.5)
    cand = None if grid is None else np.sort(np.asarray(grid, dtype=np.float64).ravel())[::-1]
    for k in range(y.shape[1]):
        ps, ctp, pos = _sorted_counts(y[:, k], p[:, k])
        if pos == 0:
            continue
        if cand is None:
            # Cut after each block of equal probabilities: m = number predicted positive.
            ends = np.flatnonzero(np.diff(ps) != 0)
            m = np.append(ends + 1, len(ps))
        else:
            # Number of probabilities >= t, from the descending order.
            m = np.searchsorted(-ps, -cand, side="right")
        tp = np.where(m > 0, ctp[np.maximum(m, 1) - 1], 0)
        f = _fbeta_from_counts(tp, m - tp, pos - tp, beta)
        best = int(np.argmax(f))  # first maximum = highest threshold among ties
        if f[best] <= 0:
            continue
        if cand is not None:
            out[k] = cand[best]
            continue
        mb = int(m[best])
        hi = ps[mb - 1]
        lo = ps[mb] if mb < len(ps) else 0.0
        mid = 0.5 * (hi + lo)
        out[k] = mid if lo < mid <= hi else hi
    return out


def study_level(
    values: np.ndarray, study_ids: np.ndarray | Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-study maximum of slice values (labels, predictions or probabilities).

    Args:
        values: ``(N, K)`` numbers or bools.
        study_ids: ``(N,)`` study key of each slice.

    Returns:
        ``(ids (M,), maxima (M, K))`` with studies in sorted order of their ids; bool input
        gives bool output (a study is positive when any slice is).
    """
    v = _as_2d(values, "values")
    ids = np.asarray(study_ids)
    if ids.shape != (v.shape[0],):
        raise ValueError(f"study_ids {ids.shape} must be ({v.shape[0]},)")
    keys, inverse = np.unique(ids, return_inverse=True)
    work = v.astype(np.float64)
    out = np.full((len(keys), v.shape[1]), -np.inf)
    np.maximum.at(out, inverse, work)
    if v.dtype == bool:
        return keys, out > 0
    return keys, out.astype(v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64)


def _class_names(k: int) -> tuple[str, ...]:
    return CLASSES if k == len(CLASSES) else tuple(f"class_{i}" for i in range(k))


def f2_report(
    y_true: np.ndarray,
    prob: np.ndarray,
    thresholds: np.ndarray | Sequence[float],
    study_ids: np.ndarray | Sequence[Any] | None = None,
    beta: float = 2.0,
) -> dict[str, Any]:
    """F-beta per class and macro, at slice level and (with ``study_ids``) study level.

    Args:
        y_true: ``(N, K)`` in {0, 1}.
        prob: ``(N, K)`` probabilities.
        thresholds: ``(K,)``; predicted positive when ``prob >= threshold``.
        study_ids: optional ``(N,)`` study key per slice.
        beta: 2 for F2.

    Returns:
        ``{"beta", "thresholds": {class: t}, "slice": {"per_class": {class: f}, "macro": f},
        "study": same or None}``; macro is the unweighted mean over all K classes.
    """
    y, p = _pair(y_true, prob, "prob")
    thr = np.asarray(thresholds, dtype=np.float64).ravel()
    if thr.shape != (y.shape[1],):
        raise ValueError(f"thresholds must be ({y.shape[1]},), got {thr.shape}")
    names = _class_names(y.shape[1])

    def block(yy: np.ndarray, pp: np.ndarray) -> dict[str, Any]:
        f = fbeta_per_class(yy, pp >= thr, beta)
        return {"per_class": dict(zip(names, map(float, f), strict=True)), "macro": float(f.mean())}

    report: dict[str, Any] = {
        "beta": float(beta),
        "thresholds": dict(zip(names, map(float, thr), strict=True)),
        "slice": block(y, p),
        "study": None,
    }
    if study_ids is not None:
        _, ys = study_level(y, study_ids)
        _, ps = study_level(p.astype(np.float64), study_ids)
        report["study"] = block(ys, ps)
    return report


def rsna_log_loss(
    y_true: np.ndarray,
    prob: np.ndarray,
    eps: float = 1e-7,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """RSNA 2019 weighted multi-label log loss (natural log).

    Args:
        y_true: ``(N, 6)`` in {0, 1}.
        prob: ``(N, 6)`` probabilities, clipped to ``[eps, 1 - eps]``.
        eps: clip bound.
        weights: ``(K,)`` per-class weights; default 1 per subtype and 2 for "any".

    Returns:
        ``mean_n(sum_k w_k ll_nk / sum_k w_k)``, which equals ``sum_k w_k LL_k / sum_k w_k``
        with ``LL_k = sklearn.metrics.log_loss(y[:, k], prob[:, k])``.
    """
    y, p = _pair(y_true, prob, "prob")
    if weights is None:
        if y.shape[1] != len(CLASSES):
            raise ValueError(f"default weights need {len(CLASSES)} classes, got {y.shape[1]}")
        w = np.ones(len(CLASSES))
        w[ANY_INDEX] = 2.0
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != (y.shape[1],) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be ({y.shape[1]},) non-negative, not all zero")
    pc = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    ll = -(y * np.log(pc) + (~y) * np.log1p(-pc))
    return float(((ll * w).sum(axis=1) / w.sum()).mean())


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney U statistic with average ranks for ties."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average rank (1-based) of every block of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc_per_class(y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """ROC-AUC of each class.

    Args:
        y_true: ``(N, K)`` in {0, 1}.
        prob: ``(N, K)`` scores.

    Returns:
        ``(K,)`` float64, equal to ``sklearn.metrics.roc_auc_score`` per column; NaN for a
        class whose labels take a single value (AUC undefined).
    """
    y, p = _pair(y_true, prob, "prob")
    p = p.astype(np.float64)
    return np.array([_auc(y[:, k], p[:, k]) for k in range(y.shape[1])])
