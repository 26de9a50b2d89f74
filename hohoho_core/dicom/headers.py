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

import contextlib
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)

from hohoho_core.dicom.bounds import DEFAULT_BOUNDS, ReadBounds, inflated_size_problem
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
#: Structured report SOP classes (Basic/Enhanced/Comprehensive/3D SR, key objects, CAD SR).
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Modalities of objects that are never images: reports, key objects, presentation states.
_NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC"})
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

    @cached_property
    def normal(self) -> np.ndarray | None:
        """Unit slice normal ``(3,)``: row cosines x column cosines, or None (read-only).

        Computed once per record: the scan and every load ask for it, and small-array NumPy
        calls cost more than the pixels' own conversion (measured on 256 px slices).
        """
        n = _normal(self.orientation)
        if n is not None:
            n.setflags(write=False)
        return n


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


#: Well-formed single values (multi-valued DS), which pydicom converts without a warning:
#: UI of at most 64 characters without leading zeros, CS in its repertoire, IS of at
#: most 9 digits (no 32-bit overflow warning); trailing padding allowed.
_UI_VALUE = re.compile(
    rb"(?=[0-9.]{1,64}[\x00 ]*\Z)(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*[\x00 ]*"
)
_CS_VALUE = re.compile(rb"[A-Z0-9 _]{1,16}\x00?")
_IS_VALUE = re.compile(rb" {0,2}[+-]?[0-9]{1,9} *\x00?")
_DS_ITEM = rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"
_DS_VALUE = re.compile(_DS_ITEM + rb"(?:\\" + _DS_ITEM + rb")*\x00?")


def _ui_value(raw: RawDataElement) -> str:
    return raw.value.rstrip(b"\x00 ").decode("ascii")


def _cs_value(raw: RawDataElement) -> str:
    return raw.value.rstrip(b" \x00").decode("ascii")


def _is_value(raw: RawDataElement) -> int:
    return int(raw.value.rstrip(b" \x00"))


def _ds_value(raw: RawDataElement) -> float | list[float]:
    """One float, or a list for several values: the shape of pydicom's DS value."""
    parts = raw.value.rstrip(b"\x00 ").split(b"\\")
    return float(parts[0]) if len(parts) == 1 else [float(v) for v in parts]


def _us_value(raw: RawDataElement) -> int:
    return int.from_bytes(raw.value, "little" if raw.is_little_endian else "big")


_UI = ("UI", _UI_VALUE, _ui_value)
_CS = ("CS", _CS_VALUE, _cs_value)
_IS = ("IS", _IS_VALUE, _is_value)
_DS = ("DS", _DS_VALUE, _ds_value)
_US = ("US", None, _us_value)  # None: a 2-byte value
#: How the fast mode converts each `ORDER_TAGS` value itself: (VR, pattern, converter).
#: The pattern accepts only well-formed values, which pydicom would convert to the same
#: value without a warning; any other value (or VR, or a sequence) goes through `_get`.
_FAST_VALUES: dict[str, tuple[str, re.Pattern[bytes] | None, Callable[[Any], Any]]] = {
    "SOPClassUID": _UI,
    "SOPInstanceUID": _UI,
    "StudyInstanceUID": _UI,
    "SeriesInstanceUID": _UI,
    "Modality": _CS,
    "PhotometricInterpretation": _CS,
    "InstanceNumber": _IS,
    "NumberOfFrames": _IS,
    "ImagePositionPatient": _DS,
    "ImageOrientationPatient": _DS,
    "SliceThickness": _DS,
    "SpacingBetweenSlices": _DS,
    "Rows": _US,
    "Columns": _US,
    "SamplesPerPixel": _US,
}
_FAST_TAGS = {kw: BaseTag(tag_for_keyword(kw)) for kw in ORDER_TAGS}
_SHARED_GROUPS = _FAST_TAGS["SharedFunctionalGroupsSequence"]
_PER_FRAME_GROUPS = _FAST_TAGS["PerFrameFunctionalGroupsSequence"]


def _fast_get(ds: pydicom.Dataset, keyword: str) -> Any:
    """`_get` for the fast mode: the same value, converted here when it is well formed.

    pydicom's conversion of one value (keyword look-up, hooks, validation, value
    classes) costs as much as parsing the header; the index converts ~15 per file.
    """
    tag = _FAST_TAGS.get(keyword)
    if tag is None:
        return None  # the fast mode parses `ORDER_TAGS` only: any other tag is absent
    raw = ds.get_item(tag)
    if raw is None:
        return None
    spec = _FAST_VALUES.get(keyword)
    if spec is not None and type(raw) is RawDataElement and raw.VR in (spec[0], None):
        _, pattern, convert = spec
        value = raw.value
        if isinstance(value, bytes) and (
            len(value) == 2 if pattern is None else pattern.fullmatch(value) is not None
        ):
            return convert(raw)
    return _get(ds, keyword)


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
    if _SHARED_GROUPS not in ds and _PER_FRAME_GROUPS not in ds:
        return None  # single-frame files: the common case, answered without a look-up
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
    with quiet_pydicom():
        return _parse_header_entry(entry, fast)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Keep pydicom's value warnings out of logs while a file is parsed.

    They quote the offending value, and in a file with a broken element length the bytes
    they quote can be the patient's name or ID (the fuzz test found such a warning). The
    reader reports problems in its own words (`SkippedFile`, the load report) instead.
    ``warnings.catch_warnings`` is process-wide state, restored on exit; a warning from
    another thread in the same instant may be dropped too, which is the safe side.
    """
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        yield


def _parse_header_entry(entry: _Entry, fast: bool) -> HeaderRecord:
    tags = list(_FAST_TAGS.values()) if fast else None
    try:
        size = entry.size()
        with entry.open() as fp:
            _refuse_inflate_bomb(entry, fp)
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


def _refuse_inflate_bomb(entry: _Entry, fp: BinaryIO) -> None:
    """Refuse a deflated file that inflates past the budget, before pydicom inflates it
    whole (`bounds.inflated_size_problem`)."""
    problem = inflated_size_problem(fp)
    if problem is not None:
        raise UnreadableFileError(SkippedFile(entry.name, SkipReason.TOO_LARGE, problem))


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
    get = _fast_get if fast else _get
    n_frames = max(_int(get(ds, "NumberOfFrames"), 1) or 1, 1)
    orientation = _floats(get(ds, "ImageOrientationPatient"), 6) or _floats(
        _fg(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
    )
    position = _floats(get(ds, "ImagePositionPatient"), 3)
    spacing = None
    if not fast:
        spacing = _floats(get(ds, "PixelSpacing"), 2) or _floats(
            _fg(ds, "PixelMeasuresSequence", "PixelSpacing"), 2
        )
    thickness = _f(get(ds, "SliceThickness"))
    if thickness is None:
        thickness = _f(_fg(ds, "PixelMeasuresSequence", "SliceThickness"))
    between = _f(get(ds, "SpacingBetweenSlices"))
    if between is None:
        between = _f(_fg(ds, "PixelMeasuresSequence", "SpacingBetweenSlices"))

    slope = None if fast else _f(get(ds, "RescaleSlope"))
    intercept = None if fast else _f(get(ds, "RescaleIntercept"))
    if slope is None and not fast:
        slope = _f(_fg(ds, "PixelValueTransformationSequence", "RescaleSlope"))
    if intercept is None and not fast:
        intercept = _f(_fg(ds, "PixelValueTransformationSequence", "RescaleIntercept"))

    frame_positions = None
    frame_rescale = None
    per_frame = get(ds, "PerFrameFunctionalGroupsSequence")
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
        value = get(ds, kw)
        if value not in (None, ""):
            metadata[kw] = (
                "\\".join(str(v) for v in value)
                if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                else str(value)
            )
    identifiers = {
        kw: v for kw in (() if fast else _IDENTIFIER_KEYWORDS) if (v := _raw_text(ds, kw))
    }

    rows = _int(get(ds, "Rows"), 0) or 0
    cols = _int(get(ds, "Columns"), 0) or 0
    return HeaderRecord(
        source=entry.name,
        path=entry.path,
        study_uid=str(get(ds, "StudyInstanceUID") or ""),
        series_uid=str(get(ds, "SeriesInstanceUID") or ""),
        sop_uid=str(get(ds, "SOPInstanceUID") or ""),
        sop_class_uid=str(
            get(ds, "SOPClassUID") or _get(ds.file_meta, "MediaStorageSOPClassUID") or ""
        ),
        modality=str(get(ds, "Modality") or "").upper(),
        transfer_syntax=ts,
        rows=rows,
        columns=cols,
        samples_per_pixel=_int(get(ds, "SamplesPerPixel"), 1) or 1,
        photometric=str(get(ds, "PhotometricInterpretation") or "MONOCHROME2").upper(),
        bits_allocated=_int(get(ds, "BitsAllocated"), 16) or 16,
        bits_stored=_int(get(ds, "BitsStored"), 16) or 16,
        pixel_representation=_int(get(ds, "PixelRepresentation"), 0) or 0,
        n_frames=n_frames,
        has_pixels=has_pixels,
        truncated=truncated,
        instance_number=_int(get(ds, "InstanceNumber")),
        position=position,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=thickness,
        spacing_between_slices=between,
        rescale_slope=1.0 if slope is None or slope == 0 else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        series_number=None if fast else _int(get(ds, "SeriesNumber")),
        series_description="" if fast else str(get(ds, "SeriesDescription") or ""),
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


def classify(rec: HeaderRecord, bounds: ReadBounds = DEFAULT_BOUNDS) -> SkippedFile | None:
    """Why a readable file cannot be a slice of a CT volume, or None when it can.

    ``bounds``: the declared size (rows, columns, frames) must fit them (TOO_LARGE).
    """
    if rec.truncated:
        return SkippedFile(rec.source, SkipReason.UNREADABLE, "truncated: the file ends early")
    is_ct_class = rec.sop_class_uid in _CT_SOP_CLASSES
    if rec.modality in _NON_IMAGE_MODALITIES or rec.sop_class_uid.startswith(_SR_PREFIX):
        # Our own structured reports (hohoho_core.sr) come back with a PACS study: never
        # a slice, whatever else they hold.
        return SkippedFile(
            rec.source, SkipReason.NOT_IMAGE, f"{rec.modality or 'SR'} object, not an image"
        )
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
    too_large = bounds.file_problem(rec.rows, rec.columns, rec.n_frames)
    if too_large is not None:
        return SkippedFile(rec.source, SkipReason.TOO_LARGE, too_large)
    problem = _decoder_problem(rec.transfer_syntax)
    if problem is not None:
        return SkippedFile(rec.source, SkipReason.MISSING_DECODER, problem)
    return None


def _rgb_detail(rec: HeaderRecord, kind: str) -> str:
    return (
        f"{kind} ({rec.photometric}, {rec.samples_per_pixel} samples per pixel), "
        "not CT grey levels in Hounsfield units"
    )
