"""What a header may make the reader allocate: every bound is decided before allocating.

A 1.4 KB file can declare a 65535 x 65535 image or a million frames, and a 300 KB
deflated file can inflate to gigabytes. The reader checks what headers declare against
`ReadBounds` (per frame, per file, per study, total voxels) before it allocates a pixel,
and inflates deflated files only up to a fixed budget. Each refusal becomes a
``SkipReason.TOO_LARGE`` entry of the load report with a sentence saying what was declared.

The voxel budget derives from the upload bound: the float32 HU volume of one study may
not take more memory than all uploads together may (4 bytes per voxel).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from hohoho_core.dicom.sources import DEFAULT_MAX_TOTAL_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_BYTES

if TYPE_CHECKING:
    from hohoho_core.dicom.headers import HeaderRecord

__all__ = [
    "DEFAULT_BOUNDS",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_INFLATED_BYTES",
    "DEFAULT_MAX_SIDE",
    "DEFAULT_MAX_SLICES",
    "DEFAULT_MAX_VOXELS",
    "ReadBounds",
]

#: Rows and columns, each (a CT slice is 512 x 512; 4096 leaves room for any scanner).
DEFAULT_MAX_SIDE = 4096
#: Frames in one multi-frame file.
DEFAULT_MAX_FRAMES = 4096
#: Slices in one loaded study (a thin-slice whole-body CT has about 2,000).
DEFAULT_MAX_SLICES = 4096
#: Voxels of one study's float32 HU volume: no more bytes than the total upload bound.
DEFAULT_MAX_VOXELS = DEFAULT_MAX_TOTAL_UPLOAD_BYTES // 4
#: Bytes one deflated file may inflate to (a quarter of the per-upload bound).
DEFAULT_MAX_INFLATED_BYTES = DEFAULT_MAX_UPLOAD_BYTES // 4
#: How far into a file the file meta group (which names the transfer syntax) is looked for.
_META_PEEK = 8 * 1024  # one buffered read, which the header parse then reuses
_INFLATE_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReadBounds:
    """Limits on what one file and one study may declare; checked from headers only.

    Attributes:
        max_side: rows and columns of a frame, each.
        max_frames: frames in one file.
        max_slices: slices in one study (after the slice order dropped what it drops).
        max_voxels: slices x rows x columns of one study (also of one file).
    """

    max_side: int = DEFAULT_MAX_SIDE
    max_frames: int = DEFAULT_MAX_FRAMES
    max_slices: int = DEFAULT_MAX_SLICES
    max_voxels: int = DEFAULT_MAX_VOXELS

    def __post_init__(self) -> None:
        for name in ("max_side", "max_frames", "max_slices", "max_voxels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ReadBounds.{name} must be a positive integer, got {value!r}")

    def file_problem(self, rows: int, columns: int, frames: int) -> str | None:
        """Why one file's declared size is refused, or None when it fits."""
        if rows > self.max_side or columns > self.max_side:
            return (
                f"declares a {rows} x {columns} image; the limit is "
                f"{self.max_side} x {self.max_side}"
            )
        if frames > self.max_frames:
            return f"declares {frames} frames; the limit is {self.max_frames} per file"
        voxels = rows * columns * frames
        if voxels > self.max_voxels:
            return (
                f"declares {frames} frames of {rows} x {columns} ({voxels} voxels); "
                f"the limit is {self.max_voxels}"
            )
        return None

    def series_problem(self, n_slices: int, rows: int, columns: int) -> str | None:
        """Why one study of ``n_slices`` slices of ``rows x columns`` is refused, or None."""
        if n_slices > self.max_slices:
            return f"the series has {n_slices} slices; the limit is {self.max_slices} per study"
        voxels = n_slices * rows * columns
        if voxels > self.max_voxels:
            return (
                f"the series has {n_slices} slices of {rows} x {columns} ({voxels} voxels); "
                f"the limit is {self.max_voxels}"
            )
        return None


DEFAULT_BOUNDS = ReadBounds()


def pixel_data_problem(rec: HeaderRecord) -> str | None:
    """Why a native (uncompressed) file's pixel data cannot hold what its header declares.

    Only for records from a full header read whose pixel element was located
    (``pixel_length``): a file declaring 2,000 frames but holding 2 bytes must not make the
    loader allocate 2,000 slices before the decoder finds out.
    """
    if rec.pixel_length is None or rec.bits_allocated not in (8, 16, 32):
        return None
    expected = rec.rows * rec.columns * rec.n_frames * (rec.bits_allocated // 8)
    if rec.pixel_length < expected:
        return (
            f"pixel data holds {rec.pixel_length} bytes; the header declares {rec.n_frames} "
            f"frame(s) of {rec.rows} x {rec.columns} at {rec.bits_allocated} bits "
            f"({expected} bytes)"
        )
    return None


def inflated_size_problem(fp: BinaryIO, limit: int = DEFAULT_MAX_INFLATED_BYTES) -> str | None:
    """For a deflated-transfer-syntax file, why it is refused (it inflates past ``limit``).

    Inflates in bounded chunks and throws the output away, so memory stays at one chunk.
    Leaves ``fp`` where it was. Anything that is not a well-formed deflated file returns
    None: the header parser then says what is wrong with it.
    """
    start = fp.tell()
    try:
        head = fp.read(_META_PEEK)
        if DeflatedExplicitVRLittleEndian.encode() not in head:
            return None
        fp.seek(start)
        pydicom.filereader.read_preamble(fp, force=True)
        meta = pydicom.filereader._read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while not inflater.eof:
            data = fp.read(_INFLATE_CHUNK)
            if not data:
                break
            while data and not inflater.eof:
                total += len(inflater.decompress(data, _INFLATE_CHUNK))
                if total > limit:
                    return f"deflated data inflates to more than {limit} bytes"
                data = inflater.unconsumed_tail
        return None
    except Exception:  # malformed: the header parser reports it
        return None
    finally:
        fp.seek(start)
