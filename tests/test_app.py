"""The study viewer (app.py) through streamlit's AppTest, and the pure helpers behind it.

A small synthetic demo set (3 studies, 128 px) and a random-init weights folder (64 px
input) are made once per test session; each test points the HOHOHO_* variables at them.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from hohoho_core.dicom import load_study
from hohoho_core.labels import CLASSES
from hohoho_core.predict import Predictor
from hohoho_ui.settings import REPO_ROOT, SHIPPED_WEIGHTS, get_settings
from hohoho_ui.views import (
    DEMO_WARNING,
    format_ranges,
    is_demo_weights,
    neighbour_indices,
    next_positive,
    resolve_under,
    subtype_names,
)

APP = REPO_ROOT / "app.py"
TIMEOUT = 120  # seconds per AppTest run: the first one imports torch and runs the model


# --------------------------------------------------------------------------- shared data


@dataclass(frozen=True)
class AppData:
    """Folders the app is pointed at (all under ``root``, the data root)."""

    root: Path
    demo: Path
    weights: Path
    cache: Path


_BUILT: dict[str, AppData] = {}


def save_random_weights(folder: Path, size: int = 64, data: dict | None = None) -> Path:
    """A random-init ResNet-18 + small LSTM at ``size`` px, saved the project's way."""
    import torch

    from hohoho_core.models import SequenceModel, create_model
    from hohoho_core.weights import ModelConfig, save_weights

    torch.manual_seed(0)
    cnn = create_model("resnet18", init="random")
    lstm = SequenceModel(in_dim=cnn.embed_dim, hidden=16, layers=1)
    config = ModelConfig(
        arch="resnet18",
        embed_dim=cnn.embed_dim,
        preprocess={"mode": "stacked", "size": size, "crop": True},
        lstm={"hidden": 16, "layers": 1},
        data=data if data is not None else {"description": "random init for the app tests"},
    )
    return save_weights(folder, cnn, lstm, config)


def build_app_data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    """Demo set + weights, made once per session (shared by the app, page and browser tests)."""
    if "data" not in _BUILT:
        from hohoho_core.synthetic import generate_dataset

        root = tmp_path_factory.mktemp("hohoho_app")
        demo = root / "demo"
        generate_dataset(demo, 3, 2019, size=128, slices=(8, 12))
        weights = save_random_weights(root / "weights")
        _BUILT["data"] = AppData(root=root, demo=demo, weights=weights, cache=root / "cache")
    return _BUILT["data"]


def point_env(monkeypatch: pytest.MonkeyPatch, data: AppData, store: Path, **extra: str) -> None:
    monkeypatch.setenv("HOHOHO_DEMO_DIR", str(data.demo))
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(data.weights))
    monkeypatch.setenv("HOHOHO_DATA_ROOT", str(data.root))
    monkeypatch.setenv("HOHOHO_STORE", str(store))
    monkeypatch.setenv("XDG_CACHE_HOME", str(data.cache))
    monkeypatch.delenv("HOHOHO_MAX_UPLOAD_MB", raising=False)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def app_data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    return build_app_data(tmp_path_factory)


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch, app_data: AppData, tmp_path: Path
) -> Iterator[AppData]:
    point_env(monkeypatch, app_data, tmp_path / "decisions.sqlite")
    yield app_data


def first_study_paths(data: AppData) -> list[Path]:
    """Files of the first demo series in index order (the app's "Study 1")."""
    from hohoho_core.rsna import build_index

    table = build_index(data.demo, cache_dir=data.cache, workers=1, progress=False).table
    first = table.groupby(["study_uid", "series_uid"], sort=False).ngroup() == 0
    return [data.demo / p for p in table.loc[first].sort_values("slice_index")["path"]]


def run_app(path: Path = APP) -> AppTest:
    at = AppTest.from_file(str(path), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def shown(markdown: str) -> str:
    """The text a reader sees for markdown whose file/person strings went through
    `hohoho_ui.text.md_literal` (its backslash escapes and invisible word joiners removed)."""
    return _MD_ESCAPE.sub(r"\1", markdown).replace("\u2060", "")


def texts(elements) -> list[str]:
    """The shown text of markdown elements (``e.value`` is their markdown source)."""
    return [shown(e.value) for e in elements]


def decode(value: object) -> np.ndarray:
    """A plotly array from a JSON spec: plain list, or typed array ``{dtype, bdata}``."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            dims = [
                int(s) for s in str(shape).replace("(", "").replace(")", "").split(",") if s.strip()
            ]
            arr = arr.reshape(dims)
        return arr
    return np.asarray(value)


def image_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def chart_spec(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def viewer_element(at: AppTest):  # type: ignore[no-untyped-def]
    found = [e for e in at.get("component_instance")
             if e.proto.component_name.endswith("hohoho_viewer")]
    assert len(found) == 1, [e.proto.component_name for e in at.get("component_instance")]
    return found[0]


def viewer_args(at: AppTest) -> dict:
    """The browser viewer's JSON arguments: ``meta`` (the study) and ``start``."""
    return json.loads(viewer_element(at).proto.json_args)


def viewer_volume(at: AppTest) -> bytes:
    """The deflated int16 volume the browser viewer receives."""
    arg = next(a for a in viewer_element(at).proto.special_args if a.key == "volume")
    return bytes(arg.bytes)


def slice_heading(at: AppTest) -> str:
    """The heading the browser viewer draws first: "Slice k / n"."""
    args = viewer_args(at)
    return f"Slice {args['start']['slice'] + 1} / {args['meta']['shape'][0]}"


_SEQ = [1000.0]


def browser_event(at: AppTest, seq: float | None = None, **value: object) -> AppTest:
    """What the browser viewer sends back (its component value), then a rerun."""
    _SEQ[0] += 1
    at.session_state["browser_viewer"] = {**value, "seq": _SEQ[0] if seq is None else seq}
    return at.run()


# --------------------------------------------------------------------------- pure helpers


def test_settings_defaults_and_overrides(tmp_path: Path) -> None:
    s = get_settings({})
    assert s.demo_dir == (REPO_ROOT / "data" / "demo").resolve()
    assert s.weights_dir == SHIPPED_WEIGHTS.resolve()
    assert s.store_path == (REPO_ROOT / "data" / "decisions.sqlite").resolve()
    assert s.max_upload_mb == 512 and s.max_upload_bytes == 512 * 1024 * 1024
    s = get_settings({"HOHOHO_DATA_ROOT": str(tmp_path), "HOHOHO_MAX_UPLOAD_MB": "3"})
    assert s.data_root == tmp_path.resolve() and s.max_upload_bytes == 3 * 1024 * 1024
    with pytest.raises(ValueError, match="HOHOHO_MAX_UPLOAD_MB"):
        get_settings({"HOHOHO_MAX_UPLOAD_MB": "lots"})
    with pytest.raises(ValueError, match="at least 1"):
        get_settings({"HOHOHO_MAX_UPLOAD_MB": "0"})


def test_resolve_under_keeps_paths_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    assert resolve_under(root, "a/b") == (root / "a" / "b").resolve()
    assert resolve_under(root, str(root / "a")) == (root / "a").resolve()
    for bad in ("../outside", "a/../../outside", str(tmp_path / "outside"), "escape", "/etc"):
        with pytest.raises(ValueError, match="inside the data root"):
            resolve_under(root, bad)
    with pytest.raises(ValueError, match="not found"):
        resolve_under(root, "a/missing")
    with pytest.raises(ValueError, match="Enter a folder"):
        resolve_under(root, "  ")


def test_slice_helpers_by_hand() -> None:
    flags = np.array([0, 1, 1, 0, 0, 1, 0], dtype=bool)
    assert next_positive(flags, 0) == 1
    assert next_positive(flags, 2) == 5
    assert next_positive(flags, 5) == 1  # wraps round
    assert next_positive(np.zeros(4, bool), 0) is None
    assert format_ranges([(0, 0), (2, 5)]) == "1, 3–6"
    assert format_ranges([]) == "—"
    assert neighbour_indices(0, 5) == [0, 1]
    assert neighbour_indices(2, 5) == [1, 2, 3]
    assert neighbour_indices(4, 5) == [3, 4]
    labels = np.array([[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]])
    assert subtype_names(labels) == ["none", "IPH+SDH", "any only"]


def test_is_demo_weights(tmp_path: Path) -> None:
    assert is_demo_weights(SHIPPED_WEIGHTS, SHIPPED_WEIGHTS, {})
    assert is_demo_weights(tmp_path, SHIPPED_WEIGHTS, {"description": "Synthetic phantom set"})
    assert is_demo_weights(tmp_path, SHIPPED_WEIGHTS, {"synthetic": True})
    assert not is_demo_weights(tmp_path, SHIPPED_WEIGHTS, {"description": "RSNA 2019 stage 2"})


# --------------------------------------------------------------------------- the viewer


def test_viewer_sends_the_study_once_and_follows_the_browser(app_env: AppData) -> None:
    """Scrolling happens in the browser; what it reports (the slice and window once it
    pauses) moves the session, and the study is not sent again for it."""
    at = run_app()
    n = len(first_study_paths(app_env))
    assert slice_heading(at) == f"Slice 1 / {n}"
    first = viewer_args(at)
    assert first["meta"]["shape"][0] == n
    browser_event(at, kind="sync", slice=2, window="brain", centre=40, width=80)
    assert at.session_state["slice"] == 2
    assert viewer_args(at)["start"] == first["start"]  # same arguments: nothing re-sent
    browser_event(at, kind="sync", slice=n + 5, window="brain", centre=40, width=80)
    assert at.session_state["slice"] == n - 1  # clamped at the last slice
    browser_event(at, kind="sync", slice=1, window="brain", centre=40, width=80, seq=1.0)
    assert at.session_state["slice"] == n - 1  # an old event is not applied again
    assert viewer_args(at)["start"] == first["start"]
    at.session_state["slice"] = 3  # another page moved the slice: the browser jumps there
    at.run()
    moved = viewer_args(at)["start"]
    assert moved["token"] != first["start"]["token"] and moved["slice"] == 3
    assert not at.exception and not at.error


def test_viewer_payload_marks_the_predicted_slices(app_env: AppData) -> None:
    at = run_app()
    # The sidebar says which arithmetic ran and what ran it (issue 16).
    arithmetic = [c.value for c in at.sidebar.caption if "CNN arithmetic" in c.value]
    assert len(arithmetic) == 1 and "CNN run by onnxruntime" in arithmetic[0]
    study = load_study(first_study_paths(app_env))
    pred = Predictor.from_folder(app_env.weights).predict(study)
    meta = viewer_args(at)["meta"]
    assert meta["positive"] == pred.labels.any(axis=1).tolist()
    # N in the browser goes where next_positive says (the same rule, in main.js)
    expected = next_positive(pred.labels.any(axis=1), 0)
    flags = np.asarray(meta["positive"])
    assert next_positive(flags, 0) == expected


def test_viewer_payload_holds_the_study_and_its_probabilities(app_env: AppData) -> None:
    from hohoho_ui.viewer_component.payload import decode_volume

    at = run_app()
    paths = first_study_paths(app_env)
    study = load_study(paths)
    pred = Predictor.from_folder(app_env.weights).predict(study)
    args = viewer_args(at)
    meta = args["meta"]
    np.testing.assert_allclose(meta["cnn"], pred.cnn_prob, atol=5e-4)
    np.testing.assert_allclose(meta["lstm"], pred.lstm_prob, atol=5e-4)
    np.testing.assert_allclose(meta["thresholds"], pred.thresholds, atol=5e-4)
    assert meta["image_ids"] == study.image_ids
    volume = decode_volume(viewer_volume(at), tuple(meta["shape"]))
    np.testing.assert_array_equal(volume, np.clip(np.rint(study.hu), -1024, 3071))


def test_scrolling_never_reruns_the_model(
    app_env: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A private copy of the weights: a new cache key, so the first prediction happens here.
    weights = Path(shutil.copytree(app_env.weights, tmp_path / "weights_copy"))
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(weights))
    calls = []
    original = Predictor.predict

    def counting(self: Predictor, study):  # type: ignore[no-untyped-def]
        calls.append(study.n_slices)
        return original(self, study)

    monkeypatch.setattr(Predictor, "predict", counting)
    at = run_app()
    for index in (1, 2, 7, 0):
        browser_event(at, kind="sync", slice=index, window="bone", centre=600, width=2800)
    assert len(calls) == 1


def test_window_presets_and_custom_window(app_env: AppData) -> None:
    at = run_app()
    assert (at.session_state["win_centre"], at.session_state["win_width"]) == (40.0, 80.0)
    assert viewer_args(at)["meta"]["windows"]["bone"] == [600.0, 2800.0]
    browser_event(at, kind="sync", slice=0, window="bone", centre=600, width=2800)
    assert at.session_state["window"] == "bone"
    assert (at.session_state["win_centre"], at.session_state["win_width"]) == (600.0, 2800.0)
    browser_event(at, kind="sync", slice=0, window="custom", centre=600, width=350)
    assert at.session_state["window"] == "custom"
    assert at.session_state["win_width"] == 350.0
    browser_event(at, kind="sync", slice=0, window="custom", centre=600, width=0)
    assert at.session_state["win_width"] == 350.0  # a zero width is not taken


def test_page_down_without_a_worklist_says_what_to_do(app_env: AppData) -> None:
    at = run_app()
    before = at.session_state["open_study"].key
    browser_event(at, kind="study", step=1)
    assert not at.exception
    assert any("Open the Worklist page first" in i for i in texts(at.info))
    assert at.session_state["open_study"].key == before


def test_summary_lists_labels_and_hides_identifiers(app_env: AppData) -> None:
    at = run_app()
    frames = [d.value for d in at.dataframe]
    summary = next(f for f in frames if "Max LSTM" in f.columns)
    assert list(summary["Class"])[-1] == "any"
    metadata = next(f for f in frames if "Field" in f.columns)
    assert "PatientName" not in set(metadata["Field"])
    assert not any("SYNTHETIC^" in str(v) for v in metadata["Value"])
    assert "Manufacturer" in set(metadata["Field"])
    at.checkbox(key="_w_show_identifiers").check().run()
    metadata = next(d.value for d in at.dataframe if "Field" in d.value.columns)
    assert any(str(v).startswith("SYNTHETIC^") for v in metadata["Value"])


def test_labels_of_the_demo_study_are_shown(app_env: AppData) -> None:
    from hohoho_core.rsna import read_labels

    at = run_app()
    paths = first_study_paths(app_env)
    labels = read_labels(app_env.demo / "stage_2_train.csv")
    first = labels.loc[Path(paths[0]).stem]
    meta = viewer_args(at)["meta"]
    assert meta["image_ids"][0] == Path(paths[0]).stem
    assert meta["labels"][0] == [int(first[c]) for c in CLASSES]


def test_upload_of_dicom_files_and_zip_opens_a_study(app_env: AppData) -> None:
    paths = first_study_paths(app_env)
    at = run_app()
    at.radio(key="_w_source_kind").set_value("Upload").run()
    at.file_uploader(key="uploads").set_value(
        [(p.name, p.read_bytes(), "application/dicom") for p in paths]
    ).run()
    at.button(key="open_uploads").click().run()
    assert not at.exception and not at.error
    assert slice_heading(at) == f"Slice 1 / {len(paths)}"
    assert at.session_state["open_study"].source_id[0] == "upload"

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in paths[:5]:
            zf.write(p, f"series/{p.name}")
    at.file_uploader(key="uploads").set_value(
        ("study.zip", buf.getvalue(), "application/zip")
    ).run()
    at.button(key="open_uploads").click().run()
    assert not at.exception and not at.error
    assert slice_heading(at) == "Slice 1 / 5"


def test_bad_upload_shows_the_readers_message(app_env: AppData) -> None:
    at = run_app()
    at.radio(key="_w_source_kind").set_value("Upload").run()
    at.file_uploader(key="uploads").set_value(
        ("notes.txt", b"not a dicom file", "text/plain")
    ).run()
    at.button(key="open_uploads").click().run()
    assert not at.exception
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith("No usable CT slice found in 1 files")
    assert "not DICOM" in errors[0]
    skipped = next(d.value for d in at.dataframe if "Reason" in d.value.columns)
    assert list(skipped["File"]) == ["notes.txt"]


def test_server_folder_inside_the_root_opens_and_outside_is_refused(app_env: AppData) -> None:
    at = run_app()
    at.radio(key="_w_source_kind").set_value("Server folder").run()
    at.text_input(key="_w_folder_rel").input("../../etc").run()
    at.button(key="open_folder").click().run()
    assert not at.exception
    assert any("Only folders inside the data root" in e for e in texts(at.error))
    at.text_input(key="_w_folder_rel").input("demo/nothing-here").run()
    at.button(key="open_folder").click().run()
    assert any(
        "Folder not found under the data root: demo/nothing-here" in e for e in texts(at.error)
    )

    at.text_input(key="_w_folder_rel").input("demo/stage_2_train").run()
    at.button(key="open_folder").click().run()
    assert not at.exception and not at.error
    item = at.session_state["open_study"]
    assert item.source_id[0] == "folder"
    # Three series in the folder: a picker offers all of them.
    assert len(at.selectbox(key="series_choice").options) == 3
    # Labels come from the stage_2_train.csv beside the folder.
    assert item.labels is not None and (item.labels >= 0).all()


def test_no_model_still_shows_the_study(
    app_env: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(empty))
    at = run_app()
    assert slice_heading(at).startswith("Slice 1 / ")
    assert viewer_args(at)["meta"]["cnn"] is None  # no chart, no calls
    assert any("No model" in i for i in texts(at.info))
    assert not any(DEMO_WARNING in w for w in texts(at.warning))


def test_pickled_weights_are_refused_with_a_message(
    app_env: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = Path(shutil.copytree(app_env.weights, tmp_path / "bad_weights"))
    (bad / "model.pt").write_bytes(b"\x80\x04not really a pickle")
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(bad))
    at = run_app()
    assert not at.exception
    assert any("pickle" in e for e in texts(at.error))
    assert slice_heading(at).startswith("Slice 1 / ")  # the study is still shown


def test_demo_weights_warning(
    app_env: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    at = run_app()
    assert not any(DEMO_WARNING in w for w in texts(at.warning))
    demo = save_random_weights(
        tmp_path / "demo_weights", data={"description": "synthetic phantom studies"}
    )
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(demo))
    at = run_app()
    assert DEMO_WARNING in texts(at.warning)


def test_weights_folder_outside_the_allowed_places_is_refused(
    app_env: AppData, tmp_path: Path
) -> None:
    at = run_app()
    at.text_input(key="_w_weights_choice").input(str(tmp_path)).run()
    assert not at.exception
    assert any("data root" in e for e in texts(at.error))
    assert viewer_args(at)["meta"]["cnn"] is None


def test_study_table_in_the_summary_matches_positive_runs(app_env: AppData) -> None:
    at = run_app()
    paths = first_study_paths(app_env)
    pred = Predictor.from_folder(app_env.weights).predict(load_study(paths))
    summary = next(d.value for d in at.dataframe if "Max LSTM" in d.value.columns)
    assert isinstance(summary, pd.DataFrame) and len(summary) == 6
    for k, row in enumerate(summary.itertuples(index=False)):
        assert row[2] == f"{pred.lstm_prob[:, k].max():.2f}"
        runs = pred.summary.ranges[CLASSES[k]]
        assert row[3] == format_ranges(runs)


def test_without_demo_studies_the_pages_say_what_to_do(
    app_env: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOHOHO_DEMO_DIR", str(tmp_path / "no_demo"))
    at = run_app()
    assert any("make demo" in i for i in texts(at.sidebar.info))
    assert any("Open a study from the sidebar" in i for i in texts(at.info))
    for page in ("pages/1_Saliency.py", "pages/2_Embeddings.py", "pages/3_Label_audit.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error
        assert any("make demo" in i for i in texts(at.info)), page


def test_the_model_is_loaded_once_per_process(
    app_env: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    weights = Path(shutil.copytree(app_env.weights, tmp_path / "weights_once"))
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(weights))
    loads = []
    original = Predictor.from_folder.__func__  # type: ignore[attr-defined]

    def counting(cls, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(str(path))
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(Predictor, "from_folder", classmethod(counting))
    first = run_app()
    first.switch_page("pages/1_Saliency.py").run()
    second = run_app()  # another browser session in the same server process
    assert not first.exception and not second.exception
    assert loads == [str(weights.resolve())]


def test_a_thin_series_is_flagged_beside_the_verdict(
    app_env: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_ct_series
) -> None:
    """A series whose slice spacing the model was not trained on gets a warning on its
    summary; one inside the range gets none (hohoho_core.spacing)."""
    weights = save_random_weights(tmp_path / "ranged",
                                  data={"description": "random init",
                                        "slice_spacing_mm": [3.0, 6.0]})
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(weights))
    thin = write_ct_series(tmp_path / "thin", n_slices=6, spacing=1.0)
    thick = write_ct_series(tmp_path / "thick", n_slices=4, spacing=5.0, seed=1)
    at = run_app()
    at.radio(key="_w_source_kind").set_value("Upload").run()
    for series, flagged in ((thin, True), (thick, False)):
        at.file_uploader(key="uploads").set_value(
            [(p.name, p.read_bytes(), "application/dicom") for p in series.paths]).run()
        at.button(key="open_uploads").click().run()
        assert not at.exception and not at.error
        notes = [w for w in texts(at.warning) if "the model was trained on" in w]
        assert bool(notes) is flagged, texts(at.warning)
        if flagged:
            assert "slices 1 mm apart, closer together than the 3-6 mm" in notes[0]
