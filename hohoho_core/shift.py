"""Shifted copies of validation studies, and thresholds chosen to survive a shift.

Thresholds picked on one validation split fit that split's source: on studies from another
generator the shipped model ranked well (AUC 0.97) but lost 0.08 macro F2 to its thresholds
(weights/MODEL_CARD.md). Here the validation studies are scored again under documented
changes of the kind scanners differ by (calibration and contrast, kernel sharpness, noise,
resolution), each a *view*, and a rule picks per-class thresholds over all views at once.
Which rule to ship can be decided by leaving one view out (`leave_one_view_out`): the
threshold picked on the other views is scored on the held-out one. Every view holds the
same studies, though, so that favours rules fitted to where the F2 curve peaks on them;
`train.shift_thresholds --decide-on` decides on labelled studies in no view instead.
Only validation-side data enters; the foreign generator stays an independent check.

NumPy in, NumPy out; a perturbation is a pure function of the HU volume and a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hohoho_core.metrics import fbeta_at_cuts, fbeta_per_class, search_thresholds

__all__ = ["PERTURBATIONS", "RULES", "View", "leave_one_view_out", "macro_at", "perturb_hu",
           "pick_thresholds"]


def _calibration(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Another scanner's HU calibration and soft-tissue contrast: +6 HU, contrast x0.85 about
    # brain (30 HU). Blood stays above brain, but closer to it.
    return (hu - 30.0) * 0.85 + 36.0


def _soft(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A soft kernel: blur (sigma 1.2 px) plus low-frequency (correlated) noise of ~6 HU.
    out = ndimage.gaussian_filter(hu, sigma=(0, 1.2, 1.2))
    noise = ndimage.gaussian_filter(rng.normal(0, 1, hu.shape).astype(np.float32),
                                    sigma=(0, 1.5, 1.5))
    return out + noise * (6.0 / max(float(noise.std()), 1e-6))


def _noisy(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A low-dose scan: white noise of 14 HU (the training augmentation stops at 6).
    return hu + rng.normal(0, 14.0, hu.shape).astype(np.float32)


def _lowres(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Half the in-plane resolution, shown on the original grid: thin blood is averaged away.
    small = ndimage.zoom(hu, (1, 0.5, 0.5), order=1)
    back = ndimage.zoom(small, (1, hu.shape[1] / small.shape[1], hu.shape[2] / small.shape[2]),
                        order=1)
    return back[:, : hu.shape[1], : hu.shape[2]]


def _sharp(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A sharp (bone-like) kernel: unsharp mask, amount 1, plus white noise of 8 HU.
    blur = ndimage.gaussian_filter(hu, sigma=(0, 1.0, 1.0))
    return hu + (hu - blur) + rng.normal(0, 8.0, hu.shape).astype(np.float32)


#: name -> f(hu [S, H, W] float32, rng) -> hu; every one documented in its function.
PERTURBATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "calibration": _calibration,
    "soft": _soft,
    "noisy": _noisy,
    "lowres": _lowres,
    "sharp": _sharp,
}


def perturb_hu(hu: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """``hu`` ``[S, H, W]`` under perturbation ``kind``, float32, the same for the same seed."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; known: {sorted(PERTURBATIONS)}")
    x = np.asarray(hu, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an [S, H, W] volume, got shape {x.shape}")
    out = PERTURBATIONS[kind](x, np.random.default_rng(seed))
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class View:
    """One scored copy of the validation data: labels ``(N, K)`` in {0, 1} and probabilities."""

    name: str
    labels: np.ndarray
    prob: np.ndarray


def _f(view: View, thr: np.ndarray, beta: float) -> np.ndarray:
    return fbeta_per_class(view.labels, view.prob >= thr[None, :], beta)


def _grid(views: Sequence[View]) -> np.ndarray:
    # 2001 quantiles of every probability seen (plus 0.5): fine enough for a rule over
    # views, far cheaper than every distinct value (`pooled` searches exactly).
    p = np.concatenate([v.prob.ravel() for v in views])
    return np.unique(np.concatenate([np.quantile(p, np.linspace(0, 1, 2001)), [0.5]]))


def _by_score(views: Sequence[View], beta: float, combine: Callable[[np.ndarray], np.ndarray]
              ) -> np.ndarray:
    """Per class, the grid cut whose F-beta over the views, combined by ``combine`` (a
    masked ``(V, G, K)`` array -> ``(G, K)``: views x cuts x classes), is highest. A view
    without positives of a class says nothing about its cut and is left out for that class;
    a class without positives in any view gets 0.5, as `metrics.search_thresholds` gives it."""
    grid = _grid(views)[::-1]  # high to low: ties keep the higher threshold
    k = views[0].labels.shape[1]
    has_pos = np.stack([np.asarray(v.labels).sum(axis=0) > 0 for v in views])  # (V, K)
    scores = np.stack([fbeta_at_cuts(v.labels, v.prob, grid, beta) for v in views])  # V, G, K
    mask = np.broadcast_to(~has_pos[:, None, :], scores.shape)
    combined = np.ma.filled(combine(np.ma.masked_array(scores, mask=mask)), -1.0)  # (G, K)
    best, best_t = np.full(k, -1.0), np.full(k, 0.5)
    for t, s in zip(grid, combined, strict=True):
        better = s > best + 1e-12
        best[better], best_t[better] = s[better], t
    best_t[~has_pos.any(axis=0)] = 0.5
    return best_t


def _pooled(views: Sequence[View], beta: float) -> np.ndarray:
    y = np.concatenate([v.labels for v in views])
    p = np.concatenate([v.prob for v in views])
    return search_thresholds(y, p, beta)


def _calibrated(views: Sequence[View], beta: float) -> np.ndarray:
    """Per class ``F* / (1 + beta**2)``, ``F*`` the best F-beta over every view's slices.

    For calibrated probabilities this is the F-beta-optimal cut (Lipton, Elkan and
    Narayanaswamy 2014 show F1* / 2; the same argument gives this for any beta): adding a
    slice of probability p to the positives raises the expected F-beta exactly when
    ``p > F / (1 + beta**2)``. It leans on the probabilities' calibration instead of on
    where the F-beta curve, often flat near its top, happens to peak on these views; and
    harder views (a lower ``F*``) give lower cuts, as the argument asks. ``F*`` is the
    best cut's F on these very slices, so a little optimistic (the cut a little high) on
    small views. A class without positives gets 0.5, as elsewhere.
    """
    y = np.concatenate([v.labels for v in views])
    p = np.concatenate([v.prob for v in views])
    best = fbeta_per_class(y, p >= search_thresholds(y, p, beta)[None, :], beta)
    out = best / (1.0 + beta**2)
    out[y.sum(axis=0) == 0] = 0.5
    return out


#: rule name -> f(views, beta) -> (K,) thresholds.
RULES: dict[str, Callable[[Sequence[View], float], np.ndarray]] = {
    "pooled": _pooled,  # F-beta of every view's slices together
    "calibrated": _calibrated,  # F* / (1 + beta^2): the optimal cut of calibrated scores
    "mean": lambda vs, b: _by_score(vs, b, lambda s: s.mean(axis=0)),  # mean F over views
    "worst": lambda vs, b: _by_score(vs, b, lambda s: s.min(axis=0)),  # the worst view's F
}


def pick_thresholds(views: Sequence[View], rule: str, beta: float = 2.0) -> np.ndarray:
    """Per-class thresholds over ``views`` by ``rule`` (`RULES`)."""
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; known: {sorted(RULES)}")
    if not views:
        raise ValueError("no views to pick thresholds on")
    return np.asarray(RULES[rule](views, beta), dtype=np.float64)


def leave_one_view_out(views: Sequence[View], rules: Sequence[str], beta: float = 2.0
                       ) -> dict[str, dict[str, float]]:
    """``{rule: {held-out view: macro F-beta}}``: thresholds picked by the rule on the
    other views, scored on the held-out one."""
    out: dict[str, dict[str, float]] = {}
    for rule in rules:
        out[rule] = {}
        for i, held in enumerate(views):
            rest = [v for j, v in enumerate(views) if j != i]
            thr = pick_thresholds(rest, rule, beta)
            out[rule][held.name] = float(_f(held, thr, beta).mean())
    return out


def macro_at(views: Mapping[str, View], thr: np.ndarray, beta: float = 2.0) -> dict[str, float]:
    """Macro F-beta of each view at thresholds ``thr``."""
    return {name: float(_f(v, thr, beta).mean()) for name, v in views.items()}
