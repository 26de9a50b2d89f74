"""The worklist over a PACS query: every study a search finds is retrieved and analysed
(`hohoho_core.worklist.PacsSource`, `hohoho_core.pacs.load_pacs_study`), against the test
Orthanc."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hohoho_core.pacs import DicomwebServer, StudyQuery, load_pacs_study, search_studies
from hohoho_core.worklist import PacsSource, WorklistRun


def test_a_pacs_query_becomes_a_worklist(orthanc, pacs_studies) -> None:
    from hohoho_core.predict import Predictor

    server = DicomwebServer(orthanc.dicomweb_url)
    matches = search_studies(server, StudyQuery())
    assert {m.study_uid for m in matches} == {s.study_uid for s in pacs_studies}
    source = PacsSource(key="pacs|test", name="PACS query", matches=tuple(matches),
                        load_study_uid=lambda uid: load_pacs_study(server, uid))
    entries = list(source.entries())
    assert [e.key for e in entries] == [m.study_uid for m in matches]
    for e, s in zip(entries, pacs_studies, strict=False):
        assert s.patient_id not in e.label  # labels never name the patient

    predictor = Predictor.from_folder(Path(__file__).resolve().parents[1] / "weights")
    run = WorklistRun(entries, predictor.predict).start()
    run.join(120)
    assert run.finished
    results = run.results()
    assert len(results) == len(pacs_studies) and all(r.error is None for r in results)
    by_uid = {s.study_uid: s for s in pacs_studies}
    for r in results:
        assert r.n_slices == len(by_uid[r.key].datasets)
    # most suspicious first, checked against the model run directly on each study
    direct = {e.key: float(predictor.predict(e.load()).prob[:, -1].max()) for e in entries}
    assert [r.key for r in results] == sorted(direct, key=lambda k: -direct[k])
    assert np.allclose([r.any_max for r in results], sorted(direct.values(), reverse=True))


def test_worklist_page_analyses_a_pacs_query(orthanc, pacs_studies, monkeypatch,
                                             tmp_path_factory, tmp_path) -> None:
    """The page's "PACS query" source: search, then every study found is listed (no patient
    identifier on the page)."""
    import time

    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP, TIMEOUT, build_app_data, point_env
    from tests.test_worklist import WORKLIST

    point_env(monkeypatch, build_app_data(tmp_path_factory), tmp_path / "d.sqlite")
    monkeypatch.setenv("HOHOHO_DICOMWEB_URL", orthanc.dicomweb_url)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(WORKLIST).run()
    at.radio(key="_w_wl_source_kind").set_value("PACS query").run()
    assert not at.exception, [e.value for e in at.exception]
    at.button[[b.label for b in at.button].index("Search")].click().run()
    deadline = time.monotonic() + 300
    while not any("studies analysed in" in c.value for c in at.caption):
        assert time.monotonic() < deadline, [c.value for c in at.caption]
        assert not at.exception and not at.error, [e.value for e in at.error]
        time.sleep(1.0)
        at.run()
    shown = [m.value for m in at.markdown if m.value.startswith("Study ")]
    assert len(shown) == len(pacs_studies)
    page = " ".join(m.value for m in at.markdown)
    assert not any(s.patient_id in page for s in pacs_studies)
