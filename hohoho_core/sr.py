"""A study's analysis as a DICOM Comprehensive SR (highdicom), and back.

The report holds, per subtype: the study-level probability (the highest slice
probability), the weights' threshold, present/absent at that threshold, and for each run
of positive slices its 1-based slice range and image references (SOP Instance UIDs, and
frame numbers for multi-frame files); plus the model's name and version and the sentence
"not for clinical use". Subtype and measurement names are coded in a private scheme
(``99HOHOHO``, PS3.16 8.2 allows a ``99`` prefix); presence uses SNOMED CT
Present/Absent; the other names are DICOM (DCM) codes.

`read_sr` parses such a report back into `SrFindings`; `is_hohoho_sr` tells our reports
apart from other SR objects. The reader ignores SR objects as image series
(`hohoho_core.dicom.headers.classify` skips them with `SkipReason.NOT_IMAGE`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from hohoho_core.dicom import Upload
from hohoho_core.predict import StudyPrediction
from hohoho_core.study import Study
from hohoho_core.weights import ModelConfig

__all__ = [
    "DISCLAIMER",
    "SR_SERIES_DESCRIPTION",
    "Finding",
    "ModelIdentity",
    "SliceRun",
    "SrError",
    "SrFindings",
    "build_sr",
    "evidence_headers",
    "is_hohoho_sr",
    "model_identity",
    "read_sr",
    "sr_bytes",
]

DISCLAIMER = (
    "HOHOHO research software: not for clinical use. Findings are model outputs for "
    "research and demonstration only and must not guide diagnosis or treatment."
)
SR_SERIES_DESCRIPTION = "HOHOHO ICH analysis (not for clinical use)"
_SCHEME = "99HOHOHO"
_SR_SERIES_NUMBER = 9901
_TITLE = CodedConcept("18748-4", "LN", "Diagnostic imaging report")
_SUBTYPE = CodedConcept("subtype", _SCHEME, "Hemorrhage subtype")
_PROBABILITY = CodedConcept("probability", _SCHEME, "Study probability")
_THRESHOLD = CodedConcept("threshold", _SCHEME, "Decision threshold")
_PRESENCE = CodedConcept("presence", _SCHEME, "Presence at threshold")
_RUN = CodedConcept("positive-run", _SCHEME, "Positive slices")
_RANGE = CodedConcept("slice-range", _SCHEME, "Slice range")
_SLICE = CodedConcept("positive-slice", _SCHEME, "Positive slice")
_PRESENT = CodedConcept.from_code(codes.SCT.Present)
_ABSENT = CodedConcept.from_code(codes.SCT.Absent)
_NO_UNITS = CodedConcept.from_code(codes.UCUM.NoUnits)


class SrError(ValueError):
    """A dataset is not a readable HOHOHO report, or a report cannot be built."""


@dataclass(frozen=True)
class ModelIdentity:
    """What the report says made it."""

    name: str
    version: str


def model_identity(config: ModelConfig, weights_dir: str | Path | None = None) -> ModelIdentity:
    """Name from the architecture (and sequence model), version from the weights' config:
    its format version and creation time, and the folder name when given."""
    name = f"HOHOHO {config.arch}" + (" + LSTM" if config.lstm is not None else "")
    parts = [f"weights format {config.version}"]
    if config.created:
        parts.append(f"created {config.created}")
    if weights_dir is not None:
        parts.append(f"folder {Path(weights_dir).name}")
    return ModelIdentity(name=name, version=", ".join(parts)[:64])


@dataclass(frozen=True)
class SliceRun:
    """Consecutive positive slices, 1-based and inclusive, and the images they are."""

    first: int
    last: int
    sop_uids: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    """One subtype's study-level result."""

    subtype: str
    probability: float
    threshold: float
    positive: bool
    runs: tuple[SliceRun, ...]


@dataclass(frozen=True)
class SrFindings:
    """What `read_sr` found in a report."""

    study_uid: str
    analysed_series_uid: str
    sop_uid: str
    model_name: str
    model_version: str
    disclaimer: str
    findings: dict[str, Finding]
    notes: tuple[str, ...] = ()  # comments after the disclaimer (`StudyPrediction.notes`)


def evidence_headers(uploads: Sequence[Upload]) -> dict[str, pydicom.Dataset]:
    """Headers (no pixels) of uploads, by upload name: the slices a report references.

    Unreadable uploads are left out (the reader has already reported them).
    """
    out: dict[str, pydicom.Dataset] = {}
    for u in uploads:
        try:
            out[u.name] = pydicom.dcmread(io.BytesIO(u.data), stop_before_pixels=True)
        except Exception:  # not DICOM: the load report lists it
            continue
    return out


def _reference(study: Study, headers: Mapping[str, pydicom.Dataset], i: int) -> tuple[str, str, int | None]:
    info = study.slices[i]
    ds = headers.get(info.source)
    if ds is None or "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise SrError(f"no header for slice {i + 1} ({info.source}): cannot reference it")
    frame = None if info.frame is None else info.frame + 1
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), frame


def _finding_item(
    k: int, cls: str, pred: StudyPrediction, study: Study, headers: Mapping[str, pydicom.Dataset]
) -> hd.sr.ContainerContentItem:
    prob = float(pred.summary.max_prob[cls])
    thr = float(pred.thresholds[k])
    positive = bool(pred.summary.positive[cls])
    item = hd.sr.ContainerContentItem(name=codes.DCM.Finding, relationship_type="CONTAINS")
    children = [
        hd.sr.CodeContentItem(_SUBTYPE, CodedConcept(cls, _SCHEME, cls),
                              relationship_type="CONTAINS"),
        hd.sr.NumContentItem(_PROBABILITY, round(prob, 6), _NO_UNITS,
                             relationship_type="CONTAINS"),
        hd.sr.NumContentItem(_THRESHOLD, round(thr, 6), _NO_UNITS,
                             relationship_type="CONTAINS"),
        hd.sr.CodeContentItem(_PRESENCE, _PRESENT if positive else _ABSENT,
                              relationship_type="CONTAINS"),
    ]
    for first, last in pred.summary.ranges[cls]:
        run = hd.sr.ContainerContentItem(name=_RUN, relationship_type="CONTAINS")
        parts = [hd.sr.TextContentItem(_RANGE, f"{first + 1}-{last + 1}",
                                       relationship_type="CONTAINS")]
        for i in range(first, last + 1):
            sop_class, sop_uid, frame = _reference(study, headers, i)
            parts.append(hd.sr.ImageContentItem(_SLICE, sop_class, sop_uid,
                                                referenced_frame_numbers=frame,
                                                relationship_type="CONTAINS"))
        run.ContentSequence = hd.sr.ContentSequence(parts)
        children.append(run)
    item.ContentSequence = hd.sr.ContentSequence(children)
    return item


def build_sr(
    pred: StudyPrediction,
    study: Study,
    headers: Mapping[str, pydicom.Dataset],
    model: ModelIdentity,
    *,
    sop_uid: str | None = None,
    series_uid: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """The report of ``pred`` (made on ``study``) as a Comprehensive SR in ``study``'s
    DICOM study, in a new series.

    ``headers``: the source files' headers by `SliceInfo.source` name
    (`evidence_headers` of the uploads); every analysed slice must have one.

    Raises:
        SrError: the prediction does not match the study, or a slice has no header.
    """
    if pred.study_uid != study.study_uid or len(pred.image_ids) != study.n_slices:
        raise SrError("the prediction was not made on this study")
    for i in range(study.n_slices):  # every slice can be referenced, before building
        _reference(study, headers, i)
    used = {study.slices[i].source for i in range(study.n_slices)}
    evidence = [headers[name] for name in sorted(used)]
    root = hd.sr.ContainerContentItem(name=_TITLE)
    items = [
        hd.sr.TextContentItem(codes.DCM.Comment, DISCLAIMER, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(codes.DCM.AlgorithmName, model.name[:64],
                              relationship_type="CONTAINS"),
        hd.sr.TextContentItem(codes.DCM.AlgorithmVersion, model.version[:64],
                              relationship_type="CONTAINS"),
        hd.sr.UIDRefContentItem(codes.DCM.SeriesInstanceUID, study.series_uid,
                                relationship_type="CONTAINS"),
    ]
    # What the reader must know before trusting the findings (a slice spacing the model
    # was not trained on), as comments beside the disclaimer; UT holds a whole note.
    items += [hd.sr.TextContentItem(codes.DCM.Comment, note, relationship_type="CONTAINS")
              for note in pred.notes]
    items += [_finding_item(k, cls, pred, study, headers) for k, cls in enumerate(pred.classes)]
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_uid or generate_uid(),
        series_number=_SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid or generate_uid(),
        instance_number=1,
        manufacturer="HOHOHO (research software, not for clinical use)",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    return sr


def sr_bytes(sr: pydicom.Dataset) -> bytes:
    """A report as Part-10 file bytes."""
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _code(item: pydicom.Dataset, keyword: str) -> tuple[str, str]:
    seq = item.get(keyword)
    if not seq:
        return "", ""
    return str(seq[0].get("CodeValue", "")), str(seq[0].get("CodingSchemeDesignator", ""))


def _name(item: pydicom.Dataset) -> tuple[str, str]:
    return _code(item, "ConceptNameCodeSequence")


def _key(concept: CodedConcept) -> tuple[str, str]:
    return concept.value, concept.scheme_designator


def is_hohoho_sr(ds: pydicom.Dataset) -> bool:
    """True for a structured report this module wrote (title and algorithm name)."""
    try:
        if str(ds.get("Modality", "")) != "SR" or _name(ds) != _key(_TITLE):
            return False
        for item in ds.get("ContentSequence", []):
            if _name(item) == _key(CodedConcept.from_code(codes.DCM.AlgorithmName)):
                return str(item.get("TextValue", "")).startswith("HOHOHO")
    except Exception:
        return False
    return False


def _num(item: pydicom.Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def _finding(container: pydicom.Dataset) -> Finding:
    subtype, prob, thr, positive, runs = "", None, None, None, []
    for item in container.get("ContentSequence", []):
        name = _name(item)
        if name == _key(_SUBTYPE):
            subtype = _code(item, "ConceptCodeSequence")[0]
        elif name == _key(_PROBABILITY):
            prob = _num(item)
        elif name == _key(_THRESHOLD):
            thr = _num(item)
        elif name == _key(_PRESENCE):
            positive = _code(item, "ConceptCodeSequence") == _key(_PRESENT)
        elif name == _key(_RUN):
            text, uids = "", []
            for part in item.get("ContentSequence", []):
                if _name(part) == _key(_RANGE):
                    text = str(part.TextValue)
                elif _name(part) == _key(_SLICE):
                    uids.append(str(part.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            first, _, last = text.partition("-")
            runs.append(SliceRun(int(first), int(last), tuple(uids)))
    if not subtype or prob is None or thr is None or positive is None:
        raise SrError("a finding of the report lacks its subtype, probability, threshold "
                      "or presence")
    return Finding(subtype, prob, thr, positive, tuple(runs))


def read_sr(ds: pydicom.Dataset) -> SrFindings:
    """Parse a report written by `build_sr` (e.g. retrieved from a PACS).

    Raises:
        SrError: not a HOHOHO report, or a malformed one.
    """
    if not is_hohoho_sr(ds):
        raise SrError("not a HOHOHO structured report")
    text: dict[tuple[str, str], str] = {}
    comments: list[str] = []  # the disclaimer first, then the prediction's notes
    comment = _key(CodedConcept.from_code(codes.DCM.Comment))
    series_uid = ""
    findings: dict[str, Finding] = {}
    try:
        for item in ds.ContentSequence:
            name = _name(item)
            if name == _key(CodedConcept.from_code(codes.DCM.Finding)):
                f = _finding(item)
                findings[f.subtype] = f
            elif name == _key(CodedConcept.from_code(codes.DCM.SeriesInstanceUID)):
                series_uid = str(item.UID)
            elif "TextValue" in item and name == comment:
                comments.append(str(item.TextValue))
            elif "TextValue" in item:
                text[name] = str(item.TextValue)
    except SrError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise SrError(f"malformed HOHOHO report ({type(err).__name__})") from None
    return SrFindings(
        study_uid=str(ds.StudyInstanceUID),
        analysed_series_uid=series_uid,
        sop_uid=str(ds.SOPInstanceUID),
        model_name=text.get(_key(CodedConcept.from_code(codes.DCM.AlgorithmName)), ""),
        model_version=text.get(_key(CodedConcept.from_code(codes.DCM.AlgorithmVersion)), ""),
        disclaimer=comments[0] if comments else "",
        findings=findings,
        notes=tuple(comments[1:]),
    )
