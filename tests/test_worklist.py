"""The worklist's pure logic (hohoho_core.worklist), the browser viewer's payload and
events (hohoho_ui.viewer_component), and the worklist page through AppTest."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from hohoho_core.labels import ANY_INDEX, CLASSES
from hohoho_core.predict import Predictor, StudyPrediction, summarise
from hohoho_core.study import LoadReport, SliceInfo, Study
from hohoho_core.worklist import (
    IndexedSource,
    StudyResult,
    WorklistEntry,
    WorklistRun,
    by_suspicion,
    eta_seconds,
    failed_result,
    step_in_order,
    summarise_prediction,
)
from hohoho_ui.viewer_component import parse_event
from hohoho_ui.viewer_component.payload import (
    HU_MAX,
    HU_MIN,
    decode_volume,
    encode_volume,
    viewer_payload,
)
from tests.test_app import APP, TIMEOUT, AppData, build_app_data, point_env, texts

WORKLIST = "pages/0_Worklist.py"


def make_study(n: int = 5, size: int = 16, seed: int = 0) -> Study:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1100, 3200, size=(n, size, size)).astype(np.float32)
    slices = [SliceInfo(f"ID_{seed}_{k}", f"f{k}.dcm", None, k + 1, (0.0, 0.0, 5.0 * k), 5.0 * k)
              for k in range(n)]
    return Study(f"1.2.{seed}", f"1.2.{seed}.1", hu, slices, (0.5, 0.5), 5.0, LoadReport())


def make_prediction(prob: np.ndarray, thresholds: float = 0.5) -> StudyPrediction:
    prob = np.asarray(prob, dtype=np.float32)
    thr = np.full(len(CLASSES), thresholds, dtype=np.float32)
    labels = prob >= thr
    n = prob.shape[0]
    return StudyPrediction(
        "1.2", "1.2.1", [f"ID_{k}" for k in range(n)], prob, None, prob,
        np.zeros((n, 4), np.float32), labels, thr, summarise(prob, labels),
    )


def result(key: str, any_max: float, error: str | None = None) -> StudyResult:
    return StudyResult(key, key, 3, any_max, any_max >= 0.5, (), {}, (), 0.1, error)


# --------------------------------------------------------------------------- ordering


def test_by_suspicion_sorts_by_any_then_key_and_puts_failures_last() -> None:
    rows = [result("b", 0.2), result("a", 0.9), result("z", math.nan, "broken"),
            result("c", 0.9), result("d", 0.05)]
    assert [r.key for r in by_suspicion(rows)] == ["a", "c", "b", "d", "z"]
    assert by_suspicion([]) == []


@pytest.mark.parametrize(
    ("current", "step", "expected"),
    [("b", 1, "c"), ("b", -1, "a"), ("c", 1, None), ("a", -1, None), ("x", 1, "a"),
     (None, -1, "c"), ("a", 2, "c")],
)
def test_step_in_order(current: str | None, step: int, expected: str | None) -> None:
    assert step_in_order(["a", "b", "c"], current, step) == expected


def test_step_in_an_empty_order_is_none() -> None:
    assert step_in_order([], "a", 1) is None


def test_eta_at_the_mean_pace() -> None:
    assert eta_seconds(0, 10, 5.0) is None
    assert eta_seconds(2, 10, 6.0) == pytest.approx(24.0)
    assert eta_seconds(10, 10, 30.0) == 0.0


def test_summary_of_a_prediction_by_hand() -> None:
    prob = np.zeros((6, 6))
    prob[1:3, ANY_INDEX] = 0.8  # slices 2-3 positive for any
    prob[5, ANY_INDEX] = 0.6  # and slice 6
    prob[1, CLASSES.index("subdural")] = 0.9
    prob[2, CLASSES.index("epidural")] = 0.7
    prob[4, CLASSES.index("subarachnoid")] = 0.4  # below threshold: not called
    entry = WorklistEntry("k", "Study 1", lambda: make_study())
    r = summarise_prediction(entry, make_prediction(prob), 1.5)
    assert r.any_max == pytest.approx(0.8) and r.positive
    assert r.subtypes == ("SDH", "EDH")  # most probable first
    assert r.subtype_max["SAH"] == pytest.approx(0.4)
    assert r.any_runs == ((1, 2), (5, 5))
    assert r.n_slices == 6 and r.seconds == 1.5 and r.error is None
    assert r.notes == ()
    noted = dataclasses.replace(make_prediction(prob), notes=("slices 1 mm apart",))
    assert summarise_prediction(entry, noted, 1.5).notes == ("slices 1 mm apart",)


def test_worklist_run_analyses_in_the_background_and_survives_a_bad_study() -> None:
    gate = threading.Event()
    anys = {"s1": 0.3, "s2": 0.95, "s3": 0.6}

    def loader(key: str):
        def load() -> Study:
            gate.wait(5)
            if key == "bad":
                raise ValueError("not a CT")
            study = make_study(4, seed=len(key))
            study.study_uid = key
            return study
        return load

    def analyse(study: Study) -> StudyPrediction:
        prob = np.zeros((4, 6))
        prob[0, ANY_INDEX] = anys[study.study_uid]
        return make_prediction(prob)

    entries = [WorklistEntry(k, k, loader(k)) for k in ("s1", "bad", "s2", "s3")]
    run = WorklistRun(entries, analyse).start()
    assert run.progress()[:2] == (0, 4) and not run.finished  # held at the gate
    gate.set()
    run.join(10)
    assert run.finished
    done, total, _, left = run.progress()
    assert (done, total, left) == (4, 4, 0.0)
    rows = run.results()
    assert [r.key for r in rows] == ["s2", "s3", "s1", "bad"]
    assert rows[-1].error == "ValueError: not a CT"
    assert run.entry("s3") is entries[3] and run.entry("nope") is None


def test_failed_result_is_listed_last() -> None:
    entry = WorklistEntry("k", "Study", lambda: make_study())
    rows = by_suspicion([failed_result(entry, "boom", 0.2), result("a", 0.01)])
    assert [r.key for r in rows] == ["a", "k"]


def test_indexed_source_yields_one_entry_per_series_in_index_order() -> None:
    import pandas as pd

    table = pd.DataFrame({"study_uid": ["s2", "s2", "s1"], "series_uid": ["a", "a", "b"],
                          "path": ["/x/1", "/x/2", "/x/3"]})
    seen: list[tuple[str, ...]] = []
    src = IndexedSource("k", "demo", "/x", table, lambda paths: seen.append(paths) or make_study())
    entries = list(src.entries())
    assert [(e.key, e.label) for e in entries] == [("s2|a", "Study 1 · 2 slices"),
                                                   ("s1|b", "Study 2 · 1 slices")]
    assert entries[0].origin == ("indexed", "/x", "s2", "a")
    entries[1].load()
    assert seen == [("/x/3",)]


# --------------------------------------------------------------------------- payload


def test_volume_round_trips_clipped_to_the_ct_range() -> None:
    study = make_study(3, 32)
    data = encode_volume(study.hu)
    back = decode_volume(data, study.hu.shape)
    expected = np.clip(np.rint(study.hu), HU_MIN, HU_MAX)
    assert back.dtype == np.int16 and np.array_equal(back, expected)
    # little-endian int16 under zlib, as the browser's DecompressionStream("deflate") reads it
    raw = zlib.decompress(data)
    assert len(raw) == study.hu.size * 2
    assert np.frombuffer(raw[:2], "<i2")[0] == expected.reshape(-1)[0]


def test_payload_carries_the_predictions_and_refuses_misaligned_arrays() -> None:
    study = make_study(4)
    prob = np.linspace(0, 1, 24).reshape(4, 6)
    labels = np.full((4, 6), -1)
    labels[2, ANY_INDEX] = 1
    p = viewer_payload(study, "key1", "Study 1", cnn_prob=prob, lstm_prob=None,
                       thresholds=np.full(6, 0.9), labels=labels)
    m = p.meta
    assert m["shape"] == [4, 16, 16] and m["image_ids"] == study.image_ids
    assert m["cnn"][3][5] == pytest.approx(1.0) and m["lstm"] is None
    assert m["positive"] == [False, False, False, True]
    assert m["labels"][2][ANY_INDEX] == 1 and m["thresholds"] == [0.9] * 6
    assert m["windows"]["bone"] == [600.0, 2800.0] and m["preset_keys"]["stroke"] == "4"
    assert p.n_bytes > len(p.volume)
    with pytest.raises(ValueError, match=r"cnn_prob has shape \(3, 6\)"):
        viewer_payload(study, "k", "n", cnn_prob=prob[:3])
    bare = viewer_payload(study, "k", "n")
    assert bare.meta["cnn"] is None and bare.meta["positive"] is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"kind": "sync", "seq": 5, "slice": 3, "window": "bone", "centre": 600, "width": 2800},
         ("sync", 3, 0)),
        ({"kind": "study", "seq": 6, "step": -1}, ("study", None, -1)),
        ({"kind": "study", "seq": 6, "step": 3}, None),
        ({"kind": "other", "seq": 1}, None),
        ({"kind": "sync", "slice": 2}, None),  # no seq
        ({"kind": "sync", "seq": "x"}, None),
        (None, None),
        ("text", None),
    ],
)
def test_parse_event(value: object, expected: tuple | None) -> None:
    event = parse_event(value)
    if expected is None:
        assert event is None
    else:
        assert event is not None and (event.kind, event.slice, event.step) == expected


# --------------------------------------------------------------------------- the page


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
        tmp_path: Path) -> AppData:
    data = build_app_data(tmp_path_factory)
    point_env(monkeypatch, data, tmp_path / "decisions.sqlite")
    return data


def independent_any_max(data: AppData) -> dict[str, float]:
    """Highest "any" probability of every demo series, computed here without the app."""
    from hohoho_core.dicom import load_study
    from hohoho_core.rsna import build_index

    table = build_index(data.demo, cache_dir=data.cache, workers=1, progress=False).table
    predictor = Predictor.from_folder(data.weights, device="cpu")
    out = {}
    for n, (_, rows) in enumerate(table.groupby(["study_uid", "series_uid"], sort=False), 1):
        study = load_study([data.demo / p for p in rows["path"]])
        out[f"Study {n} · {len(rows)} slices"] = float(predictor.predict(study).prob[:, 5].max())
    return out


def test_worklist_page_lists_the_demo_studies_by_suspicion(env: AppData) -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(WORKLIST).run()
    deadline = time.monotonic() + 300
    while not any("studies analysed in" in c.value for c in at.caption):
        assert time.monotonic() < deadline, [c.value for c in at.caption]
        assert not at.exception, [e.value for e in at.exception]
        time.sleep(1.0)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    expected = independent_any_max(env)
    order = sorted(expected, key=lambda k: -expected[k])
    shown = [t for t in texts(at.markdown) if t.startswith("Study ")]
    assert shown == order
    badges = [m.value for m in at.markdown if m.value.startswith((":red-badge[any",
                                                                   ":gray-badge[any"))]
    assert [float(b.split("any ")[1].rstrip("]")) for b in badges] == pytest.approx(
        [expected[k] for k in order], abs=0.006)
    nav = at.session_state["worklist_nav"]
    assert len(nav.keys) == len(order)
