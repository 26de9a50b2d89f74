"""The label-audit page's review session through streamlit's AppTest: one regression test
per bug of the annotators' day (names as in the issue), on the session's small demo set."""

from __future__ import annotations

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from hohoho_core.labels import CLASSES
from hohoho_core.review import LabelSource
from hohoho_core.store import DecisionStore
from hohoho_ui.review import export_data
from tests.test_app import APP, TIMEOUT, build_app_data, point_env, texts
from tests.test_pages import AUDIT, demo_table, open_page


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, tmp_path):
    data = build_app_data(tmp_path_factory)
    store = tmp_path / "decisions.sqlite"
    point_env(monkeypatch, data, store)
    return data, store


def _item(at: AppTest) -> tuple[str, str, int]:
    """(image_id, class, label) of the cell the decision buttons act on."""
    head = next(h for h in texts(at.subheader) if h.startswith("#"))
    parts = head.split(" · ")
    return parts[1], parts[-1].split(" labelled ")[0], int(head.rsplit(" ", 1)[1])


def _item_caption(at: AppTest) -> str:
    return next(c for c in texts(at.caption) if c.startswith("Item "))


def _progress(at: AppTest) -> str:
    return at.get("progress")[0].proto.text


def _named(name: str, page: str = AUDIT, **params: str) -> AppTest:
    """A new browser session on the audit page whose URL carries ``?reviewer=name``."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["reviewer"] = name
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _decide(at: AppTest, button: str = "audit_keep") -> None:
    at.button(key=button).click().run()
    assert not at.exception and not at.error, texts(at.error)


# --------------------------------------------------------------------------- the name


def test_no_decision_is_recorded_without_a_name(env) -> None:
    _, store_path = env
    at = open_page(AUDIT)
    assert at.text_input(key="_w_reviewer").value == ""
    assert at.button(key="audit_keep").disabled
    assert any("Enter your name" in w for w in texts(at.warning))
    assert DecisionStore(store_path).history().empty
    at.text_input(key="_w_reviewer").input("dr_lee").run()
    assert not at.button(key="audit_keep").disabled
    assert at.query_params["reviewer"] == "dr_lee"
    _decide(at)
    assert list(DecisionStore(store_path).history()["reviewer"]) == ["dr_lee"]
    at.text_input(key="_w_reviewer").input("  ").run()  # cleared: refused again
    assert at.button(key="audit_keep").disabled and "reviewer" not in at.query_params


def test_the_name_survives_a_reload(env) -> None:
    _, store_path = env
    at = _named("dr_lee")  # a reload: a new session, the URL kept
    assert at.text_input(key="_w_reviewer").value == "dr_lee"
    _decide(at)
    assert list(DecisionStore(store_path).history()["reviewer"]) == ["dr_lee"]


# --------------------------------------------------------------------------- items, navigation


def test_a_slice_comes_back_as_one_item(env) -> None:
    at = _named("ann")
    queue = next(d.value for d in at.dataframe if "Classes" in d.value.columns)
    assert queue["Image"].is_unique
    image_id, _, _ = _item(at)
    cells = _item_caption(at).split(" together: ")[1].split(", ")
    # Every cell of the item on screen is decided before the page moves on.
    for _ in cells:
        assert _item_caption(at).startswith("Item 1 of ")
        _decide(at)
    assert _item_caption(at).startswith("Item 2 of ")
    decided = DecisionStore(env[1]).current()
    # one decision per cell of the item (a run-edge item holds a class on two slices)
    pairs = {f"{i} · {c}" for i, c in zip(decided["image_id"], decided["subtype"], strict=True)}
    assert len(decided) == len(cells) and pairs == set(cells)


def test_a_reload_resumes_at_the_first_undecided_item(env) -> None:
    at = _named("ann")
    first = _item_caption(at)
    n_cells = len(first.split(" together: ")[1].split(", "))
    for _ in range(n_cells):
        _decide(at)
    fresh = _named("ann")
    assert _item_caption(fresh).startswith("Item 2 of ")
    assert _progress(fresh).startswith("1 of ")


def test_a_change_on_a_past_item_stays_there(env) -> None:
    _, store_path = env
    at = _named("ann")
    n_cells = len(_item_caption(at).split(" together: ")[1].split(", "))
    for _ in range(n_cells):
        _decide(at)
    at.button(key="audit_prev").click().run()
    assert _item_caption(at).startswith("Item 1 of ")
    _decide(at, "audit_relabel")
    assert _item_caption(at).startswith("Item 1 of ")  # no jump forward
    assert DecisionStore(store_path).history()["decision"].iloc[-1].startswith("relabel_")


def test_go_to_item_and_filters(env) -> None:
    at = _named("ann")
    at.number_input(key="audit_goto").set_value(5).run()
    assert _item_caption(at).startswith("Item 5 of ")
    cls = _item(at)[1]
    at.multiselect(key="audit_f_class").select(cls).run()
    queue = next(d.value for d in at.dataframe if "Classes" in d.value.columns)
    assert len(queue) and all(cls in c.split(", ") for c in queue["Classes"])
    _decide(at, "audit_unsure")
    at.selectbox(key="audit_f_status").set_value("unsure").run()
    queue = next(d.value for d in at.dataframe if "Classes" in d.value.columns)
    assert list(queue["Status"]) == ["unsure"]  # the queue of cells to revisit
    assert any(c.startswith("1 unsure") for c in texts(at.caption))
    assert _progress(at).startswith("0 of ")  # unsure is not reviewed


def test_undo_appends_and_goes_back(env) -> None:
    _, store_path = env
    at = _named("ann")
    image_id, cls, _ = _item(at)
    _decide(at)
    assert _item(at)[:2] != (image_id, cls)
    at.button(key="audit_undo").click().run()
    assert _item(at)[:2] == (image_id, cls)
    store = DecisionStore(store_path)
    assert store.current().empty
    assert list(store.history()["retracted_at"].astype(bool)) == [True]


def test_a_neighbour_can_be_decided(env) -> None:
    _, store_path = env
    at = _named("ann")
    flagged, cls, _ = _item(at)
    pick = next(b for b in at.button if str(b.key).startswith("audit_pick_"))
    pick.click().run()
    neighbour, cls_now, label = _item(at)
    assert neighbour != flagged and cls_now == cls
    assert any(i.startswith("Not flagged") for i in texts(at.info))
    _decide(at, "audit_relabel")
    row = DecisionStore(store_path).current().iloc[0]
    assert (row["image_id"], row["subtype"], row["decision"]) == (
        neighbour,
        cls,
        f"relabel_{1 - label}",
    )
    assert _item(at)[0] == neighbour  # a side decision: the item stays on screen


def test_more_neighbours_and_window_presets(env) -> None:
    at = _named("ann")
    n = len(at.image)
    at.select_slider(key="audit_span").set_value(3).run()
    assert len(at.image) > n
    before = at.image[0].proto.imgs[0].url
    at.radio(key="audit_window").set_value("bone").run()
    assert not at.exception
    assert at.image[0].proto.imgs[0].url != before


# --------------------------------------------------------------------------- two readers


def test_a_second_reader_does_not_replace_the_first(env) -> None:
    _, store_path = env
    ann = _named("ann", audit_mode="blind")
    image_id, cls, label = _item(ann)
    _decide(ann)  # keep
    bob = _named("bob", audit_mode="blind")
    assert _item(bob)[:2] == (image_id, cls)  # bob's own queue: still open for him
    assert not any("Decision on record" in s for s in texts(bob.success))  # blind
    assert not bob.get("download_button")  # the export would show ann's decision
    _decide(bob, "audit_relabel")
    cur = DecisionStore(store_path).current()
    assert sorted(cur["reviewer"]) == ["ann", "bob"]

    # One-reader view: both decisions and the conflict are shown.
    lead = _named("cat")
    if not _item_caption(lead).startswith("Item 1 of "):  # item 1 had one cell, decided
        lead.button(key="audit_prev").click().run()
    assert _item_caption(lead).startswith("Item 1 of ")
    if (image_id, cls) != _item(lead)[:2]:  # the item's open cell comes first
        lead.radio(key="audit_cell").set_value(f"{image_id}|{cls}").run()
    assert _item(lead)[:2] == (image_id, cls)
    assert sum("Decision on record" in s for s in texts(lead.success)) == 2
    assert any("Readers disagree" in w for w in texts(lead.warning))

    # Adjudication: the cell is queued; the adjudicator's decision is exported.
    lead.radio(key="_w_audit_mode").set_value("adjudicate").run()
    assert _item(lead)[:2] == (image_id, cls)
    assert lead.query_params["audit_mode"] == "adjudicate"
    _decide(lead, "audit_relabel")
    cur = DecisionStore(store_path).current()
    assert list(cur.loc[cur["reviewer"] == "cat", "role"]) == ["adjudicator"]
    assert any(c.startswith("1 of 1 reviewed") for c in [_progress(lead)])
    kappa = next(d.value for d in lead.dataframe if "Cohen's kappa" in d.value.columns)
    assert kappa["Cells both decided"].sum() == 1
    caption = next(c for c in texts(lead.caption) if " labels changed" in c)
    assert " 1 labels changed" in caption


# --------------------------------------------------------------------------- export


def test_the_download_holds_every_decision_on_record(env, tmp_path) -> None:
    """The stale-download bug: data is built at click time, not at a "Prepare"."""
    store = DecisionStore(tmp_path / "d.db")
    labels = pd.DataFrame([["ID_a", 0, 0, 0, 0, 0, 0]], columns=["image_id", *CLASSES])
    source = LabelSource(labels.set_index("image_id"))
    labels_csv, who_csv = export_data(store, source, fix_any=False)
    first = labels_csv()
    store.record("ID_a", "any", 0, "relabel_1", "ann")
    assert labels_csv() != first and "ID_a_any,1" in labels_csv().decode()
    assert "ann" in who_csv().decode()

    at = _named("ann")
    caption = next(c for c in texts(at.caption) if " labels changed" in c)
    assert " 0 labels changed" in caption
    _decide(at, "audit_relabel")
    caption = next(c for c in texts(at.caption) if " labels changed" in c)
    assert " 1 labels changed" in caption  # no button to press first
    assert len(at.get("download_button")) == 2


def test_any_inconsistency_is_listed_and_can_be_fixed(env) -> None:
    data, store_path = env
    table = demo_table(data)
    clean = table.loc[(table[list(CLASSES)] == 0).all(axis=1), "image_id"].iloc[0]
    DecisionStore(store_path).record(clean, "epidural", 0, "relabel_1", "ann")  # any stays 0

    def listed(at: AppTest) -> list[str]:
        frames = [d.value for d in at.dataframe if list(d.value.columns) == ["image_id", *CLASSES]]
        return list(frames[0]["image_id"]) if frames else []

    at = _named("ann")
    assert any("'any' disagrees" in e.label for e in at.expander)
    assert clean in listed(at)
    at.checkbox(key="audit_fix_any").check().run()
    assert clean not in listed(at)
    caption = next(c for c in texts(at.caption) if " labels changed" in c)
    assert "'any' labels set from the subtypes" in caption


def test_every_review_button_has_its_key(env) -> None:
    """The navigation buttons showed arrows and had no keys: each now has one (Label
    Studio's numbered choices, CVAT's D/F, Ctrl+Z), and the caption lists them."""
    at = _named("ann")
    keys = {
        "audit_keep": "1",
        "audit_relabel": "2",
        "audit_unsure": "3",
        "audit_prev": "d",
        "audit_next": "f",
        "audit_next_open": "n",
        "audit_undo": "ctrl+z",
    }
    assert {k: at.button(key=k).proto.shortcut for k in keys} == keys
    assert any(c.startswith("Keys: 1 keep · 2 relabel · 3 unsure") for c in texts(at.caption))
