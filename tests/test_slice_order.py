"""One slice order: `rsna.build_index` and `dicom.load_study` agree slice for slice.

Both call `dicom.order_slices`. The studies here carry what used to make them disagree:
gantry tilt, instance numbers that lie about the order, a duplicate position whose tie
only the file name can break (natural order 'ID_9..' < 'ID_10..', the reverse of plain
string order), a slice of another size, and a series without positions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from hohoho_core.dicom import ORDER_TAGS, load_study, read_header
from hohoho_core.rsna import build_index
from hohoho_core.study import SkipReason
from hohoho_core.synthetic import ct_dataset, generate_dataset, write_dataset

SEED = 5


def _series_files(folder: Path, series_uid: str) -> list[Path]:
    return sorted(
        p
        for p in folder.glob("*.dcm")
        if pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID == series_uid
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("order")
    made = generate_dataset(root, n_studies=5, seed=SEED, size=32, slices=(8, 10))
    folder = root / "stage_2_train"
    studies = made.studies
    tilted = studies.loc[studies["tilt_deg"].abs() > 1, "series_uid"].tolist()
    assert tilted, "the generator gave no tilted study for this seed"
    tilted_uid = tilted[0]
    others = [u for u in studies["series_uid"] if u != tilted_uid]
    lying_uid, no_pos_uid = others[0], others[1]
    rng = np.random.default_rng(0)

    # Lying instance numbers on the tilted series: a permutation unrelated to position.
    files = _series_files(folder, tilted_uid)
    for path, number in zip(files, rng.permutation(len(files)) + 1, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(number)
        ds.save_as(path, enforce_file_format=True)

    # Duplicate positions on the tilted series, same InstanceNumber: only the file name
    # can break the tie, and natural order keeps ID_9.., string order would keep ID_10...
    src = pydicom.dcmread(files[3])
    for name in ("ID_9abc", "ID_10abc"):
        copy = pydicom.dcmread(files[3])
        copy.SOPInstanceUID = generate_uid(entropy_srcs=[name])
        copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
        copy.InstanceNumber = 0  # below every other, so it wins the z tie over files[3]
        copy.save_as(folder / f"{name}.dcm", enforce_file_format=True)
    # A slice of another size between two slices of the tilted series.
    a = np.asarray(pydicom.dcmread(files[0]).ImagePositionPatient, dtype=float)
    b = np.asarray(pydicom.dcmread(files[1]).ImagePositionPatient, dtype=float)
    odd = ct_dataset(
        np.zeros((16, 16), np.float32),
        study_uid=str(src.StudyInstanceUID),
        series_uid=tilted_uid,
        sop_uid=generate_uid(entropy_srcs=["odd"]),
        position=tuple(float(v) for v in (a + b) / 2),
        orientation=tuple(float(v) for v in src.ImageOrientationPatient),
        instance_number=99,
    )
    write_dataset(odd, folder / "ID_0dd5123.dcm")

    # Lying instance numbers (reversed and shuffled) on a second, untilted series.
    files = _series_files(folder, lying_uid)
    for path, number in zip(files, rng.permutation(len(files)) + 1, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(number)
        ds.save_as(path, enforce_file_format=True)

    # No positions at all: both fall back to InstanceNumber.
    for path in _series_files(folder, no_pos_uid):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path, enforce_file_format=True)

    index = build_index(root, workers=1, progress=False, use_cache=False)
    return {
        "root": root,
        "index": index,
        "tilted": tilted_uid,
        "lying": lying_uid,
        "no_pos": no_pos_uid,
        "all": list(studies["series_uid"]),
    }


def test_index_order_equals_load_study_order_slice_for_slice(dataset) -> None:
    table = dataset["index"].table
    assert set(table["series_uid"]) == set(dataset["all"])
    for series_uid, rows in table.groupby("series_uid"):
        study = load_study(dataset["root"] / "stage_2_train", series_uid=series_uid, workers=1)
        rows = rows.sort_values("slice_index")
        assert rows["image_id"].tolist() == study.image_ids, series_uid
        assert rows["slice_index"].tolist() == list(range(study.n_slices))
        assert (rows["n_slices"] == study.n_slices).all()
        if study.report.sort_method == "normal":
            np.testing.assert_allclose(rows["z"], [s.z for s in study.slices], atol=1e-6)
        else:
            assert rows["z"].isna().all()


def test_the_policy_drops_the_same_files_with_the_same_reasons(dataset) -> None:
    skipped = dataset["index"].skipped.set_index("image_id")
    study = load_study(dataset["root"] / "stage_2_train", series_uid=dataset["tilted"], workers=1)
    from_loader = {
        Path(s.source).stem: s.reason.value
        for s in study.report.skipped
        if s.reason in (SkipReason.DUPLICATE, SkipReason.SIZE_MISMATCH)
    }
    from_index = skipped.loc[skipped["series_uid"] == dataset["tilted"], "reason"].to_dict()
    assert from_index == from_loader
    assert from_index["ID_0dd5123"] == SkipReason.SIZE_MISMATCH.value
    # Two copies and the original share one position: natural file order keeps ID_9abc.
    assert from_index["ID_10abc"] == SkipReason.DUPLICATE.value
    assert "ID_9abc" in study.image_ids and "ID_9abc" not in skipped.index
    assert len([r for r in from_index.values() if r == SkipReason.DUPLICATE.value]) == 2


def test_the_studies_exercise_every_rule(dataset) -> None:
    """Guard the fixture: tilt, lying numbers and the fallback are really there."""
    tilted = load_study(dataset["root"] / "stage_2_train", series_uid=dataset["tilted"])
    numbers = [s.instance_number for s in tilted.slices]
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    normal_z = abs(tilted.slices[0].position[2] - tilted.slices[1].position[2])
    assert normal_z > tilted.slice_spacing * 1.01  # the table step exceeds the spacing: tilt
    no_pos = load_study(dataset["root"] / "stage_2_train", series_uid=dataset["no_pos"])
    assert no_pos.report.sort_method == "instance_number"


def test_skipped_files_keep_their_labels_out_of_missing_files(dataset) -> None:
    index = dataset["index"]
    # The generator labelled files[3]'s slice; its copies have no label row, so nothing
    # dropped by the policy is reported as a missing file.
    assert not set(index.skipped["image_id"]) & set(index.missing_files)
    assert set(index.table["image_id"]).isdisjoint(index.skipped["image_id"])


def test_fast_header_reads_only_what_ordering_needs(dataset, tmp_path) -> None:
    path = next((dataset["root"] / "stage_2_train").glob("*.dcm"))
    full, fast = read_header(path), read_header(path, fast=True)
    for name in (
        "study_uid",
        "series_uid",
        "sop_uid",
        "instance_number",
        "position",
        "orientation",
        "rows",
        "columns",
        "has_pixels",
        "truncated",
        "transfer_syntax",
        "pixel_offset",
    ):
        assert getattr(fast, name) == getattr(full, name), name
    assert full.identifiers and not fast.identifiers  # PatientName is not an ordering tag
    assert "PatientName" not in ORDER_TAGS
    # The cache (new version) round-trips both the table and the skipped files.
    copy = tmp_path / "copy"
    shutil.copytree(dataset["root"], copy)
    first = build_index(copy, cache_dir=tmp_path / "cache", workers=1, progress=False)
    again = build_index(copy, cache_dir=tmp_path / "cache", workers=1, progress=False)
    pd.testing.assert_frame_equal(first.table, again.table)
    pd.testing.assert_frame_equal(first.skipped, again.skipped)
