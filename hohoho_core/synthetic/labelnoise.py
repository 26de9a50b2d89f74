"""Sequential label noise of the kind the poster shows: gaps, isolated slices, edges, ``any``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hohoho_core.labels import ANY_INDEX, CLASSES


def positive_runs(col: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` runs of ones in a 0/1 vector."""
    padded = np.concatenate([[0], col.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def inject_label_noise(
    labels: np.ndarray,
    study_ids: np.ndarray,
    order: np.ndarray,
    rate: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Sequential mislabels of the kind the poster shows, in about ``rate`` of positive runs.

    Args:
        labels: ``(N, 6)`` 0/1 clean labels, ``CLASSES`` order.
        study_ids: ``(N,)`` study of each row.
        order: ``(N,)`` position of each row in its study (0 = most inferior).
        rate: fraction of (study, subtype) positive runs that get one error, in [0, 1].

    Returns:
        ``(noisy (N, 6) uint8, errors)`` where ``errors`` has columns row, class, clean,
        noisy, kind (gap | isolated | extend | shorten | any) and lists exactly the cells
        where the two arrays differ.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be in [0, 1]")
    clean = np.asarray(labels, dtype=np.uint8)
    noisy = clean.copy()
    study_ids, order = np.asarray(study_ids), np.asarray(order)
    kinds: dict[tuple[int, int], str] = {}
    runs = []  # (rows of the study in order, class, start, stop)
    studies = {}
    for sid in pd.unique(study_ids):
        rows = np.flatnonzero(study_ids == sid)
        rows = rows[np.argsort(order[rows], kind="stable")]
        studies[sid] = rows
        for j in range(5):
            for start, stop in positive_runs(clean[rows, j]):
                runs.append((rows, j, start, stop))
    if rate == 0 or not runs:
        return noisy, pd.DataFrame(columns=["row", "class", "clean", "noisy", "kind"])
    k = max(1, round(rate * len(runs)))
    chosen = rng.permutation(len(runs))[:k]
    touched: set[int] = set()
    any_flips = []
    for ci in sorted(chosen.tolist()):
        rows, j, start, stop = runs[ci]
        n, length = len(rows), stop - start
        col = clean[rows, j]
        options = {"extend": 0.2, "isolated": 0.25, "any": 0.1}
        if length >= 3:
            options["gap"] = 0.3
        if length >= 2:
            options["shorten"] = 0.15
        names = list(options)
        probs = np.array([options[x] for x in names])
        kind = str(rng.choice(names, p=probs / probs.sum()))
        target: int | None = None
        value = 0
        if kind == "gap":
            target = int(rng.integers(start + 1, stop - 1))
        elif kind == "shorten":
            target = start if rng.random() < 0.5 else stop - 1
        elif kind == "extend":
            ends = [i for i in (start - 1, stop) if 0 <= i < n and col[i] == 0]
            if ends:
                target, value = int(rng.choice(ends)), 1
            else:
                kind = "any"
        if kind == "isolated":
            near = np.convolve(col, np.ones(5), mode="same") > 0
            free = np.flatnonzero(~near)
            if free.size:
                target, value = int(rng.choice(free)), 1
            else:
                kind = "any"
        if kind == "any":
            any_flips.append(int(rows[int(rng.integers(start, stop))]))
            continue
        r = int(rows[target])
        noisy[r, j] = value
        kinds[(r, j)] = kind
        touched.add(r)
    # Keep "any" consistent for ordinary errors; "any" errors break it on purpose.
    for r in touched:
        new = noisy[r, :5].max()
        if new != noisy[r, ANY_INDEX]:
            noisy[r, ANY_INDEX] = new
            kinds[(r, ANY_INDEX)] = kinds.get((r, ANY_INDEX), "derived")
    for r in any_flips:
        noisy[r, ANY_INDEX] = 1 - noisy[r, ANY_INDEX]
        kinds[(r, ANY_INDEX)] = "any"
    diff_r, diff_c = np.nonzero(noisy != clean)
    parent = {r: kd for (r, c), kd in kinds.items() if c < 5}
    records = []
    for r, c in zip(diff_r.tolist(), diff_c.tolist(), strict=True):
        kd = kinds.get((r, c), "any")
        if kd == "derived":
            kd = parent.get(r, "any")
        records.append(
            {
                "row": r,
                "class": CLASSES[c],
                "clean": int(clean[r, c]),
                "noisy": int(noisy[r, c]),
                "kind": kd,
            }
        )
    return noisy, pd.DataFrame(records, columns=["row", "class", "clean", "noisy", "kind"])
