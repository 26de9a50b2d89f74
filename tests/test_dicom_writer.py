"""Round trips through `hohoho_core.synthetic.writer`: pydicom must read back what was meant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hohoho_core.synthetic.writer import ct_dataset, stored_values, write_dataset


def _hu_image(rng: np.random.Generator) -> np.ndarray:
    """A 32x40 image spanning air, fat, brain, blood and bone (HU, float)."""
    hu = rng.uniform(-1000.0, 1800.0, size=(32, 40))
    hu[0, :5] = [-1000.0, -100.0, 0.0, 40.0, 1800.0]
    return hu


def _write(tmp_path: Path, hu: np.ndarray, **kw) -> pydicom.Dataset:
    ds = ct_dataset(
        hu,
        study_uid=generate_uid(entropy_srcs=["study"]),
        series_uid=generate_uid(entropy_srcs=["series"]),
        sop_uid=generate_uid(entropy_srcs=["sop"]),
        position=(-120.0, -110.5, 42.25),
        **kw,
    )
    path = tmp_path / "ID_000000001.dcm"
    write_dataset(ds, path)
    return pydicom.dcmread(path)


@pytest.mark.parametrize(
    ("pixel_representation", "intercept", "slope", "dtype"),
    [(0, -1024.0, 1.0, np.uint16), (1, 0.0, 1.0, np.int16), (1, -1024.0, 0.5, np.int16)],
)
def test_round_trip_hu(tmp_path, pixel_representation, intercept, slope, dtype):
    hu = _hu_image(np.random.default_rng(0))
    back = _write(
        tmp_path,
        hu,
        pixel_representation=pixel_representation,
        rescale_intercept=intercept,
        rescale_slope=slope,
    )
    px = back.pixel_array
    assert px.dtype == dtype
    assert px.shape == hu.shape
    recon = px.astype(np.float64) * float(back.RescaleSlope) + float(back.RescaleIntercept)
    # Rounding to the nearest stored integer costs at most half a slope step.
    np.testing.assert_array_less(np.abs(recon - hu), slope / 2 + 1e-9)
    assert float(back.RescaleIntercept) == intercept
    assert float(back.RescaleSlope) == slope


def test_file_is_part10_with_ct_tags(tmp_path):
    hu = np.zeros((16, 24))
    back = _write(
        tmp_path,
        hu,
        orientation=(1, 0, 0, 0, 0.9659258, 0.2588190),
        pixel_spacing=(0.45, 0.46),
        slice_thickness=3.0,
        instance_number=7,
        window_centre=[40.0, 40.0],
        window_width=[80.0, 80.0],
    )
    raw = (tmp_path / "ID_000000001.dcm").read_bytes()
    assert raw[128:132] == b"DICM"
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert back.SOPClassUID == CTImageStorage
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.Modality == "CT"
    assert list(back.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert [float(v) for v in back.ImagePositionPatient] == [-120.0, -110.5, 42.25]
    assert [float(v) for v in back.ImageOrientationPatient] == pytest.approx(
        [1, 0, 0, 0, 0.9659258, 0.2588190]
    )
    assert [float(v) for v in back.PixelSpacing] == [0.45, 0.46]
    assert float(back.SliceThickness) == 3.0
    assert back.InstanceNumber == 7
    assert (back.Rows, back.Columns) == (16, 24)
    assert back.SamplesPerPixel == 1
    assert back.PhotometricInterpretation == "MONOCHROME2"
    assert (back.BitsAllocated, back.BitsStored, back.HighBit) == (16, 16, 15)
    assert back.RescaleType == "HU"
    assert [float(v) for v in back.WindowCenter] == [40.0, 40.0]
    assert [float(v) for v in back.WindowWidth] == [80.0, 80.0]
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "Manufacturer",
        "KVP",
    ):
        assert keyword in back, keyword
    assert str(back.PatientName) == "SYNTHETIC^PATIENT"
    # One frame of reference per series, not per slice.
    other = ct_dataset(
        hu,
        study_uid=back.StudyInstanceUID,
        series_uid=back.SeriesInstanceUID,
        sop_uid=generate_uid(entropy_srcs=["other"]),
        position=(0.0, 0.0, 0.0),
    )
    assert other.FrameOfReferenceUID == back.FrameOfReferenceUID


def test_single_window_is_single_valued(tmp_path):
    back = _write(tmp_path, np.zeros((8, 8)), window_centre=35.0, window_width=90.0)
    assert float(back.WindowCenter) == 35.0
    assert float(back.WindowWidth) == 90.0


def test_clipping_to_stored_range():
    hu = np.array([[-5000.0, 70000.0, 40.4]])
    unsigned = stored_values(hu, rescale_intercept=-1024.0, pixel_representation=0)
    assert unsigned.tolist() == [[0, 65535, 1064]]
    signed = stored_values(hu, pixel_representation=1)
    assert signed.tolist() == [[-5000, 32767, 40]]


def test_twelve_bit_quirk_wraps_and_unwraps(tmp_path):
    """RSNA quirk: BitsStored 12, unsigned, intercept 0, stored = round(HU) mod 4096."""
    hu = np.array([[-1000.0, -3.0, 0.0, 40.0, 1500.0, 3000.0]])
    back = _write(tmp_path, hu, pixel_representation=0, bits_stored=12, rescale_intercept=0.0)
    assert (back.BitsStored, back.HighBit, back.PixelRepresentation) == (12, 11, 0)
    px = back.pixel_array.astype(np.int64)
    assert px.tolist() == [[3096, 4093, 0, 40, 1500, 3000]]
    # The project's reader unwraps before the rescale.
    unwrapped = ((px + 1000) % 4096) - 1000
    hu_back = unwrapped * float(back.RescaleSlope) + float(back.RescaleIntercept)
    np.testing.assert_array_equal(hu_back, hu)
    # A naive reader sees air as +3096 "HU": noise.
    assert px[0, 0] * float(back.RescaleSlope) + float(back.RescaleIntercept) == 3096


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        stored_values(np.zeros((2, 2)), rescale_slope=0.0)
    with pytest.raises(ValueError):
        ct_dataset(
            np.zeros((2, 2, 2)),
            study_uid="1.2",
            series_uid="1.2.3",
            sop_uid="1.2.3.4",
            position=(0.0, 0.0, 0.0),
        )
