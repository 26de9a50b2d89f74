"""4. t-SNE: seconds for 1,000, 5,000 and 20,000 slice embeddings with `embed.tsne_2d`.

The embeddings are synthetic 512-d vectors shaped like pooled ReLU features (a mixture of
clusters, non-negative), so the timing does not depend on a trained model.
"""

from __future__ import annotations

import logging

import numpy as np

from bench.common import Section, time_call
from bench.context import BenchContext
from hohoho_core.embed import tsne_2d

__all__ = ["GOAL_20K_S", "fake_embeddings", "run"]

GOAL_20K_S = 60.0


def fake_embeddings(n: int, dim: int = 512, clusters: int = 12, seed: int = 0) -> np.ndarray:
    """``(n, dim)`` float32: ``clusters`` Gaussian blobs, then ReLU like pooled CNN features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, size=(clusters, dim))
    member = rng.integers(0, clusters, size=n)
    x = centres[member] + rng.normal(0.0, 1.0, size=(n, dim))
    return np.maximum(x, 0.0).astype(np.float32)


class _Backends(logging.Handler):
    """Remembers which backend `tsne_2d` says it used."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.used: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        for name in ("openTSNE", "scikit-learn"):
            if msg.startswith("t-SNE of") and name in msg:
                self.used.append(name)


def run(ctx: BenchContext) -> Section:
    sec = Section("tsne", "4. t-SNE")
    sec.params.update(embeddings="synthetic 512-d, 12 clusters, ReLU", perplexity=30,
                      threads=ctx.threads, pipeline="PCA to 50 d, then t-SNE (embed.tsne_2d)")
    logger = logging.getLogger("hohoho_core.embed")
    handler = _Backends()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    measured: dict[int, float] = {}
    try:
        tsne_2d(fake_embeddings(50, seed=1), seed=0)  # warm-up: imports, PCA setup
        for n, repeats in ctx.sizes.tsne_sizes:
            emb = fake_embeddings(n)
            handler.used.clear()
            t = time_call(lambda e=emb: tsne_2d(e, seed=0), repeats=repeats, warmup=0)
            backend = handler.used[-1] if handler.used else "?"
            sec.add(f"{n:,} points", t.median, "s",
                    f"{backend}, auto threads; " + (f"median of {t.n}" if t.n > 1 else "one run"),
                    t)
            measured[n] = t.median
        n = ctx.sizes.tsne_sklearn_points
        emb = fake_embeddings(n)
        t = time_call(lambda: tsne_2d(emb, seed=0, backend="sklearn"), repeats=1, warmup=0)
        sec.add(f"{n:,} points, scikit-learn fallback", t.median, "s", "one run", t)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    largest = max(measured) if measured else 0
    sec.goal("t-SNE of 20,000 embeddings", measured.get(20000, float("nan")), "<=", GOAL_20K_S,
             "s", cause=f"measured at {largest:,} points only" if 20000 not in measured
             else "openTSNE's FFT gradient and Annoy neighbours at this thread count")
    return sec
