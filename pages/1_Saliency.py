"""Saliency: where the slice CNN looks for one class (Grad-CAM, IG, Saliency, Occlusion).

The original model input beside the overlay (the poster's Fig. 6), an opacity control,
and the model-randomisation sanity check (Adebayo et al., 2018) for the chosen method.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from hohoho_core.explain import METHODS, overlay
from hohoho_core.labels import CLASSES
from hohoho_ui import loaders, widgets
from hohoho_ui.text import md_literal
from hohoho_ui.views import windowed_uint8

METHOD_NAMES = {
    "gradcam": "Grad-CAM (last block)",
    "integrated_gradients": "Integrated Gradients (all-air baseline)",
    "saliency": "Saliency (input gradient)",
    "occlusion": "Occlusion (air patches)",
}

settings = widgets.page_setup("Saliency", "🔥")
model = widgets.model_ui(settings)
st.title("Saliency")
item = widgets.require_study_ui(settings)
widgets.open_study_sidebar_ui()
if item is None:
    st.stop()
if model.predictor is None:
    st.info(widgets.model_message(model, "Load a model (sidebar) to compute saliency maps."))
    st.stop()
widgets.demo_notice_ui(model)
widgets.study_header_ui(item)

study = item.study
try:
    pred = loaders.predict_study(model.key, item.key, model.predictor, study)
    x = loaders.model_input(model.key, item.key, model.predictor, study)
except (ValueError, RuntimeError) as err:
    st.error(f"The model could not run on this study: {md_literal(err)}")
    st.stop()

index = widgets.slice_nav_ui(study.n_slices, pred.labels.any(axis=1), prefix="sal")
c1, c2, c3 = st.columns([2, 2, 1.4])
method = widgets.kept(
    c1.selectbox,
    "Method",
    "sal_method",
    METHODS[0],
    options=list(METHODS),
    format_func=METHOD_NAMES.get,
)
cls = widgets.kept(
    c2.selectbox,
    "Class",
    "sal_class",
    "any",
    options=list(CLASSES),
    format_func=widgets.class_label,
)
opacity = widgets.kept(
    c3.slider, "Overlay opacity", "sal_opacity", 0.45, min_value=0.0, max_value=1.0, step=0.05
)
target = CLASSES.index(cls)

# The "original" is the slice itself in the model's window: the centre channel of a
# stacked input (i-1, i, i+1), the first (brain) channel otherwise.
channel = model.predictor.preprocess_config.centre_channel
gray = x[index, channel]
try:
    smap = loaders.saliency(model.key, item.key, index, method, target, model.predictor, x[index])
except (ValueError, RuntimeError) as err:
    st.error(f"Saliency failed: {md_literal(err)}")
    st.stop()
st.session_state["saliency_shape"] = tuple(smap.shape)

prob = float(pred.prob[index, target])
left, right = st.columns(2, gap="medium")
with left:
    st.image(
        windowed_uint8(gray, 0.5, 1.0),
        caption=f"Model input · slice {index + 1} / {study.n_slices} (cropped to the head)",
        width="stretch",
    )
with right:
    st.image(
        overlay(gray, smap, float(opacity)),
        caption=f"{METHOD_NAMES[method]} · {cls} · p = {prob:.2f}",
        width="stretch",
    )
st.caption(
    f"Map {smap.shape[0]} × {smap.shape[1]} px at the model's input resolution; red = "
    "strongest evidence for the class, blue = none. Results are cached per slice, method "
    "and class."
)

st.subheader("Sanity check: model randomisation")
st.caption(
    "The head and the last blocks of the CNN are re-initialised and the map recomputed "
    "(Adebayo et al., 2018). A map that explains the model changes a lot (low rank "
    "correlation and SSIM); a map that barely changes shows image edges, not the model."
)
sanity_key = (model.key, item.key, index, method, target)
if st.button("Run the randomisation check", key="sal_sanity"):
    try:
        st.session_state["sanity"][sanity_key] = loaders.randomisation(
            model.key, item.key, index, method, target, model.predictor, x[index]
        )
    except (ValueError, RuntimeError) as err:
        st.error(f"The check failed: {md_literal(err)}")
result = st.session_state["sanity"].get(sanity_key)
if result is not None:
    a, b, c = st.columns(3, gap="medium")
    a.image(overlay(gray, result.original_map, 0.6), caption="Trained model", width="stretch")
    b.image(
        overlay(gray, result.random_map, 0.6),
        caption=f"Randomised ({', '.join(result.randomised)})",
        width="stretch",
    )
    # NaN (a constant map) has no ranks to compare: shown as n/a and not counted as a pass.
    rho, ssim = result.spearman, result.ssim
    c.metric("Spearman ρ", "n/a" if np.isnan(rho) else f"{rho:.2f}")
    c.metric("SSIM", "n/a" if np.isnan(ssim) else f"{ssim:.2f}")
    c.markdown(
        "**Passes:** the map depends on the learnt weights."
        if result.passed
        else "**Weak:** the map changes little when the weights are randomised."
    )
