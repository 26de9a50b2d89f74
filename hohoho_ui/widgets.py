"""Small ``*_ui()`` functions that draw widgets and return what the user chose.

Pages are short scripts that call these and the core. User input never produces a
traceback: errors from the reader, the weights or the store are shown with ``st.error``
and the reader's own message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from hohoho_core.dicom import StudyLoadError, Upload, scan_source
from hohoho_core.labels import ANY_INDEX
from hohoho_core.predict import Predictor, StudyPrediction
from hohoho_core.preprocess import WINDOWS
from hohoho_core.rsna import default_labels_csv, is_dataset_folder, read_labels, series_rows
from hohoho_core.study import LoadReport, Study
from hohoho_core.weights import TENSORS_FILE, WeightsError
from hohoho_ui import loaders, state
from hohoho_ui.settings import Settings, get_settings
from hohoho_ui.text import md_literal
from hohoho_ui.viewer_component import ViewerEvent, ViewerPayload, viewer, viewer_payload
from hohoho_ui.views import (
    DEMO_WARNING,
    class_name,
    is_demo_weights,
    metadata_table,
    next_positive,
    resolve_under,
    skipped_table,
    study_fingerprint,
    summary_table,
    windowed_uint8,
)

__all__ = [
    "ModelState",
    "browser_viewer_ui",
    "dataset_ui",
    "demo_notice_ui",
    "kept",
    "load_error_ui",
    "model_message",
    "model_ui",
    "open_study_sidebar_ui",
    "page_setup",
    "require_study_ui",
    "series_thumbnails_ui",
    "slice_nav_ui",
    "study_header_ui",
    "study_source_ui",
    "summary_ui",
]



# --------------------------------------------------------------------------- basics


def page_setup(title: str, icon: str) -> Settings:
    """Page config, session defaults and settings (a bad setting stops the page)."""
    st.set_page_config(page_title=f"HOHOHO · {title}", page_icon=icon, layout="wide")
    state.init_state()
    try:
        return get_settings()
    except ValueError as err:
        st.error(md_literal(err))
        st.stop()


def kept(widget: Callable[..., Any], label: str, key: str, default: Any, **kwargs: Any) -> Any:
    """Draw ``widget`` whose value lives in the plain session key ``key``.

    Streamlit forgets a widget's value when a page without it runs; the plain key does
    not, so the choice survives page switches. ``options`` (if given) must hold it, and a
    kept number is clamped to ``min_value``/``max_value`` (a shorter list than last time
    must not make the widget refuse its own value).
    """
    wkey = f"_w_{key}"
    options = kwargs.get("options")
    if key not in st.session_state or (
        options is not None and st.session_state[key] not in list(options)
    ):
        st.session_state[key] = default
    value = st.session_state[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        if hi is not None and value > hi:
            st.session_state[key] = hi
        elif lo is not None and value < lo:
            st.session_state[key] = lo
    st.session_state[wkey] = st.session_state[key]

    def _store() -> None:
        st.session_state[key] = st.session_state[wkey]

    return widget(label, key=wkey, on_change=_store, **kwargs)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelState:
    """The loaded model (or why there is none)."""

    predictor: Predictor | None
    key: str | None
    folder: Path | None
    is_demo: bool
    message: str | None  # plain text: `model_message` makes it markdown


def model_message(model: ModelState, default: str) -> str:
    """Why there is no model, as markdown (it may name a folder or quote a file), or ``default``."""
    return md_literal(model.message) if model.message else default


def _allowed_weights(folder: Path, settings: Settings) -> bool:
    allowed = {settings.weights_dir.resolve(), settings.shipped_weights.resolve()}
    return folder in allowed or folder.is_relative_to(settings.data_root)


def _describe(predictor: Predictor) -> str:
    cfg = predictor.config
    pre = predictor.preprocess_config
    stage = " + LSTM" if predictor.lstm is not None else " (no LSTM)"
    return f"{cfg.arch}{stage} · input {pre.size} px, {pre.mode}"


def model_ui(settings: Settings) -> ModelState:
    """Sidebar: the weights folder and the model status; returns the loaded model."""
    with st.sidebar:
        st.subheader("Model")
        text = kept(
            st.text_input,
            "Weights folder",
            "weights_choice",
            str(settings.weights_dir),
            help="The configured folder, the shipped weights/ or a folder inside the data root.",
        )
        folder = Path(str(text).strip() or settings.weights_dir).expanduser()
        folder = (folder if folder.is_absolute() else settings.data_root / folder).resolve()
        if not _allowed_weights(folder, settings):
            msg = "Weights must be the configured folder or a folder inside the data root."
            st.error(md_literal(msg))
            return ModelState(None, None, None, False, msg)
        if not (folder / TENSORS_FILE).is_file():
            msg = f"No model in {folder} yet: studies can be viewed without predictions."
            st.caption(md_literal(msg))
            return ModelState(None, None, folder, False, msg)
        key = loaders.weights_key(folder)
        try:
            predictor = loaders.load_predictor(key, str(folder))
        except WeightsError as err:
            st.error(f"Cannot use these weights: {md_literal(err)}")
            return ModelState(None, None, folder, False, str(err))
        except Exception as err:  # a broken file must not show a traceback
            msg = f"Cannot load the weights ({type(err).__name__}): {err}"
            st.error(md_literal(msg))
            return ModelState(None, None, folder, False, msg)
        demo = is_demo_weights(folder, settings.shipped_weights, predictor.config.data)
        st.caption(md_literal(_describe(predictor)))  # names from config.json
        st.caption(md_literal(f"CNN arithmetic: {predictor.path_note}"))  # issue 16
        if demo:
            st.caption("Demo weights (synthetic training data).")
        return ModelState(predictor, key, folder, demo, None)


def demo_notice_ui(model: ModelState) -> None:
    """The not-for-clinical-use warning, whenever demo weights make the predictions."""
    if model.predictor is not None and model.is_demo:
        st.warning(DEMO_WARNING, icon="⚠️")


# --------------------------------------------------------------------------- studies


def _demo_series(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(study_uid, series_uid, label) per indexed series, in index order."""
    out = []
    groups = table.groupby(["study_uid", "series_uid"], sort=False)
    for n, ((study_uid, series_uid), rows) in enumerate(groups, start=1):
        any_pos = int((rows["any"] == 1).sum())
        text = f"Study {n} · {len(rows)} slices"
        if (rows["any"] >= 0).all():
            text += f" · {any_pos} labelled positive" if any_pos else " · no bleed labelled"
        out.append((study_uid, series_uid, text))
    return out


def open_indexed(
    root: Path, table: pd.DataFrame, study_uid: str, series_uid: str, name: str, settings: Settings
) -> state.OpenStudy:
    """Load one series of an RSNA-layout index and make it the open study."""
    rows = series_rows(table, study_uid, series_uid)
    study = loaders.load_indexed_study(tuple(rows["path"]), settings.max_upload_bytes)
    item = state.OpenStudy(
        study=study,
        key=study_fingerprint(study),
        name=name,
        source_id=("demo", str(root), study_uid, series_uid),
        labels=loaders.labels_for(rows, study.image_ids),
        dataset_root=str(root),
    )
    state.open_study(item)
    st.session_state.pop("load_error", None)
    return item


def _demo_table(settings: Settings) -> pd.DataFrame | None:
    root = settings.demo_dir
    if not is_dataset_folder(root):
        return None
    table = loaders.dataset_index(root)
    return table if len(table) else None


def _set_error(message: str, report: LoadReport | None = None) -> None:
    st.session_state["load_error"] = (message, report)


def _labels_near(folder: Path, study: Study, root: Path) -> np.ndarray | None:
    """Labels from a ``stage_2_train.csv`` in the folder or its parent, when there is one.

    Only inside ``root`` (the data root): opening the root itself never reads its parent.
    """
    root = root.resolve()
    folder = folder.resolve()
    places = [p for p in (folder, folder.parent) if p.is_relative_to(root)]
    for candidate in (default_labels_csv(p) for p in places):
        if candidate.is_file():
            try:
                frame = read_labels(candidate).reset_index()
            except (ValueError, OSError, KeyError):
                return None
            labels = loaders.labels_for(frame, study.image_ids)
            return labels if (labels >= 0).any() else None
    return None


def _open_source(
    kind: str, source: Any, name: str, settings: Settings, series_uid: str | None = None
) -> None:
    """Open uploads or a server folder through the reader; errors go to ``load_error``."""
    limits = {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_total_upload_bytes": settings.max_upload_bytes,
        "max_zip_bytes": settings.max_upload_bytes,
    }
    try:
        with st.spinner("Reading the files…"):
            if kind == "upload":
                # One cached scan per upload: a zip is extracted once for the series list
                # and every series loaded from it, including later picks.
                scan = loaders.upload_scan(source, settings.max_upload_bytes)
                series, study = scan.series, scan.load(series_uid)
            else:
                # A server folder may change between clicks: scanned afresh, once per open.
                with scan_source(source, **limits) as scan:
                    series, study = scan.series, scan.load(series_uid)
    except StudyLoadError as err:
        _set_error(str(err), err.report)
        return
    except (ValueError, OSError) as err:
        _set_error(f"Cannot read these files: {err}")
        return
    labels = _labels_near(Path(source), study, settings.data_root) if kind == "folder" else None
    item = state.OpenStudy(
        study=study,
        key=study_fingerprint(study),
        name=name,
        source_id=(kind, name, study.series_uid),
        labels=labels,
    )
    state.open_study(item)
    st.session_state.pop("load_error", None)
    if len(series) > 1:
        choices = [
            (s.series_uid, f"{s.description or 'series'} · {s.n_slices} slices · {s.orientation}")
            for s in series
        ]
        st.session_state["pending_source"] = (kind, source, name, choices)
    else:
        st.session_state["pending_source"] = None


def _series_picker_ui(settings: Settings) -> None:
    pending = st.session_state.get("pending_source")
    if not pending:
        return
    kind, source, name, choices = pending
    item = state.current()
    uids = [uid for uid, _ in choices]
    labels = dict(choices)
    default = (
        item.study.series_uid if item is not None and item.study.series_uid in uids else uids[0]
    )
    chosen = st.selectbox(
        f"Series in {md_literal(name)} ({len(uids)})",
        uids,
        index=uids.index(default),
        format_func=lambda uid: labels[uid],
        key="series_choice",
    )
    if item is None or chosen != item.study.series_uid:
        _open_source(kind, source, name, settings, series_uid=chosen)
        st.session_state["pending_source"] = (kind, source, name, choices)


def study_source_ui(settings: Settings) -> None:
    """Sidebar: open a demo study, uploaded files, a server folder or a PACS study."""
    with st.sidebar:
        st.subheader("Study")
        kind = kept(
            st.radio,
            "Open from",
            "source_kind",
            "Demo studies",
            options=["Demo studies", "Upload", "Server folder", "PACS (DICOMweb)"],
            horizontal=True,
        )
        if kind == "Demo studies":
            _demo_picker_ui(settings)
        elif kind == "Upload":
            _upload_ui(settings)
        elif kind == "PACS (DICOMweb)":
            from hohoho_ui.pacs import pacs_ui  # search and retrieve; opens as an upload

            pacs_ui(settings, _open_source)
        else:
            _folder_ui(settings)
        _series_picker_ui(settings)


def _demo_picker_ui(settings: Settings) -> None:
    try:
        table = _demo_table(settings)
    except Exception as err:  # an unreadable demo folder must not break the page
        st.error(f"Cannot index the demo folder: {md_literal(err)}")
        return
    if table is None:
        st.info(f"No demo studies in {md_literal(settings.demo_dir)}: run `make demo`.")
        return
    series = _demo_series(table)
    keys = [f"{s}|{r}" for s, r, _ in series]
    names = {f"{s}|{r}": text for s, r, text in series}
    choice = kept(
        st.selectbox, "Demo study", "demo_choice", keys[0], options=keys, format_func=names.get
    )
    study_uid, series_uid = choice.split("|", 1)
    want = ("demo", str(settings.demo_dir), study_uid, series_uid)
    item = state.current()
    if item is None or item.source_id != want:
        try:
            open_indexed(settings.demo_dir, table, study_uid, series_uid, names[choice], settings)
            st.session_state["pending_source"] = None
        except StudyLoadError as err:
            _set_error(str(err), err.report)


def _upload_ui(settings: Settings) -> None:
    files = st.file_uploader(
        f"DICOM files or one .zip (up to {settings.max_upload_mb} MB)",
        accept_multiple_files=True,
        key="uploads",
    )
    if st.button("Open uploaded files", disabled=not files, key="open_uploads", type="primary"):
        uploads = [Upload(f.name, f.getvalue()) for f in files or []]
        too_big = [u.name for u in uploads if len(u.data) > settings.max_upload_bytes]
        if too_big:
            _set_error(
                f"{len(too_big)} files exceed {settings.max_upload_mb} MB "
                f"(HOHOHO_MAX_UPLOAD_MB), e.g. {too_big[0]}."
            )
            return
        name = uploads[0].name if len(uploads) == 1 else f"{len(uploads)} uploaded files"
        _open_source("upload", uploads, name, settings)


def _folder_ui(settings: Settings) -> None:
    rel = kept(
        st.text_input,
        f"Folder inside {md_literal(settings.data_root)}",
        "folder_rel",
        "",
        placeholder="e.g. demo/stage_2_train",
    )
    if st.button("Open folder", key="open_folder", type="primary"):
        try:
            target = resolve_under(settings.data_root, rel)
        except ValueError as err:
            _set_error(str(err))
            return
        shown = target.relative_to(settings.data_root).as_posix() or "."
        _open_source("folder", target, shown, settings)


def load_error_ui() -> None:
    """The reader's message for the last failed open, with what it skipped and why."""
    failed = st.session_state.get("load_error")
    if not failed:
        return
    message, report = failed
    st.error(md_literal(message))  # quotes file names and the reader's reasons
    if report is not None and report.skipped:
        with st.expander(f"Files the reader skipped ({len(report.skipped)})"):
            st.dataframe(skipped_table(report), hide_index=True)


def require_study_ui(settings: Settings) -> state.OpenStudy | None:
    """The open study; if none, the first demo study (pages can be opened directly)."""
    item = state.current()
    if item is not None:
        return item
    try:
        table = _demo_table(settings)
        if table is not None:
            study_uid, series_uid, name = _demo_series(table)[0]
            return open_indexed(settings.demo_dir, table, study_uid, series_uid, name, settings)
    except StudyLoadError as err:
        st.error(md_literal(err))
        return None
    st.info("Open a study in the viewer first (no demo studies found: run `make demo`).")
    return None


# --------------------------------------------------------------------------- viewer


def study_header_ui(item: state.OpenStudy) -> None:
    """One line: which study, its geometry."""
    study = item.study
    st.markdown(
        f"**{md_literal(item.name)}** · {study.hu.shape[1]} × {study.hu.shape[2]} px of "
        f"{study.pixel_spacing[0]:.2g} mm · slices {study.slice_spacing:.2g} mm apart"
    )


#: Series thumbnails are at most this many pixels across.
THUMB_PX = 112


@st.cache_data(max_entries=64, show_spinner="Drawing the series thumbnails…")
def _thumbnail(kind: str, name: str, series_uid: str, max_bytes: int, _source: Any) -> np.ndarray:
    """The middle slice of one series in the brain window, at most `THUMB_PX` across."""
    limits = {"max_upload_bytes": max_bytes, "max_total_upload_bytes": max_bytes,
              "max_zip_bytes": max_bytes}
    if kind == "upload":
        study = loaders.upload_scan(_source, max_bytes).load(series_uid)
    else:
        with scan_source(_source, **limits) as scan:
            study = scan.load(series_uid)
    hu = study.hu[study.n_slices // 2]
    step = max(1, int(np.ceil(max(hu.shape) / THUMB_PX)))
    return windowed_uint8(hu[::step, ::step], *WINDOWS["brain"])


def series_thumbnails_ui(settings: Settings) -> None:
    """When the source holds several series: one thumbnail each; a click opens it."""
    pending = st.session_state.get("pending_source")
    item = state.current()
    if not pending or item is None:
        return
    kind, source, name, choices = pending
    st.caption(f"{len(choices)} series in this source: choose one.")
    cols = st.columns(min(len(choices), 6), gap="small")
    for k, (uid, text) in enumerate(choices[:12]):
        with cols[k % len(cols)]:
            try:
                st.image(_thumbnail(kind, name, uid, settings.max_upload_bytes, source))
            except (StudyLoadError, ValueError, OSError) as err:
                st.caption(f"No preview: {md_literal(err)}")
            current = uid == item.study.series_uid
            st.button(
                md_literal(text),
                key=f"series_thumb_{k}",
                type="primary" if current else "secondary",
                disabled=current,
                on_click=st.session_state.__setitem__,
                args=("series_choice", uid),
                width="stretch",
            )


def open_study_sidebar_ui() -> None:
    """Sidebar note on the pages: which study is open (it is chosen in the viewer)."""
    item = state.current()
    with st.sidebar:
        st.subheader("Study")
        if item is None:
            st.caption("None open: choose one in the viewer (app).")
        else:
            where = f"slice {state.current_slice() + 1} / {item.study.n_slices}"
            st.caption(f"{md_literal(item.name)} · {where}")
            st.page_link("app.py", label="Change in the viewer", icon=":material/open_in_new:")


def slice_nav_ui(
    n_slices: int,
    positive: np.ndarray | None,
    prefix: str,
    shortcuts: bool = True,
) -> int:
    """First / previous / next / last / next-positive buttons and a slice slider.

    Returns the current 0-based slice. Keyboard (Streamlit button shortcuts): Home and
    End for first and last, Up and Down for previous and next (OHIF's convention), N for
    the next slice predicted positive; a focused slider also moves with the arrow keys.
    """
    cur = state.current_slice()
    buttons = [
        ("first", "First", ":material/first_page:", 0, "Home"),
        ("prev", "Prev", ":material/keyboard_arrow_up:", cur - 1, "Up"),
        ("next", "Next", ":material/keyboard_arrow_down:", cur + 1, "Down"),
        ("last", "Last", ":material/last_page:", n_slices - 1, "End"),
    ]
    cols = st.columns([1, 1, 1, 1, 2.2], gap="small")
    for col, (name, label, icon, target_index, key) in zip(cols, buttons, strict=False):
        col.button(
            label,
            key=f"{prefix}_{name}",
            icon=icon,
            on_click=state.set_slice,
            args=(target_index,),
            shortcut=key if shortcuts else None,
            width="stretch",
        )
    target = next_positive(positive, cur) if positive is not None else None
    cols[4].button(
        "Next positive" if target is None else f"Next positive ({target + 1})",
        key=f"{prefix}_pos",
        icon=":material/skip_next:",
        on_click=state.set_slice,
        args=(cur if target is None else target,),
        disabled=target is None,
        shortcut="N" if shortcuts else None,
        width="stretch",
        help="The next slice where the model calls any class positive.",
    )
    if n_slices > 1:
        skey = f"{prefix}_slider"
        st.session_state[skey] = cur + 1

        def _moved() -> None:
            state.set_slice(int(st.session_state[skey]) - 1)

        st.slider(
            "Slice",
            1,
            n_slices,
            key=skey,
            on_change=_moved,
            label_visibility="collapsed",
            help="Drag, or focus and use the arrow keys.",
        )
    return state.current_slice()


# A resource, not data: the payload is immutable and megabytes large, so reruns share it
# instead of unpickling a copy each time.
@st.cache_resource(max_entries=8, show_spinner="Preparing the study for the browser…")
def _payload(
    key: str, name: str, _study: Study, _pred: StudyPrediction | None, _labels: np.ndarray | None
) -> ViewerPayload:
    return viewer_payload(
        _study,
        key,
        name,
        cnn_prob=None if _pred is None else _pred.cnn_prob,
        lstm_prob=None if _pred is None else _pred.lstm_prob,
        thresholds=None if _pred is None else _pred.thresholds,
        labels=_labels,
    )


def browser_viewer_ui(
    item: state.OpenStudy, weights_key: str | None, pred: StudyPrediction | None
) -> ViewerEvent | None:
    """The study in the browser viewer (scroll, cine, windows, zoom and chart run there).

    Returns a new event from the browser (once: events already handled return None).
    A "sync" event is applied here (the slice and window follow into the session).
    """
    key = f"{item.key}|{weights_key if pred is not None else '-'}|{item.source_id}"
    payload = _payload(key, item.name, item.study, pred, item.labels)
    event = viewer(payload, state.viewer_start(item), key="browser_viewer")
    if event is None or event.seq <= float(st.session_state.get("viewer_seq", 0.0)):
        return None
    st.session_state["viewer_seq"] = event.seq
    if event.kind == "sync" and event.slice is not None:
        state.note_viewer(item, event.slice, event.window, event.centre, event.width)
    return event


def summary_ui(item: state.OpenStudy, pred: StudyPrediction | None) -> None:
    """Highest probability per class, positive ranges, skipped files, metadata."""
    study = item.study
    st.subheader("Study summary")
    if pred is not None:
        any_max = float(pred.prob[:, ANY_INDEX].max())
        positive = bool(pred.labels[:, ANY_INDEX].any())
        verdict = "positive for hemorrhage" if positive else "no slice above threshold"
        st.markdown(f"Model: **{verdict}** (highest 'any' probability {any_max:.2f}).")
        for note in pred.notes:
            st.warning(md_literal(note))
    frame = summary_table(
        None if pred is None else pred.cnn_prob,
        None if pred is None else pred.lstm_prob,
        None if pred is None else pred.thresholds,
        item.labels,
    )
    st.dataframe(frame, hide_index=True)
    report = study.report
    skipped = len(report.skipped)
    with st.expander(f"Files the reader skipped ({skipped}) · {report.files_seen} files seen"):
        if skipped:
            st.dataframe(skipped_table(report), hide_index=True)
        else:
            st.write("Every file was used.")
        for w in report.warnings:
            st.warning(md_literal(w))
    with st.expander("DICOM metadata"):
        show = kept(
            st.checkbox,
            "Show patient name and ID",
            "show_identifiers",
            False,
            help="Off by default: identifiers are never logged or stored by the app.",
        )
        st.dataframe(metadata_table(study, show_identifiers=bool(show)), hide_index=True)


def class_label(cls: str) -> str:
    """Display name of a class for selectboxes and tables."""
    return class_name(cls)


def dataset_ui(settings: Settings) -> Path | None:
    """Pick an RSNA-layout dataset: the demo, or a folder inside the data root."""
    kinds = ["Demo dataset", "Folder inside the data root"]
    kind = kept(st.radio, "Dataset", "dataset_kind", kinds[0], options=kinds, horizontal=True)
    if kind == kinds[0]:
        root = settings.demo_dir
    else:
        rel = kept(
            st.text_input,
            f"RSNA-layout folder inside {md_literal(settings.data_root)}",
            "dataset_rel",
            "",
            placeholder="e.g. rsna (holding stage_2_train/ and stage_2_train.csv)",
        )
        if not str(rel).strip():
            st.info("Enter a folder holding stage_2_train/ (and stage_2_train.csv for labels).")
            return None
        try:
            root = resolve_under(settings.data_root, rel)
        except ValueError as err:
            st.error(md_literal(err))
            return None
    if not is_dataset_folder(root):
        hint = " (`make demo` writes the demo)" if kind == kinds[0] else ""
        st.info(f"No DICOM dataset at {md_literal(root)}{hint}.")
        return None
    return root
