"""The RSNA layout helpers the app and the library share: folders, label file, series rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hohoho_core.rsna import (
    default_labels_csv,
    dicom_folder,
    image_series,
    is_dataset_folder,
    series_rows,
)


def test_dicom_folder_and_labels_of_the_rsna_layout(tmp_path: Path) -> None:
    assert dicom_folder(tmp_path) == tmp_path  # a flat folder is indexed as it is
    assert not is_dataset_folder(tmp_path)  # ... but holds nothing yet
    (tmp_path / "stage_2_train").mkdir()
    assert dicom_folder(str(tmp_path)) == tmp_path / "stage_2_train"
    assert not is_dataset_folder(tmp_path)  # build_index would find nothing to index
    assert default_labels_csv(tmp_path) == tmp_path / "stage_2_train.csv"  # need not exist
    (tmp_path / "stage_2_train" / "ID_1.dcm").write_bytes(b"")
    assert is_dataset_folder(tmp_path)


def test_kaggle_stage_1_layout_pairs_its_own_csv(tmp_path: Path) -> None:
    (tmp_path / "stage_1_train_images").mkdir()
    (tmp_path / "stage_1_train_images" / "ID_1.dcm").write_bytes(b"")
    assert dicom_folder(tmp_path) == tmp_path / "stage_1_train_images"
    assert is_dataset_folder(tmp_path)
    assert default_labels_csv(tmp_path) == tmp_path / "stage_1_train.csv"
    (tmp_path / "stage_2_train.csv").write_text("ID,Label\n")  # the only CSV there: used
    assert default_labels_csv(tmp_path) == tmp_path / "stage_2_train.csv"
    (tmp_path / "stage_1_train.csv").write_text("ID,Label\n")  # its own CSV wins
    assert default_labels_csv(tmp_path) == tmp_path / "stage_1_train.csv"


def test_a_single_renamed_subfolder_of_dicom_files_is_found(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "my_scans").mkdir()
    (tmp_path / "my_scans" / "ID_1.DCM").write_bytes(b"")
    assert dicom_folder(tmp_path) == tmp_path / "my_scans"
    assert is_dataset_folder(tmp_path)
    (tmp_path / "stage_1_train.csv").write_text("ID,Label\n")
    assert default_labels_csv(tmp_path) == tmp_path / "stage_1_train.csv"
    (tmp_path / "other").mkdir()  # two candidates: ambiguous, nothing is guessed
    (tmp_path / "other" / "ID_2.dcm").write_bytes(b"")
    assert dicom_folder(tmp_path) == tmp_path
    assert not is_dataset_folder(tmp_path)


def test_a_flat_folder_of_dicom_files_is_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "ID_1.dcm").write_bytes(b"")
    assert is_dataset_folder(tmp_path)
    assert not is_dataset_folder(tmp_path / "ID_1.dcm")  # a file is not a folder
    assert not is_dataset_folder(tmp_path / "missing")


def _table() -> pd.DataFrame:
    # two series of one study and one of another, rows shuffled, one image listed twice
    return pd.DataFrame({
        "image_id": ["b2", "a1", "b1", "c1", "a2", "a0", "b2"],
        "study_uid": ["S1", "S1", "S1", "S2", "S1", "S1", "S1"],
        "series_uid": ["B", "A", "B", "C", "A", "A", "B"],
        "slice_index": [1, 1, 0, 0, 2, 0, 1],
        "path": ["b2", "a1", "b1", "c1", "a2", "a0", "b2x"],
    })


def test_series_rows_are_one_series_in_slice_order() -> None:
    rows = series_rows(_table(), "S1", "A")
    assert list(rows["image_id"]) == ["a0", "a1", "a2"]
    assert series_rows(_table(), "S2", "A").empty  # a series belongs to its study


def test_image_series_goes_from_an_image_to_its_whole_series() -> None:
    assert list(image_series(_table(), "a2")["image_id"]) == ["a0", "a1", "a2"]
    assert list(image_series(_table(), "c1")["path"]) == ["c1"]
    assert list(image_series(_table(), "b2")["image_id"])[0] == "b1"
    with pytest.raises(KeyError, match="zz"):
        image_series(_table(), "zz")
