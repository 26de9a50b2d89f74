"""Hostile and broken input (issue 12, points 1, 4 and 5): declared sizes are bounded before
any allocation, the reader stays inside the folder it was given and never opens special
files, and one awkward zip member is skipped alone."""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset as pd_write_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from hohoho_core.dicom import StudyLoadError, UnreadableFileError, load_study, read_header
from hohoho_core.labels import CLASSES
from hohoho_core.study import SkipReason
from hohoho_core.synthetic.writer import ct_dataset, write_dataset


def _reasons(report) -> dict[str, tuple[SkipReason, str]]:
    return {s.source: (s.reason, s.detail) for s in report.skipped}


def _hostile(path: Path, *, rows: int, cols: int, frames: int = 1, pixel_bytes: bytes = b"\0\0",
             series_uid: str | None = None, study_uid: str | None = None) -> Path:
    """A small CT file whose header declares ``rows x cols x frames``, holding ``pixel_bytes``."""
    ds = ct_dataset(
        np.zeros((2, 2), np.float32),
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        sop_uid=generate_uid(),
        position=(0.0, 0.0, 100.0),
    )
    ds.Rows, ds.Columns = rows, cols
    if frames != 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixel_bytes
    write_dataset(ds, path)
    return path


# --------------------------------------------------------------------------- point 1: bounds


def test_huge_declared_images_are_skipped_with_their_size(tmp_path, write_ct_series):
    """Three 1.4 KB files declaring 65535 x 65535 used to end in MemoryError; now each is a
    TOO_LARGE skip that says what it declared, and the real slices load."""
    series = write_ct_series(tmp_path / "s", n_slices=3)
    for k in range(3):
        _hostile(tmp_path / "s" / f"huge{k}.dcm", rows=65535, cols=65535,
                 series_uid=series.series_uid, study_uid=series.study_uid)
    study = load_study(tmp_path / "s")
    assert study.n_slices == 3
    reasons = _reasons(study.report)
    for k in range(3):
        reason, detail = reasons[f"huge{k}.dcm"]
        assert reason is SkipReason.TOO_LARGE
        assert "declares a 65535 x 65535 image" in detail


def test_only_hostile_files_give_a_study_load_error_not_a_memory_error(tmp_path):
    for k in range(3):
        _hostile(tmp_path / f"huge{k}.dcm", rows=65535, cols=65535)
    with pytest.raises(StudyLoadError, match="3 too large"):
        load_study(tmp_path)


def test_a_million_frames_is_refused_from_the_header(tmp_path):
    """A 1.4 KB file declaring 1,000,000 frames of 512 x 512, and a 2 MB file of 1,000,000
    frames of 1 x 1 (which used to load as a million-slice study): refused at once."""
    _hostile(tmp_path / "big.dcm", rows=512, cols=512, frames=1_000_000)
    _hostile(tmp_path / "tiny.dcm", rows=1, cols=1, frames=1_000_000,
             pixel_bytes=bytes(2_000_000))
    t0 = time.perf_counter()
    with pytest.raises(StudyLoadError) as err:
        load_study(tmp_path)
    assert time.perf_counter() - t0 < 10
    reasons = _reasons(err.value.report)
    assert reasons["big.dcm"] == (SkipReason.TOO_LARGE,
                                  "declares 1000000 frames; the limit is 4096 per file")
    assert reasons["tiny.dcm"][0] is SkipReason.TOO_LARGE
    assert "declares 1000000 frames" in reasons["tiny.dcm"][1]


def test_declared_frames_beyond_the_pixel_data_are_refused_before_allocation(tmp_path):
    """2,000 frames of 512 x 512 fit the voxel budget, but the file holds 2 bytes: the
    loader must not allocate 2 GB for it before the decoder finds out."""
    _hostile(tmp_path / "short.dcm", rows=512, cols=512, frames=2000)
    with pytest.raises(StudyLoadError) as err:
        load_study(tmp_path)
    reason, detail = _reasons(err.value.report)["short.dcm"]
    assert reason is SkipReason.UNREADABLE
    assert "pixel data holds 2 bytes" in detail and "2000 frame(s) of 512 x 512" in detail


def test_series_bounds_refuse_the_study_with_a_reason(tmp_path, write_ct_series):
    from hohoho_core.dicom import ReadBounds

    series = write_ct_series(tmp_path / "s", n_slices=5, size=32)
    with pytest.raises(StudyLoadError) as err:
        load_study(tmp_path / "s", bounds=ReadBounds(max_slices=4))
    reasons = _reasons(err.value.report)
    assert {p.name for p in series.paths} == set(reasons)
    assert all(r is SkipReason.TOO_LARGE for r, _ in reasons.values())
    assert "the series has 5 slices; the limit is 4 per study" in reasons["IM0001.dcm"][1]
    with pytest.raises(StudyLoadError) as err:
        load_study(tmp_path / "s", bounds=ReadBounds(max_voxels=4 * 32 * 32))
    assert "(5120 voxels); the limit is 4096" in _reasons(err.value.report)["IM0001.dcm"][1]
    assert load_study(tmp_path / "s", bounds=ReadBounds(max_slices=5)).n_slices == 5
    with pytest.raises(ValueError, match="max_side"):
        ReadBounds(max_side=0)


def test_memory_error_becomes_a_study_load_error(tmp_path, write_ct_series, monkeypatch):
    import hohoho_core.dicom.loader as loader

    write_ct_series(tmp_path / "s", n_slices=3, size=32)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(loader, "decode_into", no_memory)
    with pytest.raises(StudyLoadError) as err:
        load_study(tmp_path / "s")
    assert {r for r, _ in _reasons(err.value.report).values()} == {SkipReason.TOO_LARGE}
    assert "out of memory" in err.value.report.skipped[0].detail


def _deflate_bomb(path: Path, inflated_mib: int) -> Path:
    """A deflated-transfer-syntax CT file whose body inflates to ``inflated_mib`` MiB."""
    ds = ct_dataset(np.zeros((2, 2), np.float32), study_uid=generate_uid(),
                    series_uid=generate_uid(), sop_uid=generate_uid(), position=(0.0, 0.0, 0.0))
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pd_write_dataset(body, ds)
    size = inflated_mib << 20
    # Pixel Data (7FE0,0010), OW, 4-byte length, then zeros.
    head = body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head)]
    zeros = bytes(1 << 20)
    parts += [deflater.compress(zeros) for _ in range(inflated_mib)]
    parts.append(deflater.flush())
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    path.write_bytes(out.getvalue() + b"".join(parts))
    return path


def test_a_deflate_bomb_is_refused_without_inflating_it_whole(tmp_path):
    bomb = _deflate_bomb(tmp_path / "bomb.dcm", 160)
    assert bomb.stat().st_size < 400_000
    t0 = time.perf_counter()
    with pytest.raises(UnreadableFileError) as err:
        read_header(bomb)
    assert err.value.skipped.reason is SkipReason.TOO_LARGE
    assert "inflates to more than 134217728 bytes" in err.value.skipped.detail
    with pytest.raises(StudyLoadError, match="1 too large"):
        load_study(tmp_path)
    assert time.perf_counter() - t0 < 20
    # A small deflated file still reads.
    small = _deflate_bomb(tmp_path / "small.dcm", 1)
    assert read_header(small).transfer_syntax == DeflatedExplicitVRLittleEndian


# --------------------------------------------------------------------------- point 4: folders


def _in_thread(fn: Callable[[], object], fifo: Path | None, seconds: float = 20) -> object:
    """Run ``fn`` in a thread; if it blocks (on a named pipe), unblock it and fail."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        if fifo is not None:  # a reader blocked in open(): give it a writer and EOF
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("the reader blocked on a named pipe")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_skipped_without_being_opened(tmp_path, write_ct_series):
    write_ct_series(tmp_path / "s", n_slices=3, size=32)
    fifo = tmp_path / "s" / "x.dcm"
    os.mkfifo(fifo)
    study = _in_thread(lambda: load_study(tmp_path / "s"), fifo)
    assert study.n_slices == 3
    reason, detail = _reasons(study.report)["x.dcm"]
    assert reason is SkipReason.NOT_REGULAR_FILE and "named pipe" in detail
    # Given directly, too.
    with pytest.raises(StudyLoadError) as err:
        _in_thread(lambda: load_study(fifo), fifo)
    assert _reasons(err.value.report)["x.dcm"][0] is SkipReason.NOT_REGULAR_FILE


def test_symlinks_out_of_the_folder_are_not_followed(tmp_path, write_ct_series):
    outside = write_ct_series(tmp_path / "outside", n_slices=4, size=32,
                              patient_name="ZEBRA^SECRET", patient_id="OUT123")
    inside = write_ct_series(tmp_path / "root" / "case", n_slices=3, size=32, seed=1)
    for p in outside.paths:
        (tmp_path / "root" / "case" / f"link_{p.name}").symlink_to(p)
    # A link to a file inside the folder is fine.
    (tmp_path / "root" / "case" / "sub").mkdir()
    (tmp_path / "root" / "case" / "sub" / "again.dcm").symlink_to(inside.paths[0])
    study = load_study(tmp_path / "root" / "case")
    assert study.series_uid == inside.series_uid and study.n_slices == 3
    reasons = _reasons(study.report)
    for p in outside.paths:
        assert reasons[f"link_{p.name}"][0] is SkipReason.OUTSIDE_FOLDER
    assert reasons["sub/again.dcm"][0] is SkipReason.DUPLICATE
    assert "ZEBRA" not in repr(study.report) and "OUT123" not in repr(study.report)
    assert study.identifiers.get("PatientID") != "OUT123"
    # Only outside links: nothing is loaded from outside.
    only = tmp_path / "root" / "only_links"
    only.mkdir()
    for p in outside.paths:
        (only / p.name).symlink_to(p)
    with pytest.raises(StudyLoadError, match="4 outside the folder"):
        load_study(only)


def test_opening_the_data_root_never_reads_its_parent_labels(tmp_path, write_ct_series):
    """The app's server folder: labels come from the folder or its parent, inside the root."""
    from hohoho_ui.widgets import _labels_near

    root = tmp_path / "data"
    series = write_ct_series(root, n_slices=3, size=32,
                             names=["ID_000001.dcm", "ID_000002.dcm", "ID_000003.dcm"])
    study = load_study(root)
    rows = [f"{img}_{c},1" for img in study.image_ids for c in CLASSES]
    (tmp_path / "stage_2_train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    assert _labels_near(root, study, root) is None
    # A folder inside the root may use the root's labels.
    sub = root / "case"
    write_ct_series(sub, n_slices=3, size=32,
                    names=["ID_000001.dcm", "ID_000002.dcm", "ID_000003.dcm"],
                    series_uid=series.series_uid, study_uid=series.study_uid)
    (root / "stage_2_train.csv").write_text("ID,Label\n" + "\n".join(rows) + "\n")
    labels = _labels_near(sub, load_study(sub), root)
    assert labels is not None and (labels == 1).all()


# --------------------------------------------------------------------------- point 5: zips


def test_awkward_zip_members_are_skipped_one_at_a_time(tmp_path, write_ct_series):
    series = write_ct_series(tmp_path / "s", n_slices=3, size=32)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x", b"a file named like a folder")
        zf.writestr("x/y.dcm", series.paths[0].read_bytes())
        zf.writestr("a" * 300 + "/z.dcm", series.paths[0].read_bytes())
        zf.writestr("d/w.dcm", b"first as a folder")
        zf.writestr("d", b"then as a file")
        for p in series.paths:
            zf.writestr(f"scan/{p.name}", p.read_bytes())
    archive = tmp_path / "study.zip"
    archive.write_bytes(buf.getvalue())
    study = load_study(archive)
    assert study.n_slices == 3
    reasons = _reasons(study.report)
    assert reasons["study.zip:x/y.dcm"] == (
        SkipReason.UNSAFE_PATH, "a file of the same name as one of its folders is in the archive"
    )
    assert reasons["study.zip:" + "a" * 300 + "/z.dcm"] == (
        SkipReason.UNSAFE_PATH, "name too long for the file system"
    )
    assert reasons["study.zip:d"] == (SkipReason.UNSAFE_PATH,
                                      "a folder of that name is in the archive")


def test_pydicom_value_warnings_never_carry_header_text_to_the_log(tmp_path):
    """pydicom's 'Invalid value for VR' warnings quote the value; in a file with a shifted
    element those bytes can be the patient's name. The reader keeps them out of the log."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    from hohoho_core.dicom import load_study, read_header

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "SECRET^NAME"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SeriesInstanceUID = "1.2.SECRET^NAME"  # stands in for bytes shifted into a UID
        ds.save_as(tmp_path / "leak.dcm")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        read_header(tmp_path / "leak.dcm")
        read_header(tmp_path / "leak.dcm", fast=True)
        study = load_study(tmp_path)
    assert study.n_slices == 1
    leaked = [str(w.message) for w in seen if "SECRET" in str(w.message)]
    assert leaked == []


def test_absurd_rescale_skips_that_file_not_the_study(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    from hohoho_core.dicom import load_study
    from hohoho_core.study import SkipReason

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k, intercept in enumerate((-1024.0, 1e308, -1024.0)):
        ds = src.copy()
        ds.SOPInstanceUID = f"1.2.3.{k}"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.RescaleIntercept = intercept
        ds.save_as(tmp_path / f"s{k}.dcm")
    study = load_study(tmp_path)
    assert study.n_slices == 2
    assert np.isfinite(study.hu).all()
    bad = [s for s in study.report.skipped if s.source.endswith("s1.dcm")]
    assert bad and bad[0].reason is SkipReason.UNREADABLE and "out of range" in bad[0].detail
