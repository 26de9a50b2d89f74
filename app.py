"""HOHOHO study viewer: scroll a head-CT study with its per-slice hemorrhage predictions.

Run with ``make app`` (or ``streamlit run app.py``). The pages in ``pages/`` add saliency
maps, the t-SNE of slice embeddings and the label audit. Settings come from environment
variables (see ``hohoho_ui/settings.py``).
"""

from __future__ import annotations

import streamlit as st

from hohoho_ui import loaders, state, widgets
from hohoho_ui.text import md_literal

settings = widgets.page_setup("Study viewer", "🧠")
model = widgets.model_ui(settings)
widgets.study_source_ui(settings)

st.title("Study viewer")
widgets.load_error_ui()
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
positive = None if pred is None else pred.labels.any(axis=1)
index = widgets.slice_nav_ui(study.n_slices, positive, prefix="viewer")
centre, width = widgets.window_ui(prefix="viewer")

left, right = st.columns([3, 2], gap="medium")
with left:
    widgets.slice_image_ui(study, index, centre, width)
with right:
    st.markdown(f"### Slice {index + 1} / {study.n_slices}")
    image_id = md_literal(study.slices[index].image_id)
    st.caption(f"Image {image_id} · z = {study.slices[index].z:.1f} mm")
    widgets.slice_table_ui(index, pred, item.labels)
    st.caption(
        "Keys: ↑/↓ previous/next · Home/End first/last · N next positive · 1-4 window presets."
    )

if pred is not None:
    widgets.prob_chart_ui(pred, item.labels, index)
widgets.summary_ui(item, pred)
