"""Widgets of the label-audit page's review session: who reviews, how, and the export.

The session's identity (reviewer name) and mode live in plain session keys *and* in the
URL's query parameters (``?reviewer=...&mode=...``), so a reload of the browser tab keeps
them; nothing is recorded while the name is empty. Keys follow Label Studio (numbers for
the choices) and CVAT (D/F for the previous/next frame, Ctrl+Z to undo).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from hohoho_core.review import (
    LabelSource,
    corrected_labels,
    resolve,
)
from hohoho_core.store import DecisionStore
from hohoho_ui.text import md_literal
from hohoho_ui.widgets import kept

__all__ = [
    "KEYS",
    "MODES",
    "Target",
    "decision_lines",
    "export_data",
    "keys_caption",
    "mode_ui",
    "reviewer_ui",
]

#: Session modes: label -> what a reader sees and how a decision is recorded.
MODES: dict[str, str] = {
    "single": "One reader",
    "blind": "Second reader (blind)",
    "adjudicate": "Adjudication",
}
#: Keyboard shortcuts of the page's buttons (Streamlit's ``shortcut``; never while typing).
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
    """The session's mode, a key of `MODES`."""
    current = _from_url("audit_mode", "single")
    if current not in MODES:
        st.session_state["audit_mode"] = "single"
    mode = kept(
        st.radio,
        "Review mode",
        "audit_mode",
        "single",
        options=list(MODES),
        format_func=MODES.get,
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


def export_data(
    store: DecisionStore, source: LabelSource, fix_any: bool
) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
    """Callables for the two download buttons: the corrected labels and "who decided
    what". Each reads the store when it is called (the click), so a download always holds
    every decision on record at that moment, never a copy prepared earlier."""

    def _result():  # type: ignore[no-untyped-def]
        return corrected_labels(source, resolve(store.current()), fix_any=fix_any)

    def labels_csv() -> bytes:
        return _result().csv_text().encode()

    def provenance_csv() -> bytes:
        return _result().provenance_text().encode()

    return labels_csv, provenance_csv
