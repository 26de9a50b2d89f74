"""Tests for hohoho_core.embed: t-SNE backends and fallback, subsampling, slice level."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from hohoho_core import embed

BACKENDS = ("opentsne", "sklearn")


def _two_clusters(n: int = 200, d: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs 10 sd apart in a D > 50 space (so the PCA step runs)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    shift = np.zeros(d)
    shift[:5] = 10.0 / np.sqrt(5)
    x = rng.normal(size=(n, d)) + y[:, None] * shift
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def layouts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two runs per backend on the same data, computed once for the module."""
    x, _ = _two_clusters()
    return {b: (embed.tsne_2d(x, backend=b), embed.tsne_2d(x, backend=b)) for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_dtype_and_determinism(layouts: dict, backend: str) -> None:
    first, second = layouts[backend]
    assert first.shape == (200, 2) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    assert first.std(axis=0).min() > 0  # not collapsed to a point


@pytest.mark.parametrize("backend", BACKENDS)
def test_separated_clusters_stay_separated(layouts: dict, backend: str) -> None:
    _, y = _two_clusters()
    layout = layouts[backend][0]
    acc = cross_val_score(KNeighborsClassifier(n_neighbors=5), layout, y, cv=5).mean()
    assert acc > 0.95


def test_falls_back_to_sklearn_without_opentsne(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    x, _ = _two_clusters(n=60, d=10)
    expected = embed.tsne_2d(x, backend="sklearn")
    monkeypatch.setitem(sys.modules, "openTSNE", None)  # any import of it now fails
    with caplog.at_level(logging.WARNING, logger="hohoho_core.embed"):
        got = embed.tsne_2d(x, backend="auto")
    np.testing.assert_array_equal(got, expected)
    assert "using scikit-learn" in caplog.text
    with pytest.raises(ImportError):
        embed.tsne_2d(x, backend="opentsne")


def test_falls_back_when_opentsne_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = _two_clusters(n=60, d=10)
    calls: list[str] = []

    def broken(*args: object) -> np.ndarray:
        calls.append("opentsne")
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(embed, "_run_opentsne", broken)
    got = embed.tsne_2d(x)
    assert calls == ["opentsne"]
    np.testing.assert_array_equal(got, embed.tsne_2d(x, backend="sklearn"))


def test_pca_to_50_and_perplexity_clipped(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def record(x: np.ndarray, seed: int, perplexity: float, n_jobs: int) -> np.ndarray:
        seen.update(shape=x.shape, perplexity=perplexity, n_jobs=n_jobs)
        return np.zeros((x.shape[0], 2))

    monkeypatch.setattr(embed, "_run_opentsne", record)
    rng = np.random.default_rng(0)
    embed.tsne_2d(rng.normal(size=(100, 512)).astype(np.float32), perplexity=30.0)
    assert seen == {"shape": (100, 50), "perplexity": 30.0, "n_jobs": 1}
    embed.tsne_2d(rng.normal(size=(10, 512)), perplexity=30.0)
    # PCA keeps at most N components; perplexity clipped to (N - 1) / 3.
    assert seen["shape"] == (10, 10) and seen["perplexity"] == pytest.approx(3.0)
    embed.tsne_2d(rng.normal(size=(20, 8)), perplexity=5.0, n_jobs=3)
    assert seen == {"shape": (20, 8), "perplexity": 5.0, "n_jobs": 3}


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_sets(backend: str) -> None:
    rng = np.random.default_rng(0)
    assert embed.tsne_2d(rng.normal(size=(12, 4)), backend=backend).shape == (12, 2)
    with pytest.raises(ValueError, match="at least 5"):
        embed.tsne_2d(rng.normal(size=(4, 4)), backend=backend)
    # Identical points: trivial layout instead of a crash inside the backend.
    np.testing.assert_array_equal(
        embed.tsne_2d(np.ones((30, 8)), backend=backend), np.zeros((30, 2), np.float32)
    )


def test_rejects_bad_input() -> None:
    x = np.random.default_rng(0).normal(size=(20, 4))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        embed.tsne_2d(bad)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        embed.tsne_2d(x[:, 0])
    with pytest.raises(ValueError, match="perplexity"):
        embed.tsne_2d(x, perplexity=0.0)
    with pytest.raises(ValueError, match="backend"):
        embed.tsne_2d(x, backend="umap")  # type: ignore[arg-type]


def test_subsample_uniform() -> None:
    np.testing.assert_array_equal(embed.subsample(7, 10, seed=0), np.arange(7))
    idx = embed.subsample(1000, 100, seed=3)
    assert idx.dtype == np.int64 and idx.shape == (100,)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 1000
    np.testing.assert_array_equal(idx, embed.subsample(1000, 100, seed=3))
    assert not np.array_equal(idx, embed.subsample(1000, 100, seed=4))


def test_subsample_keeps_rare_classes() -> None:
    labels = np.array([0] * 9900 + [1] * 95 + [2] * 5)
    np.random.default_rng(0).shuffle(labels)
    idx = embed.subsample(labels.size, 100, seed=0, stratify=labels)
    assert idx.size == 100 and np.unique(idx).size == 100
    counts = np.bincount(labels[idx], minlength=3)
    # Floors: min(size, 20) per class, then the other 55 shared by what is left.
    assert counts[2] == 5  # the rarest class is kept whole
    assert counts[1] >= 20
    assert counts.sum() == 100
    # Uniform sampling would very likely miss class 2 (expected 0.05 of a point).
    assert np.bincount(labels[embed.subsample(labels.size, 100, seed=0)], minlength=3)[2] <= 1


def test_subsample_multilabel_rows() -> None:
    n = 5000
    y = np.zeros((n, 6), dtype=np.int64)
    y[:600, 5] = 1  # "any"
    y[:400, 4] = 1  # subdural
    y[:3, 0] = 1  # three epidural slices
    idx = embed.subsample(n, 50, seed=1, stratify=y, min_per_class=5)
    assert idx.size == 50
    assert y[idx, 0].sum() == 3
    assert y[idx, 4].sum() >= 5 and y[idx, 5].sum() >= 5


def test_subsample_budget_below_groups_serves_rarest() -> None:
    labels = np.array([0] * 50 + [1] * 10 + [2] * 2)
    idx = embed.subsample(labels.size, 2, seed=0, stratify=labels)
    assert sorted(labels[idx].tolist()) == [1, 2]
    with pytest.raises(ValueError):
        embed.subsample(10, 5, seed=0, stratify=np.zeros(9))


def test_relative_level() -> None:
    np.testing.assert_allclose(
        embed.relative_level(np.arange(4), 4), [0.0, 1 / 3, 2 / 3, 1.0], rtol=1e-6
    )
    level = embed.relative_level(np.array([0, 2, 0, 0]), np.array([3, 3, 1, 5]))
    assert level.dtype == np.float32
    np.testing.assert_allclose(level, [0.0, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError):
        embed.relative_level(np.array([3]), 3)
    with pytest.raises(ValueError):
        embed.relative_level(np.array([-1]), 3)


def test_subsample_string_labels() -> None:
    labels = np.array(["none"] * 300 + ["epidural"] * 2, dtype=object)
    idx = embed.subsample(labels.size, 10, seed=0, stratify=labels)
    assert idx.size == 10 and (labels[idx] == "epidural").sum() == 2
