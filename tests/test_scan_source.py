"""`scan_source`: list the series of a source once, load any of them on demand."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hohoho_core.dicom import (
    StudyLoadError,
    Upload,
    list_series,
    load_study,
    scan_source,
    sources,
    zipsafe,
)


def _zip_bytes(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*.dcm")):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


@pytest.fixture
def two_series_zip(tmp_path, write_ct_series) -> tuple[list[Upload], list[str]]:
    a = write_ct_series(tmp_path / "src" / "a", n_slices=5, size=16, seed=1)
    b = write_ct_series(tmp_path / "src" / "b", n_slices=3, size=16, seed=2, tilt_deg=12.0)
    uploads = [Upload("study.zip", _zip_bytes(tmp_path / "src"))]
    return uploads, [a.series_uid, b.series_uid]


@pytest.fixture
def count_extractions(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = zipsafe.extract_zip

    def counting(*args, **kwargs):
        calls.append(kwargs.get("name") or "?")
        return real(*args, **kwargs)

    monkeypatch.setattr(zipsafe, "extract_zip", counting)
    return calls


def _same_study(got, want) -> None:
    assert got.series_uid == want.series_uid and got.study_uid == want.study_uid
    assert got.image_ids == want.image_ids
    np.testing.assert_array_equal(got.hu, want.hu)
    assert [s.z for s in got.slices] == [s.z for s in want.slices]
    assert got.pixel_spacing == want.pixel_spacing and got.slice_spacing == want.slice_spacing
    assert got.report.skipped == want.report.skipped
    assert got.report.warnings == want.report.warnings
    assert got.report.files_seen == want.report.files_seen


def test_an_uploaded_zip_is_extracted_once_for_listing_and_two_loads(
    two_series_zip, count_extractions
) -> None:
    uploads, uids = two_series_zip
    with scan_source(uploads) as scan:
        assert sorted(s.series_uid for s in scan.series) == sorted(uids)
        loaded = [scan.load(uid, workers=1) for uid in uids]
        default = scan.load(workers=1)
    assert count_extractions == ["study.zip"]

    # The same studies as load_study gives, which extracts once per call.
    for uid, study in zip(uids, loaded, strict=True):
        _same_study(study, load_study(uploads, uid, workers=1))
    _same_study(default, load_study(uploads, workers=1))
    assert len(count_extractions) == 1 + 3
    assert [s.series_uid for s in scan.series] == [s.series_uid for s in list_series(uploads)]


def test_a_closed_scan_removes_its_files_and_refuses_to_load(two_series_zip) -> None:
    uploads, uids = two_series_zip
    scan = scan_source(uploads)
    extracted = {Path(e.path).parent for e in scan._entry_of.values()}
    assert all(p.exists() for p in extracted)
    scan.close()
    assert not any(p.exists() for p in extracted)
    with pytest.raises(ValueError, match="closed"):
        scan.load(uids[0])


def test_an_unknown_series_says_which_exist(two_series_zip) -> None:
    uploads, uids = two_series_zip
    with scan_source(uploads) as scan, pytest.raises(StudyLoadError) as err:
        scan.load("1.2.3.4")
    assert all(uid in str(err.value) for uid in uids)


def test_loads_do_not_share_reports(two_series_zip) -> None:
    uploads, uids = two_series_zip
    with scan_source(uploads) as scan:
        first = scan.load(uids[0])
        second = scan.load(uids[1])
        again = scan.load(uids[0])
    # Each load lists the other series as skipped, never its own files.
    assert {s.source for s in first.report.skipped}.isdisjoint(s.source for s in first.slices)
    assert {s.source for s in second.report.skipped}.isdisjoint(s.source for s in second.slices)
    assert first.report.skipped == again.report.skipped


def test_upload_bounds_still_apply(two_series_zip) -> None:
    uploads, _ = two_series_zip
    with scan_source(uploads, max_upload_bytes=100) as scan:
        assert scan.series == []
        assert [s.reason.value for s in scan.report.skipped] == ["too large"]
    assert sources.DEFAULT_MAX_UPLOAD_BYTES == 512 * zipsafe.MIB
