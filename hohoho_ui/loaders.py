"""Cached loaders: the model once per process, results per study and settings, bounded.

``st.cache_resource`` holds what must not be copied (the model, the decisions store);
``st.cache_data`` holds pure results keyed by strings (a weights key, a study fingerprint,
a slice, a method...), with a bounded number of entries. Arguments whose names start with
``_`` are not hashed: the string keys beside them identify them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from hohoho_core import audit
from hohoho_core.dicom import SourceScan, Upload, load_study, scan_source
from hohoho_core.embed import tsne_2d
from hohoho_core.evaluate import predict_index
from hohoho_core.explain import RandomisationResult, randomisation_check, saliency_map
from hohoho_core.labels import CLASSES
from hohoho_core.predict import Predictor, StudyPrediction
from hohoho_core.rsna import build_index, default_labels_csv, dicom_folder
from hohoho_core.runtime import configure_torch
from hohoho_core.store import DecisionStore
from hohoho_core.study import Study
from hohoho_core.weights import CONFIG_FILE, TENSORS_FILE

__all__ = [
    "DatasetPrediction",
    "dataset_index",
    "decision_store",
    "load_indexed_study",
    "load_predictor",
    "model_input",
    "predict_dataset",
    "predict_study",
    "probs_upload",
    "randomisation",
    "saliency",
    "tsne",
    "upload_scan",
    "weights_key",
]

#: Saliency settings kept small enough for a CPU server (see explain.attribute).
IG_STEPS = 24
OCCLUSION_WINDOW = 16


def weights_key(folder: Path | str) -> str:
    """Folder plus the size and mtime of its two files: changes when the weights change."""
    folder = Path(folder).resolve()
    parts = [str(folder)]
    for name in (TENSORS_FILE, CONFIG_FILE):
        try:
            st_ = (folder / name).stat()
            parts.append(f"{name}:{st_.st_size}:{st_.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:missing")
    return "|".join(parts)


@st.cache_resource(max_entries=3, show_spinner="Loading the model…")
def load_predictor(key: str, folder: str) -> Predictor:
    """One `Predictor` per weights folder (and version) per process; raises `WeightsError`."""
    _configure_process()
    return Predictor.from_folder(folder, device="cpu")


@st.cache_resource
def _configure_process() -> None:
    """The app's process-wide torch settings (every core), set once per server process:
    library objects leave them alone, and every page loads the model through here."""
    configure_torch(None)


def uploads_key(uploads: list[Upload]) -> str:
    """Names and SHA-256 of the uploads' contents: the same files give the same key."""
    h = hashlib.sha256()
    for u in uploads:
        h.update(f"{len(u.name)}:{u.name}:{len(u.data)}:".encode())
        h.update(u.data)
    return h.hexdigest()


@st.cache_resource(max_entries=2, show_spinner="Reading the files…")
def _upload_scan(key: str, max_upload_bytes: int, _uploads: tuple[Upload, ...]) -> SourceScan:
    # One upload bound for each file, all files and what a zip may extract (settings doc).
    return scan_source(
        list(_uploads),
        max_upload_bytes=max_upload_bytes,
        max_total_upload_bytes=max_upload_bytes,
        max_zip_bytes=max_upload_bytes,
    )


def upload_scan(uploads: list[Upload], max_upload_bytes: int) -> SourceScan:
    """One `SourceScan` per set of uploaded files: a zip is extracted once, not per load.

    A resource (not data): it owns the extracted files, and loading from it only reads,
    so sessions may share it; an evicted scan's folder is removed when it is collected.
    """
    return _upload_scan(uploads_key(uploads), max_upload_bytes, tuple(uploads))


@st.cache_data(max_entries=2, show_spinner="Reading the probabilities…")
def _probs_upload(
    digest: str, ids_key: str, name: str, _data: bytes, _ids: np.ndarray
) -> tuple[np.ndarray | None, str | None]:
    # A refusal is cached too: a bad file is not parsed again on every click either.
    try:
        return audit.read_probs_csv(_data, _ids, name=name), None
    except ValueError as err:
        return None, str(err)


def probs_upload(
    data: bytes, name: str, ids_key: str, image_ids: np.ndarray
) -> tuple[np.ndarray, str]:
    """Probabilities from an uploaded ``ID,Label`` CSV aligned with ``image_ids``, and the
    SHA-256 of ``data``; parsed once per content and image set (``ids_key`` names it), not
    on every rerun.

    Raises ``ValueError`` with the reader's message (also when the refusal was cached).
    """
    digest = hashlib.sha256(data).hexdigest()
    prob, error = _probs_upload(digest, ids_key, name, data, np.asarray(image_ids))
    if error is not None or prob is None:
        raise ValueError(error)
    return prob, digest


@st.cache_resource(max_entries=4)
def decision_store(path: str) -> DecisionStore:
    """One `DecisionStore` per file; it opens a connection per call, so threads may share it."""
    return DecisionStore(path)


def _listing_key(root: Path) -> str:
    parts = [str(root.resolve())]
    for p in (dicom_folder(root), default_labels_csv(root)):
        try:
            parts.append(str(p.stat().st_mtime_ns))
        except OSError:
            parts.append("-")
    return "|".join(parts)


@st.cache_data(max_entries=8, show_spinner="Indexing the dataset…")
def _index_table(root: str, listing: str) -> pd.DataFrame:
    index = build_index(Path(root), progress=False)
    table = index.table.copy()
    table["path"] = [str(Path(root) / p) for p in table["path"]]
    return table


def dataset_index(root: Path | str) -> pd.DataFrame:
    """`rsna.build_index` table of an RSNA-layout folder with absolute ``path``s.

    One row per slice: image_id, study_uid, series_uid, slice_index, n_slices, z, path and
    the six label columns (-1 where unlabelled). Re-indexed when the folder changes.
    """
    root = Path(root).resolve()
    return _index_table(str(root), _listing_key(root))


@st.cache_data(max_entries=6, show_spinner="Reading the study…")
def load_indexed_study(paths: tuple[str, ...], max_upload_bytes: int) -> Study:
    """Load the files of one indexed series (a tuple of paths) as a `Study`."""
    return load_study(list(paths), max_upload_bytes=max_upload_bytes)


def load_series_slice(series: pd.DataFrame, image_id: str, max_upload_bytes: int) -> tuple[Study, int]:
    """Load one indexed series (rows from `rsna.series_rows`/`rsna.image_series`) and find
    ``image_id`` in it: ``(study, position)`` in the loaded study's slice order, which is the
    order the pages show. Raises ``ValueError`` when the reader dropped that image."""
    study = load_indexed_study(tuple(series["path"]), max_upload_bytes)
    return study, study.image_ids.index(image_id)


@st.cache_data(max_entries=32, show_spinner="Running the model on the study…")
def predict_study(
    wkey: str, fingerprint: str, _predictor: Predictor, _study: Study
) -> StudyPrediction:
    """The whole-study prediction, computed once per (weights, study)."""
    return _predictor.predict(_study)


@st.cache_data(max_entries=8, show_spinner="Preparing the model input…")
def model_input(wkey: str, fingerprint: str, _predictor: Predictor, _study: Study) -> np.ndarray:
    """The study as the model sees it: float32 ``[S, 3, size, size]`` in [0, 1]."""
    return _predictor.preprocess(_study)


def _explain_kwargs(method: str) -> dict[str, int]:
    if method == "integrated_gradients":
        return {"ig_steps": IG_STEPS}
    if method == "occlusion":
        return {"occlusion_window": OCCLUSION_WINDOW}
    return {}


@st.cache_data(max_entries=128, show_spinner="Computing the saliency map…")
def saliency(
    wkey: str,
    fingerprint: str,
    slice_index: int,
    method: str,
    target: int,
    _predictor: Predictor,
    _x: np.ndarray,
) -> np.ndarray:
    """Saliency ``[H, W]`` in [0, 1] of class ``target`` for one slice ``_x [3, H, W]``."""
    x = torch.from_numpy(np.ascontiguousarray(_x, dtype=np.float32))[None]
    return saliency_map(_predictor.cnn, x, target, method, **_explain_kwargs(method))


@st.cache_data(max_entries=32, show_spinner="Randomising the model and recomputing…")
def randomisation(
    wkey: str,
    fingerprint: str,
    slice_index: int,
    method: str,
    target: int,
    _predictor: Predictor,
    _x: np.ndarray,
) -> RandomisationResult:
    """Model-randomisation sanity check (Adebayo et al., 2018) for one slice and method."""
    x = torch.from_numpy(np.ascontiguousarray(_x, dtype=np.float32))[None]
    return randomisation_check(_predictor.cnn, x, target, method, **_explain_kwargs(method))


@dataclass
class DatasetPrediction:
    """The model's outputs on every loadable slice of an indexed dataset.

    ``table``: index rows (see `dataset_index`) of the slices predicted, in index order;
    ``prob``, ``cnn_prob``: ``(N, 6)``; ``embeddings``: ``(N, D)``; ``failed``: messages
    for series that could not be read.
    """

    table: pd.DataFrame
    prob: np.ndarray
    cnn_prob: np.ndarray
    embeddings: np.ndarray
    failed: list[str]


@st.cache_data(max_entries=4, show_spinner="Running the model on every study of the dataset…")
def predict_dataset(
    wkey: str, root: str, listing: str, max_upload_bytes: int, _predictor: Predictor
) -> DatasetPrediction:
    """`evaluate.predict_index` on every series of the dataset at ``root`` (cached per
    listing), through the cached reader; an unreadable series is reported, not fatal."""
    table = dataset_index(root)
    failed: list[str] = []
    read: list[tuple[pd.DataFrame, int]] = []  # index rows and slice count per series read

    def readable() -> Iterator[tuple[str, Study, np.ndarray]]:
        for (study_uid, series_uid), rows in table.groupby(["study_uid", "series_uid"],
                                                           sort=False):
            try:
                study = load_indexed_study(tuple(rows["path"]), max_upload_bytes)
            except Exception as err:  # one unreadable series must not hide the rest
                failed.append(f"series …{series_uid[-8:]}: {err}")
                continue
            read.append((rows, study.n_slices))
            yield f"{study_uid}|{series_uid}", study, labels_for(rows, study.image_ids)

    try:
        pred = predict_index(_predictor, root, table, keep_embeddings=True, studies=readable())
    except ValueError:
        if read:
            raise
        raise ValueError(
            "No series of this dataset could be read: " + "; ".join(failed[:3])
        ) from None
    # Back to index order: each series' rows that the reader kept, in the table's order.
    parts, order, start = [], [], 0
    for rows, n in read:
        pos = pd.Index(pred.image_ids[start : start + n]).get_indexer(rows["image_id"])
        keep = pos >= 0
        parts.append(rows[keep])
        order.append(start + pos[keep])
        start += n
    idx = np.concatenate(order)
    assert pred.embeddings is not None  # keep_embeddings=True
    return DatasetPrediction(
        table=pd.concat(parts, ignore_index=True),
        prob=pred.prob[idx].astype(np.float64),
        cnn_prob=pred.cnn_prob[idx].astype(np.float64),
        embeddings=pred.embeddings[idx].astype(np.float32),
        failed=failed,
    )


def listing_key(root: Path | str) -> str:
    """What makes cached dataset results stale: the folder and label file mtimes."""
    return _listing_key(Path(root).resolve())


@st.cache_data(max_entries=16, show_spinner="Computing the t-SNE map…")
def tsne(key: str, _embeddings: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """`embed.tsne_2d` of ``_embeddings (N, D)`` -> ``(N, 2)``; ``key`` names the input."""
    return tsne_2d(_embeddings, seed=seed, perplexity=perplexity)


def labels_for(table: pd.DataFrame, image_ids: list[str]) -> np.ndarray:
    """``(S, 6)`` int8 labels of ``image_ids`` from an index table; -1 where unknown."""
    frame = table.drop_duplicates("image_id").set_index("image_id")[list(CLASSES)]
    out = frame.reindex(pd.Index(image_ids)).fillna(-1)
    return out.to_numpy(dtype=np.int8)
