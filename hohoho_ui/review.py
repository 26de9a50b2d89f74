"""Widgets of the label-audit page's review session: who reviews, how, where, and the export.

The session's identity (reviewer name) and mode live in plain session keys *and* in the
URL's query parameters (``?reviewer=...&audit_mode=...``), so a reload of the browser tab
keeps them; nothing is recorded while the name is empty. Keys follow Label Studio (numbers
for the choices) and CVAT (D/F for the previous/next frame, Ctrl+Z to undo); Streamlit's
button shortcuts never fire while the user types in a field.

`Navigator` holds the callbacks (decide, undo, move); the decisions about where to go are
`hohoho_core.review_session.after_decision` and `first_open`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from hohoho_core import review
from hohoho_core import review_session as session
from hohoho_core.labels import CLASSES
from hohoho_core.preprocess import WINDOWS
from hohoho_core.store import DecisionStore, StoreError
from hohoho_core.study import Study
from hohoho_ui.text import md_literal
from hohoho_ui.views import class_name, windowed_uint8
from hohoho_ui.widgets import kept

__all__ = [
    "KEYS",
    "MODE_NAMES",
    "Navigator",
    "Target",
    "agreement_ui",
    "decide_ui",
    "decision_lines",
    "export_data",
    "export_ui",
    "filters_ui",
    "item_header_ui",
    "keys_caption",
    "mode_ui",
    "nav_ui",
    "queue_ui",
    "reviewer_ui",
    "slices_ui",
]

#: Session modes (`hohoho_core.review_session.MODES`) as the page names them.
MODE_NAMES: dict[str, str] = {
    "single": "One reader",
    "blind": "Second reader (blind)",
    "adjudicate": "Adjudication",
}
#: Keyboard shortcuts of the page's buttons.
KEYS: dict[str, str] = {
    "keep": "1",
    "relabel": "2",
    "unsure": "3",
    "prev": "D",
    "next": "F",
    "next_open": "N",
    "undo": "Ctrl+Z",
}


@dataclass(frozen=True)
class Target:
    """The cell the decision buttons act on, and the item it was chosen on."""

    anchor: str
    image_id: str
    cls: str
    label: int

    @property
    def key(self) -> tuple[str, str]:
        return self.image_id, self.cls


# --------------------------------------------------------------------------- who and how


def _from_url(key: str, default: str) -> str:
    """A plain session key, first read from the URL (a reload starts a new session)."""
    if key not in st.session_state:
        st.session_state[key] = str(st.query_params.get(key, default)).strip() or default
    return str(st.session_state[key])


def _to_url(key: str, value: str, default: str) -> None:
    if value and value != default:
        if st.query_params.get(key) != value:
            st.query_params[key] = value
    elif key in st.query_params:
        del st.query_params[key]


def reviewer_ui() -> str:
    """The reviewer's name for this browser session ("" until one is typed)."""
    _from_url("reviewer", "")
    name = kept(
        st.text_input,
        "Your name (saved with each decision)",
        "reviewer",
        "",
        placeholder="e.g. dr_lee",
        max_chars=80,
    )
    name = str(name or "").strip()
    _to_url("reviewer", name, "")
    return name


def mode_ui() -> str:
    """The session's mode, one of `hohoho_core.review_session.MODES`."""
    if _from_url("audit_mode", "single") not in session.MODES:
        st.session_state["audit_mode"] = "single"
    mode = kept(
        st.radio,
        "Review mode",
        "audit_mode",
        "single",
        options=list(session.MODES),
        format_func=MODE_NAMES.get,
        horizontal=True,
        help=(
            "One reader: every decision on record is shown. Second reader (blind): each "
            "reader sees only their own decisions; a cell where two readers disagree goes "
            "to adjudication. Adjudication: the disagreements, with both readers' decisions; "
            "the adjudicator's decision settles the label."
        ),
    )
    _to_url("audit_mode", str(mode), "single")
    return str(mode)


def keys_caption() -> str:
    return (
        f"Keys: {KEYS['keep']} keep · {KEYS['relabel']} relabel · {KEYS['unsure']} unsure · "
        f"{KEYS['prev']} previous · {KEYS['next']} next · {KEYS['next_open']} next undecided · "
        f"{KEYS['undo']} undo your last decision. Saved at once to the decisions store."
    )


# --------------------------------------------------------------------------- the queue


def filters_ui(view: session.SessionView, current: pd.DataFrame) -> list[review.ReviewItem]:
    """Filters by class, study, decision and reviewer; returns the items that pass."""
    blind = view.mode == "blind"
    with st.expander("Filter the queue", expanded=False):
        f = st.columns(4)
        classes = f[0].multiselect(
            "Class", list(CLASSES), key="audit_f_class", format_func=class_name
        )
        studies = sorted({it.study_uid for it in view.items})
        study = f[1].selectbox("Study", ["All", *studies], key="audit_f_study")
        statuses = [s for s in session.ITEM_FILTERS if not blind or s != "disagreement"]
        status = f[2].selectbox("Decision", statuses, key="audit_f_status")
        names = [] if blind else review.readers(current)
        who = f[3].selectbox(
            "Decided by", ["Anyone", *names], key="audit_f_reviewer", disabled=blind
        )
    by_reviewer = None
    if who not in (None, "Anyone") and not blind:
        by_reviewer = review.cell_keys(current[current["reviewer"] == who])
    keep = session.filter_items(
        view.items,
        view.decided,
        view.unsure,
        classes=classes,
        study=None if study in (None, "All") else str(study),
        status=str(status or "all"),
        disagreeing=view.disagreeing,
        by_reviewer=by_reviewer,
    )
    return [view.items[i] for i in keep]


class Navigator:
    """Position in the shown queue and the callbacks that move it or record decisions.

    Session keys: ``audit_item`` (anchor image id of the item on screen), ``audit_target``
    (`Target`), ``audit_queue`` (which queue the position belongs to), ``audit_error`` and
    ``audit_saved`` (messages for the next run).
    """

    def __init__(
        self,
        store: DecisionStore,
        view: session.SessionView,
        visible: list[review.ReviewItem],
        labels: pd.DataFrame,
        queue_key: str,
    ) -> None:
        self.store, self.view, self.visible, self.labels = store, view, visible, labels
        self.anchors = [it.anchor for it in visible]
        if st.session_state.get("audit_queue") != (queue_key, view.mode):
            st.session_state["audit_queue"] = (queue_key, view.mode)  # another queue
            st.session_state["audit_item"] = None
        if st.session_state.get("audit_item") not in self.anchors:
            # A new session (a reload) or a filter change: the first undecided item.
            first = session.first_open(visible, view.decided)
            st.session_state["audit_item"] = self.anchors[first if first is not None else 0]
            st.session_state["audit_target"] = None
        self.pos = self.anchors.index(st.session_state["audit_item"])
        self.item = visible[self.pos]
        self.target = self._target()

    def _target(self) -> Target:
        t = st.session_state.get("audit_target")
        if isinstance(t, Target) and t.anchor == self.item.anchor:
            return t
        open_cells = [c for c in self.item.cells if c.key not in self.view.decided]
        return self._cell_target(self.pos, (open_cells or list(self.item.cells))[0].key)

    def _cell_target(self, pos: int, key: tuple[str, str]) -> Target:
        item = self.visible[pos]
        cell = next((c for c in item.cells if c.key == key), None)
        label = cell.label if cell is not None else int(self.labels.at[key[0], key[1]])
        return Target(item.anchor, key[0], key[1], label)

    @staticmethod
    def _name() -> str:
        return str(st.session_state.get("reviewer") or "").strip()

    # callbacks (run before the next script run, with this run's queue)

    def go(self, pos: int) -> None:
        pos = int(min(max(pos, 0), len(self.visible) - 1))
        st.session_state["audit_item"] = self.anchors[pos]
        st.session_state["audit_target"] = None

    def goto(self) -> None:
        self.go(int(st.session_state["audit_goto"]) - 1)

    def decide(self, decision: str) -> None:
        name, t = self._name(), self.target
        if not name:
            st.session_state["audit_error"] = (
                "Enter your name before deciding: nothing was recorded."
            )
            return
        comment = str(st.session_state.get("audit_comment") or "")
        try:
            self.store.record(
                t.image_id, t.cls, t.label, decision, name, comment, role=self.view.role
            )
        except (ValueError, StoreError, OSError) as err:
            st.session_state["audit_error"] = str(err)
            return
        st.session_state["audit_error"] = None
        st.session_state["audit_comment"] = ""
        st.session_state["audit_saved"] = (
            f"Saved: {decision} for {md_literal(t.image_id)} · {t.cls} by {md_literal(name)}."
        )
        pos, key = session.after_decision(self.visible, self.pos, t.key, self.view.decided)
        if key == t.key and pos == self.pos:
            st.session_state["audit_target"] = t
        else:
            st.session_state["audit_item"] = self.anchors[pos]
            st.session_state["audit_target"] = self._cell_target(pos, key)

    def undo(self) -> None:
        name = self._name()
        if not name:
            st.session_state["audit_error"] = "Enter your name to undo your last decision."
            return
        try:
            undone = self.store.undo_last(name)
        except (ValueError, StoreError, OSError) as err:
            st.session_state["audit_error"] = str(err)
            return
        if undone is None:
            st.session_state["audit_saved"] = "Nothing of yours to undo."
            return
        hist = self.store.history()
        row = hist.loc[hist["id"] == undone].iloc[0]
        key = (str(row["image_id"]), str(row["subtype"]))
        st.session_state["audit_saved"] = (
            f"Undone: {row['decision']} for {md_literal(key[0])} · {key[1]}."
        )
        for pos, it in enumerate(self.visible):
            if key in it.keys:  # back where it was made
                st.session_state["audit_item"] = it.anchor
                st.session_state["audit_target"] = self._cell_target(pos, key)
                return
        if key[0] in self.labels.index:  # a neighbour's cell: on the item now on screen
            st.session_state["audit_target"] = self._cell_target(self.pos, key)

    def pick_cell(self) -> None:
        picked = str(st.session_state.get("audit_cell") or "")
        for c in self.item.cells:
            if f"{c.image_id}|{c.cls}" == picked:
                st.session_state["audit_target"] = self._cell_target(self.pos, c.key)

    def pick_other(self, image_id: str) -> None:
        cls = str(st.session_state.get("audit_nb_class") or CLASSES[-1])
        if image_id in self.labels.index:
            st.session_state["audit_target"] = self._cell_target(self.pos, (image_id, cls))


def nav_ui(nav: Navigator) -> None:
    """Previous / next / next undecided / undo buttons (with keys) and "go to item"."""
    n, pos = len(nav.visible), nav.pos
    after = session.first_open(nav.visible, nav.view.decided, after=pos)
    cols = st.columns([1, 1, 1.4, 1, 1.6])
    buttons = [
        ("Previous", "audit_prev", "prev", ":material/chevron_left:", nav.go, (pos - 1,)),
        ("Next", "audit_next", "next", ":material/chevron_right:", nav.go, (pos + 1,)),
        (
            "Next undecided",
            "audit_next_open",
            "next_open",
            ":material/skip_next:",
            nav.go,
            (pos if after is None else after,),
        ),
        ("Undo", "audit_undo", "undo", ":material/undo:", nav.undo, ()),
    ]
    for col, (label, key, k, icon, fn, args) in zip(cols, buttons, strict=False):
        col.button(
            f"{label} ({KEYS[k]})",
            key=key,
            icon=icon,
            on_click=fn,
            args=args,
            width="stretch",
            shortcut=KEYS[k],
            help="Withdraw your own last decision (it stays in the history, marked as undone)."
            if k == "undo"
            else None,
        )
    st.session_state["audit_goto"] = pos + 1
    cols[4].number_input(
        f"Go to item (1–{n})",
        min_value=1,
        max_value=n,
        step=1,
        key="audit_goto",
        on_change=nav.goto,
    )


def decision_lines(current: pd.DataFrame, keys: list[tuple[str, str]]) -> list[str]:
    """Markdown lines, one per live decision in ``current`` on the cells ``keys`` (in the
    order of ``keys``, then oldest first), each naming its cell. Names and comments are
    typed by people: shown as text, never as markdown."""
    lines = []
    for image_id, cls in keys:
        rows = current[(current["image_id"] == image_id) & (current["subtype"] == cls)]
        for r in rows.sort_values("id").itertuples(index=False):
            role = " (adjudicator)" if getattr(r, "role", "reader") == "adjudicator" else ""
            lines.append(
                f"Decision on record: **{md_literal(r.decision)}** by {md_literal(r.reviewer)}"
                + role
                + (f" — “{md_literal(r.comment)}”" if r.comment else "")
                + f" ({md_literal(str(r.created_at)[:19].replace('T', ' '))} UTC)"
                + f" · {md_literal(cls)} on {md_literal(image_id)}"
            )
    return lines


def item_header_ui(nav: Navigator) -> None:
    """The cell being decided, the item's cells, why it was flagged, decisions on record."""
    item, t = nav.item, nav.target
    rank = next((c.rank for c in item.cells if c.key == t.key), None)
    st.subheader(
        f"#{rank if rank is not None else '–'} · {md_literal(t.image_id)} · "
        f"{class_name(t.cls)} labelled {t.label}"
    )
    st.caption(
        f"Item {nav.pos + 1} of {len(nav.visible)} · {len(item.cells)} cell(s) decided "
        "together: " + ", ".join(f"{md_literal(c.image_id)} · {c.cls}" for c in item.cells)
    )
    cell = next((c for c in item.cells if c.key == t.key), None)
    if cell is not None:
        st.info(
            f"Why flagged: {md_literal(cell.reason)}"
            + (f" (rules: {md_literal(cell.rules)})" if cell.rules else "")
        )
    else:
        st.info("Not flagged: a cell of a neighbouring slice or another class, decided by hand.")
    keys = item.keys if t.key in item.keys else [t.key, *item.keys]
    for line in decision_lines(nav.view.visible, keys):
        st.success(line)
    if t.key in nav.view.disagreeing:
        st.warning("Readers disagree on this cell: it waits in the adjudication queue.")
    saved = st.session_state.pop("audit_saved", None)
    if saved:
        st.toast(saved)
    if st.session_state.get("audit_error"):
        st.error(md_literal(st.session_state["audit_error"]))


def slices_ui(nav: Navigator, study: Study) -> None:
    """The item's slices and 1-3 neighbours on each side in a window preset; "Decide here"
    moves the decision buttons to a neighbour."""
    item, t = nav.item, nav.target
    view = st.columns([2, 3])
    span = view[0].select_slider(
        "Neighbours on each side", options=[1, 2, 3], key="audit_span", value=1
    )
    window = view[1].radio(
        "Window", list(WINDOWS), key="audit_window", horizontal=True, format_func=str.capitalize
    )
    centre, width = WINDOWS[str(window)]
    ids = {c.image_id for c in item.cells}
    at = [study.image_ids.index(i) for i in ids if i in study.image_ids] or [0]
    lo, hi = max(min(at) - int(span), 0), min(max(at) + int(span), study.n_slices - 1)
    cols = st.columns(hi - lo + 1, gap="small")
    for col, i in zip(cols, range(lo, hi + 1), strict=True):
        iid = study.image_ids[i]
        lab = int(nav.labels.at[iid, t.cls]) if iid in nav.labels.index else -1
        marker = "▶ flagged" if iid in ids else ("above" if i > max(at) else "below")
        marker += " · deciding" if iid == t.image_id else ""
        col.image(
            windowed_uint8(study.hu[i], centre, width),
            caption=f"{marker} · slice {i + 1}/{study.n_slices} · {t.cls} label {lab}",
            width="stretch",
        )
        if iid in nav.labels.index and iid != t.image_id:
            col.button(
                "Decide here",
                key=f"audit_pick_{i}",
                on_click=nav.pick_other,
                args=(iid,),
                width="stretch",
                help="Decide on this slice, in the class chosen beside the buttons",
            )


def decide_ui(nav: Navigator, reviewer: str, probs: np.ndarray) -> None:
    """The target slice's labels and probabilities, the cell and class pickers, the
    comment and the three decision buttons (disabled without a reviewer name)."""
    t = nav.target
    labels = nav.labels.loc[t.image_id] if t.image_id in nav.labels.index else None
    detail = pd.DataFrame(
        {
            "Class": [class_name(c) for c in CLASSES],
            "Label": [int(labels[c]) if labels is not None else -1 for c in CLASSES],
            "Model probability": [f"{p:.2f}" for p in probs],
        }
    )
    left, right = st.columns([2, 3])
    left.dataframe(detail, hide_index=True)
    with right:
        options = [f"{c.image_id}|{c.cls}" for c in nav.item.cells]
        if len(options) > 1:
            picked = f"{t.image_id}|{t.cls}"
            st.session_state["audit_cell"] = picked if picked in options else None
            st.radio(
                "Cell to decide",
                options,
                key="audit_cell",
                horizontal=True,
                on_change=nav.pick_cell,
                format_func=lambda o: f"{o.split('|')[1]} on {o.split('|')[0]}",
            )
        st.session_state["audit_nb_class"] = t.cls
        st.selectbox(
            "Class (for “Decide here” and this slice)",
            list(CLASSES),
            key="audit_nb_class",
            format_func=class_name,
            on_change=nav.pick_other,
            args=(t.image_id,),
        )
        st.text_input("Comment (optional)", key="audit_comment")
        b = st.columns(3)
        choices = [
            (f"✓ Keep {t.label}", "audit_keep", "keep", "keep", "primary"),
            (
                f"↺ Relabel to {1 - t.label}",
                "audit_relabel",
                f"relabel_{1 - t.label}",
                "relabel",
                "secondary",
            ),
            ("? Unsure", "audit_unsure", "unsure", "unsure", "secondary"),
        ]
        for col, (label, key, decision, k, kind) in zip(b, choices, strict=True):
            col.button(
                f"{label} ({KEYS[k]})",
                key=key,
                on_click=nav.decide,
                args=(decision,),
                type=kind,
                width="stretch",
                shortcut=KEYS[k],
                disabled=not reviewer,
            )
        if not reviewer:
            st.warning("Enter your name at the top to record decisions.")
        st.caption(keys_caption())


def queue_ui(nav: Navigator) -> None:
    """The shown queue as a table; a click on a row opens that item."""
    view = nav.view
    by_key: dict[tuple[str, str], list[str]] = {}
    for r in view.visible.itertuples(index=False):
        by_key.setdefault((r.image_id, r.subtype), []).append(f"{r.reviewer}: {r.decision}")
    items = nav.visible
    table = pd.DataFrame(
        {
            "Item": range(1, len(items) + 1),
            "Rank": [it.rank for it in items],
            "Image": [it.anchor for it in items],
            "Slice": [it.slice_index + 1 for it in items],
            "Classes": [", ".join(it.classes) for it in items],
            "Status": [session.item_status(it, view.decided, view.unsure) for it in items],
            "Decisions": [
                "; ".join(f"{k[1]} · {d}" for k in it.keys for d in by_key.get(k, []))
                for it in items
            ],
        }
    )

    def clicked() -> None:
        rows = st.session_state["audit_table"].selection.rows
        if rows:
            nav.go(int(rows[0]))

    st.dataframe(
        table,
        hide_index=True,
        height=320,
        key="audit_table",
        on_select=clicked,
        selection_mode="single-row",
    )
    st.caption("Click a row to open that item.")


def agreement_ui(current: pd.DataFrame) -> None:
    """Cohen's kappa per class between two readers (not shown to a blind reader)."""
    names = review.readers(current)
    if len(names) < 2:
        return
    st.subheader("Agreement between readers")
    pick = st.columns(2)
    a = pick[0].selectbox("Reader A", names, index=0, key="audit_kappa_a")
    b = pick[1].selectbox("Reader B", names, index=1, key="audit_kappa_b")
    if a == b:
        return
    table = review.agreement(current, str(a), str(b))
    table["class"] = [class_name(c) for c in table["class"]]
    st.dataframe(
        table.rename(
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


def export_data(
    store: DecisionStore, source: review.LabelSource, fix_any: bool
) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """Callables for the two download buttons: the corrected labels and "who decided
    what". Each reads the store when it is called (the click), so a download always holds
    every decision on record at that moment, never a copy prepared earlier."""

    def _result() -> review.CorrectedLabels:
        return review.corrected_labels(source, review.resolve(store.current()), fix_any=fix_any)

    def labels_csv() -> bytes:
        return _result().csv_text().encode()

    def provenance_csv() -> bytes:
        return _result().provenance_text().encode()

    return labels_csv, provenance_csv


def export_ui(store: DecisionStore, source: review.LabelSource, resolved: pd.DataFrame) -> None:
    """Two downloads built at click time, a summary of the decisions on record now, and
    the images whose "any" disagrees with their subtypes (with the option to fix them)."""
    st.subheader("Export")
    st.caption(
        "Corrected labels in the RSNA format (ID,Label), in the labels file's row order: each "
        "cell's settled decision applied (one reader, readers who agree, or the adjudicator); "
        "keep, unsure and unresolved disagreements leave the label. Each download is built "
        "when you click it, from every decision on record then."
    )
    fix_any = bool(
        st.checkbox(
            "Set “any” from the subtypes where they disagree (a decision on “any” is never "
            "overruled)",
            key="audit_fix_any",
        )
    )
    result = review.corrected_labels(source, resolved, fix_any=fix_any)
    labels_csv, who_csv = export_data(store, source, fix_any)
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
    s = result.summary
    st.caption(
        f"{s.images} images · {s.relabelled} labels changed · "
        f"{s.unresolved} disagreements left as labelled · "
        f"{s.any_inconsistent} images where 'any' disagrees with the subtypes"
        + (f" · {s.any_fixed} 'any' labels set from the subtypes" if fix_any else "")
        + "."
    )
    if s.inconsistent_ids:
        with st.expander(f"Images where 'any' disagrees with the subtypes ({s.any_inconsistent})"):
            ids = list(s.inconsistent_ids[:200])
            rows = source.labels.index.get_indexer(ids)
            after = pd.DataFrame(result.values[rows], columns=list(CLASSES))
            after.insert(0, "image_id", ids)
            st.dataframe(after, hide_index=True)
            st.caption("Labels as exported; the first 200 images, in the file's order.")
