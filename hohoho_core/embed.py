"""Two-dimensional t-SNE maps of slice embeddings, and the helpers the embedding view needs.

`tsne_2d` runs openTSNE (Policar et al., 2024: FFT-accelerated interpolation t-SNE of
Linderman et al., 2019) and falls back to scikit-learn's Barnes-Hut ``TSNE`` when openTSNE
is missing or fails. `subsample` keeps large datasets drawable without losing rare classes,
and `relative_level` gives the colour that shows t-SNE carries slice level (poster Fig. 5).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

from hohoho_core.system import available_cores

__all__ = ["MIN_POINTS", "PARALLEL_FROM", "PCA_DIMS", "relative_level", "subsample", "tsne_2d"]

log = logging.getLogger(__name__)

#: Fewer points than this have no neighbourhood structure worth a t-SNE.
MIN_POINTS: int = 5
#: Embeddings wider than this are reduced by PCA first.
PCA_DIMS: int = 50

Backend = Literal["auto", "opentsne", "sklearn"]


#: From this many points on, t-SNE uses every CPU by default (openTSNE switches to FFT here).
PARALLEL_FROM: int = 10_000


def _default_jobs(n: int) -> int:
    """One thread below `PARALLEL_FROM` points, else every CPU this process may use.

    Below 10,000 points openTSNE's per-iteration thread synchronisation costs more than it
    saves: on 2 busy cores, 1,200 points took 4.5x longer with 2 threads than with 1.
    """
    if n < PARALLEL_FROM:
        return 1
    return available_cores()


def _effective_perplexity(perplexity: float, n: int) -> float:
    """Clip to (N - 1) / 3: t-SNE uses about 3 x perplexity neighbours per point."""
    if not perplexity > 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}")
    return float(min(perplexity, (n - 1) / 3.0))


def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    """Reduce ``(N, D)`` to ``(N, min(50, N, D))`` principal components (float64)."""
    from sklearn.decomposition import PCA

    k = min(PCA_DIMS, x.shape[0], x.shape[1])
    return PCA(n_components=k, random_state=seed).fit_transform(x).astype(np.float64)


def _run_opentsne(x: np.ndarray, seed: int, perplexity: float, n_jobs: int) -> np.ndarray:
    from openTSNE import TSNE

    # "auto" picks exact neighbours below 1,000 points, Annoy above; Barnes-Hut gradients
    # below 10,000 points, FFT interpolation above (the fast path for large sets).
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        initialization="pca",
        random_state=seed,
        n_jobs=n_jobs,
        verbose=False,
    )
    return np.asarray(tsne.fit(x), dtype=np.float64)


def _run_sklearn(x: np.ndarray, seed: int, perplexity: float, n_jobs: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        n_jobs=n_jobs,
    )
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def tsne_2d(
    embeddings: np.ndarray,
    *,
    seed: int = 0,
    perplexity: float = 30.0,
    backend: Backend = "auto",
    n_jobs: int | None = None,
) -> np.ndarray:
    """Embed ``(N, D)`` vectors in 2-D with t-SNE: float32 ``(N, 2)``.

    Steps: (1) when D > 50, PCA to 50 dimensions, the usual t-SNE recipe (van der Maaten &
    Hinton, 2008): the 512-d CNN embeddings carry most of their variance in far fewer
    directions, and the trailing components are mostly noise that blurs the neighbour
    graph, while every distance computation gets 10x cheaper. (2) perplexity is clipped to
    (N - 1) / 3 so small sets still have enough neighbours. (3) t-SNE with PCA
    initialisation, which keeps the global layout stable and the result deterministic for a
    given ``seed`` (and the same ``n_jobs``, machine and library versions); with that
    initialisation the seed only reaches PCA and the approximate neighbour search, so
    different seeds often give the same layout.

    Args:
        embeddings: ``(N, D)`` finite float array, N >= `MIN_POINTS`.
        seed: random state for PCA, neighbour search and optimisation.
        perplexity: effective number of neighbours (typical 5-50).
        backend: "opentsne", "sklearn", or "auto" (openTSNE, else scikit-learn when openTSNE
            cannot be imported or fails; the fallback is logged).
        n_jobs: threads; default 1 below `PARALLEL_FROM` points, else all usable CPUs;
            -1 (or any value < 1) means all usable CPUs.

    Identical embeddings (zero spread) give the trivial layout: all points at the origin.

    Raises:
        ValueError: not 2-D, N < 5, non-finite values, bad perplexity or backend.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    n = x.shape[0]
    if n < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points, got {n}")
    if x.shape[1] < 1 or not np.isfinite(x).all():
        raise ValueError("embeddings must have at least one column and only finite values")
    if backend not in ("auto", "opentsne", "sklearn"):
        raise ValueError(f"backend must be 'auto', 'opentsne' or 'sklearn', got {backend!r}")
    perp = _effective_perplexity(perplexity, n)
    if n_jobs is None:
        jobs = _default_jobs(n)
    else:
        jobs = int(n_jobs) if n_jobs >= 1 else _default_jobs(PARALLEL_FROM)  # -1: all CPUs
    x = x.astype(np.float64)
    if np.ptp(x, axis=0).max() == 0:
        # All points identical: there is no neighbourhood to lay out, and both backends
        # divide by a zero spread in their PCA initialisation (scikit-learn then crashes).
        log.warning("t-SNE skipped: all %d embeddings are identical", n)
        return np.zeros((n, 2), dtype=np.float32)
    # PCA and both backends run OpenMP/BLAS thread pools that ignore n_jobs and spin when
    # the cores are busy; cap them (threadpoolctl ships with scikit-learn).
    with threadpool_limits(limits=jobs):
        if x.shape[1] > PCA_DIMS:
            x = _pca(x, seed)
        return _tsne(x, seed, perp, jobs, backend)


def _tsne(x: np.ndarray, seed: int, perp: float, jobs: int, backend: Backend) -> np.ndarray:
    n = x.shape[0]
    if backend in ("auto", "opentsne"):
        try:
            y = _run_opentsne(x, seed, perp, jobs)
            if not np.isfinite(y).all():
                raise FloatingPointError("openTSNE returned non-finite coordinates")
            log.info("t-SNE of %d points with openTSNE (perplexity %.1f)", n, perp)
            return y.astype(np.float32)
        except Exception as exc:
            if backend == "opentsne":
                raise
            log.warning("openTSNE unavailable or failed (%s); using scikit-learn", exc)
    y = _run_sklearn(x, seed, perp, jobs)
    log.info("t-SNE of %d points with scikit-learn (perplexity %.1f)", n, perp)
    return y.astype(np.float32)


def subsample(
    n_total: int,
    max_points: int,
    seed: int = 0,
    stratify: np.ndarray | None = None,
    *,
    min_per_class: int = 20,
) -> np.ndarray:
    """Pick at most ``max_points`` of ``n_total`` rows: sorted int64 indices.

    Without ``stratify`` the pick is uniform. With ``stratify`` (``(N,)`` class values, or
    ``(N, K)`` multi-label 0/1 rows, grouped by their label combination) every group first
    gets one row, then up to ``min(size, min_per_class)`` rows, rarest group first, so rare
    subtypes such as epidural survive; the rest of the budget is shared in proportion to group size (largest
    remainders). When the budget is smaller than the number of groups, the rarest groups
    win. All rows are returned (``arange``) when ``n_total <= max_points``.
    """
    if n_total < 0 or max_points < 1:
        raise ValueError("n_total must be >= 0 and max_points >= 1")
    if n_total <= max_points:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if stratify is None:
        return np.sort(rng.choice(n_total, size=max_points, replace=False)).astype(np.int64)

    labels = np.asarray(stratify)
    if labels.shape[0] != n_total or labels.ndim not in (1, 2):
        raise ValueError(f"stratify must be (N,) or (N, K) with N = {n_total}")
    if labels.ndim == 2:  # multi-label rows: one group per label combination
        _, group = np.unique(labels.astype(bool), axis=0, return_inverse=True)
    else:
        _, group = np.unique(labels, return_inverse=True)
    group = group.reshape(-1)
    sizes = np.bincount(group)

    # 1) a floor for every group, rarest first (stable, so ties go to the lower group id):
    # one row each before any group gets more, so a tight budget still covers most classes.
    take = np.zeros_like(sizes)
    budget = max_points
    for floor in (1, max(min_per_class, 1)):
        for g in np.argsort(sizes, kind="stable"):
            add = min(int(sizes[g]), floor, budget + int(take[g])) - int(take[g])
            if add > 0:
                take[g] += add
                budget -= add
    # 2) the rest in proportion to what is left in each group, largest remainders first.
    room = sizes - take
    if budget > 0 and room.sum() > 0:
        share = budget * room / room.sum()
        extra = np.minimum(np.floor(share).astype(np.int64), room)
        left = budget - int(extra.sum())
        for g in np.argsort(-(share - extra), kind="stable"):
            if left == 0:
                break
            if extra[g] < room[g]:
                extra[g] += 1
                left -= 1
        take += extra

    picked = [
        rng.choice(np.flatnonzero(group == g), size=int(k), replace=False)
        for g, k in enumerate(take)
        if k > 0
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def relative_level(slice_index: np.ndarray, n_slices: np.ndarray | int) -> np.ndarray:
    """Position of each slice in its study: float32 ``(N,)`` in [0, 1], 0 = most inferior.

    ``slice_index`` is the 0-based index in study order (`Study` sorts slices along the
    slice normal, which for axial CT runs inferior to superior, so index 0 is the lowest
    slice); ``n_slices`` is the study's slice count, per slice or one number for all.
    ``index / (n_slices - 1)``; a single-slice study gets 0.5 (no level information).
    """
    idx = np.asarray(slice_index, dtype=np.float64).reshape(-1)
    total = np.broadcast_to(np.asarray(n_slices, dtype=np.float64), idx.shape)
    if np.any(total < 1) or np.any(idx < 0) or np.any(idx >= total):
        raise ValueError("need 0 <= slice_index < n_slices for every slice")
    span = total - 1
    level = np.divide(idx, span, out=np.full_like(idx, 0.5), where=span > 0)
    return level.astype(np.float32)
