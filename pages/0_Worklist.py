"""Worklist: analyse every study of a source in the background, most suspicious first.

Each study is read and run through the model once per server process (per source and
weights); the list is sorted by the study-level "any" probability, with the subtypes
called positive, the slices called "any" and the time each study took. "Open" shows the
study in the viewer, where Page Up / Page Down walk this order.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from hohoho_core.worklist import StudyResult, WorklistRun
from hohoho_ui import state, widgets, worklist_ui
from hohoho_ui.settings import Settings
from hohoho_ui.text import md_literal
from hohoho_ui.views import format_ranges

#: Badge colour per subtype short name (Streamlit's named badge colours).
BADGE = {"EDH": "orange", "IPH": "blue", "IVH": "green", "SAH": "yellow", "SDH": "violet"}


def _duration(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "…"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def progress_ui(run: WorklistRun) -> None:
    done, total, elapsed, left = run.progress()
    if run.finished:
        rate = done / elapsed * 60 if elapsed > 0 else float("nan")
        st.caption(f"{done} of {total} studies analysed in {_duration(elapsed)} "
                   f"({rate:.1f} studies per minute).")
    else:
        st.progress(done / max(total, 1),
                    text=f"Analysing: {done} of {total} studies · about {_duration(left)} left")


_WIDTHS = [0.5, 3, 1.2, 3, 2.2, 1, 1.2]


def header_ui() -> None:
    names = ["#", "Study", "Suspicion", "Subtypes called", "Slices called 'any'", "Time", ""]
    for col, name in zip(st.columns(_WIDTHS, gap="small"), names, strict=True):
        col.caption(name)


def row_ui(rank: int, result: StudyResult, settings: Settings, nav: state.WorklistNav) -> None:
    cols = st.columns(_WIDTHS, gap="small", vertical_alignment="center")
    cols[0].markdown(f"**{rank}**")
    cols[1].markdown(md_literal(result.label))
    if result.error is not None:
        cols[2].markdown(":gray-badge[failed]")
        cols[3].caption(md_literal(result.error))
    else:
        colour = "red" if result.positive else "gray"
        cols[2].markdown(f":{colour}-badge[any {result.any_max:.2f}]")
        badges = " ".join(
            f":{BADGE[name]}-badge[{name} {result.subtype_max[name]:.2f}]"
            for name in result.subtypes
        )
        cols[3].markdown(badges or ("any only" if result.positive else "no bleed called"))
        cols[4].markdown(f"slices {format_ranges(list(result.any_runs))}"
                         if result.any_runs else "—")
        if result.notes:  # a series the model was not trained for: say so in the list
            cols[3].markdown(":orange-badge[spacing not trained on]",
                             help=md_literal(" ".join(result.notes)))
    cols[5].caption(f"{result.seconds:.1f} s")
    if cols[6].button("Open", key=f"wl_open_{result.key}", disabled=result.error is not None,
                      width="stretch"):
        entry = nav.entries[result.key]
        worklist_ui.open_entry(entry, settings)
        st.switch_page("app.py")


settings = widgets.page_setup("Worklist", "📋")
model = widgets.model_ui(settings)
widgets.open_study_sidebar_ui()
st.title("Worklist")
st.caption("Every study of a source, analysed in the background and sorted by suspicion "
           "(highest study-level 'any' probability first). Open a study to read it; in the "
           "viewer, Page Up / Page Down go to the previous / next study of this list.")

kind = widgets.kept(st.radio, "Analyse", "wl_source_kind", "Demo studies",
                    options=list(worklist_ui.SOURCE_UIS), horizontal=True)
source = worklist_ui.SOURCE_UIS[kind](settings)
if source is None:
    st.stop()
if model.predictor is None:
    st.info(widgets.model_message(model, "Load a model (sidebar) to analyse the studies."))
    st.stop()
widgets.demo_notice_ui(model)

run = worklist_ui.worklist_run(source, str(model.key), model.predictor)
polling = not run.finished


@st.fragment(run_every=1.0 if polling else None)
def worklist_ui_fragment() -> None:
    progress_ui(run)
    results = run.results()
    nav = st.session_state.get("worklist_nav")
    keys = [r.key for r in results if r.error is None]
    if not isinstance(nav, state.WorklistNav) or nav.source != source.key:
        nav = state.WorklistNav(source=source.key, keys=keys)
        st.session_state["worklist_nav"] = nav
    nav.keys = keys
    nav.entries = {e.key: e for e in run.entries}
    if not results:
        st.caption("The first study is being analysed…")
    else:
        header_ui()
    for rank, result in enumerate(results, start=1):
        row_ui(rank, result, settings, nav)
    if polling and run.finished:
        st.rerun()  # a full run draws the fragment again, without polling


worklist_ui_fragment()
