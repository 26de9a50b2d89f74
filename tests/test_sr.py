"""DICOM out (hohoho_core.sr): the analysis as a Comprehensive SR, read back, never a slice."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pydicom
import pytest

from hohoho_core.dicom import Upload, classify, read_header, scan_source
from hohoho_core.predict import Predictor, summarise
from hohoho_core.sr import (
    SrError,
    build_sr,
    evidence_headers,
    is_hohoho_sr,
    model_identity,
    read_sr,
    sr_bytes,
)
from hohoho_core.study import SkipReason
from hohoho_core.weights import shipped_weights_dir


def _uploads(datasets) -> list[Upload]:
    out = []
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(Upload(f"{ds.SOPInstanceUID}.dcm", buf.getvalue()))
    return out


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_folder(shipped_weights_dir(), device="cpu")


@pytest.fixture(scope="module")
def analysed(pacs_studies, predictor):
    """A study, its uploads and a prediction with a known positive run (slices 3-5 subdural)."""
    uploads = _uploads(pacs_studies[0].datasets)
    with scan_source(uploads) as scan:
        study = scan.load()
    pred = predictor.predict(study)
    k = list(pred.classes).index("subdural")
    labels = pred.labels.copy()
    labels[:, k] = False
    labels[2:5, k] = True
    prob = pred.prob.copy()
    prob[2:5, k] = np.maximum(prob[2:5, k], pred.thresholds[k] + 0.01)
    pred = dataclasses.replace(pred, labels=labels, prob=prob,
                               summary=summarise(prob, labels, pred.classes))
    return uploads, study, pred


def test_report_round_trip(analysed, predictor):
    uploads, study, pred = analysed
    model = model_identity(predictor.config, shipped_weights_dir())
    sr = build_sr(pred, study, evidence_headers(uploads), model)
    back = read_sr(pydicom.dcmread(io.BytesIO(sr_bytes(sr))))
    assert back.study_uid == study.study_uid
    assert back.analysed_series_uid == study.series_uid
    assert "not for clinical use" in back.disclaimer
    assert back.model_name == "HOHOHO resnet18 + LSTM"
    assert "created" in back.model_version
    assert set(back.findings) == set(pred.classes)
    for k, cls in enumerate(pred.classes):
        f = back.findings[cls]
        assert f.probability == pytest.approx(pred.summary.max_prob[cls], abs=1e-6)
        assert f.threshold == pytest.approx(float(pred.thresholds[k]), abs=1e-6)
        assert f.positive == pred.summary.positive[cls]
    sub = back.findings["subdural"]
    assert sub.positive
    assert [(r.first, r.last) for r in sub.runs] == [(3, 5)]
    assert sub.runs[0].sop_uids == tuple(study.image_ids[2:5])  # SOP UIDs of those slices
    assert back.notes == ()


def test_report_carries_the_predictions_notes(analysed, predictor):
    """A note on the input (e.g. a slice spacing not trained on) reaches the PACS beside
    the disclaimer, which stays the first comment."""
    uploads, study, pred = analysed
    noted = dataclasses.replace(pred, notes=("slices 1 mm apart, closer together",))
    model = model_identity(predictor.config, shipped_weights_dir())
    sr = build_sr(noted, study, evidence_headers(uploads), model)
    back = read_sr(pydicom.dcmread(io.BytesIO(sr_bytes(sr))))
    assert "not for clinical use" in back.disclaimer
    assert back.notes == ("slices 1 mm apart, closer together",)


def test_report_is_never_a_slice(analysed, predictor):
    uploads, study, pred = analysed
    sr = build_sr(pred, study, evidence_headers(uploads), model_identity(predictor.config))
    data = sr_bytes(sr)
    for fast in (False, True):
        skipped = classify(read_header(Upload("report.dcm", data), fast=fast))
        assert skipped is not None and skipped.reason is SkipReason.NOT_IMAGE
    with scan_source([*uploads, Upload("report.dcm", data)]) as scan:
        again = scan.load()
        assert len(scan.series) == 1
    assert again.image_ids == study.image_ids
    np.testing.assert_array_equal(again.hu, study.hu)
    assert [(s.source, s.reason) for s in again.report.skipped] == [
        ("report.dcm", SkipReason.NOT_IMAGE)
    ]


def test_other_objects_are_not_our_reports(analysed):
    uploads, study, pred = analysed
    ct = pydicom.dcmread(io.BytesIO(uploads[0].data))
    assert not is_hohoho_sr(ct)
    with pytest.raises(SrError, match="not a HOHOHO structured report"):
        read_sr(ct)


def test_report_needs_the_slices_headers(analysed, predictor):
    uploads, study, pred = analysed
    headers = evidence_headers(uploads)
    headers.pop(study.slices[3].source)
    with pytest.raises(SrError, match="no header for slice 4"):
        build_sr(pred, study, headers, model_identity(predictor.config))


def test_saliency_captures_are_images_never_slices(analysed, predictor):
    from hohoho_core.sr_capture import CAPTURE_SERIES_DESCRIPTION, saliency_captures

    uploads, study, pred = analysed
    captures = saliency_captures(pred, study, evidence_headers(uploads), predictor)
    positive = [c for c in pred.classes if pred.summary.positive[c]]
    assert len(captures) == len(positive) >= 1
    size = predictor.preprocess_config.size * 4
    files = []
    for n, sc in enumerate(captures):
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert sc.StudyInstanceUID == study.study_uid
        assert sc.SeriesDescription == CAPTURE_SERIES_DESCRIPTION
        assert "not for clinical use" in sc.ImageComments
        assert sc.pixel_array.shape == (size, size, 3)
        assert sc.pixel_array.std() > 0  # an image, not a blank
        files.append(Upload(f"capture{n}.dcm", sr_bytes(sc)))
    with scan_source([*uploads, *files]) as scan:
        again = scan.load()
    np.testing.assert_array_equal(again.hu, study.hu)
    assert {s.reason for s in again.report.skipped} == {SkipReason.RGB_OR_SECONDARY}
