"""Files -> `Study`: read a head-CT series from a folder, files, uploads or a zip.

The reader works in two passes so that large folders stay fast:

1. headers only (``stop_before_pixels``) for every file, once: group by
   StudyInstanceUID / SeriesInstanceUID and reject what cannot be a CT slice;
2. pixels only for the chosen series, decoded straight into one preallocated float32
   volume (optionally with a thread pool).

Every file that is not used ends up in ``Study.report.skipped`` with a `SkipReason`.
Patient identifiers (PatientName, PatientID, PatientBirthDate) are kept in
``Study.identifiers`` only: no log line, warning, exception or report carries them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import stat
import struct
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
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

from hohoho_core.study import LoadReport, SkippedFile, SkipReason, SliceInfo, Study

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_TOTAL_UPLOAD_BYTES",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_ZIP_BYTES",
    "HeaderRecord",
    "SeriesSummary",
    "StudyLoadError",
    "UnreadableFileError",
    "Upload",
    "extract_zip",
    "list_series",
    "load_studies",
    "load_study",
    "read_header",
]

logger = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_MAX_ZIP_BYTES = 2 * GIB
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_UPLOAD_BYTES = 512 * MIB
DEFAULT_MAX_TOTAL_UPLOAD_BYTES = 2 * GIB

_CT_SOP_CLASSES = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)
#: Secondary capture SOP classes: screenshots and exports, never raw CT grey levels.
_SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_RSNA_STEM = re.compile(r"ID_[0-9a-fA-F]+")
#: |normal . z| above this counts as axial (about 45 degrees: gantry tilt stays well below).
_AXIAL_COS = 0.7
#: Two slices closer than this along the normal (mm) share a position.
_DUPLICATE_MM = 0.01
#: A step above this multiple of the median spacing is reported as a gap.
_GAP_FACTOR = 1.5
_MAX_GAP_WARNINGS = 10
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


class StudyLoadError(RuntimeError):
    """No usable CT slice: the message counts the reasons; ``.report`` has the detail."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


class UnreadableFileError(ValueError):
    """`read_header` could not use a file; ``.skipped`` says why."""

    def __init__(self, skipped: SkippedFile) -> None:
        detail = f": {skipped.detail}" if skipped.detail else ""
        super().__init__(f"{skipped.source}: {skipped.reason.value}{detail}")
        self.skipped = skipped


@dataclass(frozen=True)
class Upload:
    """An in-memory file, e.g. from a browser upload. ``name`` is shown in reports."""

    name: str
    data: bytes = field(repr=False)


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


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Entry:
    """One file to read: on disk (``path``) or in memory (``data``)."""

    name: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        if self.data is not None:
            yield io.BytesIO(self.data)
        else:
            assert self.path is not None
            with open(self.path, "rb") as fh:
                yield fh

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size


@dataclass(frozen=True)
class _Limits:
    max_upload_bytes: int
    max_total_upload_bytes: int
    max_zip_bytes: int
    max_members: int


def _natural_key(name: str) -> list[Any]:
    """'IM2' before 'IM10'. re.split with a group alternates text and digits."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _walk(folder: Path, prefix: str = "") -> list[_Entry]:
    """Every regular file under ``folder``, recursively (symlinked folders not followed)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort(key=_natural_key)
        base = Path(dirpath)
        for fname in sorted(filenames, key=_natural_key):
            path = base / fname
            rel = path.relative_to(folder).as_posix()
            entries.append(_Entry(name=f"{prefix}{rel}", path=path))
    return entries


def _is_zip_name(name: str, head: bytes) -> bool:
    return name.lower().endswith(".zip") or head.startswith(b"PK\x03\x04")


def _collect(
    source: Any, stack: contextlib.ExitStack, report: LoadReport, limits: _Limits
) -> list[_Entry]:
    """Expand a source into file entries; zips are extracted into temporary folders."""
    if isinstance(source, Upload):
        source = [source]
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if not isinstance(source, Iterable):
        raise TypeError(f"unsupported study source type {type(source).__name__}")

    items = list(source)
    entries: list[_Entry] = []
    upload_total = 0
    for item in items:
        if isinstance(item, Upload):
            size = len(item.data)
            if size > limits.max_upload_bytes:
                report.files_seen += 1
                report.skip(
                    item.name,
                    SkipReason.TOO_LARGE,
                    f"{size} bytes; the limit per upload is {limits.max_upload_bytes}",
                )
                continue
            if upload_total + size > limits.max_total_upload_bytes:
                report.files_seen += 1
                report.skip(
                    item.name,
                    SkipReason.TOO_LARGE,
                    f"uploads exceed the total limit of {limits.max_total_upload_bytes} bytes",
                )
                continue
            upload_total += size
            if _is_zip_name(item.name, item.data[:4]):
                entries.extend(_collect_zip(item.data, item.name, stack, report, limits))
            else:
                entries.append(_Entry(name=item.name, data=item.data))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"unsupported study source item type {type(item).__name__}")
        path = Path(item)
        if path.is_dir():
            # Names stay relative to a single folder; several sources keep their folder name.
            entries.extend(_walk(path, "" if len(items) == 1 else f"{path.name}/"))
        elif path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(4)
            if _is_zip_name(path.name, head):
                entries.extend(_collect_zip(path, path.name, stack, report, limits))
            else:
                entries.append(_Entry(name=path.name, path=path))
        else:
            report.files_seen += 1
            report.skip(path.name, SkipReason.UNREADABLE, "no such file or folder")
    return entries


def _collect_zip(
    archive: Path | bytes,
    name: str,
    stack: contextlib.ExitStack,
    report: LoadReport,
    limits: _Limits,
) -> list[_Entry]:
    target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hohoho_zip_")))
    paths, zip_report = extract_zip(
        archive,
        target,
        max_total_bytes=limits.max_zip_bytes,
        max_members=limits.max_members,
        name=name,
    )
    report.files_seen += zip_report.files_seen - len(paths)  # extracted ones are counted later
    report.skipped.extend(zip_report.skipped)
    report.warnings.extend(zip_report.warnings)
    return [_Entry(name=f"{name}:{p.relative_to(target).as_posix()}", path=p) for p in paths]


# --------------------------------------------------------------------------- zip


_DRIVE = re.compile(r"^[A-Za-z]:")


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why an archive member must not be written, or None when it is safe."""
    name = info.filename
    if not name or "\x00" in name:
        return "empty or NUL in name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter"
    parts = re.split(r"[\\/]+", name)
    if any(p == ".." for p in parts):
        return "'..' in path"
    mode = (info.external_attr >> 16) & 0o170000
    if mode == stat.S_IFLNK:
        return "symbolic link"
    if mode and mode not in (stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    return None


def extract_zip(
    zip_path: str | os.PathLike[str] | bytes,
    target: str | os.PathLike[str],
    max_total_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    *,
    name: str | None = None,
) -> tuple[list[Path], LoadReport]:
    """Extract a zip (path or bytes) under ``target``, safely and within bounds.

    Members with absolute paths, ``..``, drive letters or symlink modes are rejected
    (UNSAFE_PATH) and nothing is written outside ``target``. The total uncompressed size
    is bounded twice: by the sizes the archive declares and by counting the bytes
    actually written, so a lying header cannot get past it (TOO_LARGE). Members past
    ``max_members`` are rejected too.

    Returns:
        The extracted file paths (in archive order) and a report of rejected members.
    """
    report = LoadReport()
    label = name or (Path(zip_path).name if not isinstance(zip_path, bytes) else "upload.zip")
    root = Path(target)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written: list[Path] = []
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_path) if isinstance(zip_path, bytes) else zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        report.files_seen += 1
        report.skip(label, SkipReason.UNREADABLE, f"not a readable zip ({type(exc).__name__})")
        return written, report

    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        report.files_seen += len(members)
        if len(members) > max_members:
            report.skip(
                f"{label}: {len(members) - max_members} entries",
                SkipReason.TOO_LARGE,
                f"the archive holds {len(members)} files; the limit is {max_members}",
            )
            members = members[:max_members]
        total = 0
        seen: set[str] = set()
        for info in members:
            source = f"{label}:{info.filename}"
            why = _unsafe_member(info)
            if why is not None:
                report.skip(source, SkipReason.UNSAFE_PATH, why)
                continue
            rel = PurePosixPath(
                *[p for p in re.split(r"[\\/]+", info.filename) if p not in ("", ".")]
            )
            dest = (root / rel).resolve()
            # Belt and braces: the name checks above should make this impossible.
            if not dest.is_relative_to(root) or dest == root:
                report.skip(source, SkipReason.UNSAFE_PATH, "resolves outside the target")
                continue
            key = rel.as_posix().lower()
            if key in seen:
                report.skip(source, SkipReason.DUPLICATE, "repeated archive entry")
                continue
            if info.file_size > max_total_bytes - total:
                report.skip(
                    source,
                    SkipReason.TOO_LARGE,
                    f"declares {info.file_size} bytes; {max_total_bytes - total} of "
                    f"{max_total_bytes} left",
                )
                continue
            result = _extract_member(zf, info, dest, max_total_bytes - total)
            if isinstance(result, SkippedFile):
                report.skip(source, result.reason, result.detail)
                continue
            seen.add(key)
            total += result
            written.append(dest)
    return written, report


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int
) -> int | SkippedFile:
    """Copy one member to ``dest`` counting bytes; returns bytes written or why not."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    limit = min(budget, info.file_size)
    failure: SkippedFile | None = None
    try:
        with zf.open(info) as src, open(dest, "xb") as out:
            while True:
                # Ask for one byte more than allowed so an overrun is seen, not trusted.
                chunk = src.read(min(MIB, limit - count + 1))
                if not chunk:
                    break
                count += len(chunk)
                if count > info.file_size:
                    failure = SkippedFile("", SkipReason.TOO_LARGE, "more data than declared")
                    break
                if count > budget:
                    failure = SkippedFile("", SkipReason.TOO_LARGE, "total size bound reached")
                    break
                out.write(chunk)
    except FileExistsError:
        return SkippedFile("", SkipReason.DUPLICATE, "repeated archive entry")
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        # RuntimeError: encrypted member; BadZipFile: bad CRC (lying sizes end here too).
        failure = SkippedFile(
            "", SkipReason.UNREADABLE, f"corrupt archive entry ({type(exc).__name__})"
        )
    if failure is not None:
        dest.unlink(missing_ok=True)
        return failure
    return count


# --------------------------------------------------------------------------- headers


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


def _read_header_entry(entry: _Entry) -> HeaderRecord:
    """Parse one file's header; raises `UnreadableFileError` for unusable files."""
    try:
        size = entry.size()
        with entry.open() as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                fp.seek(0)
                if not _looks_like_raw_dataset(fp.read(16)):
                    raise UnreadableFileError(
                        SkippedFile(entry.name, SkipReason.NOT_DICOM, _not_dicom_detail(entry.name))
                    ) from None
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
                if not any(k in ds for k in ("SOPClassUID", "StudyInstanceUID", "Modality")):
                    raise UnreadableFileError(
                        SkippedFile(entry.name, SkipReason.NOT_DICOM, _not_dicom_detail(entry.name))
                    ) from None
            ts = _transfer_syntax(ds)
            has_pixels, truncated, offset, length = _pixel_element(fp, ts, size)
            truncated = truncated or _ends_mid_element(ds)
        return _record_from_dataset(ds, entry, ts, has_pixels, truncated, offset, length)
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
) -> HeaderRecord:
    n_frames = max(_int(_get(ds, "NumberOfFrames"), 1) or 1, 1)
    orientation = _floats(_get(ds, "ImageOrientationPatient"), 6) or _floats(
        _fg(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
    )
    position = _floats(_get(ds, "ImagePositionPatient"), 3)
    spacing = _floats(_get(ds, "PixelSpacing"), 2) or _floats(
        _fg(ds, "PixelMeasuresSequence", "PixelSpacing"), 2
    )
    thickness = _f(_get(ds, "SliceThickness"))
    if thickness is None:
        thickness = _f(_fg(ds, "PixelMeasuresSequence", "SliceThickness"))
    between = _f(_get(ds, "SpacingBetweenSlices"))
    if between is None:
        between = _f(_fg(ds, "PixelMeasuresSequence", "SpacingBetweenSlices"))

    slope = _f(_get(ds, "RescaleSlope"))
    intercept = _f(_get(ds, "RescaleIntercept"))
    if slope is None:
        slope = _f(_fg(ds, "PixelValueTransformationSequence", "RescaleSlope"))
    if intercept is None:
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
    for kw in _METADATA_KEYWORDS:
        value = _get(ds, kw)
        if value not in (None, ""):
            metadata[kw] = (
                "\\".join(str(v) for v in value)
                if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                else str(value)
            )
    identifiers = {kw: v for kw in _IDENTIFIER_KEYWORDS if (v := _raw_text(ds, kw))}

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
        series_number=_int(_get(ds, "SeriesNumber")),
        series_description=str(_get(ds, "SeriesDescription") or ""),
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


def read_header(path: str | os.PathLike[str] | Upload) -> HeaderRecord:
    """Read one file's header (no pixels) into a `HeaderRecord`.

    Raises:
        UnreadableFileError: not DICOM, or a header that cannot be parsed.
    """
    if isinstance(path, Upload):
        entry = _Entry(name=path.name, data=path.data)
    else:
        entry = _Entry(name=Path(path).name, path=Path(path))
    return _read_header_entry(entry)


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


def _classify(rec: HeaderRecord) -> SkippedFile | None:
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


# --------------------------------------------------------------------------- geometry


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


# --------------------------------------------------------------------------- scanning


@dataclass
class _Scan:
    items: list[tuple[_Entry, HeaderRecord]]
    report: LoadReport


def _scan(source: Any, stack: contextlib.ExitStack, limits: _Limits) -> _Scan:
    report = LoadReport()
    entries = _collect(source, stack, report, limits)
    items: list[tuple[_Entry, HeaderRecord]] = []
    for entry in entries:
        report.files_seen += 1
        try:
            rec = _read_header_entry(entry)
        except UnreadableFileError as err:
            report.skipped.append(err.skipped)
            continue
        why = _classify(rec)
        if why is not None:
            report.skipped.append(why)
            continue
        items.append((entry, rec))
    return _Scan(items, report)


def _group(
    items: list[tuple[_Entry, HeaderRecord]],
) -> dict[tuple[str, str], list[tuple[_Entry, HeaderRecord]]]:
    groups: dict[tuple[str, str], list[tuple[_Entry, HeaderRecord]]] = {}
    for entry, rec in items:
        groups.setdefault((rec.study_uid, rec.series_uid), []).append((entry, rec))
    return groups


def _summaries(
    groups: dict[tuple[str, str], list[tuple[_Entry, HeaderRecord]]],
) -> list[SeriesSummary]:
    """Series in preference order: axial, then unknown orientation; more slices first."""
    out = []
    for (study_uid, series_uid), members in groups.items():
        recs = [r for _, r in members]
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


def _limits(
    max_upload_bytes: int, max_total_upload_bytes: int, max_zip_bytes: int, max_members: int
) -> _Limits:
    return _Limits(max_upload_bytes, max_total_upload_bytes, max_zip_bytes, max_members)


def list_series(
    source: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
) -> list[SeriesSummary]:
    """Every CT series in ``source`` (headers only), the default choice first."""
    limits = _limits(max_upload_bytes, max_total_upload_bytes, max_zip_bytes, DEFAULT_MAX_MEMBERS)
    with contextlib.ExitStack() as stack:
        scan = _scan(source, stack, limits)
        return _summaries(_group(scan.items))


# --------------------------------------------------------------------------- loading


@dataclass
class _Candidate:
    """One slice to be: a file, or one frame of a multi-frame file."""

    entry: _Entry
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
    members: list[tuple[_Entry, HeaderRecord]], normal: np.ndarray | None, report: LoadReport
) -> list[_Candidate]:
    out = []
    for entry, rec in members:
        if rec.n_frames == 1:
            out.append(
                _Candidate(
                    entry,
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
            out.append(_Candidate(entry, rec, k, pos, slope, intercept, _image_id(rec, k)))
    return out


def _drop_inconsistent(
    members: list[tuple[_Entry, HeaderRecord]], normal: np.ndarray | None, report: LoadReport
) -> list[tuple[_Entry, HeaderRecord]]:
    """Remove files whose size or orientation differ from the series majority."""
    size = Counter((r.rows, r.columns) for _, r in members).most_common(1)[0][0]
    kept = []
    seen_sop: dict[str, str] = {}
    for entry, rec in members:
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
        kept.append((entry, rec))
    return kept


def _default_step(recs: Iterable[HeaderRecord]) -> float:
    for r in recs:
        for v in (r.spacing_between_slices, r.slice_thickness):
            if v is not None and v > 0:
                return float(v)
    return 1.0


def _sort(
    cands: list[_Candidate], normal: np.ndarray | None, report: LoadReport
) -> list[_Candidate]:
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


def _drop_duplicates(cands: list[_Candidate], report: LoadReport) -> list[_Candidate]:
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


def _shift_unused_bits(arr: np.ndarray, bits_allocated: int, bits_stored: int) -> np.ndarray:
    """Ignore bits above BitsStored, sign-extending signed data (as pydicom does)."""
    shift = bits_allocated - bits_stored
    if shift > 0:
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr


def _stored_pixels(entry: _Entry, rec: HeaderRecord) -> np.ndarray:
    """Stored values ``[F, H, W]`` (integers) of one file, before any rescale."""
    bytes_per = rec.bits_allocated // 8
    expected = rec.rows * rec.columns * rec.n_frames * bytes_per
    if (
        rec.pixel_offset is not None
        and rec.pixel_length is not None
        and rec.bits_allocated in (8, 16)
        and rec.samples_per_pixel == 1
        and rec.pixel_length >= expected
    ):
        # Fast path for native little-endian data: one read, no second parse.
        with entry.open() as fp:
            fp.seek(rec.pixel_offset)
            buf = fp.read(expected)
        if len(buf) != expected:
            raise ValueError(f"pixel data has {len(buf)} of {expected} bytes")
        dtype = np.dtype(f"<{'i' if rec.pixel_representation else 'u'}{bytes_per}")
        arr = np.frombuffer(buf, dtype=dtype).reshape(rec.n_frames, rec.rows, rec.columns).copy()
        return _shift_unused_bits(arr, rec.bits_allocated, rec.bits_stored)
    with entry.open() as fp:
        ds = pydicom.dcmread(fp, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = rec.transfer_syntax
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (rec.n_frames, rec.rows, rec.columns):
        raise ValueError(f"decoded shape {arr.shape} does not match the header")
    return arr


def _is_rsna_quirk(rec: HeaderRecord, intercept: float) -> bool:
    """RSNA 12-bit wrap: unsigned 12-bit pixels with an intercept above -100 (domain.md)."""
    return rec.bits_stored == 12 and rec.pixel_representation == 0 and intercept > -100


def _to_hu(
    stored: np.ndarray, rec: HeaderRecord, slope: float, intercept: float, out: np.ndarray
) -> bool:
    """Write HU ``[H, W]`` into ``out``; returns whether the 12-bit quirk was unwrapped.

    The quirk stores round(HU) mod 4096, so values are unwrapped to [-1000, 3095] with
    ``((px + 1000) mod 4096) - 1000`` before the rescale (never after).
    """
    quirk = _is_rsna_quirk(rec, intercept)
    px = stored
    if quirk:
        px = np.remainder(stored.astype(np.int32) + 1000, 4096) - 1000
    if slope == 1.0:
        out[...] = px
    else:
        np.multiply(px, np.float32(slope), out=out, casting="unsafe")
    if intercept != 0.0:
        out += np.float32(intercept)
    return quirk


def _safe_detail(exc: BaseException, identifiers: dict[str, str]) -> str:
    """A short exception description with every known identifier removed."""
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    for value in identifiers.values():
        for part in {value, *value.split("^")}:
            if len(part) >= 2:
                text = text.replace(part, "<redacted>")
    return text


def _decode_into(
    cands: list[_Candidate], hu: np.ndarray, report: LoadReport, workers: int
) -> np.ndarray:
    """Fill ``hu[i]`` for every candidate; return the boolean mask of slices that worked."""
    by_file: dict[int, list[int]] = {}
    for i, c in enumerate(cands):
        by_file.setdefault(id(c.entry), []).append(i)
    jobs = list(by_file.values())
    ok = np.ones(len(cands), dtype=bool)

    def work(rows: list[int]) -> tuple[list[int], SkippedFile | None, int]:
        first = cands[rows[0]]
        try:
            stored = _stored_pixels(first.entry, first.rec)
            quirks = 0
            for i in rows:
                c = cands[i]
                quirks += _to_hu(stored[c.frame or 0], c.rec, c.slope, c.intercept, hu[i])
        except Exception as exc:  # one broken file must not abort the study
            reason = (
                SkipReason.MISSING_DECODER
                if isinstance(exc, NotImplementedError)
                else SkipReason.UNREADABLE
            )
            return (
                rows,
                SkippedFile(first.rec.source, reason, _safe_detail(exc, first.rec.identifiers)),
                0,
            )
        return rows, None, quirks

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(work, jobs))
    else:
        results = [work(rows) for rows in jobs]
    quirk_total = 0
    for rows, skipped, quirks in results:
        quirk_total += quirks
        if skipped is not None:
            report.skipped.append(skipped)
            ok[rows] = False
    if quirk_total:
        report.warn(
            f"{quirk_total} slices had the RSNA 12-bit wrap (BitsStored 12, unsigned, "
            "intercept above -100) and were unwrapped before the rescale"
        )
    return ok


def _build(
    study_uid: str,
    series_uid: str,
    members: list[tuple[_Entry, HeaderRecord]],
    report: LoadReport,
    workers: int,
) -> Study:
    """Turn one series' usable files into a `Study` (raises `StudyLoadError` if empty)."""
    members = sorted(members, key=lambda m: _natural_key(m[1].source))
    normal = _series_normal([r for _, r in members])
    members = _drop_inconsistent(members, normal, report)
    cands = _candidates(members, normal, report)
    cands = _sort(cands, normal, report)
    cands = _drop_duplicates(cands, report)
    if not cands:
        raise StudyLoadError(_failure_message(report), report)
    rows, cols = cands[0].rec.rows, cands[0].rec.columns
    hu = np.empty((len(cands), rows, cols), dtype=np.float32)
    ok = _decode_into(cands, hu, report, workers)
    if not ok.all():
        hu = hu[ok]
        cands = [c for c, keep in zip(cands, ok, strict=True) if keep]
    if not cands:
        raise StudyLoadError(_failure_message(report), report)
    z = np.array([c.z for c in cands], dtype=np.float64)
    median = (
        _report_gaps(z, report)
        if report.sort_method == "normal"
        else (float(np.median(np.diff(z))) if len(z) > 1 else 0.0)
    )
    first = cands[0].rec
    if len(z) < 2:
        median = float(first.spacing_between_slices or first.slice_thickness or 0.0)
    spacing = first.pixel_spacing
    if spacing is None:
        report.warn("PixelSpacing is missing: 1.0 mm assumed")
        spacing = (1.0, 1.0)
    slices = [
        SliceInfo(
            image_id=c.image_id,
            source=c.rec.source,
            frame=c.frame,
            instance_number=c.rec.instance_number,
            position=c.position,
            z=float(c.z),
        )
        for c in cands
    ]
    logger.debug(
        "loaded a series of %d slices (%d files skipped)", len(slices), len(report.skipped)
    )
    return Study(
        study_uid=study_uid,
        series_uid=series_uid,
        hu=hu,
        slices=slices,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slice_spacing=float(median),
        report=report,
        metadata=dict(first.metadata),
        identifiers=dict(first.identifiers),
    )


def _failure_message(report: LoadReport) -> str:
    counts = Counter(s.reason for s in report.skipped)
    if not counts:
        return f"No usable CT slice found in {report.files_seen} files (no files found)."
    parts = ", ".join(f"{n} {reason.value}" for reason, n in counts.most_common())
    return f"No usable CT slice found in {report.files_seen} files: {parts}."


def _copy_report(report: LoadReport) -> LoadReport:
    return LoadReport(
        files_seen=report.files_seen,
        skipped=list(report.skipped),
        warnings=list(report.warnings),
        sort_method=report.sort_method,
    )


def _auto_workers(workers: int | None) -> int:
    if workers is None:
        return min(8, os.cpu_count() or 1)
    return max(1, int(workers))


def load_study(
    source: Any,
    series_uid: str | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    workers: int | None = None,
) -> Study:
    """Load one CT series as a float32 HU volume ``[S, H, W]`` sorted along the slice normal.

    Args:
        source: a folder (searched recursively), a file, a ``.zip``, an `Upload`, or a
            list of paths and/or uploads.
        series_uid: the series to load; by default the axial CT series with most slices.
        max_upload_bytes / max_total_upload_bytes: bounds per upload and for all uploads.
        max_zip_bytes / max_members: bounds on what a zip may extract.
        workers: threads decoding pixels (default: up to 8).

    Slice 0 is the lowest position along the normal (for a standard axial series, the
    most inferior slice). Every file not used is listed in ``study.report.skipped``.

    Raises:
        StudyLoadError: no usable slice (the message counts the reasons).
    """
    limits = _limits(max_upload_bytes, max_total_upload_bytes, max_zip_bytes, max_members)
    with contextlib.ExitStack() as stack:
        scan = _scan(source, stack, limits)
        groups = _group(scan.items)
        summaries = _summaries(groups)
        report = scan.report
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
            for _, rec in groups[(s.study_uid, s.series_uid)]:
                report.skip(rec.source, reason, f"{detail} ({s.series_uid})")
        if chosen is None:
            raise StudyLoadError(_failure_message(report), report)
        return _build(
            chosen.study_uid,
            chosen.series_uid,
            groups[(chosen.study_uid, chosen.series_uid)],
            report,
            _auto_workers(workers),
        )


def iter_studies(
    source: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    workers: int | None = None,
) -> Iterator[Study]:
    """Yield every axial (or unknown-orientation) CT series in ``source``, one `Study` each.

    Lazy: headers are scanned once up front, but each series' pixels are decoded only
    when it is reached, so a folder of thousands of studies never sits in memory at once.

    Each study's report lists the files no series used (not DICOM, not CT, ...), the
    non-axial series, and its own rejected slices. Ordered by study then series UID.

    Raises:
        StudyLoadError: not one series could be loaded.
    """
    limits = _limits(max_upload_bytes, max_total_upload_bytes, max_zip_bytes, max_members)
    with contextlib.ExitStack() as stack:
        scan = _scan(source, stack, limits)
        groups = _group(scan.items)
        summaries = _summaries(groups)
        shared = scan.report
        loadable = []
        for s in summaries:
            if s.orientation in ("axial", "unknown"):
                loadable.append(s)
                continue
            for _, rec in groups[(s.study_uid, s.series_uid)]:
                shared.skip(
                    rec.source, SkipReason.NOT_AXIAL, f"{s.orientation} series ({s.series_uid})"
                )
        n_loaded = 0
        failed = _copy_report(shared)
        for s in sorted(loadable, key=lambda s: (s.study_uid, s.series_uid)):
            report = _copy_report(shared)
            try:
                study = _build(
                    s.study_uid,
                    s.series_uid,
                    groups[(s.study_uid, s.series_uid)],
                    report,
                    _auto_workers(workers),
                )
            except StudyLoadError as err:
                failed.skipped.extend(x for x in err.report.skipped if x not in failed.skipped)
                continue
            n_loaded += 1
            yield study
        if not n_loaded:
            raise StudyLoadError(_failure_message(failed), failed)

def load_studies(
    source: Any,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_total_upload_bytes: int = DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    workers: int | None = None,
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
        )
    )
