"""Geometry: slice normals, orientation labels, and the one slice order.

`order_slices` is the only ordering rule in the project: `load_study` and
`rsna.build_index` both call it, so a slice's index in a `Study` and its
``slice_index`` in the RSNA index are the same number. The policy, decided here once:

* files whose Rows x Columns differ from the series majority are dropped (SIZE_MISMATCH),
  and so are files whose orientation differs from the series normal (NOT_AXIAL) and
  repeats of a SOPInstanceUID (DUPLICATE);
* slices are sorted by z = position . normal (correct with gantry tilt), ties broken by
  InstanceNumber, then the natural order of the file name, then the frame; without
  positions or orientation, by InstanceNumber (then file name), else by file name alone;
* of slices closer than 0.01 mm along the normal only the first in that order is kept
  (DUPLICATE).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from hohoho_core.dicom.sources import _natural_key
from hohoho_core.study import LoadReport, SkipReason

if TYPE_CHECKING:
    from hohoho_core.dicom.headers import HeaderRecord

__all__ = ["OrderedSlice", "order_slices"]

_RSNA_STEM = re.compile(r"ID_[0-9a-fA-F]+")
#: |normal . z| above this counts as axial (about 45 degrees: gantry tilt stays well below).
_AXIAL_COS = 0.7
#: Two slices closer than this along the normal (mm) share a position.
_DUPLICATE_MM = 0.01
#: A step above this multiple of the median spacing is reported as a gap.
_GAP_FACTOR = 1.5
_MAX_GAP_WARNINGS = 10


def _normal(orientation: Sequence[float] | None) -> np.ndarray | None:
    """Slice normal ``(3,)`` = row direction x column direction, normalised."""
    if orientation is None:
        return None
    o = np.asarray(orientation, dtype=np.float64)
    n = np.cross(o[:3], o[3:])
    norm = float(np.linalg.norm(n))
    if norm < 1e-6:
        return None
    return n / norm


def _orientation_label(normal: np.ndarray | None) -> str:
    if normal is None:
        return "unknown"
    ax = np.abs(normal)
    if ax[2] >= _AXIAL_COS:
        return "axial"
    if ax[1] >= _AXIAL_COS:
        return "coronal"
    if ax[0] >= _AXIAL_COS:
        return "sagittal"
    return "oblique"


def _series_normal(recs: Sequence[HeaderRecord]) -> np.ndarray | None:
    """The most common slice normal of a series (localisers in it are outvoted)."""
    votes = Counter(tuple(np.round(n, 3)) for r in recs if (n := r.normal) is not None)
    if not votes:
        return None
    best = votes.most_common(1)[0][0]
    return _normal_from_rounded(recs, best)


def _normal_from_rounded(recs: Sequence[HeaderRecord], key: tuple[float, ...]) -> np.ndarray:
    for r in recs:
        n = r.normal
        if n is not None and tuple(np.round(n, 3)) == key:
            return n
    raise AssertionError("unreachable")


@dataclass
class OrderedSlice:
    """One slice of a series: a file, or one frame of a multi-frame file.

    ``z`` is the position along the series normal (mm), or ``index * step`` when the
    series was ordered by InstanceNumber or file name (see ``LoadReport.sort_method``).
    """

    rec: HeaderRecord
    frame: int | None
    position: tuple[float, float, float] | None
    slope: float
    intercept: float
    image_id: str
    z: float = 0.0


def _image_id(rec: HeaderRecord, frame: int | None) -> str:
    stem = PurePosixPath(rec.source.replace("\\", "/").split(":")[-1]).stem
    base = stem if _RSNA_STEM.fullmatch(stem) else (rec.sop_uid or stem)
    return base if frame is None else f"{base}_f{frame}"


def _candidates(
    members: list[HeaderRecord], normal: np.ndarray | None, report: LoadReport
) -> list[OrderedSlice]:
    out = []
    for rec in members:
        if rec.n_frames == 1:
            out.append(
                OrderedSlice(
                    rec,
                    None,
                    rec.position,
                    rec.rescale_slope,
                    rec.rescale_intercept,
                    _image_id(rec, None),
                )
            )
            continue
        step = rec.spacing_between_slices
        if rec.frame_positions is None and step is None and rec.position is not None:
            step = rec.slice_thickness
            if step is not None:
                report.warn(
                    f"{rec.source}: multi-frame file without per-frame positions or "
                    f"SpacingBetweenSlices; frames spaced by SliceThickness ({step:g} mm)"
                )
        for k in range(rec.n_frames):
            if rec.frame_positions is not None:
                pos: tuple[float, float, float] | None = rec.frame_positions[k]
            elif rec.position is not None and normal is not None and step is not None:
                p = np.asarray(rec.position) + k * step * normal
                pos = (float(p[0]), float(p[1]), float(p[2]))
            else:
                pos = None
            slope, intercept = (
                rec.frame_rescale[k]
                if rec.frame_rescale is not None
                else (rec.rescale_slope, rec.rescale_intercept)
            )
            out.append(OrderedSlice(rec, k, pos, slope, intercept, _image_id(rec, k)))
    return out


def _drop_inconsistent(
    members: list[HeaderRecord], normal: np.ndarray | None, report: LoadReport
) -> list[HeaderRecord]:
    """Remove files whose size or orientation differ from the series majority."""
    size = Counter((r.rows, r.columns) for r in members).most_common(1)[0][0]
    kept = []
    seen_sop: dict[str, str] = {}
    for rec in members:
        if (rec.rows, rec.columns) != size:
            report.skip(
                rec.source,
                SkipReason.SIZE_MISMATCH,
                f"{rec.rows}x{rec.columns} where the series has {size[0]}x{size[1]}",
            )
            continue
        n = rec.normal
        if normal is not None and n is not None and abs(float(n @ normal)) < 0.9999:
            report.skip(
                rec.source, SkipReason.NOT_AXIAL, "orientation differs from the rest of the series"
            )
            continue
        if rec.sop_uid and rec.sop_uid in seen_sop:
            report.skip(
                rec.source, SkipReason.DUPLICATE, f"same SOPInstanceUID as {seen_sop[rec.sop_uid]}"
            )
            continue
        if rec.sop_uid:
            seen_sop[rec.sop_uid] = rec.source
        kept.append(rec)
    return kept


def _default_step(recs: Iterable[HeaderRecord]) -> float:
    for r in recs:
        for v in (r.spacing_between_slices, r.slice_thickness):
            if v is not None and v > 0:
                return float(v)
    return 1.0


def _sort(
    cands: list[OrderedSlice], normal: np.ndarray | None, report: LoadReport
) -> list[OrderedSlice]:
    """Sort along the slice normal; fall back to InstanceNumber, then file name."""
    missing = sum(c.position is None for c in cands)
    if normal is not None and missing == 0:
        for c in cands:
            c.z = float(np.dot(normal, c.position))  # type: ignore[arg-type]
        report.sort_method = "normal"
        return sorted(
            cands,
            key=lambda c: (
                c.z,
                c.rec.instance_number if c.rec.instance_number is not None else 1 << 62,
                _natural_key(c.rec.source),
                c.frame or 0,
            ),
        )
    why = (
        "ImageOrientationPatient is missing"
        if normal is None
        else f"ImagePositionPatient is missing on {missing} of {len(cands)} slices"
    )
    if all(c.rec.instance_number is not None for c in cands):
        report.sort_method = "instance_number"
        report.warn(f"{why}: slices sorted by InstanceNumber; check the slice order")
        ordered = sorted(
            cands, key=lambda c: (c.rec.instance_number, _natural_key(c.rec.source), c.frame or 0)
        )
        numbers = [c.rec.instance_number for c in ordered if c.frame in (None, 0)]
        if len(set(numbers)) != len(numbers):
            report.warn("InstanceNumber repeats within the series; the order may be wrong")
    else:
        report.sort_method = "file_name"
        report.warn(
            f"{why} and InstanceNumber is missing: slices sorted by file name; check the slice order"
        )
        ordered = sorted(cands, key=lambda c: (_natural_key(c.rec.source), c.frame or 0))
    step = _default_step(c.rec for c in ordered)
    for i, c in enumerate(ordered):
        c.z = i * step
    return ordered


def _drop_duplicates(cands: list[OrderedSlice], report: LoadReport) -> list[OrderedSlice]:
    """Keep the first slice at each position along the normal (input sorted by z)."""
    if report.sort_method != "normal" or not cands:
        return cands
    kept = [cands[0]]
    for c in cands[1:]:
        if abs(c.z - kept[-1].z) < _DUPLICATE_MM:
            label = c.rec.source if c.frame is None else f"{c.rec.source} frame {c.frame}"
            report.skip(
                label,
                SkipReason.DUPLICATE,
                f"same position (z={c.z:.2f} mm) as {kept[-1].rec.source}",
            )
            continue
        kept.append(c)
    return kept


def _report_gaps(z: np.ndarray, report: LoadReport) -> float:
    """Warn about gaps in the slice spacing; return the median spacing (mm)."""
    if len(z) < 2:
        return 0.0
    steps = np.diff(z)
    median = float(np.median(steps))
    if median <= 0:
        return median
    gaps = np.flatnonzero(steps > _GAP_FACTOR * median)
    for i in gaps[:_MAX_GAP_WARNINGS]:
        report.warn(
            f"gap in slice spacing between slices {i + 1} and {i + 2} of {len(z)} "
            f"(1-based, study order): {steps[i]:.2f} mm where the median is {median:.2f} mm"
        )
    if len(gaps) > _MAX_GAP_WARNINGS:
        report.warn(f"{len(gaps) - _MAX_GAP_WARNINGS} more gaps in slice spacing not listed")
    return median


def order_slices(records: Sequence[HeaderRecord], report: LoadReport) -> list[OrderedSlice]:
    """The slices of one series in study order, with the project's one policy (module doc).

    Args:
        records: the usable headers of one series (any order: they are first put in the
            natural order of their file names, so "first" below does not depend on it).
        report: receives a `SkippedFile` for every file or frame dropped, the warnings,
            and ``sort_method`` ("normal", "instance_number" or "file_name").

    Returns:
        The kept slices, slice 0 the lowest along the normal; ``z`` set on each.
    """
    members = sorted(records, key=lambda r: _natural_key(r.source))
    if not members:
        return []
    normal = _series_normal(members)
    members = _drop_inconsistent(members, normal, report)
    slices = _candidates(members, normal, report)
    slices = _sort(slices, normal, report)
    return _drop_duplicates(slices, report)
