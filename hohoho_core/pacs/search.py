"""QIDO-RS: find studies by patient, date range, accession number and modality.

Results are `StudyMatch` records: what a worklist may show (date, accession, description,
counts) apart from what identifies a patient (``identifiers``, not in ``repr``), the way
`hohoho_core.study.Study` keeps them apart.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

import pydicom

from hohoho_core.pacs._http import calling, make_client
from hohoho_core.pacs.server import DicomwebServer, PacsError

__all__ = ["DEFAULT_SEARCH_LIMIT", "StudyMatch", "StudyQuery", "search_studies"]

#: Studies one search lists at most (a server may hold millions).
DEFAULT_SEARCH_LIMIT = 200
_FIELDS = (
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "PatientBirthDate",
)
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
#: Characters a QIDO matching key may hold here: no wildcard or list syntax by accident.
_KEY = re.compile(r"[^\\*?,\x00-\x1f]{1,64}")


def _date(value: dt.date | str | None, name: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise PacsError(f"{name} must be a date like 2019-01-31, got {text!r}")


def _key(value: str | None, name: str) -> str | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not _KEY.fullmatch(text):
        raise PacsError(f"{name} may not hold wildcards (* ?), commas, backslashes or "
                        "control characters, and at most 64 characters")
    return text


@dataclass(frozen=True)
class StudyQuery:
    """What to search for; empty fields match everything. Dates are inclusive.

    ``patient_name`` matches as a prefix (``DOE`` finds ``DOE^JANE``, ``DOE^J`` too); the other keys
    match exactly. ``modality`` filters on ModalitiesInStudy (``CT`` by default).
    """

    patient_id: str | None = field(default=None, repr=False)
    patient_name: str | None = field(default=None, repr=False)
    date_from: dt.date | str | None = None
    date_to: dt.date | str | None = None
    accession: str | None = field(default=None, repr=False)
    study_uid: str | None = None
    modality: str | None = "CT"
    limit: int = DEFAULT_SEARCH_LIMIT

    def filters(self) -> dict[str, str]:
        """The QIDO-RS matching keys (raises `PacsError` on a malformed value)."""
        out: dict[str, str] = {}
        pid = _key(self.patient_id, "the patient ID")
        if pid:
            out["PatientID"] = pid
        name = _key(self.patient_name, "the patient name")
        if name:
            # Servers differ on matching the component separator (Orthanc 1.10 never
            # matches a literal ^), so each component matches as a prefix.
            out["PatientName"] = "*".join(p for p in name.split("^")) + "*"
        acc = _key(self.accession, "the accession number")
        if acc:
            out["AccessionNumber"] = acc
        if self.study_uid:
            if not _UID.fullmatch(self.study_uid) or len(self.study_uid) > 64:
                raise PacsError("the study UID must be digits and dots, at most 64 characters")
            out["StudyInstanceUID"] = self.study_uid
        start = _date(self.date_from, "the first date")
        end = _date(self.date_to, "the last date")
        if start and end and start > end:
            raise PacsError(f"the date range is empty: {start} is after {end}")
        if start or end:
            a = start.strftime("%Y%m%d") if start else ""
            b = end.strftime("%Y%m%d") if end else ""
            out["StudyDate"] = f"{a}-{b}" if a != b else a
        mod = _key(self.modality, "the modality")
        if mod:
            out["ModalitiesInStudy"] = mod.upper()
        return out


@dataclass(frozen=True)
class StudyMatch:
    """One study a search found. ``identifiers`` (PatientID, PatientName) stay apart."""

    study_uid: str
    study_date: str  # YYYY-MM-DD or ""
    accession: str = field(repr=False)
    description: str
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)

    def row(self, show_identifiers: bool = False) -> dict[str, Any]:
        """A table row; patient identifiers (and the accession) only when asked."""
        out: dict[str, Any] = {
            "study date": self.study_date,
            "description": self.description,
            "modalities": "/".join(self.modalities),
            "series": self.n_series,
            "instances": self.n_instances,
            "study UID": self.study_uid,
        }
        if show_identifiers:
            out = {"patient ID": self.identifiers.get("PatientID", ""),
                   "patient name": self.identifiers.get("PatientName", ""),
                   "accession": self.accession, **out}
        return out


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value from the server is shown as missing
        return ""
    if value is None:
        return ""
    return " ".join(str(value).split())[:200]


def _count(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    except Exception:
        return None


def _match(item: dict[str, Any]) -> StudyMatch | None:
    if not isinstance(item, dict):
        raise TypeError("a QIDO-RS result is not a JSON object")
    ds = pydicom.Dataset.from_json(item)
    uid = _text(ds, "StudyInstanceUID")
    if not _UID.fullmatch(uid):
        return None  # unusable without its UID
    date = _text(ds, "StudyDate")
    if re.fullmatch(r"\d{8}", date):
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    try:
        mods = ds.get("ModalitiesInStudy") or []
        modalities = tuple(str(m) for m in (mods if isinstance(mods, list | pydicom.multival.MultiValue) else [mods]))
    except Exception:
        modalities = ()
    return StudyMatch(
        study_uid=uid,
        study_date=date,
        accession=_text(ds, "AccessionNumber"),
        description=_text(ds, "StudyDescription"),
        modalities=modalities,
        n_series=_count(ds, "NumberOfStudyRelatedSeries"),
        n_instances=_count(ds, "NumberOfStudyRelatedInstances"),
        identifiers={"PatientID": _text(ds, "PatientID"), "PatientName": _text(ds, "PatientName")},
    )


def search_studies(server: DicomwebServer, query: StudyQuery) -> list[StudyMatch]:
    """Studies on ``server`` matching ``query``, newest first, at most ``query.limit``.

    Raises:
        PacsError: a malformed query, or the server is down, refuses, or answers garbage.
    """
    if query.limit < 1:
        raise PacsError(f"the search limit must be at least 1, got {query.limit}")
    filters = query.filters()
    client = make_client(server)
    with calling(server, "the study search"):
        found = client.search_for_studies(
            search_filters=filters, fields=list(_FIELDS), limit=query.limit
        )
        if not isinstance(found, list):
            raise TypeError("a QIDO-RS answer is not a JSON list")
        matches = [m for m in (_match(item) for item in found) if m is not None]
    if query.modality:
        # A server that ignores ModalitiesInStudy still lists only what was asked for.
        want = query.modality.upper()
        matches = [m for m in matches if not m.modalities or want in m.modalities]
    matches.sort(key=lambda m: (m.study_date, m.study_uid), reverse=True)
    return matches[: query.limit]
