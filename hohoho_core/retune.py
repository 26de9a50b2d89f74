"""Thresholds retuned on one's own labelled data, written as a new weights folder.

Thresholds are what transfers worst between sources (weights/MODEL_CARD.md: the foreign
generator's macro F2 rises by about 0.1 with thresholds picked there), so a site with
labelled studies should pick its own. Two rules:

- ``beta``: per class, the cut that maximises F-beta on the data (`metrics.search_thresholds`);
- ``sensitivity``: per class, the highest cut whose slice-level recall reaches the target
  (a triage setting: "find at least 95 % of the positive slices").

The weights never change; the new folder holds the same tensor files and a ``config.json``
whose thresholds (final and CNN-only) are the retuned ones and whose ``data["retuned"]``
says on what and how. The original folder is never written.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hohoho_core.atomic import atomic_write_text
from hohoho_core.metrics import search_thresholds
from hohoho_core.weights import CONFIG_FILE, load_weights

__all__ = ["retune_thresholds", "thresholds_for_sensitivity", "write_retuned"]


def thresholds_for_sensitivity(
    y_true: np.ndarray, prob: np.ndarray, target: float, fallback: np.ndarray
) -> np.ndarray:
    """Per class, the highest threshold ``t`` with recall of ``prob >= t`` at least ``target``.

    ``y_true`` and ``prob`` are ``(N, K)``; rows with an unknown label (negative) are left
    out per class. A class without positives keeps its ``fallback`` threshold.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"sensitivity target must be in (0, 1], got {target}")
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must be (N, K) alike")
    out = np.asarray(fallback, dtype=np.float64).copy()
    for k in range(y.shape[1]):
        pos = np.sort(p[y[:, k] == 1, k])[::-1]
        if pos.size == 0:
            continue
        need = max(1, math.ceil(target * pos.size - 1e-9))
        out[k] = pos[need - 1]  # keeping every positive at or above it reaches `need`
    return out


def retune_thresholds(
    y_true: np.ndarray,
    prob: np.ndarray,
    fallback: np.ndarray,
    *,
    beta: float = 2.0,
    sensitivity: float | None = None,
) -> np.ndarray:
    """``(K,)`` thresholds by the F-beta rule, or by the sensitivity rule when given."""
    y = np.asarray(y_true)
    keep = (y >= 0).all(axis=1)
    if not keep.any():
        raise ValueError("no labelled slices to retune on")
    if sensitivity is not None:
        return thresholds_for_sensitivity(y[keep], prob[keep], sensitivity, fallback)
    tuned = search_thresholds(y[keep].astype(np.int64), np.asarray(prob)[keep], beta=beta)
    # search_thresholds gives 0.5 to a class without positives: keep the shipped one there.
    no_pos = y[keep].sum(axis=0) == 0
    return np.where(no_pos, np.asarray(fallback, dtype=np.float64), tuned)


def write_retuned(
    src: str | Path,
    dst: str | Path,
    thresholds: np.ndarray,
    cnn_thresholds: np.ndarray | None,
    note: dict[str, Any],
) -> Path:
    """Copy weights folder ``src`` to a new folder ``dst`` with these thresholds.

    Refuses a ``dst`` that is ``src`` or an existing non-empty folder (nothing is ever
    overwritten). ``note`` (JSON-ready) is stored as ``config.data["retuned"]``. The result
    is checked by loading it.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and (dst.resolve() == src.resolve() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty: choose a new folder")
    config = load_weights(src).config
    data = dict(config.data)
    data["retuned"] = note
    new = replace(
        config,
        thresholds=[float(t) for t in thresholds],
        cnn_thresholds=(None if cnn_thresholds is None
                        else [float(t) for t in cnn_thresholds]),
        data=data,
    )
    new.validate()
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix == ".safetensors":
            shutil.copyfile(f, dst / f.name)
    atomic_write_text(dst / CONFIG_FILE, json.dumps(new.to_dict(), indent=2, allow_nan=False)
                      + "\n")
    load_weights(dst)  # the new folder must load: a broken copy is an error here, not later
    return dst
