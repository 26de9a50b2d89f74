"""HOHOHO study viewer: scroll a head-CT study with its per-slice hemorrhage predictions.

Run with ``make app`` (or ``streamlit run app.py``). The study is sent to the browser once
and scrolled there (`hohoho_ui.viewer_component`); the server runs again only when the
study, the model or a decision changes. The pages in ``pages/`` add the worklist, saliency
maps, the t-SNE of slice embeddings and the label audit. Settings come from environment
variables (see ``hohoho_ui/settings.py``).
"""

from __future__ import annotations

import streamlit as st

from hohoho_ui import loaders, state, widgets, worklist_ui
from hohoho_ui.text import md_literal

settings = widgets.page_setup("Study viewer", "🧠")
model = widgets.model_ui(settings)
widgets.study_source_ui(settings)

st.title("Study viewer")
widgets.load_error_ui()
notice = st.session_state.pop("viewer_notice", None)
if notice:
    st.info(md_literal(notice))
item = state.current()
if item is None:
    st.info("Open a study from the sidebar: a demo study, uploaded DICOM files or a server folder.")
    st.stop()

study = item.study
pred = None
if model.predictor is not None:
    try:
        pred = loaders.predict_study(model.key, item.key, model.predictor, study)
    except (ValueError, RuntimeError) as err:
        st.error(f"The model could not run on this study: {md_literal(err)}")
    widgets.demo_notice_ui(model)
else:
    st.info(widgets.model_message(model, "No model loaded: predictions are off."))

widgets.study_header_ui(item)
widgets.series_thumbnails_ui(settings)


@st.fragment
def viewer_ui() -> None:
    """The browser viewer. A slice report from it reruns only this fragment (its unchanged
    arguments are not sent again); Page Up / Page Down rerun the page with another study."""
    event = widgets.browser_viewer_ui(item, model.key, pred)
    if event is not None and event.kind == "study":
        message = worklist_ui.step_study(event.step, settings)
        if message:
            st.session_state["viewer_notice"] = message
        st.rerun()


viewer_ui()

widgets.summary_ui(item, pred)
