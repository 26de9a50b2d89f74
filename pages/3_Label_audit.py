"""Label audit: a ranked queue of suspected mislabeled slices and the reviewers' decisions.

Flags come from `hohoho_core.audit.rank_flags` (model disagreement, cleanlab's confident
learning and the sequence rules of the poster's Fig. 7); `hohoho_core.review.group_items`
makes one item of a slice's flagged cells (and of a run's edge). Every decision is appended
to the decisions store at once, so it survives a reload or a server restart; an undo is an
appended record too. Modes: one reader, a blind second reader, and adjudication of the
cells where readers disagree (`hohoho_core.review`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from hohoho_core import review
from hohoho_core import review_session as session
from hohoho_core.audit import rank_flags, read_probs_csv, shipped_ranker
from hohoho_core.audit_flags import csv_kind, read_flags_csv
from hohoho_core.audit_images import table_evidence
from hohoho_core.labels import CLASSES
from hohoho_core.rsna import default_labels_csv, image_series
from hohoho_core.store import DecisionStore, StoreError
from hohoho_ui import loaders, widgets
from hohoho_ui import review as ui
from hohoho_ui.settings import Settings
from hohoho_ui.text import md_literal
from hohoho_ui.views import resolve_under

IN_SAMPLE = "Loaded model (in-sample)"
CSV_PATH = "CSV on the server"
CSV_UPLOAD = "Upload a CSV"


@st.cache_data(max_entries=8, show_spinner="Reading the slices near run edges and ranking…")
def _flags(
    key: str,
    _table: pd.DataFrame,
    _prob: np.ndarray,
    max_upload_bytes: int,
    _cnn_prob: np.ndarray | None = None,
    _embeddings: np.ndarray | None = None,
) -> tuple[pd.DataFrame, int]:
    """(flags, series without image evidence): the learned ranking (`rank_flags` with the
    shipped ranker) over the boundary evidence of every run edge: the model's outputs and
    the blood seen on the slices near it."""
    skipped: list[str] = []
    evidence = table_evidence(
        _table,
        lambda paths: loaders.load_indexed_study(tuple(paths), max_upload_bytes),
        cnn_prob=_cnn_prob,
        embeddings=_embeddings,
        skipped=skipped,
    )
    return rank_flags(_table, _prob, evidence=evidence, ranker=shipped_ranker()), len(skipped)


@st.cache_data(max_entries=8, show_spinner=False)
def _items(key: str, size: int, _queue: pd.DataFrame) -> list[review.ReviewItem]:
    return review.group_items(_queue)


@st.cache_data(max_entries=4, show_spinner="Reading the labels file…")
def _labels_csv(path: str, mtime_ns: int) -> review.LabelSource:
    return review.load_labels(path)


def _label_source(root: Path, labelled: pd.DataFrame) -> review.LabelSource:
    """The dataset's labels CSV (so the export keeps its row order), or, when it cannot be
    read strictly, the indexed labels in index order."""
    path = default_labels_csv(root)
    if path.is_file():
        try:
            return _labels_csv(str(path), path.stat().st_mtime_ns)
        except (ValueError, OSError) as err:
            st.caption(f"Export in index order: the labels file was refused ({md_literal(err)}).")
    return review.load_labels(labelled.drop_duplicates("image_id")[["image_id", *CLASSES]])


@st.cache_data(max_entries=4, show_spinner="Reading the flags file…")
def _flags_file(key: str, _src: str | bytes, _table: pd.DataFrame) -> pd.DataFrame:
    return read_flags_csv(_src, _table)


def _flagged_probs(flags: pd.DataFrame, table: pd.DataFrame) -> np.ndarray:
    """``(N, 6)`` probabilities for ``table``'s rows from a flags file: the flagged cells'
    ``prob`` where the file has it, NaN (shown as unknown) elsewhere."""
    out = np.full((len(table), len(CLASSES)), np.nan)
    if "prob" not in flags.columns:
        return out
    row = pd.Series(np.arange(len(table)), index=table["image_id"].to_numpy())
    rows = row.reindex(flags["image_id"].to_numpy()).to_numpy()
    cols = flags["class"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    ok = ~pd.isna(rows)
    out[rows[ok].astype(int), cols[ok].astype(int)] = pd.to_numeric(
        flags["prob"], errors="coerce").to_numpy()[ok]
    return out


def _csv_input(
    source: str, table: pd.DataFrame, settings: Settings, table_key: str
) -> tuple[np.ndarray | pd.DataFrame, str] | None:
    """What a CSV gives, told by its header: out-of-fold probabilities aligned with
    ``table`` (an ``ID,Label`` file; the page ranks them) or the `audit` command's flags
    (ranked already, checked against ``table``), and a key naming the content; from a
    server path or an upload (parsed once per content, not on every rerun)."""
    ids = table["image_id"].to_numpy()
    if source == CSV_PATH:
        rel = widgets.kept(
            st.text_input,
            f"CSV inside {md_literal(settings.data_root)}: out-of-fold probabilities "
            "(RSNA submission format) or the audit command's flags file",
            "audit_csv_rel",
            "",
        )
        if not str(rel).strip():
            st.info("Enter the path of an ID,Label CSV of out-of-fold probabilities, or of "
                    "the flags CSV that `python -m hohoho_core audit` wrote.")
            return None
        path = resolve_under(settings.data_root, rel)
        key = f"csv {path}:{path.stat().st_mtime_ns}"
        with open(path, encoding="utf-8", errors="replace") as fh:
            header = fh.readline()
        if csv_kind(header) == "flags":
            return _flags_file(f"{key}|{table_key}", str(path), table), key
        return read_probs_csv(path, ids), key
    upload = st.file_uploader(
        "Out-of-fold probabilities (ID,Label CSV) or the audit command's flags CSV",
        type=["csv"], key="audit_csv",
    )
    if upload is None:
        st.info("Upload an ID,Label CSV of out-of-fold probabilities, or the flags CSV that "
                "`python -m hohoho_core audit` wrote.")
        return None
    data = upload.getvalue()
    if csv_kind(data[:4096].decode("utf-8", errors="replace").split("\n", 1)[0]) == "flags":
        digest = hashlib.sha256(data).hexdigest()
        return _flags_file(f"upload {digest}|{table_key}", data, table), f"upload {digest}"
    name = Path(upload.name).name or "probs.csv"
    prob, digest = loaders.probs_upload(data, name, table_key, ids)
    return prob, f"upload {digest}"


def _open_store(settings: Settings) -> DecisionStore:
    settings.store_path.parent.mkdir(parents=True, exist_ok=True)
    return loaders.decision_store(str(settings.store_path))


settings = widgets.page_setup("Label audit", "🏷️")
model = widgets.model_ui(settings)
st.title("Label audit")
who = st.columns([2, 3])
with who[0]:
    reviewer = ui.reviewer_ui()
with who[1]:
    mode = ui.mode_ui()
root = widgets.dataset_ui(settings)
if root is None:
    st.stop()

try:
    index = loaders.dataset_index(root)
    store = _open_store(settings)
except (StoreError, OSError, ValueError) as err:
    st.error(md_literal(err))
    st.stop()
labelled = index[(index[list(CLASSES)] >= 0).all(axis=1)].drop_duplicates("image_id")
if labelled.empty:
    st.info("This dataset has no labels (stage_2_train.csv): nothing to audit.")
    st.stop()

options = [IN_SAMPLE, CSV_PATH, CSV_UPLOAD]
source = widgets.kept(
    st.radio, "Probabilities", "audit_source", IN_SAMPLE, options=options, horizontal=True
)
try:
    if source == IN_SAMPLE:
        if model.predictor is None:
            why = "Load a model, or give out-of-fold probabilities as a CSV."
            st.info(widgets.model_message(model, why))
            st.stop()
        widgets.demo_notice_ui(model)
        st.warning(
            "In-sample flags: these probabilities come from the loaded model on slices it may "
            "have been trained on, not out-of-fold predictions. Confident learning expects "
            "out-of-sample probabilities, so treat this queue as a first pass, or give an "
            "out-of-fold probabilities CSV."
        )
        data = loaders.predict_dataset(
            model.key,
            str(root),
            loaders.listing_key(root),
            settings.max_upload_bytes,
            model.predictor,
        )
        keep = data.table["image_id"].isin(labelled["image_id"]).to_numpy()
        table = data.table[keep].reset_index(drop=True)
        prob = data.prob[keep]
        cnn_prob, embeddings = data.cnn_prob[keep], data.embeddings[keep]
        key = f"model {model.key}|{root}|{loaders.listing_key(root)}"
    else:
        got = _csv_input(source, labelled, settings, f"{root}|{loaders.listing_key(root)}")
        if got is None:
            st.stop()
        table = labelled.reset_index(drop=True)
        cnn_prob = embeddings = None
        prob, key = got
        key = f"{key}|{root}|{loaders.listing_key(root)}"
    if isinstance(prob, pd.DataFrame):  # the audit command's flags: ranked already
        flags, unread, from_file = prob, 0, True
        prob = _flagged_probs(flags, table)
    else:
        flags, unread = _flags(key, table, prob, settings.max_upload_bytes, cnn_prob,
                               embeddings)
        from_file = False
except (ValueError, RuntimeError, OSError) as err:
    st.error(md_literal(err))
    st.stop()

if from_file:
    st.caption(f"Ranked by the `audit` command (its flags file, {len(flags)} cells); the "
               "labels it saw match the labels on file.")
else:
    edges = int(flags["kind"].isin(["run_shorter", "run_longer"]).sum())
    st.caption(
        "Ranked by the learned ranker (`weights/audit_ranker.json`) over the model, "
        f"cleanlab, the sequence rules and the evidence at {edges} run-edge cells (the "
        "blood seen on the slices near each run edge)."
        if flags["learned_score"].notna().all()
        else "Ranked by the hand-weighted score."
    )
if unread:
    st.caption(
        f"No image evidence for {unread} series that could not be read: their run edges "
        "rank on the other signals."
    )
size = widgets.kept(
    st.slider,
    "Queue length (most suspicious flags first)",
    "audit_top",
    min(50, len(flags)),
    min_value=1,
    max_value=min(500, len(flags)),
)
queue = flags.head(int(size)).reset_index(drop=True)
current = store.current()
view = session.session_view(mode, reviewer, current, _items(key, int(size), queue), labelled)
statuses = [session.item_status(it, view.decided, view.unsure) for it in view.items]
st.progress(
    statuses.count("done") / len(view.items) if view.items else 0.0,
    text=f"{statuses.count('done')} of {len(view.items)} reviewed",
)
st.caption(
    f"{statuses.count('unsure')} unsure (filter “unsure” to revisit) · "
    + (
        "other readers' decisions are hidden in this mode"
        if mode == "blind"
        else f"{len(view.disagreeing)} cells where readers disagree, awaiting adjudication"
    )
)
if not view.items:
    st.info(
        "Nothing to adjudicate: no cell where readers disagree."
        if mode == "adjudicate"
        else "The queue is empty."
    )
    st.stop()
visible = ui.filters_ui(view, current)
if not visible:
    st.info("No item passes these filters.")
    st.stop()

label_of = labelled.drop_duplicates("image_id").set_index("image_id")[list(CLASSES)]
nav = ui.Navigator(store, view, visible, label_of, key)
ui.nav_ui(nav)
ui.item_header_ui(nav)

try:
    series = image_series(index, nav.item.anchor)
    study, _ = loaders.load_series_slice(series, nav.item.anchor, settings.max_upload_bytes)
except (KeyError, ValueError, RuntimeError, OSError) as err:
    st.error(f"Cannot show this slice: {md_literal(err)}")
    study = None
if study is not None:
    ui.slices_ui(nav, study)
    rows = table.index[table["image_id"] == nav.target.image_id]
    ui.decide_ui(nav, reviewer, prob[rows[0]] if len(rows) else np.full(len(CLASSES), np.nan))

st.subheader("Queue")
ui.queue_ui(nav)
if mode == "blind":
    # Agreement and the export would show the other readers' decisions.
    st.caption("Agreement and export: in the one-reader and adjudication modes.")
else:
    ui.agreement_ui(current)
    ui.export_ui(store, _label_source(root, labelled), view.resolved)
