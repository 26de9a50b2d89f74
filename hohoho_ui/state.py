"""Session state shared by the pages, initialised once per browser session.

Widget values are lost when a page that does not draw the widget runs, so everything
that must survive a page switch (the open study, the current slice, the window) lives
in plain keys set here; widgets are synced from them before they are drawn.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st

from hohoho_core.preprocess import WINDOWS
from hohoho_core.study import Study
from hohoho_core.worklist import WorklistEntry

__all__ = [
    "OpenStudy",
    "WorklistNav",
    "clamp_slice",
    "current_slice",
    "init_state",
    "note_viewer",
    "open_study",
    "set_slice",
    "viewer_start",
]

#: Plain (non-widget) keys and their first values.
DEFAULTS: dict[str, Any] = {
    "open_study": None,  # OpenStudy | None
    "slice": 0,  # 0-based index into the open study
    "window": "brain",  # a WINDOWS name or "custom"
    "win_centre": float(WINDOWS["brain"][0]),
    "win_width": float(WINDOWS["brain"][1]),
    "pending_source": None,  # (kind, source) of an upload/folder with several series
    "audit_item": None,  # anchor image id of the audit item on screen (None: first open)
    "audit_target": None,  # hohoho_ui.review.Target the decision buttons act on
    "sanity": {},  # (fingerprint, slice, method, class) -> RandomisationResult
    "viewer_start": None,  # what the browser viewer jumps to (see `viewer_start`)
    "viewer_seen": None,  # (study key, slice, window, centre, width) the browser last had
    "viewer_seq": 0.0,  # sequence number of the last browser event handled
    "worklist_nav": None,  # WorklistNav: the worklist order Page Up / Page Down walk
}


@dataclass
class OpenStudy:
    """The study on screen and what is known about it.

    ``labels`` is ``(S, 6)`` int8 aligned with ``study.slices`` (-1 where unknown) or
    None; ``source_id`` says where it came from (so a demo choice is not reloaded);
    ``dataset_root`` is the RSNA-layout folder for demo/indexed studies.
    """

    study: Study
    key: str  # `views.study_fingerprint`
    name: str
    source_id: tuple[str, ...]
    labels: np.ndarray | None = None
    dataset_root: str | None = None


def init_state() -> None:
    """Set every default key that is missing (never overwrites)."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value.copy() if isinstance(value, dict) else value


def open_study(item: OpenStudy, first_slice: int = 0) -> None:
    """Make ``item`` the study on screen, starting at ``first_slice``."""
    st.session_state["open_study"] = item
    st.session_state["slice"] = clamp_slice(first_slice, item.study.n_slices)


def current() -> OpenStudy | None:
    item = st.session_state.get("open_study")
    return item if isinstance(item, OpenStudy) else None


def clamp_slice(index: int, n_slices: int) -> int:
    return int(min(max(int(index), 0), max(n_slices - 1, 0)))


def current_slice() -> int:
    item = current()
    n = item.study.n_slices if item is not None else 1
    return clamp_slice(st.session_state.get("slice", 0), n)


def set_slice(index: int) -> None:
    """Move to slice ``index`` (clamped); safe inside widget callbacks."""
    item = current()
    n = item.study.n_slices if item is not None else 1
    st.session_state["slice"] = clamp_slice(index, n)


# --------------------------------------------------------------------------- browser viewer


def _on_screen(item: OpenStudy) -> list[Any]:
    ss = st.session_state
    return [item.key, current_slice(), ss["window"], float(ss["win_centre"]),
            float(ss["win_width"])]


def viewer_start(item: OpenStudy) -> dict[str, Any]:
    """Where the browser viewer should be: a new ``token`` (the browser jumps there) only
    when the server's slice or window differ from what the browser last reported (a study
    opened, a slice chosen on another page); otherwise the same dict, so the component's
    arguments, and the study they carry, are not sent again."""
    ss = st.session_state
    seen = _on_screen(item)
    start = ss.get("viewer_start")
    if start is None or list(ss.get("viewer_seen") or []) != seen:
        _, index, window, centre, width = seen
        start = {"token": uuid.uuid4().hex, "slice": index, "window": window,
                 "centre": centre, "width": width}
        ss["viewer_start"] = start
        ss["viewer_seen"] = seen
    return start


def note_viewer(item: OpenStudy, index: int, window: str | None, centre: float | None,
                width: float | None) -> None:
    """The browser reports the slice and window on screen: the other pages follow it."""
    ss = st.session_state
    set_slice(index)
    if window is not None and centre is not None and width is not None and width >= 1:
        ss["window"] = window if window in WINDOWS else "custom"
        ss["win_centre"], ss["win_width"] = float(centre), float(width)
    ss["viewer_seen"] = _on_screen(item)


@dataclass
class WorklistNav:
    """The worklist order the viewer's Page Up / Page Down walk: ``keys`` most suspicious
    first, ``entries`` by key, ``current`` the key opened last, ``source`` its name."""

    source: str
    keys: list[str]
    entries: dict[str, WorklistEntry] = field(default_factory=dict)
    current: str | None = None
