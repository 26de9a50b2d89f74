"""The CLI's PACS paths: ``pacs search`` and ``predict --dicomweb [--store-sr]`` against a
real Orthanc; a closed port and a junk server end in one line and exit code 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from hohoho_core.__main__ import main
from hohoho_core.dicom import scan_source
from hohoho_core.pacs import DicomwebServer, retrieve_study
from hohoho_core.sr import read_sr
from hohoho_core.study import SkipReason
from tests.pacs_fixture import free_port, load_studies, running_orthanc
from tests.pacs_junk import junk_server

SECRET = "pw-Z7q!secret"


@pytest.fixture(scope="module")
def orthanc_rw(tmp_path_factory, pacs_studies):
    """An Orthanc of this module's own: reports are stored into it."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc_rw")) as server:
        load_studies(server, pacs_studies)
        yield server


@pytest.fixture(autouse=True)
def _no_pacs_env(monkeypatch):
    for name in ("URL", "USER", "PASSWORD", "TOKEN"):
        monkeypatch.delenv(f"HOHOHO_DICOMWEB_{name}", raising=False)


def test_search_hides_identifiers_unless_asked(orthanc, pacs_studies, capsys):
    assert main(["pacs", "search", "--dicomweb", orthanc.dicomweb_url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(pacs_studies)} studies on {orthanc.dicomweb_url}")
    for s in pacs_studies:
        assert s.study_uid in out
        assert s.patient_id not in out and "DOE" not in out and s.accession not in out
    assert main(["pacs", "search", "--dicomweb", orthanc.dicomweb_url, "--patient-id",
                 "PAT001", "--show-identifiers"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 studies") and "PAT001" in out and "DOE^PATIENT1" in out
    assert pacs_studies[1].study_uid in out


def test_search_with_credentials_from_the_environment(orthanc_auth, monkeypatch, capsys):
    monkeypatch.setenv("HOHOHO_DICOMWEB_URL", orthanc_auth.dicomweb_url)
    monkeypatch.setenv("HOHOHO_DICOMWEB_USER", orthanc_auth.user)
    monkeypatch.setenv("HOHOHO_DICOMWEB_PASSWORD", SECRET)
    assert main(["pacs", "search"]) == 0
    assert capsys.readouterr().out.startswith("1 studies")
    monkeypatch.setenv("HOHOHO_DICOMWEB_PASSWORD", "wrong")
    assert main(["pacs", "search"]) == 2
    captured = capsys.readouterr()
    assert "HTTP 401" in captured.err and captured.err.count("\n") == 1
    assert SECRET not in captured.err + captured.out


def test_predict_a_study_and_store_its_report(orthanc_rw, pacs_studies, tmp_path, capsys):
    target = pacs_studies[0]
    out = tmp_path / "preds.json"
    rc = main(["predict", "--dicomweb", orthanc_rw.dicomweb_url, "--study-uid",
               target.study_uid, "--out", str(out), "--store-sr", "--store-saliency"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    record = json.loads(out.read_text())["studies"][0]
    n_captures = sum(record["summary"]["positive"].values())
    assert f"{1 + n_captures} DICOM objects (structured reports, saliency images) stored" in (
        captured.out)
    assert record["study_uid"] == target.study_uid
    assert len(record["image_ids"]) == len(target.datasets)
    # The study now holds our report: the reader skips it, read_sr reads it.
    server = DicomwebServer(orthanc_rw.dicomweb_url)
    uploads = retrieve_study(server, target.study_uid)
    assert len(uploads) == len(target.datasets) + 1 + n_captures
    with scan_source(uploads) as scan:
        study = scan.load()
        skipped = sorted(scan.report.skipped, key=lambda s: s.reason != SkipReason.NOT_IMAGE)
    assert study.n_slices == len(target.datasets)
    assert [s.reason for s in skipped] == (
        [SkipReason.NOT_IMAGE] + [SkipReason.RGB_OR_SECONDARY] * n_captures)
    report = next(u for u in uploads if u.name == skipped[0].source)
    found = read_sr(pydicom.dcmread(io.BytesIO(report.data)))
    assert "not for clinical use" in found.disclaimer
    for cls, prob in record["summary"]["max_prob"].items():
        assert found.findings[cls].probability == pytest.approx(prob, abs=1e-6)
        assert found.findings[cls].positive == record["summary"]["positive"][cls]
        runs = [(r.first - 1, r.last - 1) for r in found.findings[cls].runs]
        assert runs == [tuple(r) for r in record["summary"]["ranges"][cls]]
        for r in found.findings[cls].runs:
            assert list(r.sop_uids) == record["image_ids"][r.first - 1 : r.last]


def test_predict_every_study_a_query_finds(orthanc, pacs_studies, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    rc = main(["predict", "--dicomweb", orthanc.dicomweb_url, "--date-from", "2019-01-11",
               "--date-to", "2019-01-12", "--out", str(out), "--engine", "torch"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "CNN run by torch" in captured.out  # --engine reaches the PACS path too
    studies = (tmp_path / "preds_studies.csv").read_text()
    assert pacs_studies[0].study_uid not in studies
    assert pacs_studies[1].study_uid in studies and pacs_studies[2].study_uid in studies


def test_a_failed_study_keeps_the_others(orthanc, pacs_studies, tmp_path, capsys):
    out = tmp_path / "preds.json"
    rc = main(["predict", "--dicomweb", orthanc.dicomweb_url, "--study-uid",
               pacs_studies[2].study_uid, "--study-uid", "1.2.3.4.5", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == (f"hohoho: error: DICOMweb server {orthanc.dicomweb_url} has no study "
                       "1.2.3.4.5 (1 studies predicted were written); --resume retries the "
                       "failed studies")
    written = json.loads(out.read_text())["studies"]
    assert [r["study_uid"] for r in written] == [pacs_studies[2].study_uid]
    # The partial log stays for --resume, which retries only the failed study.
    log = tmp_path / ".preds.json.dicomweb.partial.jsonl"
    assert log.is_file()
    assert main(["predict", "--dicomweb", orthanc.dicomweb_url, "--study-uid",
                 pacs_studies[2].study_uid, "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_an_interrupted_pacs_run_resumes_to_the_same_file(
    orthanc, pacs_studies, tmp_path, capsys, monkeypatch
):
    """Ctrl-C in the second study keeps the first in the partial log; --resume does not
    retrieve it again and writes the bytes of an uninterrupted run."""
    import hohoho_core.pacs as pacs

    uids = [pacs_studies[2].study_uid, pacs_studies[0].study_uid, pacs_studies[1].study_uid]
    argv = ["predict", "--dicomweb", orthanc.dicomweb_url, "--precision", "fp32"]
    for uid in uids:
        argv += ["--study-uid", uid]
    whole = tmp_path / "whole.csv"
    assert main([*argv, "--out", str(whole)]) == 0
    capsys.readouterr()

    real = pacs.retrieve_study
    asked: list[str] = []

    def stop_at_second(server, uid, *args, **kwargs):
        asked.append(uid)
        if len(asked) == 2:
            raise KeyboardInterrupt
        return real(server, uid, *args, **kwargs)

    out = tmp_path / "cut.csv"
    # Looked up where retrieve_ahead calls it (in its background thread; a
    # KeyboardInterrupt there reaches the main thread through its queue).
    monkeypatch.setattr(pacs.retrieve, "retrieve_study", stop_at_second)
    assert main([*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "finished studies are kept in" in err and "--resume" in err
    assert not out.exists() and (tmp_path / ".cut.csv.dicomweb.partial.jsonl").is_file()
    # --resume with the server gone: what was predicted is written, the log is kept (no
    # early "cannot reach" before the model is built once results are logged).
    down = [a if a != orthanc.dicomweb_url else f"http://127.0.0.1:{free_port()}/dicom-web"
            for a in argv]
    assert main([*down, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "(1 studies predicted were written)" in err
    assert len(out.read_text().splitlines()) == 1 + 6 * len(pacs_studies[2].datasets)
    assert (tmp_path / ".cut.csv.dicomweb.partial.jsonl").is_file()
    out.unlink()
    (tmp_path / "cut_studies.csv").unlink()
    asked.clear()
    monkeypatch.setattr(pacs.retrieve, "retrieve_study", lambda server, uid, *a, **k: (
        asked.append(uid), real(server, uid, *a, **k))[1])
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert "resumed: 1 studies were done, 2 predicted now" in capsys.readouterr().err
    assert asked == uids[1:]  # the finished study was not retrieved again
    assert out.read_bytes() == whole.read_bytes()
    assert (tmp_path / "cut_studies.csv").read_bytes() == (
        tmp_path / "whole_studies.csv").read_bytes()
    assert not (tmp_path / ".cut.csv.dicomweb.partial.jsonl").exists()


def test_a_study_cut_between_its_series_resumes_without_storing_twice(
    orthanc_rw, pacs_studies, tmp_path, capsys, monkeypatch
):
    """A study of two series, stopped after the first series' report was stored: --resume
    predicts and stores only the second, and writes an uninterrupted run's bytes."""
    import copy

    from dicomweb_client import DICOMwebClient
    from pydicom.uid import generate_uid

    import hohoho_core.pacs as pacs

    target = pacs_studies[1]
    series = generate_uid()
    twin = []
    for ds in target.datasets:
        ds = copy.deepcopy(ds)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        twin.append(ds)
    DICOMwebClient(orthanc_rw.dicomweb_url).store_instances(twin, target.study_uid)
    server = DicomwebServer(orthanc_rw.dicomweb_url)
    n_images = 2 * len(target.datasets)
    argv = ["predict", "--dicomweb", orthanc_rw.dicomweb_url, "--study-uid",
            target.study_uid, "--store-sr", "--precision", "fp32"]
    whole = tmp_path / "whole.csv"
    assert main([*argv, "--out", str(whole)]) == 0
    assert len(retrieve_study(server, target.study_uid)) == n_images + 2  # one SR a series
    capsys.readouterr()

    real = pacs.store_instances
    calls: list[int] = []

    def stop_at_second(server, objects, *args, **kwargs):
        calls.append(len(objects))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(server, objects, *args, **kwargs)

    monkeypatch.setattr(pacs, "store_instances", stop_at_second)
    out = tmp_path / "cut.csv"
    assert main([*argv, "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert len(retrieve_study(server, target.study_uid)) == n_images + 3
    calls.clear()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert calls == [1]  # the second series' report only
    assert len(retrieve_study(server, target.study_uid)) == n_images + 4
    assert out.read_bytes() == whole.read_bytes()


def _run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hohoho_core", *argv], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])


def test_server_down_one_line_nothing_written(tmp_path):
    out = tmp_path / "preds.json"
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    proc = _run_cli("predict", "--dicomweb", url, "--study-uid", "1.2.3", "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"hohoho: error: cannot reach DICOMweb server {url}")
    assert not out.exists()
    # Told before the model is built (a "precision: ..." line once took seconds to come
    # first): the server is asked before torch is imported.
    assert proc.stdout == ""
    # A malformed first UID is passed over by that question (it fails on its own).
    proc = _run_cli("predict", "--dicomweb", url, "--study-uid", "not-a-uid", "--study-uid",
                    "1.2.3", "--out", str(out))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"hohoho: error: cannot reach DICOMweb server {url}")


def test_server_answering_garbage_one_line(tmp_path):
    with junk_server("garbage") as url:
        proc = _run_cli("pacs", "search", "--dicomweb", url)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "not valid DICOMweb" in proc.stderr and url in proc.stderr
        out = tmp_path / "p.json"
        rc_proc = _run_cli("predict", "--dicomweb", url, "--patient-id", "X", "--out", str(out))
        assert rc_proc.returncode == 2 and rc_proc.stderr.count("\n") == 1
        assert "not valid DICOMweb" in rc_proc.stderr and not out.exists()


def test_predict_needs_a_study_or_query(orthanc, tmp_path, capsys):
    assert main(["predict", "--dicomweb", orthanc.dicomweb_url]) == 2
    assert "--study-uid" in capsys.readouterr().err
    assert main(["predict", "--dicomweb", "--study-uid", "1.2"]) == 2
    assert "HOHOHO_DICOMWEB_URL" in capsys.readouterr().err
    assert main(["predict", "--dicomweb", orthanc.dicomweb_url, "--study-uid", "1.2",
                 "--sample-submission", str(tmp_path / "s.csv")]) == 2
    assert "--sample-submission works with study PATHs" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--dicomweb", orthanc.dicomweb_url,
                 "--study-uid", "1.2"]) == 2
    assert "not both" in capsys.readouterr().err
