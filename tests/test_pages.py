"""The saliency, embeddings and label-audit pages through streamlit's AppTest.

Shares the session's small demo set and random-init weights with ``test_app.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from hohoho_core.dicom import load_study
from hohoho_core.explain import METHODS
from hohoho_core.labels import CLASSES
from hohoho_core.predict import Predictor
from hohoho_core.rsna import build_index
from hohoho_core.store import DecisionStore
from tests.test_app import (
    APP,
    TIMEOUT,
    AppData,
    browser_event,
    build_app_data,
    chart_spec,
    decode,
    first_study_paths,
    point_env,
    texts,
)

SALIENCY = "pages/1_Saliency.py"
EMBEDDINGS = "pages/2_Embeddings.py"
AUDIT = "pages/3_Label_audit.py"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    data = build_app_data(tmp_path_factory)
    store = tmp_path / "decisions.sqlite"
    point_env(monkeypatch, data, store)
    return data, store


def open_page(page: str, at: AppTest | None = None) -> AppTest:
    """Run the viewer once (as a user would land), then switch to ``page``."""
    if at is None:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def n_points(spec: dict) -> int:
    return sum(len(decode(trace["x"])) for trace in spec["data"])


def demo_table(data: AppData) -> pd.DataFrame:
    return build_index(data.demo, cache_dir=data.cache, workers=1, progress=False).table


# --------------------------------------------------------------------------- saliency


def test_saliency_map_has_the_model_input_shape(env) -> None:
    at = open_page(SALIENCY)
    assert at.session_state["saliency_shape"] == (64, 64)
    assert any("Map 64 × 64 px" in c for c in texts(at.caption))
    assert len(at.image) == 2  # the original beside the overlay
    captions = [c for img in at.image for c in img.captions]
    assert captions[0].startswith("Model input · slice 1 / ")
    assert captions[1].startswith("Grad-CAM (last block) · any · p = ")


@pytest.mark.parametrize("method", [m for m in METHODS if m != "gradcam"])
def test_every_saliency_method_draws_a_map(env, method: str) -> None:
    at = open_page(SALIENCY)
    at.selectbox(key="_w_sal_method").set_value(method).run()
    at.selectbox(key="_w_sal_class").set_value("subdural").run()
    assert not at.exception and not at.error
    assert at.session_state["saliency_shape"] == (64, 64)
    captions = [c for img in at.image for c in img.captions]
    assert "· subdural · p = " in captions[1]


def test_saliency_follows_the_viewer_slice_and_is_cached(
    env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hohoho_ui.loaders as loaders

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    # The browser viewer reports slice 3 once scrolling pauses.
    browser_event(at, kind="sync", slice=2, window="brain", centre=40, width=80)
    calls = []
    original = loaders.saliency_map
    monkeypatch.setattr(
        loaders, "saliency_map", lambda *a, **k: calls.append(a[2:4]) or original(*a, **k)
    )
    open_page(SALIENCY, at)
    captions = [c for img in at.image for c in img.captions]
    assert captions[0].startswith("Model input · slice 3 / ")
    n_first = len(calls)
    at.slider(key="_w_sal_opacity").set_value(0.8).run()  # opacity only: no recomputation
    at.button(key="sal_next").click().run()
    at.button(key="sal_prev").click().run()  # back to slice 3: cached
    assert at.session_state["slice"] == 2
    assert len(calls) == n_first + 1  # only slice 4 was new (if slice 3 was not cached before)
    assert n_first in (0, 1)


def test_randomisation_check_reports_similarity(env) -> None:
    at = open_page(SALIENCY)
    at.button(key="sal_sanity").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Spearman ρ", "SSIM"}
    for value in metrics.values():
        assert value == "n/a" or -1.0 <= float(value) <= 1.0
    captions = [c for img in at.image for c in img.captions]
    assert "Trained model" in captions
    assert any(c.startswith("Randomised (") for c in captions)


# --------------------------------------------------------------------------- embeddings


def test_tsne_of_the_study_has_one_point_per_slice(env) -> None:
    data, _ = env
    at = open_page(EMBEDDINGS)
    n = len(first_study_paths(data))
    spec = chart_spec(at)
    assert n_points(spec) == n
    assert any(f"{n} points" in c for c in texts(at.caption))
    # Colour by relative level: one numeric trace whose colours run over [0, 1].
    colours = decode(spec["data"][0]["marker"]["color"])
    assert colours.min() == 0.0 and colours.max() == 1.0


def test_tsne_of_the_dataset_coloured_by_label(env) -> None:
    data, _ = env
    table = demo_table(data)
    at = open_page(EMBEDDINGS)
    at.radio(key="_w_emb_scope").set_value("Whole dataset").run()
    at.selectbox(key="_w_emb_colour").set_value("Label").run()
    assert not at.exception and not at.error
    spec = chart_spec(at)
    assert n_points(spec) == len(table)
    by_name = {t["name"]: len(decode(t["x"])) for t in spec["data"]}
    n_pos = int((table["any"] == 1).sum())
    assert by_name.get("labelled positive", 0) == n_pos
    assert by_name["labelled negative"] == len(table) - n_pos


def test_large_sets_are_subsampled_with_a_notice(env) -> None:
    data, _ = env
    total = len(demo_table(data))
    at = open_page(EMBEDDINGS)
    at.radio(key="_w_emb_scope").set_value("Whole dataset").run()
    at.number_input(key="_w_emb_max").set_value(10).run()
    assert n_points(chart_spec(at)) == 10
    assert any(f"Showing 10 of {total} slices" in i for i in texts(at.info))


# --------------------------------------------------------------------------- label audit


def _current_item(at: AppTest) -> tuple[str, str, int]:
    head = next(h for h in texts(at.subheader) if h.startswith("#"))
    # "#1 · ID_xxx · IVH · intraventricular labelled 0"
    parts = head.split(" · ")
    image_id = parts[1]
    cls = parts[-1].split(" labelled ")[0]
    label = int(head.rsplit(" ", 1)[1])
    return image_id, cls, label


def test_audit_decision_is_stored_and_survives_a_restart(env) -> None:
    data, store_path = env
    at = open_page(AUDIT)
    assert any("In-sample flags" in w for w in texts(at.warning))
    image_id, cls, label = _current_item(at)
    assert cls in CLASSES
    total = int(at.get("progress")[0].proto.text.split(" of ")[1].split()[0])
    assert at.get("progress")[0].proto.text == f"0 of {total} reviewed"

    at.text_input(key="_w_reviewer").input("dr_test").run()
    at.text_input(key="audit_comment").input("clear on the neighbours").run()
    at.button(key="audit_keep").click().run()
    assert not at.exception and not at.error
    current = DecisionStore(store_path).current()
    assert len(current) == 1
    row = current.iloc[0]
    assert (row["image_id"], row["subtype"], row["decision"]) == (image_id, cls, "keep")
    assert (row["reviewer"], row["comment"], row["original_label"]) == (
        "dr_test",
        "clear on the neighbours",
        label,
    )
    undecided = _current_item(at)
    assert undecided[:2] != (image_id, cls)  # moved on to the next undecided

    # A "server restart": a fresh app session on the same store shows the decision and
    # resumes at the first undecided item (the slice's next open cell when it has one,
    # else the next item: which, depends on the ranking).
    fresh = open_page(AUDIT)
    assert _current_item(fresh)[:2] == undecided[:2]
    if undecided[0] == image_id:
        assert any("Decision on record: **keep** by dr_test" in s
                   for s in texts(fresh.success))
    queue = next(d.value for d in fresh.dataframe if "Decisions" in d.value.columns)
    assert queue.loc[queue["Image"] == image_id, "Decisions"].tolist() == [
        f"{cls} · dr_test: keep"
    ]


def test_relabel_then_export_flips_the_label(env) -> None:
    from hohoho_core.review import export_corrected
    from hohoho_core.rsna import default_labels_csv

    data, store_path = env
    at = open_page(AUDIT)
    at.text_input(key="_w_reviewer").input("dr_test").run()
    image_id, cls, label = _current_item(at)
    at.button(key="audit_relabel").click().run()
    assert not at.exception and not at.error
    assert any(" 1 labels changed" in c for c in texts(at.caption))
    assert len(at.get("download_button")) == 2
    out = store_path.with_name("out.csv")
    summary = export_corrected(
        DecisionStore(store_path).current(), default_labels_csv(data.demo), out
    )
    assert summary.relabelled == 1
    exported = pd.read_csv(out)
    value = exported.loc[exported["ID"] == f"{image_id}_{cls}", "Label"].tolist()
    assert value == [1 - label]


def test_audit_with_an_out_of_fold_csv(env, tmp_path: Path) -> None:
    data, _ = env
    table = demo_table(data)
    rng = np.random.default_rng(1)
    labels = table[list(CLASSES)].to_numpy() == 1
    # A model that agrees with the labels (the learned ranker discounts one that does not)...
    probs = np.where(labels, rng.uniform(0.8, 1.0, labels.shape),
                     rng.uniform(0.0, 0.2, labels.shape))
    # ...but for one clear disagreement: sure of a bleed on a slice labelled negative.
    target = int(np.flatnonzero(table["subdural"].to_numpy() == 0)[0])
    probs[target, CLASSES.index("subdural")] = 0.99
    rows = [
        (f"{iid}_{c}", f"{probs[i, k]:.4f}")
        for i, iid in enumerate(table["image_id"])
        for k, c in enumerate(CLASSES)
    ]
    csv_path = data.root / "oof_probs.csv"
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(csv_path, index=False)

    at = open_page(AUDIT)
    at.radio(key="_w_audit_source").set_value("CSV on the server").run()
    at.text_input(key="_w_audit_csv_rel").input("oof_probs.csv").run()
    assert not at.exception and not at.error
    assert not any("In-sample" in w for w in texts(at.warning))
    # The clear disagreement is among the first items (the learned ranker puts some run
    # edges of the demo labels beside it).
    queue = next(d.value for d in at.dataframe if "Decisions" in d.value.columns)
    top = queue.head(5)
    row = top[top["Image"] == table["image_id"].iloc[target]]
    assert len(row) == 1 and "subdural" in row["Classes"].item()

    # A CSV that misses images is refused with the reader's message.
    pd.DataFrame(rows[:12], columns=["ID", "Label"]).to_csv(data.root / "short.csv", index=False)
    at.text_input(key="_w_audit_csv_rel").input("short.csv").run()
    assert not at.exception
    assert any("no probability for" in e for e in texts(at.error))


def test_audit_reviews_the_cli_flags_file(env) -> None:
    """The `audit` command's flags.csv opens as the queue, in its ranking; a flags file
    made before a relabelling is refused with a sentence, not reviewed."""
    from hohoho_core.__main__ import main as cli

    data, _ = env
    table = demo_table(data)
    rng = np.random.default_rng(2)
    probs = rng.random((len(table), len(CLASSES)))
    rows = [(f"{iid}_{c}", f"{probs[i, k]:.4f}") for i, iid in enumerate(table["image_id"])
            for k, c in enumerate(CLASSES)]
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(data.root / "oof.csv", index=False)
    flags_csv = data.root / "flags.csv"
    assert cli(["audit", "--data", str(data.demo), "--probs", str(data.root / "oof.csv"),
                "--out", str(flags_csv), "--top", "30", "--ranker", "none",
                "--no-images"]) == 0
    flags = pd.read_csv(flags_csv, dtype={"image_id": str})

    at = open_page(AUDIT)
    at.radio(key="_w_audit_source").set_value("CSV on the server").run()
    at.text_input(key="_w_audit_csv_rel").input("flags.csv").run()
    assert not at.exception and not at.error
    assert any("Ranked by the `audit` command" in c for c in texts(at.caption))
    queue = next(d.value for d in at.dataframe if "Decisions" in d.value.columns)
    assert queue["Image"].iloc[0] == flags.sort_values("rank")["image_id"].iloc[0]

    # Labels changed since the audit ran (here: the file's label of its top cell differs
    # from the label on file; the shared demo labels must stay as they are): stale.
    stale = flags.copy()
    top = stale["rank"].idxmin()
    stale.loc[top, "label"] = 1 - int(stale.loc[top, "label"])
    stale.to_csv(data.root / "stale_flags.csv", index=False)
    at.text_input(key="_w_audit_csv_rel").input("stale_flags.csv").run()
    assert not at.exception
    assert any("another label on file now" in e for e in texts(at.error))


def test_uploaded_probabilities_are_parsed_once_not_on_every_rerun(
    env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, point 8: clicks on the audit page do not parse the uploaded CSV again."""
    import streamlit as st

    from hohoho_core import audit

    data, _ = env
    table = demo_table(data)
    probs = np.random.default_rng(8).uniform(0.0, 0.3, size=(len(table), len(CLASSES)))
    frame = pd.DataFrame(
        [
            (f"{iid}_{c}", f"{probs[i, k]:.4f}")
            for i, iid in enumerate(table["image_id"])
            for k, c in enumerate(CLASSES)
        ],
        columns=["ID", "Label"],
    )
    good = frame.to_csv(index=False).encode()
    parsed: list[int] = []
    codec = audit.read_rsna_csv

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        parsed.append(1)
        return codec(*args, **kwargs)

    monkeypatch.setattr(audit, "read_rsna_csv", counting)
    st.cache_data.clear()

    at = open_page(AUDIT)
    at.radio(key="_w_audit_source").set_value("Upload a CSV").run()
    at.file_uploader(key="audit_csv").set_value(("oof.csv", good, "text/csv")).run()
    assert not at.exception and not at.error, texts(at.error)
    assert len(parsed) == 1
    first = _current_item(at)
    at.button(key="audit_next").click().run()
    at.slider(key="_w_audit_top").set_value(3).run()
    at.text_input(key="audit_comment").input("a comment").run()
    assert not at.exception and not at.error
    assert _current_item(at) != first  # the reruns did happen
    assert len(parsed) == 1

    # A refused file is refused once too, with the reader's message on every rerun.
    bad = frame.iloc[:12].to_csv(index=False).encode()
    at.file_uploader(key="audit_csv").set_value(("short.csv", bad, "text/csv")).run()
    assert any("no probability for" in e for e in texts(at.error))
    at.radio(key="_w_audit_source").set_value("Upload a CSV").run()
    at.run()
    assert any("no probability for" in e for e in texts(at.error))
    assert len(parsed) == 2


def test_pages_open_directly_without_the_viewer(env) -> None:
    """A new session that lands on a page (its URL) gets the first demo study."""
    data, _ = env
    study = load_study(first_study_paths(data))
    pred = Predictor.from_folder(data.weights).predict(study)
    for page in (SALIENCY, EMBEDDINGS):
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.switch_page(page).run()
        assert not at.exception and not at.error
        assert at.session_state["open_study"].study.n_slices == study.n_slices
        assert any(c.startswith("Study 1 · ") for c in texts(at.sidebar.caption))
        if page == SALIENCY:
            caption = [c for img in at.image for c in img.captions][1]
            assert caption.endswith(f"p = {pred.prob[0, CLASSES.index('any')]:.2f}")


def test_pages_need_no_magic_and_the_app_turns_it_off() -> None:
    """.streamlit/config.toml turns Streamlit's "magic" off (scripts then compile from their
    text, never through AST objects, which CPython 3.11 can corrupt across threads); that is
    safe only while no page writes a bare expression to the screen."""
    import ast
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    config = tomllib.loads((repo / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["runner"]["magicEnabled"] is False
    bare = []
    for path in [repo / "app.py", *sorted((repo / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                for i, stmt in enumerate(stmts if isinstance(stmts, list) else []):
                    if not isinstance(stmt, ast.Expr) or isinstance(
                            stmt.value, ast.Call | ast.Await | ast.Yield | ast.YieldFrom):
                        continue
                    if field == "body" and i == 0 and isinstance(stmt.value, ast.Constant):
                        continue  # a docstring: magic would not show it either
                    bare.append(f"{path.name}:{stmt.lineno}")
    assert bare == []
