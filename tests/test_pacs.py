"""DICOMweb in (hohoho_core.pacs) against a real Orthanc, a closed port and a junk server."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from hohoho_core.dicom import Upload, scan_source
from hohoho_core.pacs import (
    DicomwebServer,
    PacsError,
    RetrieveLimits,
    StudyQuery,
    retrieve_ahead,
    retrieve_study,
    scan_pacs_study,
    search_studies,
    server_from_env,
)
from tests.pacs_fixture import free_port
from tests.pacs_junk import junk_server


def _server(orthanc) -> DicomwebServer:
    return DicomwebServer(orthanc.dicomweb_url, user=orthanc.user, password=orthanc.password)


# ------------------------------------------------------------------------- search


def test_search_all_ct_studies(orthanc, pacs_studies):
    found = search_studies(_server(orthanc), StudyQuery())
    assert sorted(m.study_uid for m in found) == sorted(s.study_uid for s in pacs_studies)
    # Newest first, with counts from the server.
    assert [m.study_date for m in found] == sorted((m.study_date for m in found), reverse=True)
    by_uid = {s.study_uid: s for s in pacs_studies}
    for m in found:
        assert m.n_instances == len(by_uid[m.study_uid].datasets)
        assert m.modalities == ("CT",)


def test_search_by_patient_date_and_accession(orthanc, pacs_studies):
    server = _server(orthanc)
    target = pacs_studies[1]
    by_id = search_studies(server, StudyQuery(patient_id=target.patient_id))
    assert [m.study_uid for m in by_id] == [target.study_uid]
    by_acc = search_studies(server, StudyQuery(accession=target.accession))
    assert [m.study_uid for m in by_acc] == [target.study_uid]
    day = f"{target.study_date[:4]}-{target.study_date[4:6]}-{target.study_date[6:]}"
    by_day = search_studies(server, StudyQuery(date_from=day, date_to=day))
    assert [m.study_uid for m in by_day] == [target.study_uid]
    from_day = search_studies(server, StudyQuery(date_from=target.study_date))
    assert {m.study_uid for m in from_day} == {s.study_uid for s in pacs_studies[1:]}
    assert search_studies(server, StudyQuery(patient_name="DOE^PATIENT2"))[0].study_uid == (
        pacs_studies[2].study_uid
    )
    assert search_studies(server, StudyQuery(patient_id="NOBODY")) == []
    assert search_studies(server, StudyQuery(modality="MR")) == []


def test_search_keeps_identifiers_apart(orthanc, pacs_studies):
    match = search_studies(_server(orthanc), StudyQuery(patient_id="PAT000"))[0]
    assert match.identifiers["PatientID"] == "PAT000"
    assert "PAT000" not in repr(match) and "DOE" not in repr(match)
    row = match.row()
    assert not any("PAT000" in str(v) or "DOE" in str(v) or "ACC" in str(v) for v in row.values())
    shown = match.row(show_identifiers=True)
    assert shown["patient ID"] == "PAT000" and shown["accession"] == "ACC0000"


@pytest.mark.parametrize("query, words", [
    (StudyQuery(patient_id="PAT*"), "wildcards"),
    (StudyQuery(date_from="2019-02-30"), "date"),
    (StudyQuery(date_from="2019-02-02", date_to="2019-02-01"), "empty"),
    (StudyQuery(study_uid="1.2.x"), "digits and dots"),
])
def test_malformed_query_is_refused_before_asking(query, words):
    with junk_server("garbage") as url:  # never reached: no request is sent
        with pytest.raises(PacsError, match=words):
            search_studies(DicomwebServer(url), query)


# ------------------------------------------------------------------------- retrieve


def test_retrieved_study_goes_through_the_upload_reader(orthanc, pacs_studies):
    import io

    target = pacs_studies[0]
    with scan_pacs_study(_server(orthanc), target.study_uid) as scan:
        study = scan.load()
        assert not scan.report.skipped
    # The same bytes uploaded directly give the same volume, order and slice ids.
    direct_uploads = []
    for ds in target.datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        direct_uploads.append(Upload(f"{ds.SOPInstanceUID}.dcm", buf.getvalue()))
    with scan_source(direct_uploads) as scan:
        direct = scan.load()
    assert study.study_uid == target.study_uid
    assert study.n_slices == len(target.datasets)
    assert study.image_ids == direct.image_ids
    np.testing.assert_array_equal(study.hu, direct.hu)
    assert study.identifiers["PatientID"] == target.patient_id  # kept apart, as for uploads


def test_retrieve_is_bounded(orthanc, pacs_studies):
    server, uid = _server(orthanc), pacs_studies[0].study_uid
    n = len(pacs_studies[0].datasets)
    with pytest.raises(PacsError, match=f"has {n} instances; the limit is 3"):
        retrieve_study(server, uid, RetrieveLimits(max_instances=3))
    with pytest.raises(PacsError, match="exceeds 10000 bytes"):
        retrieve_study(server, uid, RetrieveLimits(max_bytes=10_000))
    assert len(retrieve_study(server, uid)) == n


def test_unknown_study_is_named(orthanc):
    with pytest.raises(PacsError, match=r"has no study 1\.2\.3\.4"):
        retrieve_study(_server(orthanc), "1.2.3.4")


def test_retrieve_ahead_keeps_order_and_hands_back_errors(orthanc, pacs_studies):
    server = _server(orthanc)
    uids = [s.study_uid for s in pacs_studies]
    assert len(uids) >= 2
    got = list(retrieve_ahead(server, [uids[1], "1.2.3.4", uids[0]]))
    assert [u for u, _ in got] == [uids[1], "1.2.3.4", uids[0]]
    assert len(got[0][1]) == len(pacs_studies[1].datasets)
    assert isinstance(got[1][1], PacsError) and "has no study 1.2.3.4" in str(got[1][1])
    assert len(got[2][1]) == len(pacs_studies[0].datasets)
    assert list(retrieve_ahead(server, [])) == []


def test_retrieve_ahead_runs_one_ahead_and_stops_when_closed(monkeypatch):
    import threading

    import hohoho_core.pacs.retrieve as R

    started: list[str] = []
    finished = {uid: threading.Event() for uid in "abcd"}

    def fake(server, uid, limits=None):
        started.append(uid)
        finished[uid].set()
        if uid == "c":
            raise RuntimeError("not a PacsError: raised to the caller")
        return [uid]

    monkeypatch.setattr(R, "retrieve_study", fake)
    it = retrieve_ahead(DicomwebServer("http://127.0.0.1:1/dicom-web"), list("abcd"))
    assert next(it) == ("a", ["a"])
    # While the caller works on "a", "b" is retrieved, and nothing further.
    assert finished["b"].wait(10)
    time.sleep(0.1)
    assert started == ["a", "b"]
    assert next(it) == ("b", ["b"])
    with pytest.raises(RuntimeError, match="raised to the caller"):
        next(it)

    started.clear()
    for event in finished.values():
        event.clear()
    it = retrieve_ahead(DicomwebServer("http://127.0.0.1:1/dicom-web"), list("abd"))
    # the first study is on its way before the caller asks for it (while it loads a model)
    assert finished["a"].wait(10) and started == ["a"]
    assert next(it) == ("a", ["a"])
    assert finished["b"].wait(10)
    it.close()  # the caller stopped after "a": "d" is never asked for
    time.sleep(0.1)
    assert started == ["a", "b"]
    with pytest.raises(StopIteration):
        next(it)
    # closed before anything was asked: only the first retrieval (already started) ran
    started.clear()
    for event in finished.values():
        event.clear()
    with retrieve_ahead(DicomwebServer("http://127.0.0.1:1/dicom-web"), list("abd")) as it:
        assert finished["a"].wait(10)
    time.sleep(0.1)
    assert started == ["a"]  # leaving the with block closed it


# ------------------------------------------------------------------------- failures


def test_server_that_is_down():
    server = DicomwebServer(f"http://127.0.0.1:{free_port()}/dicom-web")
    start = time.monotonic()
    with pytest.raises(PacsError) as err:
        search_studies(server, StudyQuery())
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert server.display_url in msg and "cannot reach" in msg and "refused" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(PacsError, match="cannot reach"):
        retrieve_study(server, "1.2.3")


@pytest.mark.parametrize("mode, words", [
    ("garbage", "not valid DICOMweb"),
    ("error", r"HTTP 500 Internal Server Error"),
])
def test_server_that_answers_garbage_or_errors(mode, words):
    with junk_server(mode) as url:
        with pytest.raises(PacsError, match=words) as err:
            search_studies(DicomwebServer(url), StudyQuery())
        assert url in str(err.value)
        with pytest.raises(PacsError, match=words):
            retrieve_study(DicomwebServer(url), "1.2.3")


def test_server_that_times_out():
    with junk_server("hang", hang_s=3.0) as url:
        start = time.monotonic()
        with pytest.raises(PacsError, match=r"stopped answering for more than 0.5 s") as err:
            search_studies(DicomwebServer(url, timeout_s=0.5), StudyQuery())
        assert time.monotonic() - start < 2.5
        assert url in str(err.value)


def test_garbage_instead_of_instances(orthanc, pacs_studies, monkeypatch):
    # The study search answers well, the retrieval sends a part that is not DICOM.
    from hohoho_core.pacs import retrieve as R

    uid = pacs_studies[0].study_uid
    real = R.search_studies
    with junk_server("multipart-garbage") as url:
        monkeypatch.setattr(R, "search_studies", lambda s, q: real(_server(orthanc), q))
        with pytest.raises(PacsError, match="not valid DICOMweb"):
            retrieve_study(DicomwebServer(url), uid)


# ------------------------------------------------------------------------- credentials

SECRET = "pw-Z7q!secret"


def test_basic_auth_against_orthanc(orthanc_auth, pacs_studies, caplog):
    caplog.set_level(logging.DEBUG)
    good = _server(orthanc_auth)
    assert good.password == SECRET
    assert [m.study_uid for m in search_studies(good, StudyQuery())] == [
        pacs_studies[0].study_uid
    ]
    assert len(retrieve_study(good, pacs_studies[0].study_uid)) == len(pacs_studies[0].datasets)
    for bad in (DicomwebServer(orthanc_auth.dicomweb_url, user="radiologist",
                               password="wrong-" + SECRET),
                DicomwebServer(orthanc_auth.dicomweb_url)):
        with pytest.raises(PacsError, match="HTTP 401") as err:
            search_studies(bad, StudyQuery())
        assert SECRET not in str(err.value)
    assert caplog.records  # dicomweb-client and urllib3 did log at DEBUG
    assert SECRET not in caplog.text
    assert SECRET not in repr(good)


def test_bearer_token_is_sent_and_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    token = "tok-8f3kq-SECRET"
    with junk_server("bearer", token=token) as url:
        assert search_studies(DicomwebServer(url, token=token), StudyQuery()) == []
        with pytest.raises(PacsError, match="refused the study search with the token") as err:
            search_studies(DicomwebServer(url, token="other-" + token), StudyQuery())
    assert token not in str(err.value)
    assert token not in caplog.text
    assert token not in repr(DicomwebServer(url, token=token))


def test_settings_from_the_environment():
    env = {"HOHOHO_DICOMWEB_URL": "http://u1:p%40ss@pacs.example:8042/dicom-web/"}
    server = server_from_env(env)
    assert server is not None
    assert server.display_url == "http://pacs.example:8042/dicom-web"
    assert (server.user, server.password) == ("u1", "p@ss")
    assert "p@ss" not in repr(server)
    env = {"HOHOHO_DICOMWEB_URL": "http://pacs:8042/dicom-web", "HOHOHO_DICOMWEB_TOKEN": "t"}
    assert server_from_env(env).auth_kind == "bearer"
    assert server_from_env({}) is None
    with pytest.raises(PacsError, match="HOHOHO_DICOMWEB_PASSWORD is set but"):
        server_from_env({"HOHOHO_DICOMWEB_URL": "http://pacs", "HOHOHO_DICOMWEB_PASSWORD": "x"})
    with pytest.raises(PacsError, match="not an http"):
        server_from_env({"HOHOHO_DICOMWEB_URL": "ftp://user:hunter2@pacs"})
    try:
        server_from_env({"HOHOHO_DICOMWEB_URL": "ftp://user:hunter2@pacs"})
    except PacsError as err:
        assert "hunter2" not in str(err)


def test_missing_orthanc_fails_with_the_install_command(tmp_path, monkeypatch):
    # A machine without Orthanc must fail the PACS tests (not skip them), saying what to run.
    from tests import pacs_fixture

    monkeypatch.setattr(pacs_fixture, "ORTHANC", str(tmp_path / "no-orthanc"))
    with pytest.raises(RuntimeError, match=r"make pacs"):
        with pacs_fixture.running_orthanc(tmp_path / "o"):
            pass
