"""Write single-slice CT DICOM files the way CT scanners (and the RSNA 2019 set) do.

Used by the phantom generator and by tests that need real Part-10 files. The dataset
carries the tags readers rely on (UIDs, geometry, rescale, windows) plus the patient
module, so identifier handling can be tested with fake identifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = ["ct_dataset", "stored_values", "write_dataset"]


def stored_values(
    hu: np.ndarray,
    *,
    rescale_intercept: float = 0.0,
    rescale_slope: float = 1.0,
    pixel_representation: int = 1,
    bits_stored: int = 16,
) -> np.ndarray:
    """HU ``[H, W]`` -> stored pixel values ``[H, W]`` (uint16 or int16).

    ``stored = round((hu - intercept) / slope)``, clipped to the integer range of the
    pixel representation. With unsigned pixels and ``bits_stored < 16`` the value is
    masked to ``bits_stored`` bits (it wraps, as in the RSNA 12-bit quirk); with signed
    pixels and ``bits_stored < 16`` it is clipped to the signed ``bits_stored`` range.
    """
    if rescale_slope == 0:
        raise ValueError("rescale_slope must not be 0")
    if pixel_representation not in (0, 1):
        raise ValueError("pixel_representation must be 0 (unsigned) or 1 (signed)")
    if not 1 <= bits_stored <= 16:
        raise ValueError("bits_stored must be in 1..16")
    raw = np.rint((np.asarray(hu, dtype=np.float64) - rescale_intercept) / rescale_slope)
    if pixel_representation == 0:
        if bits_stored < 16:
            # Two's-complement style wrap: -1000 becomes 3096 with 12 bits.
            raw = np.clip(raw, -(2**31), 2**31 - 1).astype(np.int64)
            return (raw & ((1 << bits_stored) - 1)).astype(np.uint16)
        return np.clip(raw, 0, 65535).astype(np.uint16)
    lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return np.clip(raw, lo, hi).astype(np.int16)


def _ds_value(value: float | Sequence[float]) -> Any:
    """Format a float or list of floats for a DS tag (pydicom accepts numbers)."""
    if isinstance(value, (list, tuple)):
        return [_ds(v) for v in value]
    return _ds(value)


def _ds(value: float) -> str:
    # DS is limited to 16 characters; repr of a float can be longer.
    return f"{float(value):.10g}"


def ct_dataset(
    hu: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    position: tuple[float, float, float],
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: tuple[float, float] = (0.5, 0.5),
    slice_thickness: float = 5.0,
    instance_number: int = 1,
    pixel_representation: int = 1,
    rescale_intercept: float = 0.0,
    rescale_slope: float = 1.0,
    bits_stored: int = 16,
    modality: str = "CT",
    patient_name: str = "SYNTHETIC^PATIENT",
    patient_id: str = "SYN0000",
    window_centre: float | list[float] = 40.0,
    window_width: float | list[float] = 80.0,
    extra: dict | None = None,
) -> pydicom.Dataset:
    """Build a CT Image Storage dataset for one axial slice.

    Args:
        hu: HU image ``[H, W]`` (rows, columns).
        position: ImagePositionPatient of the first transmitted pixel (mm).
        orientation: ImageOrientationPatient, row then column direction cosines.
        extra: keyword -> value for further tags (set last, so they override).

    Returns:
        A dataset with file meta set (Explicit VR Little Endian), ready for
        :func:`write_dataset`.
    """
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"hu must be 2-D [H, W], got shape {hu.shape}")
    if len(orientation) != 6:
        raise ValueError("orientation needs 6 direction cosines")
    pixels = stored_values(
        hu,
        rescale_intercept=rescale_intercept,
        rescale_slope=rescale_slope,
        pixel_representation=pixel_representation,
        bits_stored=bits_stored,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HOHOHO_SYN"

    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20190101"
    ds.SeriesDate = "20190101"
    ds.ContentDate = "20190101"
    ds.StudyTime = "120000"
    ds.SeriesTime = "120000"
    ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "HOHOHO Synthetic"
    ds.ManufacturerModelName = "Phantom"
    ds.InstitutionName = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.SeriesDescription = "AXIAL HEAD"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(slice_thickness)
    ds.KVP = "120"
    ds.XRayTubeCurrent = 300
    ds.ConvolutionKernel = "H30s"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = int(instance_number)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    # Derived from the series UID so every slice of a series shares one frame of reference.
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(hu.shape[0]), int(hu.shape[1])
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = int(pixel_representation)
    ds.WindowCenter = _ds_value(window_centre)
    ds.WindowWidth = _ds_value(window_width)
    ds.RescaleIntercept = _ds(rescale_intercept)
    ds.RescaleSlope = _ds(rescale_slope)
    ds.RescaleType = "HU"
    little = "<u2" if pixels.dtype == np.uint16 else "<i2"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=little).tobytes()
    # The PixelData VR is OW for 16-bit native data in Explicit VR.
    ds["PixelData"].VR = "OW"
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def write_dataset(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` as a Part-10 file (128-byte preamble, DICM, file meta) to ``path``.

    The file is Explicit VR Little Endian; file meta missing from ``ds`` is filled in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    if "MediaStorageSOPClassUID" not in meta:
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=True)
