"""Image evidence for the label audit: the blood seen near each run edge, read from the DICOMs.

`audit_boundary` compares a run's edge slice with its neighbours; besides the model's
outputs it can use the image itself (acute-blood area inside the skull, where it lies,
and the brain area it is a fraction of). Reading every slice of a large dataset would
cost more than the audit, and only slices near a run edge are ever compared, so only
those are read (`edge_rows`); every other row holds zeros, which no candidate reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from hohoho_core.audit_boundary import (
    SENSITIVE_BLOOD_HU,
    SliceEvidence,
    blood_map,
    brain_area,
)
from hohoho_core.labels import CLASSES

__all__ = ["GRID", "edge_rows", "image_evidence", "table_evidence"]

#: Cells per side of the blood maps (as in the benchmark, `bench/audit_data.py`).
GRID = 32
#: How far from a run edge a slice may be and still be compared (`boundary_candidates`
#: reads the edge, the outside neighbour, the slice beyond it and the inner neighbour).
REACH = 2


def edge_rows(labels: np.ndarray, series: np.ndarray, slice_index: np.ndarray,
              reach: int = REACH) -> np.ndarray:
    """``(N,)`` bool: rows within ``reach`` slices of a run edge of any class, in their series.

    Args:
        labels: ``(N, 6)`` 0/1 labels, columns ``CLASSES``.
        series: ``(N,)`` series key; slice_index: ``(N,)`` order within the series.
    """
    lab = np.asarray(labels)
    n = lab.shape[0]
    if lab.ndim != 2 or lab.shape[1] != len(CLASSES):
        raise ValueError(f"labels must have shape (N, {len(CLASSES)}), got {lab.shape}")
    if reach < 0:
        raise ValueError(f"reach must be >= 0, got {reach}")
    codes, _ = pd.factorize(pd.Series(np.asarray(series), dtype=object))
    order = np.lexsort((np.asarray(slice_index), codes))
    out = np.zeros(n, dtype=bool)
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, bounds):
        col = lab[rows].astype(np.int8)
        pad = np.zeros((1, col.shape[1]), dtype=np.int8)
        # A change between consecutive slices in any class marks both as edge slices.
        change = np.abs(np.diff(np.vstack([pad, col, pad]), axis=0)).max(axis=1) > 0
        edge = change[:-1] | change[1:]
        edge &= col.max(axis=1) > 0
        near = np.zeros(len(rows), dtype=bool)
        for i in np.flatnonzero(edge):
            near[max(0, i - reach - 1): i + reach + 2] = True
        out[rows] = near
    return out


def image_evidence(
    table: pd.DataFrame,
    load_series: Callable[[Sequence[str]], Any],
    *,
    rows: np.ndarray | None = None,
    grid: int = GRID,
    skipped: list[str] | None = None,
) -> SliceEvidence:
    """Blood maps, blood areas and brain areas of the wanted slices of ``table``.

    Args:
        table: audit rows with ``image_id``, ``study_uid``, ``path`` and optionally
            ``series_uid`` (series are loaded one at a time).
        load_series: reads a list of DICOM paths into a `study.Study` (``hu``,
            ``pixel_spacing``, ``image_ids``), e.g. ``dicom.loader.load_study``.
        rows: ``(N,)`` bool, the slices to read (default: all).
        grid: cells per side of the maps.
        skipped: when given, a series that cannot be read is appended here (as
            ``"study_uid/series_uid: reason"``) and keeps zeros, rather than stopping
            the audit: the image evidence is one signal among several.

    Returns:
        `SliceEvidence` with ``blood``, ``blood_map``, ``blood_map_lo`` and ``brain``
        (zeros on rows not read, or whose file the reader dropped).

    Raises:
        ValueError: ``table`` lacks a column, or ``rows`` has the wrong shape.
    """
    for col in ("image_id", "study_uid", "path"):
        if col not in table.columns:
            raise ValueError(f"table is missing column {col!r}")
    n = len(table)
    want = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if want.shape != (n,):
        raise ValueError(f"rows must have shape ({n},), got {want.shape}")
    bmap = np.zeros((n, grid, grid), dtype=np.float32)
    bmap_lo = np.zeros((n, grid, grid), dtype=np.float32)
    brain = np.zeros(n, dtype=np.float64)
    keys = ["study_uid"] + (["series_uid"] if "series_uid" in table.columns else [])
    sub = table.loc[want, [*keys, "image_id", "path"]]
    where = {img: i for i, img in enumerate(table["image_id"].astype(str))}
    for name, part in sub.groupby(keys, sort=False):
        try:
            study = load_series([str(p) for p in part["path"]])
        except (ValueError, OSError, RuntimeError) as err:
            if skipped is None:
                raise
            label = "/".join(str(v) for v in (name if isinstance(name, tuple) else (name,)))
            skipped.append(f"{label}: {err}")
            continue
        spacing = float(np.mean(study.pixel_spacing))
        hu = np.asarray(study.hu, dtype=np.float32)
        at = np.array([where.get(str(i), -1) for i in study.image_ids], dtype=np.int64)
        ok = at >= 0
        if not ok.any():
            continue
        hu = hu[ok]
        bmap[at[ok]] = blood_map(hu, spacing, grid=grid)
        bmap_lo[at[ok]] = blood_map(hu, spacing, grid=grid, hu_range=SENSITIVE_BLOOD_HU,
                                    smooth_mm=1.0)
        brain[at[ok]] = brain_area(hu, spacing)
    return SliceEvidence(blood=bmap.sum(axis=(1, 2), dtype=np.float64), blood_map=bmap,
                         blood_map_lo=bmap_lo, brain=brain)


def table_evidence(
    table: pd.DataFrame,
    load_series: Callable[[Sequence[str]], Any],
    *,
    cnn_prob: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    skipped: list[str] | None = None,
) -> SliceEvidence:
    """Everything the boundary evidence can use for an audit table: the image evidence of
    the slices near run edges (`edge_rows`, `image_evidence`) plus the model's CNN
    probabilities and embeddings when given (rows aligned with ``table``)."""
    key = table["study_uid"].astype(str)
    if "series_uid" in table.columns:
        key = key + "\x1f" + table["series_uid"].astype(str)
    near = edge_rows(table[list(CLASSES)].to_numpy(), key.to_numpy(),
                     table["slice_index"].to_numpy())
    ev = image_evidence(table, load_series, rows=near, skipped=skipped)
    return replace(ev, cnn_prob=cnn_prob, embeddings=embeddings)
