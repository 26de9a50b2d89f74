"""Sidebar: open a study from a PACS over DICOMweb (search, pick, open).

The server is the setting ``HOHOHO_DICOMWEB_URL`` (credentials: ``HOHOHO_DICOMWEB_USER``
/ ``_PASSWORD`` or ``_TOKEN``, never shown). A search lists CT studies without patient
names or IDs unless the user asks; opening a study retrieves its instances (bounded by
the upload bound) and hands them to the viewer's upload path, so they are read, bounded
and reported exactly like uploaded files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from hohoho_core.pacs import (
    PacsError,
    RetrieveLimits,
    StudyMatch,
    StudyQuery,
    load_pacs_study,
    retrieve_study,
    search_studies,
    server_from_env,
)
from hohoho_core.worklist import PacsSource
from hohoho_ui.settings import Settings
from hohoho_ui.text import md_literal

__all__ = ["match_label", "pacs_ui", "pacs_worklist_ui", "results_table"]

#: The viewer's opener: ``open_source(kind, source, name, settings)``.
OpenSource = Callable[..., None]
_RESULTS = "pacs_results"


def results_table(matches: list[StudyMatch], show_identifiers: bool = False) -> pd.DataFrame:
    """One row per study; patient ID, name and accession only when asked."""
    return pd.DataFrame([m.row(show_identifiers=show_identifiers) for m in matches])


def match_label(m: StudyMatch) -> str:
    """How a study is named in the picker and the viewer: no patient identifier."""
    count = f"{m.n_instances} images" if m.n_instances is not None else "? images"
    return f"{m.study_date or 'no date'} · {m.description or 'study'} · {count} · …{m.study_uid[-10:]}"


def _search_form(prefix: str = "pacs") -> StudyQuery | None:
    with st.form(f"{prefix}_search", border=False):
        patient_id = st.text_input("Patient ID", key=f"{prefix}_patient_id")
        accession = st.text_input("Accession number", key=f"{prefix}_accession")
        left, right = st.columns(2)
        start = left.date_input("From", value=None, key=f"{prefix}_date_from",
                                min_value=dt.date(1900, 1, 1))
        end = right.date_input("To", value=None, key=f"{prefix}_date_to",
                               min_value=dt.date(1900, 1, 1))
        if not st.form_submit_button("Search", type="primary"):
            return None
    return StudyQuery(patient_id=patient_id or None, accession=accession or None,
                      date_from=start, date_to=end)


def pacs_ui(settings: Settings, open_source: OpenSource) -> None:
    """Search the configured DICOMweb server and open a study through ``open_source``."""
    server = _server_or_message()
    if server is None:
        return
    st.caption(f"Server: {md_literal(server.display_url)}")
    query = _search_form()
    if query is not None:
        try:
            with st.spinner("Searching the PACS…"):
                st.session_state[_RESULTS] = (server.display_url, search_studies(server, query))
        except PacsError as err:
            st.session_state.pop(_RESULTS, None)
            st.error(md_literal(err))
            return
    found = st.session_state.get(_RESULTS)
    if not found or found[0] != server.display_url:
        return
    matches: list[StudyMatch] = found[1]
    if not matches:
        st.info("No CT study matches.")
        return
    show = st.checkbox("Show patient identifiers", value=False, key="pacs_show_identifiers",
                       help="Off by default: identifiers are never logged or stored by the app.")
    st.dataframe(results_table(matches, show_identifiers=show), hide_index=True)
    labels = {m.study_uid: match_label(m) for m in matches}
    uid = st.selectbox(f"{len(matches)} studies", list(labels), format_func=labels.get,
                       key="pacs_choice")
    if st.button("Open study", key="pacs_open", type="primary"):
        _open(server, uid, labels[uid], settings, open_source)


def _open(server: Any, uid: str, label: str, settings: Settings,
          open_source: OpenSource) -> None:
    limits = RetrieveLimits(max_bytes=settings.max_upload_bytes)
    try:
        with st.spinner("Retrieving the study from the PACS…"):
            uploads = retrieve_study(server, uid, limits)
    except PacsError as err:
        st.session_state["load_error"] = (str(err), None)
        return
    # The upload path: same reader, bounds, series choice and load report as files.
    open_source("upload", uploads, f"PACS {label}", settings)


def _server_or_message() -> Any:
    try:
        server = server_from_env()
    except PacsError as err:
        st.error(md_literal(err))
        return None
    if server is None:
        st.info("No PACS configured: set HOHOHO_DICOMWEB_URL (e.g. "
                "http://localhost:8042/dicom-web) and restart the app.")
    return server


def pacs_worklist_ui(settings: Settings) -> PacsSource | None:
    """The worklist's PACS source: search once, then every CT study found is retrieved
    (bounded like an upload) and analysed in turn; its thickest axial series is scored."""
    server = _server_or_message()
    if server is None:
        return None
    st.caption(f"Server: {md_literal(server.display_url)}")
    query = _search_form("wl_pacs")
    if query is not None:
        try:
            with st.spinner("Searching the PACS…"):
                st.session_state["wl_pacs_results"] = (server.display_url,
                                                       search_studies(server, query))
        except PacsError as err:
            st.session_state.pop("wl_pacs_results", None)
            st.error(md_literal(err))
            return None
    found = st.session_state.get("wl_pacs_results")
    if not found or found[0] != server.display_url:
        st.info("Search the PACS: every CT study the search finds is analysed.")
        return None
    matches: list[StudyMatch] = found[1]
    if not matches:
        st.info("No CT study matches.")
        return None
    limits = RetrieveLimits(max_bytes=settings.max_upload_bytes)
    uids = "|".join(m.study_uid for m in matches)
    return PacsSource(
        key=f"pacs|{server.display_url}|{uids}",
        name=f"PACS query ({len(matches)} studies)",
        matches=tuple(matches),
        load_study_uid=lambda uid: load_pacs_study(server, uid, limits),
    )
