"""Orchestration: a source -> its CT series -> `Study` volumes.

The reader works in two passes so that large folders stay fast:

1. headers only, once per file (`scan_source`): group by StudyInstanceUID /
   SeriesInstanceUID and reject what cannot be a CT slice;
2. pixels only for the chosen series (`SourceScan.load`), ordered by
   `geometry.order_slices` and decoded straight into one preallocated float32 volume.

A `SourceScan` owns the temporary folders its zips were extracted into, so listing the
series of an uploaded zip and loading several of them extracts it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from hohoho_core.dicom.bounds import DEFAULT_BOUNDS, ReadBounds, pixel_data_problem
from hohoho_core.dicom.geometry import (
    _orientation_label,
    _report_gaps,
    _series_normal,
    order_slices,
)
from hohoho_core.dicom.headers import (
    HeaderRecord,
    UnreadableFileError,
    _read_header_entry,
    classify,
)
from hohoho_core.dicom.pixels import decode_into
from hohoho_core.dicom.sources import (
    DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    _collect,
    _Entry,
    _Limits,
)
from hohoho_core.dicom.zipsafe import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_ZIP_BYTES
from hohoho_core.study import LoadReport, SkipReason, SliceInfo, Study
from hohoho_core.system import available_cores

__all__ = [
    "SeriesSummary",
    "SourceScan",
    "StudyLoadError",
    "iter_studies",
    "list_series",
    "load_studies",
    "load_study",
    "scan_source",
]

logger = logging.getLogger(__name__)


class StudyLoadError(RuntimeError):
    """No usable CT slice: the message counts the reasons; ``.report`` has the detail."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class SeriesSummary:
    """One candidate CT series, for a caller who wants to pick (`load_study(series_uid=)`)."""

    study_uid: str
    series_uid: str
    n_files: int
    n_slices: int
    rows: int
    columns: int
    orientation: str  # "axial", "coronal", "sagittal", "oblique" or "unknown"
    series_number: int | None
    description: str
    slice_thickness: float | None
    default: bool  # the series `load_study` picks when no series_uid is given


# --------------------------------------------------------------------------- scanning

_Groups = dict[tuple[str, str], list[HeaderRecord]]


def _read_headers(
    entries: list[_Entry], report: LoadReport, bounds: ReadBounds
) -> list[tuple[_Entry, HeaderRecord]]:
    """Usable (entry, header) pairs; every other file goes to ``report`` with its reason.

    Sizes are checked here, from the headers, before anything is allocated for pixels.
    """
    items: list[tuple[_Entry, HeaderRecord]] = []
    for entry in entries:
        report.files_seen += 1
        try:
            rec = _read_header_entry(entry)
        except UnreadableFileError as err:
            report.skipped.append(err.skipped)
            continue
        why = classify(rec, bounds)
        if why is not None:
            report.skipped.append(why)
            continue
        short = pixel_data_problem(rec)
        if short is not None:
            report.skip(rec.source, SkipReason.UNREADABLE, short)
            continue
        items.append((entry, rec))
    return items


def _group(items: list[tuple[_Entry, HeaderRecord]]) -> _Groups:
    groups: _Groups = {}
    for _, rec in items:
        groups.setdefault((rec.study_uid, rec.series_uid), []).append(rec)
    return groups


def _summaries(groups: _Groups) -> list[SeriesSummary]:
    """Series in preference order: axial, then unknown orientation; more slices first."""
    out = []
    for (study_uid, series_uid), recs in groups.items():
        label = _orientation_label(_series_normal(recs))
        size = Counter((r.rows, r.columns) for r in recs).most_common(1)[0][0]
        out.append(
            SeriesSummary(
                study_uid=study_uid,
                series_uid=series_uid,
                n_files=len(recs),
                n_slices=sum(r.n_frames for r in recs),
                rows=size[0],
                columns=size[1],
                orientation=label,
                series_number=recs[0].series_number,
                description=recs[0].series_description,
                slice_thickness=recs[0].slice_thickness,
                default=False,
            )
        )
    rank = {"axial": 0, "unknown": 1}
    out.sort(key=lambda s: (rank.get(s.orientation, 2), -s.n_slices, -s.n_files, s.series_uid))
    if out and out[0].orientation in rank:
        out[0] = dataclasses.replace(out[0], default=True)
    return out


def _copy_report(report: LoadReport) -> LoadReport:
    return LoadReport(
        files_seen=report.files_seen,
        skipped=list(report.skipped),
        warnings=list(report.warnings),
        sort_method=report.sort_method,
    )


def _auto_workers(workers: int | None) -> int:
    if workers is None:
        return min(8, available_cores())
    return max(1, int(workers))


def _failure_message(report: LoadReport) -> str:
    counts = Counter(s.reason for s in report.skipped)
    if not counts:
        return f"No usable CT slice found in {report.files_seen} files (no files found)."
    parts = ", ".join(f"{n} {reason.value}" for reason, n in counts.most_common())
    return f"No usable CT slice found in {report.files_seen} files: {parts}."


class SourceScan:
    """The headers of every file in a source, read once; each series loaded on demand.

    A context manager: it owns the temporary folders that the source's zips were
    extracted into, and `close` removes them (loading after that raises ``ValueError``).
    Loading only reads, so one scan may serve several threads.

    Attributes:
        series: every CT series found, the default choice (if any) first.
    """

    def __init__(self, source: Any, limits: _Limits, bounds: ReadBounds = DEFAULT_BOUNDS) -> None:
        self._stack = contextlib.ExitStack()
        self._bounds = bounds
        try:
            report = LoadReport()
            items = _read_headers(_collect(source, self._stack, report, limits), report, bounds)
        except BaseException:
            self._stack.close()
            raise
        self._report = report
        self._groups = _group(items)
        # Records are kept alive by ``_groups``, so their ids stay valid keys.
        self._entry_of = {id(rec): entry for entry, rec in items}
        self._closed = False
        self.series: list[SeriesSummary] = _summaries(self._groups)

    @property
    def report(self) -> LoadReport:
        """What the scan skipped (not DICOM, not CT, unsafe zip members, ...): a copy."""
        return _copy_report(self._report)

    def load(self, series_uid: str | None = None, *, workers: int | None = None) -> Study:
        """One series as a `Study` (see `load_study`); by default the `default` series.

        Raises:
            StudyLoadError: unknown ``series_uid``, or no usable slice.
        """
        self._check_open()
        report = _copy_report(self._report)
        summaries = self.series
        chosen: SeriesSummary | None = None
        if series_uid is not None:
            chosen = next((s for s in summaries if s.series_uid == series_uid), None)
            if chosen is None:
                available = ", ".join(s.series_uid for s in summaries) or "none"
                raise StudyLoadError(
                    f"Series {series_uid} not found among the CT series: {available}.", report
                )
            if chosen.orientation not in ("axial", "unknown"):
                report.warn(f"the requested series is {chosen.orientation}, not axial")
        elif summaries and summaries[0].default:
            chosen = summaries[0]
        for s in summaries:
            if (
                chosen is not None
                and s.series_uid == chosen.series_uid
                and s.study_uid == chosen.study_uid
            ):
                continue
            reason = (
                SkipReason.OTHER_SERIES
                if s.orientation in ("axial", "unknown")
                else SkipReason.NOT_AXIAL
            )
            detail = (
                "another series" if reason is SkipReason.OTHER_SERIES else f"{s.orientation} series"
            )
            for rec in self._groups[(s.study_uid, s.series_uid)]:
                report.skip(rec.source, reason, f"{detail} ({s.series_uid})")
        if chosen is None:
            raise StudyLoadError(_failure_message(report), report)
        return self._build(chosen, report, _auto_workers(workers))

    def loadable_series(self) -> list[SeriesSummary]:
        """The series `iter_studies` loads, in its order (study then series UID)."""
        return sorted((s for s in self.series if s.orientation in ("axial", "unknown")),
                      key=lambda s: (s.study_uid, s.series_uid))

    def iter_studies(
        self,
        *,
        workers: int | None = None,
        skip: Callable[[str, str], bool] | None = None,
    ) -> Iterator[Study]:
        """Every axial (or unknown-orientation) series, one `Study` at a time (`iter_studies`).

        ``skip(study_uid, series_uid)``: True passes a series over without decoding it (a
        resumed batch run skips what is done; a rank skips the other ranks' series). Only
        when nothing was loaded and nothing was skipped this way is that an error.
        """
        self._check_open()
        shared = _copy_report(self._report)
        loadable = []
        for s in self.series:
            if s.orientation in ("axial", "unknown"):
                loadable.append(s)
                continue
            for rec in self._groups[(s.study_uid, s.series_uid)]:
                shared.skip(
                    rec.source, SkipReason.NOT_AXIAL, f"{s.orientation} series ({s.series_uid})"
                )
        n_loaded = n_passed = 0
        failed = _copy_report(shared)
        for s in sorted(loadable, key=lambda s: (s.study_uid, s.series_uid)):
            if skip is not None and skip(s.study_uid, s.series_uid):
                n_passed += 1
                continue
            try:
                study = self._build(s, _copy_report(shared), _auto_workers(workers))
            except StudyLoadError as err:
                failed.skipped.extend(x for x in err.report.skipped if x not in failed.skipped)
                continue
            n_loaded += 1
            yield study
        if not n_loaded and not n_passed:
            raise StudyLoadError(_failure_message(failed), failed)

    def close(self) -> None:
        """Remove the extracted files; the scan cannot load afterwards."""
        self._closed = True
        self._stack.close()

    def __enter__(self) -> SourceScan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this SourceScan is closed: its extracted files are gone")

    def _build(self, chosen: SeriesSummary, report: LoadReport, workers: int) -> Study:
        """One series' usable files -> `Study` (raises `StudyLoadError` if none is left).

        The series' size is checked against the bounds before the volume is allocated;
        running out of memory anyway ends in `StudyLoadError`, never in ``MemoryError``.
        """
        recs = self._groups[(chosen.study_uid, chosen.series_uid)]
        try:
            return self._build_checked(chosen, recs, report, workers)
        except MemoryError:
            self._refuse(recs, report, "out of memory while loading the series")
            raise StudyLoadError(_failure_message(report), report) from None

    def _refuse(self, recs: list[HeaderRecord], report: LoadReport, detail: str) -> None:
        for rec in recs:
            report.skip(rec.source, SkipReason.TOO_LARGE, detail)

    def _build_checked(
        self, chosen: SeriesSummary, recs: list[HeaderRecord], report: LoadReport, workers: int
    ) -> Study:
        # Before the slice order expands frames: what the files declare, with room for
        # the duplicates that the order would drop.
        declared = sum(r.n_frames for r in recs)
        if declared > 4 * self._bounds.max_slices:
            self._refuse(
                recs,
                report,
                f"the series declares {declared} slices; the limit is "
                f"{self._bounds.max_slices} per study",
            )
            raise StudyLoadError(_failure_message(report), report)
        slices = order_slices(recs, report)
        if not slices:
            raise StudyLoadError(_failure_message(report), report)
        rows, cols = slices[0].rec.rows, slices[0].rec.columns
        too_large = self._bounds.series_problem(len(slices), rows, cols)
        if too_large is not None:
            self._refuse(recs, report, too_large)
            raise StudyLoadError(_failure_message(report), report)
        hu = np.empty((len(slices), rows, cols), dtype=np.float32)
        ok = decode_into(slices, self._entry_of, hu, report, workers)
        if not ok.all():
            hu = hu[ok]
            slices = [c for c, keep in zip(slices, ok, strict=True) if keep]
        if not slices:
            raise StudyLoadError(_failure_message(report), report)
        z = np.array([c.z for c in slices], dtype=np.float64)
        median = (
            _report_gaps(z, report)
            if report.sort_method == "normal"
            else (float(np.median(np.diff(z))) if len(z) > 1 else 0.0)
        )
        first = slices[0].rec
        if len(z) < 2:
            median = float(first.spacing_between_slices or first.slice_thickness or 0.0)
        spacing = first.pixel_spacing
        if spacing is None:
            report.warn("PixelSpacing is missing: 1.0 mm assumed")
            spacing = (1.0, 1.0)
        infos = [
            SliceInfo(
                image_id=c.image_id,
                source=c.rec.source,
                frame=c.frame,
                instance_number=c.rec.instance_number,
                position=c.position,
                z=float(c.z),
            )
            for c in slices
        ]
        logger.debug(
            "loaded a series of %d slices (%d files skipped)", len(infos), len(report.skipped)
        )
        return Study(
            study_uid=chosen.study_uid,
            series_uid=chosen.series_uid,
            hu=hu,
            slices=infos,
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            slice_spacing=float(median),
            report=report,
            metadata=dict(first.metadata),
            identifiers=dict(first.identifiers),
        )


# --------------------------------------------------------------------------- public calls


def scan_source(
    source: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    bounds: ReadBounds = DEFAULT_BOUNDS,
) -> SourceScan:
    """Read every header of ``source`` once (zips extracted once); load series on demand.

    ``source`` and the bounds are those of `load_study`; ``bounds`` limits what headers
    may declare (`bounds.ReadBounds`: image size, frames, slices, voxels). Use it as a context manager (or
    call ``close()``) so the extracted files are removed::

        with scan_source(uploads) as scan:
            for s in scan.series:
                study = scan.load(s.series_uid)
    """
    limits = _Limits(max_upload_bytes, max_total_upload_bytes, max_zip_bytes, max_members)
    return SourceScan(source, limits, bounds)


def list_series(
    source: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
) -> list[SeriesSummary]:
    """Every CT series in ``source`` (headers only), the default choice first."""
    with scan_source(
        source,
        max_upload_bytes=max_upload_bytes,
        max_total_upload_bytes=max_total_upload_bytes,
        max_zip_bytes=max_zip_bytes,
    ) as scan:
        return scan.series


def load_study(
    source: Any,
    series_uid: str | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    workers: int | None = None,
    bounds: ReadBounds = DEFAULT_BOUNDS,
) -> Study:
    """Load one CT series as a float32 HU volume ``[S, H, W]`` sorted along the slice normal.

    Args:
        source: a folder (searched recursively), a file, a ``.zip``, an `Upload`, or a
            list of paths and/or uploads.
        series_uid: the series to load; by default the axial CT series with most slices.
        max_upload_bytes / max_total_upload_bytes: bounds per upload and for all uploads.
        max_zip_bytes / max_members: bounds on what a zip may extract.
        workers: threads decoding pixels (default: up to 8).
        bounds: what headers may declare (`bounds.ReadBounds`); a file or series beyond
            them is skipped as TOO_LARGE before any pixel memory is allocated.

    Slice 0 is the lowest position along the normal (for a standard axial series, the
    most inferior slice); `geometry.order_slices` decides the order and which slices
    are dropped. Every file not used is listed in ``study.report.skipped``.

    Raises:
        StudyLoadError: no usable slice (the message counts the reasons).
    """
    with scan_source(
        source,
        max_upload_bytes=max_upload_bytes,
        max_total_upload_bytes=max_total_upload_bytes,
        max_zip_bytes=max_zip_bytes,
        max_members=max_members,
        bounds=bounds,
    ) as scan:
        return scan.load(series_uid, workers=workers)


def iter_studies(
    source: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    workers: int | None = None,
    bounds: ReadBounds = DEFAULT_BOUNDS,
) -> Iterator[Study]:
    """Yield every axial (or unknown-orientation) CT series in ``source``, one `Study` each.

    Lazy: headers are scanned once up front, but each series' pixels are decoded only
    when it is reached, so a folder of thousands of studies never sits in memory at once.

    Each study's report lists the files no series used (not DICOM, not CT, ...), the
    non-axial series, and its own rejected slices. Ordered by study then series UID.

    Raises:
        StudyLoadError: not one series could be loaded.
    """
    with scan_source(
        source,
        max_upload_bytes=max_upload_bytes,
        max_total_upload_bytes=max_total_upload_bytes,
        max_zip_bytes=max_zip_bytes,
        max_members=max_members,
        bounds=bounds,
    ) as scan:
        yield from scan.iter_studies(workers=workers)


def load_studies(
    source: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    workers: int | None = None,
    bounds: ReadBounds = DEFAULT_BOUNDS,
) -> list[Study]:
    """Every axial (or unknown-orientation) CT series in ``source`` as a list (see `iter_studies`).

    Raises:
        StudyLoadError: not one series could be loaded.
    """
    return list(
        iter_studies(
            source,
            max_upload_bytes=max_upload_bytes,
            max_total_upload_bytes=max_total_upload_bytes,
            max_zip_bytes=max_zip_bytes,
            max_members=max_members,
            workers=workers,
            bounds=bounds,
        )
    )
