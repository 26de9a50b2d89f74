"""An "any" cell and the subtype cells whose flips move it rank together."""

from __future__ import annotations

import numpy as np

from hohoho_core.labels import ANY_INDEX, CLASSES

__all__ = ["carry_any"]

_N_CLASSES = len(CLASSES)


def carry_any(score: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Let a subtype cell and its "any" cell rank together when their flips go together.

    Labels keep "any" equal to the OR of the subtypes, so fixing a subtype often fixes
    "any" too (and the reverse): flipping subtype ``j`` changes the OR when ``j`` is the
    only positive subtype of a positive slice, or when the slice is negative for "any".
    Such an "any" cell gets the larger of its score and its partners'. An "any" 1 with
    exactly one positive subtype passes its score back to that subtype (if "any" should be
    0, so should the subtype). An "any" 0 passes nothing back: which subtype would be 1 is
    not known.

    Args:
        score: ``(N, 6)`` scores (higher = more suspicious), columns ``CLASSES``.
        labels: ``(N, 6)`` 0/1 labels.

    Returns:
        ``(carried (N, 6), partner (N,))``: the scores after carrying, and for each slice
        the subtype whose score the "any" cell took or tied (-1 where its own was higher
        or no subtype moves it).
    """
    s = np.asarray(score, dtype=np.float64)
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.shape[1] != _N_CLASSES or not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 with shape (N, {_N_CLASSES}), got {lab.shape}")
    if s.shape != lab.shape:
        raise ValueError(f"score {s.shape} and labels {lab.shape} must have the same shape")
    out = s.copy()
    n = lab.shape[0]
    sub, any_col = lab[:, :ANY_INDEX], lab[:, ANY_INDEX]
    n_pos = sub.sum(axis=1)
    moves_any = ((sub == 1) & ((n_pos == 1) & (any_col == 1))[:, None]) | (
        (sub == 0) & (any_col == 0)[:, None]
    )
    partner = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out, partner
    cand = np.where(moves_any, s[:, :ANY_INDEX], -np.inf)
    best = cand.argmax(axis=1)
    best_score = cand[np.arange(n), best]
    take = best_score >= out[:, ANY_INDEX]  # ties pair too: the two cells rank together
    out[take, ANY_INDEX] = best_score[take]
    partner[take] = best[take]
    one = np.flatnonzero((any_col == 1) & (n_pos == 1))
    j = sub[one].argmax(axis=1)
    out[one, j] = np.maximum(out[one, j], s[one, ANY_INDEX])
    return out, partner
