"""Label audit: a ranked queue of suspected mislabeled slices and the reviewers' decisions.

Flags come from `hohoho_core.audit.rank_flags` (model disagreement, cleanlab's confident
learning and the sequence rules of the poster's Fig. 7); `hohoho_core.review.group_items`
makes one item of a slice's flagged cells (and of a run's edge). Every decision is appended
to the decisions store at once, so it survives a reload or a server restart; an undo is an
appended record too. Modes: one reader, a blind second reader, and adjudication of the
cells where readers disagree (`hohoho_core.review`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from hohoho_core import review
from hohoho_core.audit import rank_flags, read_probs_csv
from hohoho_core.labels import CLASSES
from hohoho_core.preprocess import WINDOWS
from hohoho_core.rsna import default_labels_csv, image_series
from hohoho_core.store import DecisionStore, StoreError
from hohoho_ui import loaders, widgets
from hohoho_ui import review as ui
from hohoho_ui.settings import Settings
from hohoho_ui.text import md_literal
from hohoho_ui.views import resolve_under, windowed_uint8

IN_SAMPLE = "Loaded model (in-sample)"
CSV_PATH = "Probabilities CSV on the server"
CSV_UPLOAD = "Upload a probabilities CSV"


@st.cache_data(max_entries=8, show_spinner="Ranking the labels…")
def _flags(key: str, _table: pd.DataFrame, _prob: np.ndarray) -> pd.DataFrame:
    return rank_flags(_table, _prob)


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
    "Queue length (most suspicious flags first)",
    "audit_top",
    min(50, len(flags)),
    min_value=1,
    max_value=min(500, len(flags)),
)
queue = flags.head(int(size)).reset_index(drop=True)
current = store.current()
resolved = review.resolve(current)
disagreeing = review.cell_keys(review.disagreements(resolved))
role = "adjudicator" if mode == "adjudicate" else "reader"
if mode == "adjudicate":
    cells = review.disagreements(resolved, include_adjudicated=True)
    items = review.items_for_cells(cells, labelled)
    decided, unsure = review.decided_keys(current, role="adjudicator")
elif mode == "blind":
    items = _items(key, int(size), queue)
    decided, unsure = review.decided_keys(current, reviewer=reviewer or "\x00")
else:
    items = _items(key, int(size), queue)
    decided, unsure = review.decided_keys(current)
    unsure = review.cell_keys(resolved[resolved["status"] == "unsure"])

statuses = [review.item_status(it, decided, unsure) for it in items]
st.progress(
    statuses.count("done") / len(items) if items else 0.0,
    text=f"{statuses.count('done')} of {len(items)} reviewed",
)
st.caption(
    f"{statuses.count('unsure')} unsure (filter “unsure” to revisit) · "
    + (
        f"{len(disagreeing)} cells where readers disagree, awaiting adjudication"
        if mode != "blind"
        else "other readers' decisions are hidden in this mode"
    )
)
if not items:
    st.info(
        "Nothing to adjudicate: no cell where readers disagree."
        if mode == "adjudicate"
        else "The queue is empty."
    )
    st.stop()

# --------------------------------------------------------------------------- filters
with st.expander("Filter the queue", expanded=False):
    f = st.columns(4)
    f_classes = f[0].multiselect(
        "Class", list(CLASSES), key="audit_f_class", format_func=widgets.class_label
    )
    studies = sorted({it.study_uid for it in items})
    f_study = f[1].selectbox("Study", ["All", *studies], key="audit_f_study")
    status_options = [s for s in review.ITEM_FILTERS if mode != "blind" or s != "disagreement"]
    f_status = f[2].selectbox("Decision", status_options, key="audit_f_status")
    names = review.readers(current) if mode != "blind" else []
    f_reviewer = f[3].selectbox(
        "Decided by", ["Anyone", *names], key="audit_f_reviewer", disabled=mode == "blind"
    )
by_reviewer = None
if f_reviewer not in (None, "Anyone") and mode != "blind":
    by_reviewer = review.cell_keys(current[current["reviewer"] == f_reviewer])
visible = [
    items[i]
    for i in review.filter_items(
        items,
        decided,
        unsure,
        classes=f_classes,
        study=None if f_study in (None, "All") else str(f_study),
        status=str(f_status or "all"),
        disagreeing=disagreeing,
        by_reviewer=by_reviewer,
    )
]
if not visible:
    st.info("No item passes these filters.")
    st.stop()

# --------------------------------------------------------------------------- position
anchors = [it.anchor for it in visible]
if st.session_state.get("audit_queue") != (key, mode):
    st.session_state["audit_queue"] = (key, mode)  # another queue: start at its first open item
    st.session_state["audit_item"] = None
if st.session_state.get("audit_item") not in anchors:
    # A new session (a reload) or a filter change: the first undecided item.
    first = review.first_open(visible, decided)
    st.session_state["audit_item"] = anchors[first if first is not None else 0]
    st.session_state["audit_target"] = None
pos = anchors.index(st.session_state["audit_item"])
item = visible[pos]
label_of = labelled.drop_duplicates("image_id").set_index("image_id")[list(CLASSES)]


def _go(j: int) -> None:
    j = int(min(max(j, 0), len(visible) - 1))
    st.session_state["audit_item"] = anchors[j]
    st.session_state["audit_target"] = None


def _target() -> ui.Target:
    t = st.session_state.get("audit_target")
    if isinstance(t, ui.Target) and t.anchor == item.anchor:
        return t
    open_cells = [c for c in item.cells if c.key not in decided]
    c = (open_cells or list(item.cells))[0]
    return ui.Target(item.anchor, c.image_id, c.cls, c.label)


target = _target()


def _decide(decision: str) -> None:
    name = str(st.session_state.get("reviewer") or "").strip()
    if not name:
        st.session_state["audit_error"] = "Enter your name before deciding: nothing was recorded."
        return
    comment = str(st.session_state.get("audit_comment") or "")
    was_decided = target.key in decided
    try:
        store.record(target.image_id, target.cls, target.label, decision, name, comment, role=role)
    except (ValueError, StoreError, OSError) as err:
        st.session_state["audit_error"] = str(err)
        return
    st.session_state["audit_error"] = None
    st.session_state["audit_comment"] = ""
    st.session_state["audit_saved"] = (
        f"Saved: {decision} for {md_literal(target.image_id)} · {target.cls} by {md_literal(name)}."
    )
    now = decided | {target.key}
    rest = [c for c in item.cells if c.key not in now]
    if target.key not in item.keys or (was_decided and not rest):
        st.session_state["audit_target"] = target  # a neighbour or a change: stay here
    elif rest:  # the item's next open cell
        c = rest[0]
        st.session_state["audit_target"] = ui.Target(item.anchor, c.image_id, c.cls, c.label)
    else:
        nxt = review.first_open(visible, now, after=pos)
        if nxt is not None and nxt != pos:
            _go(nxt)


def _undo() -> None:
    name = str(st.session_state.get("reviewer") or "").strip()
    if not name:
        st.session_state["audit_error"] = "Enter your name to undo your last decision."
        return
    try:
        undone = store.undo_last(name)
    except (ValueError, StoreError, OSError) as err:
        st.session_state["audit_error"] = str(err)
        return
    if undone is None:
        st.session_state["audit_saved"] = "Nothing of yours to undo."
        return
    hist = store.history()
    row = hist.loc[hist["id"] == undone].iloc[0]
    st.session_state["audit_saved"] = (
        f"Undone: {row['decision']} for {md_literal(row['image_id'])} · {row['subtype']}."
    )
    key_ = (str(row["image_id"]), str(row["subtype"]))
    for it in visible:
        if key_ in it.keys:
            cell = it.cells[it.keys.index(key_)]
            st.session_state["audit_item"] = it.anchor
            st.session_state["audit_target"] = ui.Target(it.anchor, *key_, cell.label)
            return
    if key_[0] in label_of.index:  # a neighbour decision: back on the item it was made on
        st.session_state["audit_target"] = ui.Target(
            item.anchor, *key_, int(label_of.at[key_[0], key_[1]])
        )


def _pick_cell() -> None:
    picked = st.session_state.get("audit_cell")
    for c in item.cells:
        if f"{c.image_id}|{c.cls}" == picked:
            st.session_state["audit_target"] = ui.Target(item.anchor, c.image_id, c.cls, c.label)


def _pick_other(image_id: str) -> None:
    cls = str(st.session_state.get("audit_nb_class") or CLASSES[-1])
    st.session_state["audit_target"] = ui.Target(
        item.anchor, image_id, cls, int(label_of.at[image_id, cls])
    )


def _goto() -> None:
    _go(int(st.session_state["audit_goto"]) - 1)


nav = st.columns([1, 1, 1.4, 1, 1.6])
nav[0].button(
    f"Previous ({ui.KEYS['prev']})",
    key="audit_prev",
    icon=":material/chevron_left:",
    on_click=_go,
    args=(pos - 1,),
    width="stretch",
    shortcut=ui.KEYS["prev"],
)
nav[1].button(
    f"Next ({ui.KEYS['next']})",
    key="audit_next",
    icon=":material/chevron_right:",
    on_click=_go,
    args=(pos + 1,),
    width="stretch",
    shortcut=ui.KEYS["next"],
)
after = review.first_open(visible, decided, after=pos)
nav[2].button(
    f"Next undecided ({ui.KEYS['next_open']})",
    key="audit_next_open",
    icon=":material/skip_next:",
    on_click=_go,
    args=(pos if after is None else after,),
    width="stretch",
    shortcut=ui.KEYS["next_open"],
)
nav[3].button(
    f"Undo ({ui.KEYS['undo']})",
    key="audit_undo",
    icon=":material/undo:",
    on_click=_undo,
    width="stretch",
    shortcut=ui.KEYS["undo"],
    help="Withdraw your own last decision (it stays in the history, marked as undone).",
)
st.session_state["audit_goto"] = pos + 1
nav[4].number_input(
    f"Go to item (1–{len(visible)})",
    min_value=1,
    max_value=len(visible),
    step=1,
    key="audit_goto",
    on_change=_goto,
)

rank = next((c.rank for c in item.cells if c.key == target.key), None)
st.subheader(
    f"#{rank if rank is not None else '–'} · {md_literal(target.image_id)} · "
    f"{widgets.class_label(target.cls)} labelled {target.label}"
)
st.caption(
    f"Item {pos + 1} of {len(visible)} · {len(item.cells)} cell(s) decided together: "
    + ", ".join(f"{md_literal(c.image_id)} · {c.cls}" for c in item.cells)
)
cell_now = next((c for c in item.cells if c.key == target.key), None)
if cell_now is not None:
    st.info(
        f"Why flagged: {md_literal(cell_now.reason)}"
        + (f" (rules: {md_literal(cell_now.rules)})" if cell_now.rules else "")
    )
else:
    st.info("Not flagged: a cell of a neighbouring slice or another class, decided by hand.")

mine = current[(current["reviewer"] == reviewer) & (current["role"] == role)]
shown_current = mine if mode == "blind" else current
item_keys = item.keys if target.key in item.keys else [target.key, *item.keys]
for line in ui.decision_lines(shown_current, item_keys):
    st.success(line)
if mode != "blind" and target.key in disagreeing:
    st.warning("Readers disagree on this cell: it waits in the adjudication queue.")
saved = st.session_state.pop("audit_saved", None)
if saved:
    st.toast(saved)
if st.session_state.get("audit_error"):
    st.error(md_literal(st.session_state["audit_error"]))

# --------------------------------------------------------------------------- slices
series = image_series(index, item.anchor)
try:
    study, centre_idx = loaders.load_series_slice(series, item.anchor, settings.max_upload_bytes)
except (ValueError, RuntimeError, OSError) as err:
    st.error(f"Cannot show this slice: {md_literal(err)}")
    study, centre_idx = None, None

if study is not None:
    view = st.columns([2, 3])
    span = view[0].select_slider(
        "Neighbours on each side", options=[1, 2, 3], key="audit_span", value=1
    )
    window = view[1].radio(
        "Window", list(WINDOWS), key="audit_window", horizontal=True, format_func=str.capitalize
    )
    centre_hu, width_hu = WINDOWS[str(window)]
    item_ids = {c.image_id for c in item.cells}
    at = [study.image_ids.index(i) for i in item_ids if i in study.image_ids] or [centre_idx]
    lo, hi = max(min(at) - int(span), 0), min(max(at) + int(span), study.n_slices - 1)
    shown_slices = list(range(lo, hi + 1))
    cols = st.columns(len(shown_slices), gap="small")
    for col, i in zip(cols, shown_slices, strict=True):
        iid = study.image_ids[i]
        lab = int(label_of.at[iid, target.cls]) if iid in label_of.index else -1
        marker = "▶ flagged" if iid in item_ids else ("above" if i > max(at) else "below")
        if iid == target.image_id:
            marker += " · deciding"
        col.image(
            windowed_uint8(study.hu[i], centre_hu, width_hu),
            caption=f"{marker} · slice {i + 1}/{study.n_slices} · {target.cls} label {lab}",
            width="stretch",
        )
        if iid in label_of.index and iid != target.image_id:
            col.button(
                "Decide here",
                key=f"audit_pick_{i}",
                on_click=_pick_other,
                args=(iid,),
                width="stretch",
                help="Decide on this slice, in the class chosen below",
            )

    probs_row = table.index[table["image_id"] == target.image_id]
    probs = prob[probs_row[0]] if len(probs_row) else np.full(len(CLASSES), np.nan)
    labels_now = (
        label_of.loc[target.image_id].to_numpy() if target.image_id in label_of.index else []
    )
    detail = pd.DataFrame(
        {
            "Class": [widgets.class_label(c) for c in CLASSES],
            "Label": [int(v) for v in labels_now] or [-1] * len(CLASSES),
            "Model probability": [f"{p:.2f}" for p in probs],
        }
    )
    left, right = st.columns([2, 3])
    left.dataframe(detail, hide_index=True)
    with right:
        options = [f"{c.image_id}|{c.cls}" for c in item.cells]
        if len(options) > 1:
            picked = f"{target.image_id}|{target.cls}"
            st.session_state["audit_cell"] = picked if picked in options else None
            st.radio(
                "Cell to decide",
                options,
                key="audit_cell",
                horizontal=True,
                on_change=_pick_cell,
                format_func=lambda o: f"{o.split('|')[1]} on {o.split('|')[0]}",
            )
        st.session_state["audit_nb_class"] = target.cls
        st.selectbox(
            "Class (for “Decide here” and below)",
            list(CLASSES),
            key="audit_nb_class",
            format_func=widgets.class_label,
            on_change=lambda: (
                _pick_other(target.image_id) if target.image_id in label_of.index else None
            ),
        )
        st.text_input("Comment (optional)", key="audit_comment")
        can = bool(reviewer)
        b = st.columns(3)
        b[0].button(
            f"✓ Keep {target.label} ({ui.KEYS['keep']})",
            key="audit_keep",
            on_click=_decide,
            args=("keep",),
            type="primary",
            width="stretch",
            shortcut=ui.KEYS["keep"],
            disabled=not can,
        )
        b[1].button(
            f"↺ Relabel to {1 - target.label} ({ui.KEYS['relabel']})",
            key="audit_relabel",
            on_click=_decide,
            args=(f"relabel_{1 - target.label}",),
            width="stretch",
            shortcut=ui.KEYS["relabel"],
            disabled=not can,
        )
        b[2].button(
            f"? Unsure ({ui.KEYS['unsure']})",
            key="audit_unsure",
            on_click=_decide,
            args=("unsure",),
            width="stretch",
            shortcut=ui.KEYS["unsure"],
            disabled=not can,
        )
        if not can:
            st.warning("Enter your name at the top to record decisions.")
        st.caption(ui.keys_caption())

# --------------------------------------------------------------------------- queue table
st.subheader("Queue")


def _row_clicked() -> None:
    rows = st.session_state["audit_table"].selection.rows
    if rows:
        _go(int(rows[0]))


shown_dec = mine if mode == "blind" else current
by_key: dict[tuple[str, str], list[str]] = {}
for r in shown_dec.itertuples(index=False):
    by_key.setdefault((r.image_id, r.subtype), []).append(f"{r.reviewer}: {r.decision}")
queue_view = pd.DataFrame(
    {
        "Item": range(1, len(visible) + 1),
        "Rank": [it.rank for it in visible],
        "Image": [it.anchor for it in visible],
        "Slice": [it.slice_index + 1 for it in visible],
        "Classes": [", ".join(it.classes) for it in visible],
        "Status": [review.item_status(it, decided, unsure) for it in visible],
        "Decisions": [
            "; ".join(f"{k[1]} · {d}" for k in it.keys for d in by_key.get(k, [])) for it in visible
        ],
    }
)
st.dataframe(
    queue_view,
    hide_index=True,
    height=320,
    key="audit_table",
    on_select=_row_clicked,
    selection_mode="single-row",
)
st.caption("Click a row to open that item.")

# --------------------------------------------------------------------------- agreement
if mode != "blind":
    names = review.readers(current)
    if len(names) >= 2:
        st.subheader("Agreement between readers")
        pick = st.columns(2)
        a = pick[0].selectbox("Reader A", names, index=0, key="audit_kappa_a")
        b_ = pick[1].selectbox("Reader B", names, index=1, key="audit_kappa_b")
        if a != b_:
            agree = review.agreement(current, str(a), str(b_))
            agree["class"] = [widgets.class_label(c) for c in agree["class"]]
            st.dataframe(
                agree.rename(
                    columns={
                        "class": "Class",
                        "cells": "Cells both decided",
                        "agreed": "Same decision",
                        "kappa": "Cohen's kappa",
                    }
                ),
                hide_index=True,
                column_config={"Cohen's kappa": st.column_config.NumberColumn(format="%.2f")},
            )

# --------------------------------------------------------------------------- export
st.subheader("Export")
st.caption(
    "Corrected labels in the RSNA format (ID,Label), in the labels file's row order: each "
    "cell's settled decision applied (one reader, readers who agree, or the adjudicator); "
    "keep, unsure and unresolved disagreements leave the label. Each download is built "
    "when you click it, from every decision on record then."
)
source = _label_source(root, labelled)
fix_any = st.checkbox(
    "Set “any” from the subtypes where they disagree (a decision on “any” is never overruled)",
    key="audit_fix_any",
)
result = review.corrected_labels(source, resolved, fix_any=fix_any)
labels_csv, who_csv = ui.export_data(store, source, bool(fix_any))
d = st.columns(2)
d[0].download_button(
    "Download stage_2_train_corrected.csv",
    labels_csv,
    file_name="stage_2_train_corrected.csv",
    mime="text/csv",
    key="audit_download",
    on_click="ignore",
)
d[1].download_button(
    "Download who decided what (CSV)",
    who_csv,
    file_name="stage_2_train_decisions.csv",
    mime="text/csv",
    key="audit_download_who",
    on_click="ignore",
)
summary = result.summary
st.caption(
    f"{summary.images} images · {summary.relabelled} labels changed · "
    f"{summary.unresolved} disagreements left as labelled · "
    f"{summary.any_inconsistent} images where 'any' disagrees with the subtypes"
    + (f" · {summary.any_fixed} 'any' labels set from the subtypes" if fix_any else "")
    + "."
)
if summary.inconsistent_ids:
    with st.expander(
        f"Images where 'any' disagrees with the subtypes ({summary.any_inconsistent})"
    ):
        ids = list(summary.inconsistent_ids[:200])
        rows = source.labels.index.get_indexer(ids)
        after_review = pd.DataFrame(result.values[rows], columns=list(CLASSES))
        after_review.insert(0, "image_id", ids)
        st.dataframe(after_review, hide_index=True)
        st.caption("Labels as exported; the first 200 images, in the file's order.")
