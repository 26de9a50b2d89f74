"""Pure helpers behind the pages: figures, tables, slice arithmetic, safe paths.

Nothing here imports streamlit, so every function can be tested directly. Slice indices
are 0-based internally; everything shown to a reader is 1-based ("slice 1" is the first,
most inferior slice), the way radiology viewers number images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from hohoho_core.labels import ANY_INDEX, CLASSES, SHORT_NAMES, SUBTYPES
from hohoho_core.predict import positive_runs
from hohoho_core.preprocess import window_hu
from hohoho_core.study import LoadReport, Study

__all__ = [
    "CLASS_COLOURS",
    "DEMO_WARNING",
    "class_name",
    "category_colour",
    "format_ranges",
    "is_demo_weights",
    "metadata_table",
    "neighbour_indices",
    "next_positive",
    "resolve_under",
    "skipped_table",
    "study_fingerprint",
    "subtype_names",
    "summary_table",
    "tsne_figure",
    "windowed_uint8",
]

#: Shown on every page that shows a prediction made with the shipped demo weights.
DEMO_WARNING = "Demo weights trained on synthetic phantom studies — not for clinical use"

#: Above this many points the t-SNE scatter uses WebGL instead of SVG.
SVG_MAX_POINTS = 2000

#: One colour per class (Okabe-Ito, colour-blind safe); "any" gets the strongest.
CLASS_COLOURS: dict[str, str] = {
    "epidural": "#E69F00",
    "intraparenchymal": "#56B4E9",
    "intraventricular": "#009E73",
    "subarachnoid": "#F0E442",
    "subdural": "#CC79A7",
    "any": "#D55E00",
}


# --------------------------------------------------------------------------- paths


def resolve_under(root: Path | str, user_path: str) -> Path:
    """``root / user_path`` resolved, refusing anything that ends up outside ``root``.

    Symlinks are followed before the check, so a link inside the root that points out
    of it is refused too.

    Raises:
        ValueError: empty path, a path outside ``root``, or one that does not exist.
    """
    base = Path(root).resolve()
    text = (user_path or "").strip()
    if not text:
        raise ValueError("Enter a folder inside the data root.")
    if "\x00" in text:
        raise ValueError("The folder name contains a NUL character.")
    candidate = Path(text).expanduser()
    target = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"Only folders inside the data root ({base}) can be opened.")
    if not target.exists():
        shown = target.relative_to(base).as_posix() or "."
        raise ValueError(f"Folder not found under the data root: {shown}")
    return target


# --------------------------------------------------------------------------- studies


def study_fingerprint(study: Study) -> str:
    """A short hex key that changes when the study's UIDs, slices or voxels change."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{study.study_uid}\n{study.series_uid}\n{study.hu.shape}\n".encode())
    h.update("\n".join(study.image_ids).encode())
    h.update(np.ascontiguousarray(study.hu).view(np.uint8).data)
    return h.hexdigest()


def windowed_uint8(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """HU ``[H, W]`` (or any shape) -> uint8 in 0..255 through the window ``centre/width``."""
    return np.rint(window_hu(hu, centre, width) * 255.0).astype(np.uint8)


def next_positive(flags: np.ndarray, current: int) -> int | None:
    """First slice after ``current`` whose ``flags (S,)`` is True, wrapping round; or None."""
    f = np.asarray(flags, dtype=bool).reshape(-1)
    hits = np.flatnonzero(f)
    if hits.size == 0:
        return None
    after = hits[hits > current]
    return int(after[0]) if after.size else int(hits[0])


def neighbour_indices(index: int, n_slices: int) -> list[int]:
    """The slice and its neighbours ``[i-1, i, i+1]`` that exist in a study of ``n_slices``."""
    if not 0 <= index < n_slices:
        raise ValueError(f"slice {index} is outside 0..{n_slices - 1}")
    return [i for i in (index - 1, index, index + 1) if 0 <= i < n_slices]


def format_ranges(runs: Sequence[tuple[int, int]]) -> str:
    """0-based inclusive runs -> "3–7, 12" in 1-based slice numbers; "—" when empty."""
    if not runs:
        return "—"
    parts = [f"{a + 1}" if a == b else f"{a + 1}–{b + 1}" for a, b in runs]
    return ", ".join(parts)


def subtype_names(labels: np.ndarray) -> list[str]:
    """``(N, 6)`` 0/1 rows -> "none", one short subtype name, or several joined by "+"."""
    arr = np.asarray(labels) > 0
    out = []
    for row in arr:
        names = [SHORT_NAMES[c] for k, c in enumerate(SUBTYPES) if row[k]]
        out.append("+".join(names) if names else ("any only" if row[ANY_INDEX] else "none"))
    return out


def is_demo_weights(folder: Path | str, shipped: Path | str, data: Mapping[str, Any]) -> bool:
    """True for the shipped weights folder, or any config whose data says "synthetic"."""
    try:
        if Path(folder).resolve() == Path(shipped).resolve():
            return True
    except OSError:
        pass
    if data.get("synthetic") is True:
        return True
    text = " ".join(str(v) for v in data.values()).lower()
    return "synthetic" in text or "phantom" in text


# --------------------------------------------------------------------------- tables


def class_name(cls: str) -> str:
    """ "IPH · intraparenchymal"; plain "any" for the "any" column."""
    short = SHORT_NAMES[cls]
    return cls if short == cls else f"{short} · {cls}"


def _fmt_prob(p: float | None) -> str:
    return "—" if p is None or not np.isfinite(p) else f"{p:.2f}"


def summary_table(
    cnn_prob: np.ndarray | None,
    lstm_prob: np.ndarray | None,
    thresholds: np.ndarray | None,
    labels: np.ndarray | None,
) -> pd.DataFrame:
    """One row per class: highest CNN/LSTM probability, predicted and labelled slice ranges."""
    final = lstm_prob if lstm_prob is not None else cnn_prob
    rows = []
    for k, cls in enumerate(CLASSES):
        row: dict[str, str] = {"Class": class_name(cls)}
        row["Max CNN"] = _fmt_prob(None if cnn_prob is None else float(cnn_prob[:, k].max()))
        row["Max LSTM"] = _fmt_prob(None if lstm_prob is None else float(lstm_prob[:, k].max()))
        if final is not None and thresholds is not None:
            row["Predicted slices"] = format_ranges(positive_runs(final[:, k] >= thresholds[k]))
        else:
            row["Predicted slices"] = "—"
        if labels is not None and (labels[:, k] >= 0).all():
            row["Labelled slices"] = format_ranges(positive_runs(labels[:, k] == 1))
        else:
            row["Labelled slices"] = "—"
        rows.append(row)
    return pd.DataFrame(rows)


def skipped_table(report: LoadReport) -> pd.DataFrame:
    """The reader's skipped files: file, reason, detail (file names only, never identifiers)."""
    return pd.DataFrame(
        [(s.source, s.reason.value, s.detail) for s in report.skipped],
        columns=["File", "Reason", "Detail"],
    )


def metadata_table(study: Study, show_identifiers: bool = False) -> pd.DataFrame:
    """Non-identifying header values and geometry; identifiers only when asked for."""
    rows = [
        ("Slices", str(study.n_slices)),
        ("Matrix", f"{study.hu.shape[1]} × {study.hu.shape[2]}"),
        ("Pixel spacing (mm)", f"{study.pixel_spacing[0]:.3g} × {study.pixel_spacing[1]:.3g}"),
        ("Slice spacing (mm)", f"{study.slice_spacing:.3g}"),
        ("Slice order", study.report.sort_method),
        ("Study UID", study.study_uid),
        ("Series UID", study.series_uid),
    ]
    rows += [(k, str(v)) for k, v in sorted(study.metadata.items())]
    if show_identifiers:
        rows += [(k, str(v)) for k, v in sorted(study.identifiers.items())]
    return pd.DataFrame(rows, columns=["Field", "Value"])


# --------------------------------------------------------------------------- charts


_NEUTRAL = "#8a8f98"
_NEUTRAL_VALUES = {"none", "labelled negative", "predicted negative", "label unknown"}
_POSITIVE_VALUES = {"labelled positive", "predicted positive", "any only"}
_EXTRA = ("#0072B2", "#F5C710", "#61D04F", "#DF536B", "#2297E6", "#28E2E5", "#CD0BBC")


def category_colour(value: str, i: int) -> str:
    """Grey for "nothing", the "any" colour for positives, the class colour for a subtype."""
    if value in _NEUTRAL_VALUES:
        return _NEUTRAL
    if value in _POSITIVE_VALUES:
        return CLASS_COLOURS["any"]
    by_short = {SHORT_NAMES[c]: CLASS_COLOURS[c] for c in SUBTYPES}
    return by_short.get(value, _EXTRA[i % len(_EXTRA)])


def tsne_figure(frame: pd.DataFrame, colour: str, title: str) -> go.Figure:
    """Scatter of a t-SNE frame (columns ``x``, ``y``, ``image_id``, ``slice``, ``row`` and
    the colour column): numeric colours get a colour bar, categories a legend. Each trace
    carries ``customdata = [row, image_id, slice, hover text]``.
    """
    fig = go.Figure()
    custom_cols = ["row", "image_id", "slice", "hover"]
    # SVG up to a few thousand points (each point is a clickable element), WebGL above.
    scatter = go.Scatter if len(frame) <= SVG_MAX_POINTS else go.Scattergl
    if pd.api.types.is_numeric_dtype(frame[colour]):
        fig.add_trace(
            scatter(
                x=frame["x"],
                y=frame["y"],
                mode="markers",
                name=colour,
                customdata=frame[custom_cols].to_numpy(dtype=object),
                marker={
                    "color": frame[colour],
                    "colorscale": "Viridis",
                    "size": 7,
                    "colorbar": {"title": colour},
                },
                hovertemplate="%{customdata[3]}<extra></extra>",
                selected={"marker": {"size": 13}},
                unselected={"marker": {"opacity": 0.45}},
            )
        )
    else:
        for i, (value, part) in enumerate(frame.groupby(colour, sort=True)):
            fig.add_trace(
                scatter(
                    x=part["x"],
                    y=part["y"],
                    mode="markers",
                    name=str(value),
                    customdata=part[custom_cols].to_numpy(dtype=object),
                    marker={"color": category_colour(str(value), i), "size": 7},
                    hovertemplate="%{customdata[3]}<extra></extra>",
                    selected={"marker": {"size": 13}},
                    unselected={"marker": {"opacity": 0.45}},
                )
            )
    fig.update_layout(
        title=title,
        height=560,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        legend={"title": colour},
    )
    return fig
