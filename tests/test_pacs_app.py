"""The viewer's "PACS (DICOMweb)" source through streamlit's AppTest, against Orthanc."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from hohoho_ui.settings import REPO_ROOT, SHIPPED_WEIGHTS
from tests.pacs_fixture import free_port

APP = str(REPO_ROOT / "app.py")


@pytest.fixture
def app_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOHOHO_DEMO_DIR", str(tmp_path / "no_demo"))
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(SHIPPED_WEIGHTS))
    monkeypatch.setenv("HOHOHO_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("HOHOHO_STORE", str(tmp_path / "decisions.sqlite"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("USER", "PASSWORD", "TOKEN"):
        monkeypatch.delenv(f"HOHOHO_DICOMWEB_{name}", raising=False)
    return monkeypatch


def _pacs(at: AppTest) -> AppTest:
    return at.radio(key="_w_source_kind").set_value("PACS (DICOMweb)").run()


def _search(at: AppTest) -> AppTest:
    return next(b for b in at.button if b.label == "Search").click().run()


def test_search_and_open_a_study(app_env, orthanc, pacs_studies):
    app_env.setenv("HOHOHO_DICOMWEB_URL", orthanc.dicomweb_url)
    at = _pacs(AppTest.from_file(APP, default_timeout=180).run())
    assert any(c.value.startswith("Server:") and str(orthanc.port) in c.value
               for c in at.caption)
    at.text_input(key="pacs_patient_id").input("PAT001")  # sent with the form
    at = _search(at)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["study UID"]) == [pacs_studies[1].study_uid]
    assert "patient ID" not in table.columns  # identifiers hidden by default
    assert not table.astype(str).apply(lambda c: c.str.contains("PAT001|DOE")).any().any()
    at.checkbox(key="pacs_show_identifiers").check().run()
    assert list(at.dataframe[0].value["patient ID"]) == ["PAT001"]
    at.button(key="pacs_open").click().run()
    assert not at.exception and not at.error
    item = at.session_state["open_study"]
    assert item.source_id[0] == "upload"  # the upload path
    assert item.study.study_uid == pacs_studies[1].study_uid
    assert item.study.n_slices == len(pacs_studies[1].datasets)
    assert "PAT001" not in item.name and "DOE" not in item.name


def test_unreachable_pacs_shows_one_message(app_env):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    app_env.setenv("HOHOHO_DICOMWEB_URL", url)
    at = _search(_pacs(AppTest.from_file(APP, default_timeout=180).run()))
    assert not at.exception
    assert [e.value for e in at.error] and "cannot reach" in at.error[0].value


def test_no_pacs_configured(app_env):
    app_env.delenv("HOHOHO_DICOMWEB_URL", raising=False)
    at = _pacs(AppTest.from_file(APP, default_timeout=180).run())
    assert not at.exception
    assert any("HOHOHO_DICOMWEB_URL" in i.value for i in at.info)
