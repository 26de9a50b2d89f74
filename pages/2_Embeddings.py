"""Embeddings: t-SNE of the CNN's slice embeddings (the poster's Fig. 5).

Coloured by label, prediction, subtype or relative slice level; hovering shows the image
ID and probabilities; selecting a point shows that slice. Large datasets are subsampled
(stratified by label, so rare subtypes stay visible).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import streamlit as st

from hohoho_core.embed import MIN_POINTS, relative_level, subsample
from hohoho_core.labels import ANY_INDEX, CLASSES, SHORT_NAMES
from hohoho_core.rsna import series_rows
from hohoho_ui import loaders, widgets
from hohoho_ui.text import md_literal, plotly_literal
from hohoho_ui.views import subtype_names, tsne_figure, windowed_uint8

COLOURS = ("Relative slice level", "Label", "Prediction", "Subtype")

settings = widgets.page_setup("Embeddings", "🗺️")
model = widgets.model_ui(settings)
st.title("Embeddings")
if model.predictor is None:
    st.info(widgets.model_message(model, "Load a model (sidebar) to embed slices."))
    st.stop()
widgets.demo_notice_ui(model)

c1, c2, c3 = st.columns([1.3, 1.3, 1.4])
scope = widgets.kept(
    c1.radio,
    "Slices",
    "emb_scope",
    "This study",
    options=["This study", "Whole dataset"],
    horizontal=True,
)
colour = widgets.kept(c2.selectbox, "Colour by", "emb_colour", COLOURS[0], options=list(COLOURS))
max_points = widgets.kept(
    c3.number_input,
    "Most points drawn",
    "emb_max",
    3000,
    min_value=10,
    max_value=50000,
    step=500,
    help="Larger sets are subsampled (stratified), so the map stays quick to draw.",
)

try:
    if scope == "This study":
        item = widgets.require_study_ui(settings)
        widgets.open_study_sidebar_ui()
        if item is None:
            st.stop()
        widgets.study_header_ui(item)
        pred = loaders.predict_study(model.key, item.key, model.predictor, item.study)
        n = len(pred.image_ids)
        table = pd.DataFrame(
            {
                "image_id": pred.image_ids,
                "study_uid": item.study.study_uid,
                "series_uid": item.study.series_uid,
                "slice_index": np.arange(n),
                "n_slices": n,
            }
        )
        labels = item.labels
        prob, emb, source = pred.prob, pred.embeddings, f"study {item.key}"
    else:
        root = widgets.dataset_ui(settings)
        if root is None:
            st.stop()
        data = loaders.predict_dataset(
            model.key,
            str(root),
            loaders.listing_key(root),
            settings.max_upload_bytes,
            model.predictor,
        )
        for msg in data.failed:
            st.warning(md_literal(msg))
        table, prob, emb = data.table, data.prob, data.embeddings
        labels = table[list(CLASSES)].to_numpy(dtype=np.int8)
        source = f"dataset {root}|{loaders.listing_key(root)}"
except (ValueError, RuntimeError, OSError) as err:
    st.error(md_literal(err))
    st.stop()

n_total = len(table)
if n_total < MIN_POINTS:
    st.info(f"t-SNE needs at least {MIN_POINTS} slices; this has {n_total}.")
    st.stop()
known = labels is not None and bool((labels >= 0).all())
strat = labels if known else (prob >= model.predictor.thresholds).astype(np.int8)
rows = subsample(n_total, int(max_points), seed=0, stratify=strat)
if len(rows) < n_total:
    st.info(
        f"Showing {len(rows)} of {n_total} slices: a subsample stratified by "
        f"{'label' if known else 'prediction'} so rare subtypes stay visible."
    )
digest = hashlib.blake2b(rows.tobytes(), digest_size=8).hexdigest()
coords = loaders.tsne(f"{model.key}|{source}|{digest}", emb[rows], seed=0)

sub = table.iloc[rows].reset_index(drop=True)
p = prob[rows]
frame = pd.DataFrame(
    {
        "x": coords[:, 0],
        "y": coords[:, 1],
        "row": rows,
        "image_id": sub["image_id"].to_numpy(),
        "slice": sub["slice_index"].to_numpy() + 1,
    }
)
frame["Relative slice level"] = relative_level(
    sub["slice_index"].to_numpy(), sub["n_slices"].to_numpy()
)
thr = model.predictor.thresholds
frame["Prediction"] = np.where(
    p[:, ANY_INDEX] >= thr[ANY_INDEX], "predicted positive", "predicted negative"
)
if known:
    lab = labels[rows]
    frame["Label"] = np.where(lab[:, ANY_INDEX] == 1, "labelled positive", "labelled negative")
    frame["Subtype"] = subtype_names(lab)
else:
    frame["Label"] = "label unknown"
    frame["Subtype"] = subtype_names((p >= thr).astype(np.int8))
probs_text = [
    " · ".join(f"{SHORT_NAMES[c]} {v:.2f}" for c, v in zip(CLASSES, row, strict=True)) for row in p
]
frame["hover"] = [
    f"{plotly_literal(iid)} · slice {s}/{t}<br>{txt}"
    for iid, s, t, txt in zip(
        frame["image_id"], frame["slice"], sub["n_slices"], probs_text, strict=True
    )
]
if colour == "Subtype" and not known:
    st.caption("Labels unknown: subtypes shown are the model's predicted subtypes.")

fig = tsne_figure(frame, colour, f"t-SNE of {len(frame)} slice embeddings")
event = st.plotly_chart(
    fig,
    key="tsne_chart",
    on_select="rerun",
    selection_mode="points",
    config={"displayModeBar": False},
)
st.caption(
    f"{len(frame)} points · hover for the image ID and probabilities · click a point to see its slice."
)

points = (event or {}).get("selection", {}).get("points", []) if event else []
if points:
    custom = points[0].get("customdata") or []
    if custom:
        row = int(custom[0])
        rec = table.iloc[row]
        try:
            if scope == "This study":
                hu = item.study.hu[int(rec["slice_index"])]
            else:
                series = series_rows(table, rec["study_uid"], rec["series_uid"])
                study, pos = loaders.load_series_slice(
                    series, rec["image_id"], settings.max_upload_bytes
                )
                hu = study.hu[pos]
        except (ValueError, RuntimeError, OSError) as err:
            st.error(f"Cannot show this slice: {md_literal(err)}")
        else:
            centre = float(st.session_state["win_centre"])
            width = float(st.session_state["win_width"])
            a, b = st.columns([2, 3])
            a.image(
                windowed_uint8(hu, centre, width),
                caption=f"{md_literal(rec['image_id'])} · slice {int(rec['slice_index']) + 1}/{int(rec['n_slices'])}",
                width="stretch",
            )
            detail = pd.DataFrame(
                {
                    "Class": [widgets.class_label(c) for c in CLASSES],
                    "Probability": [f"{v:.2f}" for v in prob[row]],
                    "Label": [
                        "—" if labels is None or labels[row, k] < 0 else str(labels[row, k])
                        for k in range(len(CLASSES))
                    ],
                }
            )
            b.dataframe(detail, hide_index=True)
