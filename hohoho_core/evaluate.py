"""One evaluation path: predict every labelled series of an index and score it.

`predict_index` runs a `predict.Predictor` over each series of an RSNA index
(`rsna.iter_labelled_studies`: the DICOM files read and sorted by `dicom.load_study`, as a
user's study is) and returns the labels and both stages' probabilities slice-aligned.
`score` is the one report every caller prints: F-beta at given thresholds (slice and study
level), ROC-AUC, the RSNA log loss, and thresholds picked on the set itself. The app, the
demo-weights check, the int8 bench and the generalisation bench all go through here, so
their numbers mean the same thing.

Labels are ``(N, 6)`` int with -1 where the CSV has none; a slice with any -1 is left out
of every metric (see `score`). NumPy in, NumPy out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hohoho_core.calibration import expected_calibration_error
from hohoho_core.labels import CLASSES
from hohoho_core.metrics import (
    f2_report,
    roc_auc_per_class,
    rsna_log_loss,
    search_thresholds,
    study_level,
)

if TYPE_CHECKING:
    from hohoho_core.predict import Predictor
    from hohoho_core.study import Study

__all__ = ["IndexPrediction", "evaluate_index", "predict_index", "score"]


@dataclass
class IndexPrediction:
    """Predictions on every slice of the labelled series of an index (``N`` slices).

    Rows follow the series in index order and, within a series, `dicom.load_study`'s
    slice order.

    Attributes:
        labels: ``(N, 6)`` int8, -1 where unlabelled.
        cnn_prob: ``(N, 6)`` float32, stage-1 (CNN) probabilities.
        prob: ``(N, 6)`` float32, the final output (LSTM when the model has one, else CNN).
        study_ids: ``(N,)`` series key ``"<study_uid>|<series_uid>"`` of each slice.
        image_ids: ``(N,)`` slice image ids.
        embeddings: ``(N, D)`` float32 CNN embeddings, or None when not kept.
        notes: series key -> `predict.StudyPrediction.notes`, for the series that have
            any (a thin series, for instance: its figures are not those of the trained
            spacing).
    """

    labels: np.ndarray
    cnn_prob: np.ndarray
    prob: np.ndarray
    study_ids: np.ndarray
    image_ids: np.ndarray
    embeddings: np.ndarray | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def predict_index(
    predictor: Predictor,
    root: str | Path,
    table: pd.DataFrame,
    *,
    keep_embeddings: bool = False,
    studies: Iterable[tuple[str, Study, np.ndarray]] | None = None,
) -> IndexPrediction:
    """``predictor.predict`` on each series of ``table`` (an `rsna.build_index` table of
    ``root``), aligned with its labels.

    Args:
        predictor: the model to run.
        root: the dataset folder the table's ``path`` column is relative to.
        table: index rows (one per slice).
        keep_embeddings: also return the ``(N, D)`` embeddings (memory: N x D floats).
        studies: ``(key, Study, labels)`` triples to use instead of reading ``table`` with
            `rsna.iter_labelled_studies` (the app passes its cached reader, which skips
            unreadable series).

    Returns:
        `IndexPrediction`; raises ValueError when there is no series to predict.
    """
    from hohoho_core.rsna import iter_labelled_studies

    source = studies if studies is not None else iter_labelled_studies(root, table)
    ys, cnn, final, embs, sids, iids = [], [], [], [], [], []
    notes: dict[str, list[str]] = {}
    for key, study, labels in source:
        out = predictor.predict(study)
        ys.append(np.asarray(labels, dtype=np.int8))
        cnn.append(out.cnn_prob.astype(np.float32))
        final.append(out.prob.astype(np.float32))
        if keep_embeddings:
            embs.append(out.embeddings.astype(np.float32))
        sids += [key] * len(labels)
        iids += list(out.image_ids)
        if out.notes:
            notes[key] = list(out.notes)
    if not ys:
        raise ValueError("no series to predict")
    return IndexPrediction(
        labels=np.concatenate(ys),
        cnn_prob=np.concatenate(cnn),
        prob=np.concatenate(final),
        study_ids=np.asarray(sids),
        image_ids=np.asarray(iids),
        embeddings=np.concatenate(embs) if keep_embeddings else None,
        notes=notes,
    )


def _named(values: np.ndarray) -> dict[str, float | None]:
    return {c: (None if math.isnan(v) else float(v)) for c, v in zip(CLASSES, values, strict=True)}


def _macro(values: np.ndarray) -> float | None:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


def score(
    y: np.ndarray,
    prob: np.ndarray,
    thresholds: np.ndarray,
    study_ids: np.ndarray | None = None,
    beta: float = 2.0,
    study_auc: bool = False,
    tune: bool = False,
) -> dict[str, Any]:
    """The evaluation report of one set of probabilities.

    Args:
        y: ``(N, 6)`` labels; rows with any negative value (unknown) are left out.
        prob: ``(N, 6)`` probabilities.
        thresholds: ``(6,)``; positive when ``prob >= threshold``.
        study_ids: optional ``(N,)`` study key per slice, for study-level F-beta.
        beta: 2 for F2.
        study_auc: also report AUC at study level (per-study maxima); needs ``study_ids``.
        tune: also report thresholds picked on this set (`metrics.search_thresholds`) and
            the F-beta they reach: optimistic, an upper bound for these probabilities.

    Returns:
        `metrics.f2_report`'s dict plus ``log_loss`` (RSNA weighted), ``auc`` ({class: AUC
        or None}), ``auc_macro`` (mean over defined AUCs, or None), ``ece`` and ``ece_macro``
        (expected calibration error, `calibration.expected_calibration_error`), ``n_slices``;
        with
        ``study_auc``: ``study_auc`` and ``study_auc_macro``; with ``tune``: ``tuned``
        (``{"thresholds": {class: t}, "slice": {...}, "study": {...} or None}``).
    """
    y = np.asarray(y)
    keep = (y >= 0).all(axis=1)
    yk, pk = y[keep].astype(np.int64), np.asarray(prob)[keep]
    sids = None if study_ids is None else np.asarray(study_ids)[keep]
    rep = f2_report(yk, pk, thresholds, study_ids=sids, beta=beta)
    auc = roc_auc_per_class(yk, pk)
    rep["log_loss"] = rsna_log_loss(yk, pk)
    rep["auc"] = _named(auc)
    rep["auc_macro"] = _macro(auc)
    ece = expected_calibration_error(yk, pk)
    rep["ece"] = _named(ece)
    rep["ece_macro"] = _macro(ece)
    rep["n_slices"] = int(len(yk))
    if study_auc:
        if sids is None:
            raise ValueError("study_auc needs study_ids")
        _, ys = study_level(yk.astype(bool), sids)
        _, ps = study_level(pk.astype(np.float64), sids)
        sauc = roc_auc_per_class(ys, ps)
        rep["study_auc"] = _named(sauc)
        rep["study_auc_macro"] = _macro(sauc)
    if tune:
        tuned = search_thresholds(yk, pk, beta=beta)
        own = f2_report(yk, pk, tuned, study_ids=sids, beta=beta)
        rep["tuned"] = {k: own[k] for k in ("thresholds", "slice", "study")}
    return rep


def evaluate_index(
    predictor: Predictor,
    root: str | Path,
    table: pd.DataFrame,
    *,
    cnn_thresholds: np.ndarray | None = None,
    study_auc: bool = False,
    tune: bool = False,
) -> tuple[IndexPrediction, dict[str, dict[str, Any]]]:
    """`predict_index` then `score` of each stage at the weights' own thresholds.

    Returns ``(predictions, {"cnn": report, "cnn_lstm": report})``; ``"cnn_lstm"`` only when
    the model has a sequence model. The CNN is scored at ``cnn_thresholds`` (default: the
    config's ``cnn_thresholds``, else its ``thresholds``), the final output at
    ``predictor.thresholds``.
    """
    pred = predict_index(predictor, root, table)
    cfg = predictor.config
    if cnn_thresholds is None:
        chosen = cfg.cnn_thresholds if cfg.cnn_thresholds is not None else cfg.thresholds
        cnn_thresholds = np.asarray(chosen, dtype=np.float64)
    reports = {"cnn": score(pred.labels, pred.cnn_prob, cnn_thresholds, pred.study_ids,
                            study_auc=study_auc, tune=tune)}
    if predictor.lstm is not None:
        reports["cnn_lstm"] = score(pred.labels, pred.prob, predictor.thresholds,
                                    pred.study_ids, study_auc=study_auc, tune=tune)
    return pred, reports
