"""Label audit: a ranked queue of suspected mislabeled slices and the reviewer's decisions.

Flags come from `hohoho_core.audit.rank_flags` (model disagreement, cleanlab's confident
learning and the sequence rules of the poster's Fig. 7). Every decision is appended to
the decisions store at once, so it survives a reload or a server restart.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from hohoho_core.audit import rank_flags, read_probs_csv
from hohoho_core.labels import CLASSES
from hohoho_core.rsna import image_series
from hohoho_core.store import DecisionStore, StoreError
from hohoho_ui import loaders, widgets
from hohoho_ui.settings import Settings
from hohoho_ui.text import md_literal
from hohoho_ui.views import neighbour_indices, resolve_under, windowed_uint8

IN_SAMPLE = "Loaded model (in-sample)"
CSV_PATH = "Probabilities CSV on the server"
CSV_UPLOAD = "Upload a probabilities CSV"


@st.cache_data(max_entries=8, show_spinner="Ranking the labels…")
def _flags(key: str, _table: pd.DataFrame, _prob: np.ndarray) -> pd.DataFrame:
    return rank_flags(_table, _prob)


def _probs_from_csv(
    source: str, table: pd.DataFrame, settings: Settings, table_key: str
) -> tuple[np.ndarray, str] | None:
    """Out-of-fold probabilities aligned with ``table`` (named by ``table_key``) from a
    server path or an upload (parsed once per content, not on every rerun)."""
    ids = table["image_id"].to_numpy()
    if source == CSV_PATH:
        rel = widgets.kept(
            st.text_input,
            f"CSV inside {md_literal(settings.data_root)} (RSNA submission format)",
            "audit_csv_rel",
            "",
        )
        if not str(rel).strip():
            st.info("Enter the path of an ID,Label CSV of out-of-fold probabilities.")
            return None
        path = resolve_under(settings.data_root, rel)
        return read_probs_csv(path, ids), f"csv {path}:{path.stat().st_mtime_ns}"
    upload = st.file_uploader(
        "Out-of-fold probabilities (ID,Label CSV)", type=["csv"], key="audit_csv"
    )
    if upload is None:
        st.info("Upload an ID,Label CSV of out-of-fold probabilities.")
        return None
    data = upload.getvalue()
    name = Path(upload.name).name or "probs.csv"
    prob, digest = loaders.probs_upload(data, name, table_key, ids)
    return prob, f"upload {digest}"


def _open_store(settings: Settings) -> DecisionStore:
    settings.store_path.parent.mkdir(parents=True, exist_ok=True)
    return loaders.decision_store(str(settings.store_path))


settings = widgets.page_setup("Label audit", "🏷️")
model = widgets.model_ui(settings)
st.title("Label audit")
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
        key = f"model {model.key}|{root}|{loaders.listing_key(root)}"
    else:
        got = _probs_from_csv(source, labelled, settings, f"{root}|{loaders.listing_key(root)}")
        if got is None:
            st.stop()
        table = labelled.reset_index(drop=True)
        prob, key = got
        key = f"{key}|{root}|{loaders.listing_key(root)}"
    flags = _flags(key, table, prob)
except (ValueError, RuntimeError, OSError) as err:
    st.error(md_literal(err))
    st.stop()

size = widgets.kept(
    st.slider,
    "Queue length (most suspicious first)",
    "audit_top",
    min(50, len(flags)),
    min_value=1,
    max_value=min(500, len(flags)),
)
queue = flags.head(int(size)).reset_index(drop=True)
current = store.current()
decided = {(r.image_id, r.subtype): r for r in current.itertuples(index=False)}
reviewed, total = store.progress(zip(queue["image_id"], queue["class"], strict=True))
st.progress(reviewed / total if total else 0.0, text=f"{reviewed} of {total} reviewed")


def _undecided_after(pos: int) -> int:
    n = len(queue)
    for step in range(1, n + 1):
        j = (pos + step) % n
        if (queue.at[j, "image_id"], queue.at[j, "class"]) not in decided:
            return j
    return pos


def _move(pos: int) -> None:
    st.session_state["audit_pos"] = int(min(max(pos, 0), len(queue) - 1))


def _decide(image_id: str, cls: str, label: int, decision: str) -> None:
    reviewer = str(st.session_state.get("reviewer") or "").strip()
    comment = str(st.session_state.get("audit_comment") or "")
    try:
        store.record(image_id, cls, label, decision, reviewer or "reviewer", comment)
    except (ValueError, StoreError, OSError) as err:
        st.session_state["audit_error"] = str(err)
        return
    st.session_state["audit_error"] = None
    st.session_state["audit_comment"] = ""
    st.session_state["audit_saved"] = f"Saved: {decision} for {md_literal(image_id)} · {cls}."
    _move(_undecided_after(int(st.session_state.get("audit_pos", 0))))


pos = int(min(max(st.session_state.get("audit_pos", 0), 0), len(queue) - 1))
st.session_state["audit_pos"] = pos
row = queue.iloc[pos]
image_id, cls, label = str(row["image_id"]), str(row["class"]), int(row["label"])

nav = st.columns([1, 1, 1.4, 4])
nav[0].button(
    "Previous",
    key="audit_prev",
    icon=":material/keyboard_arrow_up:",
    on_click=_move,
    args=(pos - 1,),
    width="stretch",
)
nav[1].button(
    "Next",
    key="audit_next",
    icon=":material/keyboard_arrow_down:",
    on_click=_move,
    args=(pos + 1,),
    width="stretch",
)
nav[2].button(
    "Next undecided",
    key="audit_next_open",
    icon=":material/skip_next:",
    on_click=_move,
    args=(_undecided_after(pos),),
    width="stretch",
)

st.subheader(
    f"#{int(row['rank'])} · {md_literal(image_id)} · {widgets.class_label(cls)} labelled {label}"
)
st.info(f"Why flagged: {row['reason']}" + (f" (rules: {row['rules']})" if row["rules"] else ""))
prior = decided.get((image_id, cls))
if prior is not None:
    # Names and comments are typed by other reviewers: shown as text, never as markdown.
    st.success(
        f"Decision on record: **{md_literal(prior.decision)}** by {md_literal(prior.reviewer)}"
        + (f" — “{md_literal(prior.comment)}”" if prior.comment else "")
        + f" ({md_literal(prior.created_at[:19].replace('T', ' '))} UTC)"
    )
saved = st.session_state.pop("audit_saved", None)
if saved:
    st.toast(saved)
if st.session_state.get("audit_error"):
    st.error(md_literal(st.session_state["audit_error"]))

series = image_series(index, image_id)
try:
    study, centre_idx = loaders.load_series_slice(series, image_id, settings.max_upload_bytes)
except (ValueError, RuntimeError, OSError) as err:
    st.error(f"Cannot show this slice: {md_literal(err)}")
    study, centre_idx = None, None

if study is not None:
    by_id = series.set_index("image_id")
    k = CLASSES.index(cls)
    cols = st.columns(3, gap="small")
    for col, i in zip(cols, neighbour_indices(centre_idx, study.n_slices), strict=False):
        iid = study.image_ids[i]
        lab = int(by_id.at[iid, cls]) if iid in by_id.index else -1
        marker = "▶ flagged" if i == centre_idx else ("above" if i > centre_idx else "below")
        col.image(
            windowed_uint8(study.hu[i], 40.0, 80.0),
            caption=f"{marker} · slice {i + 1}/{study.n_slices} · {cls} label {lab}",
            width="stretch",
        )

    table_row = table.index[table["image_id"] == image_id]
    probs = prob[table_row[0]] if len(table_row) else np.full(len(CLASSES), np.nan)
    detail = pd.DataFrame(
        {
            "Class": [widgets.class_label(c) for c in CLASSES],
            "Label": [int(by_id.at[image_id, c]) for c in CLASSES],
            "Model probability": [f"{p:.2f}" for p in probs],
        }
    )
    left, right = st.columns([2, 3])
    left.dataframe(detail, hide_index=True)
    with right:
        widgets.kept(st.text_input, "Reviewer", "reviewer", "reviewer")
        st.text_input("Comment (optional)", key="audit_comment")
        b = st.columns(3)
        b[0].button(
            f"✓ Keep {label}",
            key="audit_keep",
            on_click=_decide,
            args=(image_id, cls, label, "keep"),
            type="primary",
            width="stretch",
            shortcut="K",
        )
        b[1].button(
            f"↺ Relabel to {1 - label}",
            key="audit_relabel",
            on_click=_decide,
            args=(image_id, cls, label, f"relabel_{1 - label}"),
            width="stretch",
            shortcut="L",
        )
        b[2].button(
            "? Unsure",
            key="audit_unsure",
            on_click=_decide,
            args=(image_id, cls, label, "unsure"),
            width="stretch",
            shortcut="U",
        )
        st.caption("Keys: K keep · L relabel · U unsure. Saved at once to the decisions store.")

st.subheader("Queue")
shown = queue[
    ["rank", "image_id", "slice_index", "class", "label", "prob", "score", "rules"]
].copy()
shown["slice_index"] = shown["slice_index"] + 1
shown["decision"] = [
    decided[(i, c)].decision if (i, c) in decided else ""
    for i, c in zip(queue["image_id"], queue["class"], strict=True)
]
shown.columns = ["Rank", "Image", "Slice", "Class", "Label", "Prob", "Score", "Rules", "Decision"]
st.dataframe(
    shown,
    hide_index=True,
    height=320,
    column_config={
        "Prob": st.column_config.NumberColumn(format="%.2f"),
        "Score": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f"),
    },
)

st.subheader("Export")
st.caption(
    "Corrected labels in the RSNA format (ID,Label): relabel decisions applied, keep and "
    "unsure leave the label. Every decision stays in the store's history."
)
if st.button("Prepare corrected labels", key="audit_export"):
    labels_frame = labelled.set_index("image_id")[list(CLASSES)].astype(np.int64)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "stage_2_train_corrected.csv"
            summary = store.export_labels(labels_frame, out)
            st.session_state["audit_export_csv"] = (out.read_bytes(), summary)
    except (ValueError, StoreError, OSError) as err:
        st.error(f"Export failed: {md_literal(err)}")
exported = st.session_state.get("audit_export_csv")
if exported:
    data_bytes, summary = exported
    st.download_button(
        "Download stage_2_train_corrected.csv",
        data_bytes,
        file_name="stage_2_train_corrected.csv",
        mime="text/csv",
        key="audit_download",
    )
    st.caption(
        f"{summary.images} images · {summary.relabelled} labels changed · "
        f"{summary.any_inconsistent} images where 'any' now disagrees with the subtypes."
    )
