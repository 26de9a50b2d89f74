"""The data a reader hands to the rest of the project: a `Study` and its `LoadReport`.

Data flows one way: files -> `Study` (HU volume + per-slice metadata + load report)
-> model input -> predictions. These types carry no behaviour beyond small helpers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class SkipReason(enum.StrEnum):
    """Why a file (or frame) was not used. The value is shown to users."""

    UNREADABLE = "unreadable"  # truncated or corrupt DICOM
    NOT_DICOM = "not DICOM"
    NO_PIXEL_DATA = "no pixel data"
    NOT_CT = "modality not CT"
    RGB_OR_SECONDARY = "RGB or secondary capture"
    OTHER_SERIES = "another series"
    DUPLICATE = "duplicate position"
    SIZE_MISMATCH = "size mismatch"
    MISSING_DECODER = "missing decoder"
    UNSAFE_PATH = "unsafe path in archive"
    TOO_LARGE = "too large"
    NOT_AXIAL = "not axial"
    NOT_REGULAR_FILE = "not a regular file"  # named pipe, device, socket: never opened
    OUTSIDE_FOLDER = "outside the folder"  # a symbolic link that leads out of the folder
    NOT_IMAGE = "not an image"  # a structured report, presentation state, ...: no slice


@dataclass(frozen=True)
class SkippedFile:
    """One file (or one frame of one file) the reader did not use."""

    source: str  # file name as given (never a patient identifier)
    reason: SkipReason
    detail: str = ""


@dataclass
class LoadReport:
    """Everything a user needs to trust (or distrust) a loaded study."""

    files_seen: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: "normal" (position along the slice normal), "instance_number" or "file_name".
    sort_method: str = "normal"

    def skip(self, source: str, reason: SkipReason, detail: str = "") -> None:
        self.skipped.append(SkippedFile(source, reason, detail))

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@dataclass(frozen=True)
class SliceInfo:
    """Per-slice metadata, in study order. Nothing here identifies a patient."""

    image_id: str  # RSNA-style "ID_<hex>" from the file name, else the SOPInstanceUID
    source: str  # file name the slice came from
    frame: int | None  # frame index for multi-frame files, else None
    instance_number: int | None
    position: tuple[float, float, float] | None  # ImagePositionPatient (mm)
    z: float  # position along the slice normal (mm); the sort key


@dataclass
class Study:
    """One CT series as a float32 HU volume ``[S, H, W]`` sorted along the slice normal."""

    study_uid: str
    series_uid: str
    hu: np.ndarray  # float32 [S, H, W], Hounsfield units
    slices: list[SliceInfo]
    pixel_spacing: tuple[float, float]  # (row, column) mm
    slice_spacing: float  # median distance between consecutive slices (mm)
    report: LoadReport
    #: Non-identifying header values for display (manufacturer, kVp, ...).
    metadata: dict[str, str] = field(default_factory=dict)
    #: Identifying values (PatientName, PatientID). Kept apart; shown only on request.
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3 or len(self.slices) != self.hu.shape[0]:
            raise ValueError(
                f"Study volume {self.hu.shape} does not match {len(self.slices)} slices"
            )

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    @property
    def image_ids(self) -> list[str]:
        return [s.image_id for s in self.slices]
