"""The worklist's sources, its background runs and opening a study from it.

A source UI draws its widgets and returns a `hohoho_core.worklist.StudySource` (or None
until the user has chosen one). `SOURCE_UIS` maps the "Analyse" choices to them: a new
kind of source (a PACS query) is one more entry there, a function with the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from hohoho_core.dicom import StudyLoadError, scan_source
from hohoho_core.predict import Predictor
from hohoho_core.rsna import is_dataset_folder
from hohoho_core.worklist import (
    FolderSource,
    IndexedSource,
    StudySource,
    WorklistEntry,
    WorklistRun,
    step_in_order,
)
from hohoho_ui import loaders, state
from hohoho_ui.pacs import pacs_worklist_ui
from hohoho_ui.settings import Settings
from hohoho_ui.text import md_literal
from hohoho_ui.views import resolve_under, study_fingerprint
from hohoho_ui.widgets import kept, open_indexed

__all__ = ["SOURCE_UIS", "open_entry", "step_study", "worklist_run"]


def _indexed_source(root: Path, name: str, settings: Settings) -> StudySource | None:
    table = loaders.dataset_index(root)
    if not len(table):
        st.info(f"No CT series in {md_literal(root)}.")
        return None
    key = f"indexed|{loaders.listing_key(root)}"
    limit = settings.max_upload_bytes
    return IndexedSource(key=key, name=name, root=str(root), table=table,
                         load_paths=lambda paths: loaders.load_indexed_study(paths, limit))


def demo_source_ui(settings: Settings) -> StudySource | None:
    """The demo studies (``make demo``)."""
    if not is_dataset_folder(settings.demo_dir):
        st.info(f"No demo studies in {md_literal(settings.demo_dir)}: run `make demo`.")
        return None
    return _indexed_source(settings.demo_dir, "demo studies", settings)


def _folder_rel_ui(settings: Settings, key: str, placeholder: str) -> Path | None:
    rel = kept(st.text_input, f"Folder inside {md_literal(settings.data_root)}", key, "",
               placeholder=placeholder)
    if not str(rel).strip():
        return None
    try:
        return resolve_under(settings.data_root, rel)
    except ValueError as err:
        st.error(md_literal(err))
        return None


def rsna_source_ui(settings: Settings) -> StudySource | None:
    """An RSNA-layout folder (``stage_2_train/`` and optionally its labels CSV)."""
    root = _folder_rel_ui(settings, "wl_rsna_rel", "e.g. rsna")
    if root is None:
        return None
    if not is_dataset_folder(root):
        st.info(f"No RSNA-layout dataset at {md_literal(root)}.")
        return None
    return _indexed_source(root, root.name, settings)


@st.cache_resource(max_entries=4, show_spinner="Reading the folder's headers…")
def _folder_scan(folder: str, stamp: int, max_bytes: int):  # noqa: ANN202 (SourceScan)
    # Kept open while cached: its loaders read from it (an evicted scan cleans up).
    return scan_source(Path(folder), max_upload_bytes=max_bytes,
                       max_total_upload_bytes=max_bytes, max_zip_bytes=max_bytes)


def folder_source_ui(settings: Settings) -> StudySource | None:
    """Every axial series of a server folder (DICOM files or zips, any layout)."""
    folder = _folder_rel_ui(settings, "wl_folder_rel", "e.g. incoming/2026-11-30")
    if folder is None:
        return None
    stamp = folder.stat().st_mtime_ns
    try:
        scan = _folder_scan(str(folder), stamp, settings.max_upload_bytes)
    except (StudyLoadError, ValueError, OSError) as err:
        st.error(f"Cannot read this folder: {md_literal(err)}")
        return None
    if not scan.loadable_series():
        st.info("No axial CT series in this folder.")
        return None
    shown = folder.relative_to(settings.data_root).as_posix() or "."
    return FolderSource(key=f"folder|{folder}|{stamp}", name=shown, scan=scan, folder=folder)


#: The worklist's "Analyse" choices. Add a source by adding a function
#: ``(settings) -> StudySource | None`` that draws its own widgets.
SOURCE_UIS: dict[str, Callable[[Settings], StudySource | None]] = {
    "Demo studies": demo_source_ui,
    "Server folder": folder_source_ui,
    "RSNA folder": rsna_source_ui,
    "PACS query": pacs_worklist_ui,
}


@st.cache_resource(max_entries=8, show_spinner=False)
def _run(source_key: str, weights_key: str, _source: StudySource,
         _predictor: Predictor) -> WorklistRun:
    return WorklistRun(list(_source.entries()), _predictor.predict).start()


def worklist_run(source: StudySource, weights_key: str, predictor: Predictor) -> WorklistRun:
    """The background analysis of ``source`` with these weights: started once per server
    process and kept, so coming back (or a second reader) finds it done."""
    return _run(source.key, weights_key, source, predictor)


def open_entry(entry: WorklistEntry, settings: Settings) -> None:
    """Make ``entry`` the open study (its labels too, for an RSNA-layout folder).

    The sidebar's "Open from" is set to match, so its own choice does not replace it.
    """
    if entry.origin[0] == "indexed":
        _, root, study_uid, series_uid = entry.origin
        table = loaders.dataset_index(root)
        if Path(root).resolve() == settings.demo_dir.resolve():
            st.session_state["source_kind"] = "Demo studies"
            st.session_state["demo_choice"] = f"{study_uid}|{series_uid}"
        else:
            st.session_state["source_kind"] = "Server folder"
        open_indexed(Path(root), table, study_uid, series_uid, entry.label, settings)
    else:
        study = entry.load()
        st.session_state["source_kind"] = "Server folder"
        item = state.OpenStudy(study=study, key=study_fingerprint(study), name=entry.label,
                               source_id=("worklist", entry.key))
        state.open_study(item)
    st.session_state["pending_source"] = None
    st.session_state.pop("load_error", None)
    nav = st.session_state.get("worklist_nav")
    if isinstance(nav, state.WorklistNav):
        nav.current = entry.key


def step_study(step: int, settings: Settings) -> str | None:
    """Open the previous (-1) or next (+1) study of the worklist; returns a message when
    there is none to open (no worklist yet, or its end)."""
    nav = st.session_state.get("worklist_nav")
    if not isinstance(nav, state.WorklistNav) or not nav.keys:
        return "Open the Worklist page first: Page Up / Page Down walk its order."
    key = step_in_order(nav.keys, nav.current, step)
    if key is None:
        return "This is the last study of the worklist." if step > 0 else (
            "This is the first study of the worklist.")
    try:
        open_entry(nav.entries[key], settings)
    except (StudyLoadError, ValueError, OSError) as err:
        return f"Cannot open the next study: {err}"
    return None
