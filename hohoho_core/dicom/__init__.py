"""Files -> `Study`: read a head-CT series from a folder, files, uploads or a zip.

One concern per module:

* `sources`: folders, files, uploads and zips -> file entries in a stable order;
* `zipsafe`: safe, bounded zip extraction (a security boundary of its own);
* `bounds`: what headers may declare (sizes, frames, slices, voxels, inflated bytes);
* `headers`: one header -> `HeaderRecord` (full, or fast for indexing) and `classify`;
* `geometry`: slice normals and `order_slices`, the project's one slice order;
* `pixels`: decoding, unused bits, rescale to HU, the RSNA 12-bit quirk;
* `loader`: `scan_source` / `load_study` / `iter_studies` / `load_studies` / `list_series`.

Every file that is not used ends up in ``Study.report.skipped`` with a `SkipReason`.
Patient identifiers (PatientName, PatientID, PatientBirthDate) are kept in
``Study.identifiers`` only: no log line, warning, exception or report carries them.
"""

from hohoho_core.dicom.bounds import DEFAULT_BOUNDS, ReadBounds
from hohoho_core.dicom.geometry import OrderedSlice, order_slices
from hohoho_core.dicom.headers import (
    ORDER_TAGS,
    HeaderRecord,
    UnreadableFileError,
    classify,
    read_header,
)
from hohoho_core.dicom.loader import (
    SeriesSummary,
    SourceScan,
    StudyLoadError,
    iter_studies,
    list_series,
    load_studies,
    load_study,
    scan_source,
)
from hohoho_core.dicom.sources import (
    DEFAULT_MAX_TOTAL_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    Upload,
)
from hohoho_core.dicom.zipsafe import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_ZIP_BYTES, extract_zip

__all__ = [
    "DEFAULT_BOUNDS",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_TOTAL_UPLOAD_BYTES",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_ZIP_BYTES",
    "ORDER_TAGS",
    "HeaderRecord",
    "OrderedSlice",
    "ReadBounds",
    "SeriesSummary",
    "SourceScan",
    "StudyLoadError",
    "UnreadableFileError",
    "Upload",
    "classify",
    "extract_zip",
    "iter_studies",
    "list_series",
    "load_studies",
    "load_study",
    "order_slices",
    "read_header",
    "scan_source",
]
