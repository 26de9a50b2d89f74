"""`hohoho_core.dicom`: files -> `Study`, every rejected file with its reason."""

from __future__ import annotations

import importlib.util
import io
import logging
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedCTImageStorage, JPEG2000Lossless, RLELossless, generate_uid

from hohoho_core.dicom import (
    StudyLoadError,
    UnreadableFileError,
    Upload,
    extract_zip,
    headers,
    list_series,
    load_studies,
    load_study,
    read_header,
)
from hohoho_core.study import SkipReason
from hohoho_core.synthetic.writer import ct_dataset, stored_values, write_dataset

from .conftest import phantom_volume


def _reasons(report) -> dict[str, SkipReason]:
    return {s.source: s.reason for s in report.skipped}


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _deid_ctbrain() -> Path:
    spec = importlib.util.find_spec("deid_data")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "data" / "humans" / "ctbrain1.dcm"


# --------------------------------------------------------------------------- real files


def test_pydicom_ct_small_loads_with_sensible_hu():
    path = get_testdata_file("CT_small.dcm")
    study = load_study(path)
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert study.hu.shape == (1, 128, 128)
    assert study.hu.dtype == np.float32
    np.testing.assert_array_equal(study.hu[0], expected)
    # Soft tissue and air/bone in range, nothing wrapped.
    assert -1100 < study.hu.min() < -800 and 1000 < study.hu.max() < 1300
    assert study.slices[0].image_id == ds.SOPInstanceUID
    assert study.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert study.metadata["Manufacturer"] == "GE MEDICAL SYSTEMS"
    assert study.identifiers["PatientName"] == str(ds.PatientName)
    assert str(ds.PatientName) not in repr(study)
    assert study.report.skipped == [] and study.report.files_seen == 1


def test_deid_ctbrain_rgb_jpeg_rejected_with_reason():
    path = _deid_ctbrain()
    with pytest.raises(StudyLoadError) as err:
        load_study(path)
    skipped = err.value.report.skipped
    assert [s.reason for s in skipped] == [SkipReason.RGB_OR_SECONDARY]
    assert "secondary capture" in skipped[0].detail and "3 samples per pixel" in skipped[0].detail
    assert "1 RGB or secondary capture" in str(err.value)


def test_raw_dataset_without_preamble_is_read(tmp_path):
    ds = ct_dataset(
        phantom_volume(1, 32)[0],
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        position=(0.0, 0.0, 0.0),
    )
    path = tmp_path / "raw.dcm"
    del ds.file_meta
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    rec = read_header(path)
    assert rec.modality == "CT" and rec.rows == 32
    study = load_study(path)
    np.testing.assert_array_equal(study.hu[0], phantom_volume(1, 32)[0])


def test_read_header_rejects_non_dicom(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello, not a DICOM file\n" * 20)
    with pytest.raises(UnreadableFileError) as err:
        read_header(junk)
    assert err.value.skipped.reason is SkipReason.NOT_DICOM
    # Bytes that start like a DICOM group but parse to nothing useful.
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\x08\x00\x05\x00" + bytes(200))
    with pytest.raises(UnreadableFileError) as err:
        read_header(fake)
    assert err.value.skipped.reason in (SkipReason.NOT_DICOM, SkipReason.UNREADABLE)


# --------------------------------------------------------------------------- mixed folder


def test_folder_with_bad_files_loads_the_ct_series(tmp_path, write_ct_series):
    folder = tmp_path / "study"
    main = write_ct_series(folder / "axial", n_slices=6)
    other = write_ct_series(folder / "other", n_slices=3, study_uid=main.study_uid, seed=1)
    bad_pixels = write_ct_series(tmp_path / "spare", n_slices=2, seed=2)
    shutil.copy(bad_pixels.paths[0], folder / "cut_pixels.dcm")
    _truncate(folder / "cut_pixels.dcm", (folder / "cut_pixels.dcm").stat().st_size - 1000)
    shutil.copy(bad_pixels.paths[1], folder / "cut_header.dcm")
    _truncate(folder / "cut_header.dcm", 400)
    (folder / "readme.txt").write_text("scanner export notes")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    shutil.copy(get_testdata_file("rtplan.dcm"), folder / "plan.dcm")

    study = load_study(folder)
    assert study.series_uid == main.series_uid
    np.testing.assert_array_equal(study.hu, main.hu)
    reasons = _reasons(study.report)
    assert reasons == {
        "cut_pixels.dcm": SkipReason.UNREADABLE,
        "cut_header.dcm": SkipReason.UNREADABLE,
        "readme.txt": SkipReason.NOT_DICOM,
        "mr.dcm": SkipReason.NOT_CT,
        "plan.dcm": SkipReason.NO_PIXEL_DATA,
        **{f"other/{p.name}": SkipReason.OTHER_SERIES for p in other.paths},
    }
    assert study.report.files_seen == 6 + 3 + 5
    assert [s.source for s in study.slices] == [f"axial/{p.name}" for p in main.paths]
    assert study.slice_spacing == pytest.approx(5.0)
    assert study.report.warnings == []

    summaries = list_series(folder)
    assert [(s.series_uid, s.n_slices, s.default) for s in summaries] == [
        (main.series_uid, 6, True),
        (other.series_uid, 3, False),
    ]
    picked = load_study(folder, series_uid=other.series_uid)
    np.testing.assert_array_equal(picked.hu, other.hu)
    with pytest.raises(StudyLoadError, match="not found"):
        load_study(folder, series_uid="1.2.3.4")


def test_only_bad_files_raise_one_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm")
    with pytest.raises(StudyLoadError) as err:
        load_study(tmp_path)
    assert str(err.value) == "No usable CT slice found in 3 files: 2 not DICOM, 1 modality not CT."
    assert len(err.value.report.skipped) == 3


def test_size_mismatch_and_non_axial_series(tmp_path, write_ct_series):
    main = write_ct_series(tmp_path, n_slices=5)
    odd = ct_dataset(
        phantom_volume(1, 32)[0],
        study_uid=main.study_uid,
        series_uid=main.series_uid,
        sop_uid=generate_uid(),
        position=(-16.0, -16.0, 50.0),
    )
    write_dataset(odd, tmp_path / "small.dcm")
    coronal = write_ct_series(
        tmp_path / "cor",
        n_slices=7,
        study_uid=main.study_uid,
        orientation=(1, 0, 0, 0, 0, -1),
    )
    study = load_study(tmp_path)
    assert study.series_uid == main.series_uid
    reasons = _reasons(study.report)
    assert reasons["small.dcm"] is SkipReason.SIZE_MISMATCH
    assert {reasons[f"cor/{p.name}"] for p in coronal.paths} == {SkipReason.NOT_AXIAL}
    assert study.n_slices == 5
    # The coronal series has more slices but is never the default choice.
    assert next(s for s in list_series(tmp_path) if s.default).series_uid == main.series_uid


# --------------------------------------------------------------------------- zips


def _zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def test_zip_path_traversal_is_contained(tmp_path, write_ct_series):
    series = write_ct_series(tmp_path / "src", n_slices=3)
    members = {f"scan/{p.name}": p.read_bytes() for p in series.paths}
    members["../evil.dcm"] = b"escaped"
    members["scan/../../evil2.dcm"] = b"escaped"
    members["/abs.dcm"] = b"absolute"
    members["C:/windows.dcm"] = b"drive"
    archive = tmp_path / "deep" / "upload.zip"
    archive.parent.mkdir()
    archive.write_bytes(_zip_bytes(members, symlinks={"scan/link.dcm": "/etc/passwd"}))

    target = tmp_path / "deep" / "out"
    paths, report = extract_zip(archive, target)
    assert sorted(p.name for p in paths) == sorted(p.name for p in series.paths)
    assert all(p.resolve().is_relative_to(target.resolve()) for p in paths)
    assert not (tmp_path / "deep" / "evil.dcm").exists()
    assert not (tmp_path / "evil2.dcm").exists() and not (tmp_path / "deep" / "evil2.dcm").exists()
    assert not Path("/abs.dcm").exists()
    assert _reasons(report) == {
        "upload.zip:../evil.dcm": SkipReason.UNSAFE_PATH,
        "upload.zip:scan/../../evil2.dcm": SkipReason.UNSAFE_PATH,
        "upload.zip:/abs.dcm": SkipReason.UNSAFE_PATH,
        "upload.zip:C:/windows.dcm": SkipReason.UNSAFE_PATH,
        "upload.zip:scan/link.dcm": SkipReason.UNSAFE_PATH,
    }
    written = {p for p in target.rglob("*") if p.is_file()}
    assert written == set(paths)


def test_load_study_from_zip_cleans_up(tmp_path, write_ct_series, monkeypatch):
    series = write_ct_series(tmp_path / "src", n_slices=4)
    members = {f"scan/{p.name}": p.read_bytes() for p in series.paths}
    members["../evil.dcm"] = b"escaped"
    archive = tmp_path / "study.zip"
    archive.write_bytes(_zip_bytes(members))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    study = load_study(archive)
    np.testing.assert_array_equal(study.hu, series.hu)
    assert study.slices[0].source == f"study.zip:scan/{series.paths[0].name}"
    assert _reasons(study.report) == {"study.zip:../evil.dcm": SkipReason.UNSAFE_PATH}
    assert study.report.files_seen == 5
    assert list(scratch.iterdir()) == []  # the temporary extraction is gone


def test_zip_bounds_declared_actual_and_members(tmp_path):
    big = bytes(2 * 1024 * 1024)  # compresses to a few KB: a small bomb
    paths, report = extract_zip(
        _zip_bytes({"bomb.bin": big}), tmp_path / "a", max_total_bytes=1 << 20
    )
    assert paths == [] and _reasons(report) == {"upload.zip:bomb.bin": SkipReason.TOO_LARGE}
    assert list((tmp_path / "a").rglob("*")) == []

    # Each member fits, together they do not: the running total stops the third.
    parts = {f"p{i}.bin": bytes(400_000) for i in range(3)}
    paths, report = extract_zip(_zip_bytes(parts), tmp_path / "b", max_total_bytes=1_000_000)
    assert [p.name for p in paths] == ["p0.bin", "p1.bin"]
    assert _reasons(report) == {"upload.zip:p2.bin": SkipReason.TOO_LARGE}
    assert sum(p.stat().st_size for p in paths) <= 1_000_000

    # A lying header: it declares 100 bytes for a 1 MB member.
    data = bytearray(_zip_bytes({"liar.bin": bytes(1 << 20)}))
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 100)
    struct.pack_into("<I", data, central + 24, 100)
    paths, report = extract_zip(bytes(data), tmp_path / "c", max_total_bytes=10_000)
    assert paths == []
    assert _reasons(report)["upload.zip:liar.bin"] in (SkipReason.TOO_LARGE, SkipReason.UNREADABLE)
    assert list((tmp_path / "c").rglob("*")) == []

    many = {f"f{i}.bin": b"x" for i in range(5)}
    paths, report = extract_zip(_zip_bytes(many), tmp_path / "d", max_members=3)
    assert len(paths) == 3
    assert [s.reason for s in report.skipped] == [SkipReason.TOO_LARGE]
    assert report.files_seen == 5


def test_not_a_zip_is_reported(tmp_path):
    paths, report = extract_zip(b"PK\x03\x04 but nothing else", tmp_path / "x")
    assert paths == [] and [s.reason for s in report.skipped] == [SkipReason.UNREADABLE]


# --------------------------------------------------------------------------- pixels


def test_rsna_12bit_quirk_matches_clean_twin(tmp_path, write_ct_series):
    hu = phantom_volume(3, 48)
    hu[:, 0, :4] = [-1000.0, -1.0, 2047.0, 3000.0]  # edges of the unwrap range
    write_ct_series(tmp_path / "clean", hu=hu)
    quirk = write_ct_series(
        tmp_path / "quirk", hu=hu, bits_stored=12, pixel_representation=0, rescale_intercept=0.0
    )
    raw = pydicom.dcmread(quirk.paths[0])
    assert raw.BitsStored == 12 and raw.PixelRepresentation == 0
    assert raw.pixel_array[0, 0] == 3096  # air stored wrapped: a naive reader sees +3096
    a, b = load_study(tmp_path / "clean"), load_study(tmp_path / "quirk")
    np.testing.assert_array_equal(a.hu, hu)
    np.testing.assert_array_equal(b.hu, a.hu)
    assert any("12-bit" in w for w in b.report.warnings)
    assert not any("12-bit" in w for w in a.report.warnings)


def test_12bit_unsigned_with_normal_intercept_is_not_unwrapped(tmp_path, write_ct_series):
    hu = phantom_volume(2, 32)
    series = write_ct_series(
        tmp_path, hu=hu, bits_stored=12, pixel_representation=0, rescale_intercept=-1024.0
    )
    study = load_study(tmp_path)
    np.testing.assert_array_equal(study.hu, hu)
    assert series.paths and not study.report.warnings


@pytest.mark.parametrize(
    ("pixel_representation", "bits_stored", "intercept", "slope"),
    [(1, 16, 0.0, 1.0), (0, 16, -1024.0, 1.0), (1, 12, 0.0, 1.0), (1, 16, -1024.0, 0.5)],
)
def test_hu_matches_pydicom_modality_lut(
    tmp_path, write_ct_series, pixel_representation, bits_stored, intercept, slope
):
    series = write_ct_series(
        tmp_path,
        n_slices=2,
        pixel_representation=pixel_representation,
        bits_stored=bits_stored,
        rescale_intercept=intercept,
        rescale_slope=slope,
    )
    study = load_study(tmp_path)
    for k, path in enumerate(series.paths):
        ds = pydicom.dcmread(path)
        expected = apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_allclose(study.hu[k], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_file_gives_identical_hu(tmp_path, write_ct_series, syntax):
    series = write_ct_series(tmp_path / "plain", n_slices=3)
    packed = tmp_path / "packed"
    packed.mkdir()
    for p in series.paths:
        ds = pydicom.dcmread(p)
        ds.compress(syntax)
        ds.save_as(packed / p.name, enforce_file_format=True)
    assert pydicom.dcmread(packed / series.paths[0].name).file_meta.TransferSyntaxUID == syntax
    study = load_study(packed)
    np.testing.assert_array_equal(study.hu, series.hu)


def test_missing_decoder_is_reported(tmp_path, write_ct_series, monkeypatch):
    series = write_ct_series(tmp_path, n_slices=6)
    ds = pydicom.dcmread(series.paths[2])
    ds.compress(RLELossless)
    ds.save_as(series.paths[2], enforce_file_format=True)

    def no_rle(ts):
        return "no plugin for RLE here" if ts == RLELossless else None

    monkeypatch.setattr(headers, "_decoder_problem", no_rle)
    study = load_study(tmp_path)
    assert _reasons(study.report) == {series.paths[2].name: SkipReason.MISSING_DECODER}
    np.testing.assert_array_equal(study.hu, series.hu[[0, 1, 3, 4, 5]])
    assert any("gap" in w for w in study.report.warnings)


def test_decoding_with_threads_matches_serial(tmp_path, write_ct_series):
    write_ct_series(tmp_path, n_slices=8)
    a = load_study(tmp_path, workers=1)
    b = load_study(tmp_path, workers=3)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.image_ids == b.image_ids


# --------------------------------------------------------------------------- geometry


def test_gantry_tilt_sorted_along_the_normal(tmp_path, write_ct_series):
    n = 8
    rng = np.random.default_rng(3)
    shift = rng.uniform(-40, 40, size=n)  # scrambles the raw z coordinate
    names = [f"IM{v:04d}.dcm" for v in rng.permutation(n)]
    inst = list(rng.permutation(n) + 1)
    series = write_ct_series(
        tmp_path,
        n_slices=n,
        tilt_deg=25.0,
        in_plane_shift=shift,
        names=names,
        instance_numbers=inst,
    )
    raw_z = [p[2] for p in series.positions]
    assert raw_z != sorted(raw_z)  # the naive key would get it wrong
    study = load_study(tmp_path)
    assert study.report.sort_method == "normal"
    np.testing.assert_array_equal(study.hu, series.hu)
    assert [s.source for s in study.slices] == names
    assert study.slice_spacing == pytest.approx(5.0, abs=1e-4)
    assert np.diff([s.z for s in study.slices]) == pytest.approx([5.0] * (n - 1), abs=1e-4)
    assert study.report.warnings == []


def test_slice_normal_is_computed_once_and_read_only(tmp_path, write_ct_series):
    # The scan and every load ask each record for its normal; it is cached, so it must
    # not be writable by a caller (that would change every later answer).
    series = write_ct_series(tmp_path, n_slices=2, tilt_deg=25.0)
    rec = read_header(series.paths[0])
    n = rec.normal
    assert n is rec.normal
    o = np.asarray(rec.orientation, dtype=np.float64)
    expected = np.cross(o[:3], o[3:])
    np.testing.assert_allclose(n, expected / np.linalg.norm(expected), atol=1e-12)
    with pytest.raises(ValueError, match="read-only"):
        n[0] = 0.0


def test_fallback_sorting_by_instance_number_then_file_name(tmp_path, write_ct_series):
    n = 5
    names = ["IM10.dcm", "IM2.dcm", "IM33.dcm", "IM4.dcm", "IM5.dcm"]
    series = write_ct_series(tmp_path, n_slices=n, names=names, instance_numbers=[5, 1, 4, 2, 3])
    for p in series.paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    study = load_study(tmp_path)
    assert study.report.sort_method == "instance_number"
    assert any("InstanceNumber" in w for w in study.report.warnings)
    order = np.argsort([5, 1, 4, 2, 3])
    np.testing.assert_array_equal(study.hu, series.hu[order])

    for p in series.paths:
        ds = pydicom.dcmread(p)
        del ds.InstanceNumber
        ds.save_as(p)
    study = load_study(tmp_path)
    assert study.report.sort_method == "file_name"
    assert any("file name" in w for w in study.report.warnings)
    assert [s.source for s in study.slices] == [
        "IM2.dcm",
        "IM4.dcm",
        "IM5.dcm",
        "IM10.dcm",
        "IM33.dcm",
    ]


def test_duplicates_and_gaps_are_reported(tmp_path, write_ct_series):
    hu = phantom_volume(5, 32)
    series = write_ct_series(tmp_path, hu=hu, spacing=5.0)  # z = 0, 5, 10, 15, 20
    study_uid, series_uid = series.study_uid, series.series_uid
    # A second image at z = 10 (instance 9: sorts after the original) and a missing z = 25.
    dup = ct_dataset(
        hu[2] + 5,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=generate_uid(),
        position=series.positions[2],
        instance_number=9,
    )
    write_dataset(dup, tmp_path / "IM_dup.dcm")
    far = ct_dataset(
        hu[4] - 5,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=generate_uid(),
        position=(-16.0, -16.0, 35.0),
        instance_number=6,
    )
    write_dataset(far, tmp_path / "IM_far.dcm")
    shutil.copy(series.paths[0], tmp_path / "IM_copy.dcm")  # same SOPInstanceUID

    study = load_study(tmp_path)
    reasons = _reasons(study.report)
    assert reasons == {"IM_dup.dcm": SkipReason.DUPLICATE, "IM_copy.dcm": SkipReason.DUPLICATE}
    np.testing.assert_array_equal(study.hu[:5], hu)  # the first image at z = 10 was kept
    assert study.n_slices == 6
    gaps = [w for w in study.report.warnings if "gap" in w]
    assert len(gaps) == 1
    assert "slices 5 and 6" in gaps[0] and "15.00 mm" in gaps[0] and "5.00 mm" in gaps[0]


def test_multiframe_with_per_frame_positions_is_split(tmp_path):
    vol = phantom_volume(4, 32)
    uid = generate_uid()
    ds = ct_dataset(
        vol[0],
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        sop_uid=uid,
        position=(0.0, 0.0, 0.0),
        rescale_intercept=-1024.0,
        pixel_representation=0,
    )
    # Frames stored top-down (z = 15, 10, 5, 0); rescale only in the functional groups.
    order = [3, 2, 1, 0]
    ds.PixelData = b"".join(
        stored_values(vol[k], rescale_intercept=-1024.0, pixel_representation=0).tobytes()
        for k in order
    )
    ds.NumberOfFrames = 4
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    del ds.ImagePositionPatient, ds.RescaleIntercept, ds.RescaleSlope
    transform = pydicom.Dataset()
    transform.RescaleIntercept = "-1024"
    transform.RescaleSlope = "1"
    shared = pydicom.Dataset()
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k in order:
        plane = pydicom.Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        item = pydicom.Dataset()
        item.PlanePositionSequence = DicomSequence([plane])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    write_dataset(ds, tmp_path / "enhanced.dcm")

    study = load_study(tmp_path)
    np.testing.assert_array_equal(study.hu, vol)
    assert [s.frame for s in study.slices] == [3, 2, 1, 0]
    assert study.image_ids == [f"{uid}_f{k}" for k in (3, 2, 1, 0)]
    assert [s.z for s in study.slices] == pytest.approx([0.0, 5.0, 10.0, 15.0])


def test_multiframe_without_positions_uses_spacing_between_slices(tmp_path):
    vol = phantom_volume(3, 32)
    ds = ct_dataset(
        vol[0],
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        position=(0.0, 0.0, 100.0),
    )
    ds.PixelData = b"".join(stored_values(vol[k]).tobytes() for k in range(3))
    ds.NumberOfFrames = 3
    ds.SpacingBetweenSlices = "2.5"
    write_dataset(ds, tmp_path / "multi.dcm")
    study = load_study(tmp_path)
    np.testing.assert_array_equal(study.hu, vol)
    assert [s.z for s in study.slices] == pytest.approx([100.0, 102.5, 105.0])
    assert study.slice_spacing == pytest.approx(2.5)


# --------------------------------------------------------------------------- uploads, many


def test_uploads_and_their_bounds(tmp_path, write_ct_series):
    series = write_ct_series(tmp_path, n_slices=4)
    uploads = [Upload(p.name, p.read_bytes()) for p in reversed(series.paths)]
    study = load_study(uploads)
    np.testing.assert_array_equal(study.hu, series.hu)
    assert [s.source for s in study.slices] == [p.name for p in series.paths]

    size = len(uploads[0].data)
    junk = Upload("huge.dcm", bytes(size * 3))
    study = load_study([*uploads, junk], max_upload_bytes=size * 2)
    assert _reasons(study.report) == {"huge.dcm": SkipReason.TOO_LARGE}
    study = load_study(uploads, max_total_upload_bytes=int(size * 2.5))
    assert study.n_slices == 2
    assert Counter(s.reason for s in study.report.skipped) == {SkipReason.TOO_LARGE: 2}

    zipped = Upload("study.zip", _zip_bytes({p.name: p.read_bytes() for p in series.paths}))
    study = load_study(zipped)
    np.testing.assert_array_equal(study.hu, series.hu)


def test_load_studies_returns_every_ct_series(tmp_path, write_ct_series):
    a = write_ct_series(tmp_path / "a", n_slices=3, seed=1)
    b = write_ct_series(tmp_path / "b", n_slices=4, seed=2)
    (tmp_path / "notes.txt").write_text("x")
    studies = load_studies(tmp_path)
    by_series = {s.series_uid: s for s in studies}
    assert set(by_series) == {a.series_uid, b.series_uid}
    np.testing.assert_array_equal(by_series[a.series_uid].hu, a.hu)
    np.testing.assert_array_equal(by_series[b.series_uid].hu, b.hu)
    for s in studies:
        assert _reasons(s.report) == {"notes.txt": SkipReason.NOT_DICOM}


def test_rsna_style_file_names_become_image_ids(tmp_path, write_ct_series):
    names = ["ID_00ab12.dcm", "ID_ff0001.dcm", "slice3.dcm"]
    series = write_ct_series(tmp_path, n_slices=3, names=names)
    study = load_study(tmp_path)
    assert study.image_ids == ["ID_00ab12", "ID_ff0001", series.sop_uids[2]]


def test_shuffled_synthetic_studies_are_sorted_like_truth(tmp_path):
    import pandas as pd

    from hohoho_core import synthetic

    out = tmp_path / "syn"
    made = synthetic.generate_dataset(out, n_studies=5, seed=7, size=64)
    assert (made.studies["tilt_deg"].abs() > 0).any()  # the set holds a tilted study
    assert (made.studies["encoding"] == "quirk12").any()  # and a 12-bit quirk study
    truth = pd.read_csv(out / "truth.csv", dtype={"study_uid": str, "series_uid": str})
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(0)
    sop_to_row = {}
    for new_name, row in zip(rng.permutation(len(truth)), truth.itertuples(), strict=True):
        ds = pydicom.dcmread(out / "stage_2_train" / f"{row.image_id}.dcm")
        ds.InstanceNumber = int(rng.integers(1, 1000))  # instance numbers lie
        ds.save_as(shuffled / f"file_{new_name:04d}.dcm")  # names carry no order
        sop_to_row[ds.SOPInstanceUID] = row

    studies = load_studies(shuffled)
    assert sorted(s.study_uid for s in studies) == sorted(truth["study_uid"].unique())
    for study in studies:
        rows = [sop_to_row[i] for i in study.image_ids]  # SOP UIDs: the names are not RSNA ids
        assert study.report.sort_method == "normal"
        assert [r.true_index for r in rows] == list(range(study.n_slices))
        assert [s.z for s in study.slices] == pytest.approx([r.z for r in rows], abs=1e-3)
        # Wrapped air would read as about +3096 HU; unwrapped, almost nothing is that bright.
        assert (study.hu > 2500).mean() < 0.01
        assert study.hu[:, 0, 0].max() <= -900


# --------------------------------------------------------------------------- privacy


SECRET_NAME = "Zebedee^Quuxworth"
SECRET_ID = "PID-SECRET-4242"
SECRET_PARTS = ("Zebedee", "Quuxworth", "SECRET-4242")


def _secret_ds(hu, study_uid, series_uid, z, **kw):
    return ct_dataset(
        hu,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=generate_uid(),
        position=(-16.0, -16.0, z),
        patient_name=SECRET_NAME,
        patient_id=SECRET_ID,
        **kw,
    )


def test_patient_identifiers_never_leak(tmp_path, write_ct_series, caplog):
    caplog.set_level(logging.DEBUG)
    secret = {"patient_name": SECRET_NAME, "patient_id": SECRET_ID}
    texts: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        # 1. A study with a duplicate, a gap, a size mismatch, another series, the quirk,
        #    an MR file, a truncated file and a file whose pixels fail to decode.
        folder = tmp_path / "mixed"
        main = write_ct_series(
            folder, n_slices=4, spacing=5.0, bits_stored=12, pixel_representation=0, **secret
        )
        write_dataset(
            _secret_ds(phantom_volume(1, 64)[0], main.study_uid, main.series_uid, 5.0),
            folder / "dup.dcm",
        )
        write_dataset(
            _secret_ds(phantom_volume(1, 64)[0], main.study_uid, main.series_uid, 40.0),
            folder / "far.dcm",
        )
        write_dataset(
            _secret_ds(phantom_volume(1, 32)[0], main.study_uid, main.series_uid, 45.0),
            folder / "small.dcm",
        )
        write_ct_series(folder / "other", n_slices=2, study_uid=main.study_uid, **secret)
        mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        mr.PatientName, mr.PatientID = SECRET_NAME, SECRET_ID
        mr.save_as(folder / "mr.dcm")
        shutil.copy(main.paths[0], folder / "cut.dcm")
        _truncate(folder / "cut.dcm", 2000)
        broken = _secret_ds(phantom_volume(1, 64)[0], main.study_uid, main.series_uid, 50.0)
        broken.compress(RLELossless)
        broken.PixelData = encapsulate([bytes(64)])  # an RLE header with no segments
        broken.save_as(folder / "broken.dcm", enforce_file_format=True)
        study = load_study(folder)
        assert study.identifiers["PatientName"] == SECRET_NAME  # kept, but only here
        assert study.identifiers["PatientID"] == SECRET_ID
        reasons = Counter(s.reason for s in study.report.skipped)
        assert reasons[SkipReason.DUPLICATE] == 1 and reasons[SkipReason.SIZE_MISMATCH] == 1
        assert reasons[SkipReason.NOT_CT] == 1 and reasons[SkipReason.OTHER_SERIES] == 2
        assert reasons[SkipReason.UNREADABLE] == 2  # truncated + undecodable
        assert any("gap" in w for w in study.report.warnings)
        texts += [repr(study), str(study.report), repr(study.slices), repr(study.metadata)]

        # 2. Fallback sorting.
        fb = write_ct_series(tmp_path / "fallback", n_slices=3, **secret)
        for p in fb.paths:
            ds = pydicom.dcmread(p)
            del ds.ImagePositionPatient
            ds.save_as(p)
        texts.append(str(load_study(tmp_path / "fallback").report))

        # 3. Nothing usable: one clear error.
        bad = tmp_path / "bad"
        bad.mkdir()
        shutil.copy(folder / "mr.dcm", bad / "mr.dcm")
        shutil.copy(folder / "cut.dcm", bad / "cut.dcm")
        shutil.copy(folder / "broken.dcm", bad / "broken.dcm")
        with pytest.raises(StudyLoadError) as err:
            load_study(bad)
        texts += [str(err.value), repr(err.value), str(err.value.report)]
        with pytest.raises(StudyLoadError) as err:
            load_study(folder, series_uid="1.2.3")
        texts.append(str(err.value))
        texts.append(repr(read_header(folder / "cut.dcm")))
        texts += [repr(s) for s in list_series(folder)]
        texts.append(repr(read_header(folder / "mr.dcm")))
    texts += [str(w.message) for w in caught]
    texts += [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts)
    assert "Study(" in blob  # the texts were collected
    for secret_text in (SECRET_NAME, SECRET_ID, *SECRET_PARTS):
        assert secret_text not in blob
