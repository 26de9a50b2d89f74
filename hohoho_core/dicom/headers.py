"""One file's header -> `HeaderRecord`, and whether it can be a CT slice.

Headers are read without pixels (``stop_before_pixels``). `read_header` has two modes:
the full one (what `load_study` needs: rescale, spacing, metadata, identifiers) and a
fast one (``fast=True``) that parses only `ORDER_TAGS`, the tags that grouping, the
usability checks and `geometry.order_slices` use, for indexing hundreds of thousands of
files. Both modes give the same study/series, position, orientation, instance number,
size and classification, so a slice order computed from either is the same.

Patient identifiers are decoded by hand (`_raw_text`) and kept in
``HeaderRecord.identifiers`` only: pydicom's value conversion may warn quoting them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)

from hohoho_core.dicom.geometry import _normal
from hohoho_core.dicom.sources import Upload, _Entry
from hohoho_core.study import SkippedFile, SkipReason

__all__ = ["ORDER_TAGS", "HeaderRecord", "UnreadableFileError", "classify", "read_header"]

_CT_SOP_CLASSES = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)
#: Secondary capture SOP classes: screenshots and exports, never raw CT grey levels.
_SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_IDENTIFIER_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate")
_METADATA_KEYWORDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "ConvolutionKernel",
    "SliceThickness",
    "Rows",
    "Columns",
    "PixelSpacing",
)
_NATIVE_LE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
#: Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: What the fast mode parses: grouping, `classify` and `geometry.order_slices` read
#: nothing else. The functional groups carry orientation and positions of multi-frame
#: files (absent, so free, in single-frame ones).
ORDER_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)


class UnreadableFileError(ValueError):
    """`read_header` could not use a file; ``.skipped`` says why."""

    def __init__(self, skipped: SkippedFile) -> None:
        detail = f": {skipped.detail}" if skipped.detail else ""
        super().__init__(f"{skipped.source}: {skipped.reason.value}{detail}")
        self.skipped = skipped


@dataclass(frozen=True)
class HeaderRecord:
    """What one file's header says, read without its pixels.

    ``frame_positions`` (one ImagePositionPatient per frame) and ``frame_rescale``
    (one (slope, intercept) per frame) are set for multi-frame files that carry them.
    """

    source: str
    path: Path | None
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax: str
    rows: int
    columns: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    n_frames: int
    has_pixels: bool
    truncated: bool
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    rescale_slope: float
    rescale_intercept: float
    series_number: int | None = None
    series_description: str = ""
    frame_positions: tuple[tuple[float, float, float], ...] | None = None
    frame_rescale: tuple[tuple[float, float], ...] | None = None
    #: Byte offset and length of native pixel data in the file (fast path), else None.
    pixel_offset: int | None = None
    pixel_length: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def normal(self) -> np.ndarray | None:
        """Unit slice normal ``(3,)``: row cosines x column cosines, or None."""
        return _normal(self.orientation)


def _f(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(np.isfinite(vals)):
        return None
    return vals


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _get(ds: pydicom.Dataset, keyword: str) -> Any:
    """A converted value or None; a malformed value never raises here."""
    try:
        return ds.get(keyword)
    except Exception:  # pydicom raises many types on bad values
        return None


def _raw_text(ds: pydicom.Dataset, keyword: str) -> str:
    """Read an identifier's bytes without pydicom's value conversion.

    Conversion validates values and may emit warnings that quote them; identifiers must
    never reach a warning, so they are decoded here by hand.
    """
    tag = pydicom.datadict.tag_for_keyword(keyword)
    try:
        elem = ds.get_item(tag) if tag is not None else None
    except Exception:
        return ""
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
    else:
        text = str(value)
    return text.strip(" \x00")


def _fg(ds: pydicom.Dataset, seq: str, keyword: str, frame: int = 0) -> Any:
    """A value from the shared functional groups, else from per-frame group ``frame``."""
    for top, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", frame),
    ):
        try:
            item = _get(ds, top)[index]
            return _get(getattr(item, seq)[0], keyword)
        except (TypeError, IndexError, AttributeError, KeyError):
            continue
    return None


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A DICOM data set written without preamble: first tag in group 0002 or 0008."""
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[:2], "little")
    group_be = int.from_bytes(head[:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    ts = _get(ds.file_meta, "TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _pixel_element(fp: BinaryIO, ts: str, size: int) -> tuple[bool, bool, int | None, int | None]:
    """Look at the element where the header read stopped.

    Returns (has_pixels, truncated, value_offset, value_length); the offset and length
    are given only for native little-endian data with a defined length.
    """
    start = fp.tell()
    if ts == DeflatedExplicitVRLittleEndian:
        return True, False, None, None  # the position is in the inflated stream
    head = fp.read(12)
    if len(head) < 8:
        return False, False, None, None
    big = ts == ExplicitVRBigEndian
    group, elem = struct.unpack(">HH" if big else "<HH", head[:4])
    if group != 0x7FE0 or elem not in (0x0008, 0x0009, 0x0010):
        return False, False, None, None
    if ts == ImplicitVRLittleEndian:
        (length,) = struct.unpack("<I", head[4:8])
        offset = start + 8
    elif head[4:6] in _LONG_VRS:
        (length,) = struct.unpack(">I" if big else "<I", head[8:12])
        offset = start + 12
    else:
        (length,) = struct.unpack(">H" if big else "<H", head[6:8])
        offset = start + 8
    if length == _UNDEFINED_LENGTH:
        return True, False, None, None  # encapsulated: the decoder checks it
    truncated = offset + length > size
    native = ts in _NATIVE_LE and elem == 0x0010
    return True, truncated, (offset if native else None), (length if native else None)


def _read_header_entry(entry: _Entry, fast: bool = False) -> HeaderRecord:
    """Parse one file's header; raises `UnreadableFileError` for unusable files.

    ``fast``: parse only `ORDER_TAGS` (pydicom skips the other values unread).
    """
    tags = list(ORDER_TAGS) if fast else None
    try:
        size = entry.size()
        with entry.open() as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=tags)
            except InvalidDicomError:
                fp.seek(0)
                if not _looks_like_raw_dataset(fp.read(16)):
                    raise UnreadableFileError(
                        SkippedFile(entry.name, SkipReason.NOT_DICOM, _not_dicom_detail(entry.name))
                    ) from None
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True, specific_tags=tags)
                if not any(k in ds for k in ("SOPClassUID", "StudyInstanceUID", "Modality")):
                    raise UnreadableFileError(
                        SkippedFile(entry.name, SkipReason.NOT_DICOM, _not_dicom_detail(entry.name))
                    ) from None
            ts = _transfer_syntax(ds)
            has_pixels, truncated, offset, length = _pixel_element(fp, ts, size)
            truncated = truncated or _ends_mid_element(ds)
        return _record_from_dataset(ds, entry, ts, has_pixels, truncated, offset, length, fast)
    except UnreadableFileError:
        raise
    except Exception as exc:  # any parse failure means "unreadable"
        # Only the exception type: a parser message could quote header values.
        raise UnreadableFileError(
            SkippedFile(
                entry.name,
                SkipReason.UNREADABLE,
                f"header could not be parsed ({type(exc).__name__})",
            )
        ) from None


def _ends_mid_element(ds: pydicom.Dataset) -> bool:
    """True when the file stops inside the last element read (pydicom reads it short)."""
    try:
        last = next(reversed(ds.keys()), None)
        raw = ds.get_item(last) if last is not None else None
    except Exception:
        return False
    if not isinstance(raw, pydicom.dataelem.RawDataElement) or raw.value is None:
        return False
    return raw.length != _UNDEFINED_LENGTH and len(raw.value) < raw.length


def _not_dicom_detail(name: str) -> str:
    if name.lower().endswith(".zip"):
        return "zip archive inside a folder or archive (not opened)"
    return "no DICOM preamble or data set found"


def _record_from_dataset(
    ds: pydicom.Dataset,
    entry: _Entry,
    ts: str,
    has_pixels: bool,
    truncated: bool,
    offset: int | None,
    length: int | None,
    fast: bool = False,
) -> HeaderRecord:
    """``fast``: skip what ordering never reads; each lookup of an absent tag costs about
    as much as converting a present one, and the index reads every file of a dataset."""
    n_frames = max(_int(_get(ds, "NumberOfFrames"), 1) or 1, 1)
    orientation = _floats(_get(ds, "ImageOrientationPatient"), 6) or _floats(
        _fg(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
    )
    position = _floats(_get(ds, "ImagePositionPatient"), 3)
    spacing = None
    if not fast:
        spacing = _floats(_get(ds, "PixelSpacing"), 2) or _floats(
            _fg(ds, "PixelMeasuresSequence", "PixelSpacing"), 2
        )
    thickness = _f(_get(ds, "SliceThickness"))
    if thickness is None:
        thickness = _f(_fg(ds, "PixelMeasuresSequence", "SliceThickness"))
    between = _f(_get(ds, "SpacingBetweenSlices"))
    if between is None:
        between = _f(_fg(ds, "PixelMeasuresSequence", "SpacingBetweenSlices"))

    slope = None if fast else _f(_get(ds, "RescaleSlope"))
    intercept = None if fast else _f(_get(ds, "RescaleIntercept"))
    if slope is None and not fast:
        slope = _f(_fg(ds, "PixelValueTransformationSequence", "RescaleSlope"))
    if intercept is None and not fast:
        intercept = _f(_fg(ds, "PixelValueTransformationSequence", "RescaleIntercept"))

    frame_positions = None
    frame_rescale = None
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if n_frames > 1 and per_frame is not None and len(per_frame) == n_frames:
        fps = [
            _floats(_fg_item(item, "PlanePositionSequence", "ImagePositionPatient"), 3)
            for item in per_frame
        ]
        if all(p is not None for p in fps):
            frame_positions = tuple(fps)  # type: ignore[arg-type]
        rescales = [
            (
                _f(_fg_item(item, "PixelValueTransformationSequence", "RescaleSlope")),
                _f(_fg_item(item, "PixelValueTransformationSequence", "RescaleIntercept")),
            )
            for item in per_frame
        ]
        if all(s is not None and i is not None for s, i in rescales):
            frame_rescale = tuple(rescales)  # type: ignore[arg-type]
        if orientation is None:
            orientation = _floats(
                _fg_item(per_frame[0], "PlaneOrientationSequence", "ImageOrientationPatient"), 6
            )
    if position is None and frame_positions:
        position = frame_positions[0]

    metadata = {}
    for kw in () if fast else _METADATA_KEYWORDS:
        value = _get(ds, kw)
        if value not in (None, ""):
            metadata[kw] = (
                "\\".join(str(v) for v in value)
                if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                else str(value)
            )
    identifiers = {
        kw: v for kw in (() if fast else _IDENTIFIER_KEYWORDS) if (v := _raw_text(ds, kw))
    }

    rows = _int(_get(ds, "Rows"), 0) or 0
    cols = _int(_get(ds, "Columns"), 0) or 0
    return HeaderRecord(
        source=entry.name,
        path=entry.path,
        study_uid=str(_get(ds, "StudyInstanceUID") or ""),
        series_uid=str(_get(ds, "SeriesInstanceUID") or ""),
        sop_uid=str(_get(ds, "SOPInstanceUID") or ""),
        sop_class_uid=str(
            _get(ds, "SOPClassUID") or _get(ds.file_meta, "MediaStorageSOPClassUID") or ""
        ),
        modality=str(_get(ds, "Modality") or "").upper(),
        transfer_syntax=ts,
        rows=rows,
        columns=cols,
        samples_per_pixel=_int(_get(ds, "SamplesPerPixel"), 1) or 1,
        photometric=str(_get(ds, "PhotometricInterpretation") or "MONOCHROME2").upper(),
        bits_allocated=_int(_get(ds, "BitsAllocated"), 16) or 16,
        bits_stored=_int(_get(ds, "BitsStored"), 16) or 16,
        pixel_representation=_int(_get(ds, "PixelRepresentation"), 0) or 0,
        n_frames=n_frames,
        has_pixels=has_pixels,
        truncated=truncated,
        instance_number=_int(_get(ds, "InstanceNumber")),
        position=position,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=thickness,
        spacing_between_slices=between,
        rescale_slope=1.0 if slope is None or slope == 0 else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        series_number=None if fast else _int(_get(ds, "SeriesNumber")),
        series_description="" if fast else str(_get(ds, "SeriesDescription") or ""),
        frame_positions=frame_positions,
        frame_rescale=frame_rescale,
        pixel_offset=offset,
        pixel_length=length,
        metadata=metadata,
        identifiers=identifiers,
    )


def _fg_item(item: pydicom.Dataset, seq: str, keyword: str) -> Any:
    try:
        return _get(getattr(item, seq)[0], keyword)
    except (TypeError, IndexError, AttributeError, KeyError):
        return None


def read_header(path: str | os.PathLike[str] | Upload, *, fast: bool = False) -> HeaderRecord:
    """Read one file's header (no pixels) into a `HeaderRecord`.

    ``fast=True`` parses only `ORDER_TAGS` (for indexing): the record then lacks (holds
    defaults for) rescale, bit depth, pixel spacing, series number/description,
    metadata and identifiers, which decoding pixels would need.

    Raises:
        UnreadableFileError: not DICOM, or a header that cannot be parsed.
    """
    if isinstance(path, Upload):
        entry = _Entry(name=path.name, data=path.data)
    else:
        entry = _Entry(name=Path(path).name, path=Path(path))
    return _read_header_entry(entry, fast)


@lru_cache(maxsize=64)
def _decoder_problem(ts: str) -> str | None:
    """None when pixels in ``ts`` can be decoded here, else a sentence saying why not."""
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"no pixel decoder for transfer syntax {ts}"
    except Exception:
        return f"no pixel decoder for transfer syntax {ts}"
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        return f"transfer syntax {pydicom.uid.UID(ts).name} needs {needs}"
    return None


def classify(rec: HeaderRecord) -> SkippedFile | None:
    """Why a readable file cannot be a slice of a CT volume, or None when it can."""
    if rec.truncated:
        return SkippedFile(rec.source, SkipReason.UNREADABLE, "truncated: the file ends early")
    is_ct_class = rec.sop_class_uid in _CT_SOP_CLASSES
    if not rec.has_pixels:
        if is_ct_class or not (rec.study_uid or rec.series_uid):
            return SkippedFile(
                rec.source,
                SkipReason.UNREADABLE,
                "truncated or incomplete: the header ends before any pixel data",
            )
        return SkippedFile(
            rec.source, SkipReason.NO_PIXEL_DATA, "header only (no Pixel Data element)"
        )
    if rec.sop_class_uid.startswith(_SC_PREFIX):
        return SkippedFile(
            rec.source, SkipReason.RGB_OR_SECONDARY, _rgb_detail(rec, "secondary capture image")
        )
    if rec.samples_per_pixel != 1 or rec.photometric not in _GREY:
        return SkippedFile(
            rec.source, SkipReason.RGB_OR_SECONDARY, _rgb_detail(rec, "colour image")
        )
    if rec.modality != "CT" and not (rec.modality == "" and is_ct_class):
        return SkippedFile(rec.source, SkipReason.NOT_CT, f"modality {rec.modality or 'missing'}")
    if rec.rows <= 0 or rec.columns <= 0:
        return SkippedFile(rec.source, SkipReason.NO_PIXEL_DATA, "no Rows/Columns")
    problem = _decoder_problem(rec.transfer_syntax)
    if problem is not None:
        return SkippedFile(rec.source, SkipReason.MISSING_DECODER, problem)
    return None


def _rgb_detail(rec: HeaderRecord, kind: str) -> str:
    return (
        f"{kind} ({rec.photometric}, {rec.samples_per_pixel} samples per pixel), "
        "not CT grey levels in Hounsfield units"
    )
