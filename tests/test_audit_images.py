"""Image evidence for the audit: which slices are read, and what is measured on them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from hohoho_core.audit_images import edge_rows, image_evidence, table_evidence
from hohoho_core.labels import ANY_INDEX, CLASSES

SDH = CLASSES.index("subdural")


def _labels(n: int, run: range) -> np.ndarray:
    lab = np.zeros((n, 6), dtype=int)
    lab[list(run), SDH] = 1
    lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    return lab


def test_edge_rows_marks_slices_near_run_edges_within_their_series() -> None:
    lab = np.vstack([_labels(20, range(8, 12)), _labels(10, range(0))])
    series = np.array(["a"] * 20 + ["b"] * 10)
    idx = np.concatenate([np.arange(20), np.arange(10)])
    near = edge_rows(lab, series, idx, reach=2)
    assert set(np.flatnonzero(near)) == set(range(5, 15))  # 8-3 .. 11+3
    assert not near[20:].any()  # a series without a run is never read
    # The order of the rows does not matter, only slice_index within a series.
    perm = np.random.default_rng(0).permutation(len(lab))
    np.testing.assert_array_equal(edge_rows(lab[perm], series[perm], idx[perm]), near[perm])
    with pytest.raises(ValueError, match="labels"):
        edge_rows(lab[:, :5], series, idx)


def _head(n: int, clot_on: range, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    sl = np.full((size, size), -1000.0, dtype=np.float32)
    sl[r < 30] = 1000.0
    sl[r < 27] = 30.0
    vol = np.repeat(sl[None], n, axis=0)
    clot = np.hypot(yy - 32, xx - 26) < 6
    for k in clot_on:
        vol[k][clot] = 75.0
    return vol


def test_image_evidence_reads_only_the_wanted_slices_and_measures_the_clot() -> None:
    n = 12
    hu = _head(n, range(4, 8))
    table = pd.DataFrame(_labels(n, range(4, 8)), columns=list(CLASSES))
    table.insert(0, "image_id", [f"ID_{i}" for i in range(n)])
    table.insert(1, "study_uid", "s")
    table.insert(2, "slice_index", range(n))
    table["path"] = [f"/d/ID_{i}.dcm" for i in range(n)]
    asked: list[list[str]] = []

    def load(paths):
        asked.append(list(paths))
        ks = [int(p.split("_")[1].split(".")[0]) for p in paths]
        # The reader returns its own slice order (here reversed); rows follow image IDs.
        ks = ks[::-1]
        return SimpleNamespace(hu=hu[ks], pixel_spacing=(0.8, 0.8),
                               image_ids=[f"ID_{k}" for k in ks])

    ev = table_evidence(table, load, cnn_prob=np.full((n, 6), 0.2))
    assert len(asked) == 1 and len(asked[0]) == 10  # slices 1..10: within 3 of an edge
    assert ev.cnn_prob is not None and ev.embeddings is None
    assert ev.brain[0] == 0.0 and ev.brain[11] == 0.0  # slices 0 and 11 were not read
    assert (ev.blood[4:8] > 20).all() and (ev.blood[[2, 3, 8, 9]] == 0).all()
    assert (ev.brain[1:11] > 1000).all()
    assert (ev.blood_map_lo[4:8].sum(axis=(1, 2)) >= ev.blood[4:8] * 0.9).all()
    ev.check(n)
    with pytest.raises(ValueError, match="path"):
        image_evidence(table.drop(columns="path"), load)
    with pytest.raises(ValueError, match="rows"):
        image_evidence(table, load, rows=np.ones(3, dtype=bool))


def test_an_unreadable_series_keeps_zeros_when_skipping_is_asked() -> None:
    n = 8
    table = pd.DataFrame(_labels(n, range(2, 5)), columns=list(CLASSES))
    table.insert(0, "image_id", [f"ID_{i}" for i in range(n)])
    table.insert(1, "study_uid", "s")
    table.insert(2, "slice_index", range(n))
    table["path"] = [f"/d/{i}.dcm" for i in range(n)]

    def broken(paths):
        raise RuntimeError("No usable CT slice found in 8 files: 8 unreadable.")

    skipped: list[str] = []
    ev = table_evidence(table, broken, skipped=skipped)
    assert len(skipped) == 1 and "unreadable" in skipped[0]
    assert (ev.blood == 0).all() and (ev.brain == 0).all()
    with pytest.raises(RuntimeError, match="unreadable"):
        table_evidence(table, broken)
