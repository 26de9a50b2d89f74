"""`hohoho_core.rsna`: the label CSV, the header index and its cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from hohoho_core import rsna
from hohoho_core.labels import CLASSES
from hohoho_core.rsna import INDEX_COLUMNS, build_index, read_labels


def _label_rows(image_id: str, values: dict[str, int]) -> list[str]:
    return [f"{image_id}_{cls},{values.get(cls, 0)}" for cls in CLASSES]


def test_read_labels_pivots_and_tolerates_duplicates(tmp_path):
    rows = ["ID,Label"]
    rows += _label_rows("ID_aa01", {"subdural": 1, "any": 1})
    rows += _label_rows("ID_0b02", {})
    rows += ["ID_0b02_epidural,0", "ID_0b02_any,0"]  # exact duplicates
    rows += ["ID_0b02_subarachnoid,1"]  # conflicts with the 0 above: max wins
    rows += ["ID_cc03_any,1"]  # only one class given
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="1 .* conflicting"):
        labels = read_labels(csv)
    assert list(labels.columns) == list(CLASSES)
    assert labels.index.name == "image_id"
    assert (labels.dtypes == np.int8).all()
    assert labels.loc["ID_aa01"].tolist() == [0, 0, 0, 0, 1, 1]
    assert labels.loc["ID_0b02"].tolist() == [0, 0, 0, 1, 0, 0]
    assert labels.loc["ID_cc03"].tolist() == [-1, -1, -1, -1, -1, 1]
    assert len(labels) == 3


def test_read_labels_warns_about_bad_rows(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("ID,Label\nID_aa01_any,1\nID_aa01_weird,1\nnonsense,0\nID_aa01_epidural,7\n")
    with pytest.warns(UserWarning, match="3 label rows"):
        labels = read_labels(csv)
    assert labels.loc["ID_aa01", "any"] == 1 and labels.loc["ID_aa01", "epidural"] == -1


@pytest.fixture
def rsna_root(tmp_path, write_ct_series):
    """A small RSNA-style folder: three series, one garbage file, a label CSV.

    Returns (root, expected order per series as image-id lists, labelled ids).
    """
    root = tmp_path / "rsna"
    folder = root / "stage_2_train"
    rng = np.random.default_rng(5)

    def names(n):
        return [f"ID_{v:08x}.dcm" for v in rng.integers(0, 2**32, size=n)]

    tilted_names = names(5)
    write_ct_series(
        folder,
        n_slices=5,
        size=16,
        tilt_deg=20.0,
        in_plane_shift=rng.uniform(-40, 40, size=5),
        names=tilted_names,
        instance_numbers=[3, 1, 5, 2, 4],
    )
    plain_names = names(3)
    write_ct_series(folder, n_slices=3, size=16, names=plain_names, instance_numbers=[9, 8, 7])
    loose_names = names(2)
    loose = write_ct_series(folder, n_slices=2, size=16, names=loose_names, instance_numbers=[2, 1])
    for p in loose.paths:  # no positions: ordered by InstanceNumber (2, 1 -> reversed)
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    (folder / "ID_deadbeef.dcm").write_bytes(b"not a dicom file at all")

    def stems(ns):
        return [n.removesuffix(".dcm") for n in ns]

    order = {
        "tilted": stems(tilted_names),
        "plain": stems(plain_names),
        "loose": stems(loose_names)[::-1],
    }
    all_ids = order["tilted"] + order["plain"] + order["loose"]
    unlabelled = order["plain"][1]
    rows = ["ID,Label"]
    for i, image_id in enumerate(all_ids):
        if image_id == unlabelled:
            continue
        rows += _label_rows(image_id, {"intraventricular": i % 2, "any": i % 2})
    rows += _label_rows(all_ids[0], {"intraventricular": 0, "any": 0})  # duplicate block
    rows += _label_rows("ID_0badf00d", {"any": 1})  # labelled, no file
    (root / "stage_2_train.csv").write_text("\n".join(rows) + "\n")
    labelled = {image_id: i % 2 for i, image_id in enumerate(all_ids) if image_id != unlabelled}
    return root, order, labelled, unlabelled


def test_build_index_orders_joins_and_reports(rsna_root, tmp_path):
    root, order, labelled, unlabelled = rsna_root
    index = build_index(root, cache_dir=tmp_path / "cache", workers=1, progress=False)
    table = index.table
    assert tuple(table.columns) == INDEX_COLUMNS
    assert len(table) == 10 and index.n_studies == 3
    for ids in order.values():
        rows = table.set_index("image_id").loc[ids]
        assert rows["slice_index"].tolist() == list(range(len(ids)))
        assert (rows["n_slices"] == len(ids)).all()
        assert rows["series_uid"].nunique() == 1
    tilted = table.set_index("image_id").loc[order["tilted"], "z"].to_numpy()
    assert np.diff(tilted) == pytest.approx([5.0] * 4, abs=1e-4)
    assert table.set_index("image_id").loc[order["loose"], "z"].isna().all()
    assert set(table["path"]) == {f"stage_2_train/{i}.dcm" for ids in order.values() for i in ids}
    assert (root / table["path"].iloc[0]).is_file()

    by_id = table.set_index("image_id")
    for image_id, value in labelled.items():
        assert by_id.loc[image_id, "intraventricular"] == value
        assert by_id.loc[image_id, "any"] == value
        assert by_id.loc[image_id, "epidural"] == 0
    assert (by_id.loc[unlabelled, list(CLASSES)] == -1).all()
    assert all(table[c].dtype == np.int8 for c in CLASSES)
    assert index.missing_files == ["ID_0badf00d"]
    assert index.missing_labels == [unlabelled]
    assert index.unreadable == ["stage_2_train/ID_deadbeef.dcm"]


def test_index_cache_is_reused_and_invalidated(rsna_root, tmp_path, monkeypatch, write_ct_series):
    root, *_ = rsna_root
    cache = tmp_path / "cache"
    calls = []
    original = rsna._read_index_header

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(rsna, "_read_index_header", counting)
    first = build_index(root, cache_dir=cache, workers=1, progress=False)
    assert len(calls) == 11
    assert any(cache.iterdir())

    calls.clear()
    second = build_index(root, cache_dir=cache, workers=1, progress=False)
    assert calls == []  # loaded from the cache, no header read
    pd.testing.assert_frame_equal(first.table, second.table)
    assert second.missing_files == first.missing_files
    assert second.missing_labels == first.missing_labels
    assert second.unreadable == first.unreadable

    write_ct_series(root / "stage_2_train", n_slices=1, size=16, names=["ID_00c0ffee.dcm"])
    third = build_index(root, cache_dir=cache, workers=1, progress=False)
    assert len(calls) == 12  # the listing changed: every header read again
    assert "ID_00c0ffee" in set(third.table["image_id"])


def test_process_pool_gives_the_same_headers(rsna_root):
    root, *_ = rsna_root
    paths = sorted(str(p) for p in (root / "stage_2_train").glob("*.dcm"))
    serial = rsna._scan_headers(paths, workers=1, progress=False)
    pooled = rsna._scan_headers(paths, workers=2, progress=False, chunk=3)
    assert pooled == serial
    assert sum(h is None for h in serial) == 1  # the garbage file


def test_index_without_labels(rsna_root, tmp_path):
    root, *_ = rsna_root
    (root / "stage_2_train.csv").unlink()
    index = build_index(root / "stage_2_train", workers=1, progress=False, use_cache=False)
    assert len(index.table) == 10
    assert (index.table[list(CLASSES)] == -1).all().all()
    assert len(index.missing_labels) == 10 and index.missing_files == []
    assert index.table["path"].str.fullmatch(r"ID_[0-9a-f]+\.dcm").all()


def test_index_of_a_synthetic_dataset_matches_truth(tmp_path):
    from hohoho_core import synthetic

    made = synthetic.generate_dataset(tmp_path / "syn", n_studies=3, seed=11, size=48)
    index = build_index(tmp_path / "syn", workers=1, progress=False, use_cache=False)
    truth = made.truth.set_index("image_id")
    table = index.table.set_index("image_id").loc[truth.index]
    assert table["slice_index"].tolist() == truth["true_index"].tolist()
    assert table["study_uid"].tolist() == truth["study_uid"].tolist()
    assert table["z"].to_numpy() == pytest.approx(truth["z"].to_numpy(), abs=1e-3)
    expected = read_labels(tmp_path / "syn" / "stage_2_train.csv").loc[truth.index]
    np.testing.assert_array_equal(table[list(CLASSES)].to_numpy(), expected.to_numpy())
    np.testing.assert_array_equal(expected.to_numpy(), truth[list(CLASSES)].to_numpy())
    assert index.missing_files == [] and index.missing_labels == [] and index.unreadable == []

    # Read back study by study: slices in true order, labels aligned to them.
    from hohoho_core.rsna import iter_labelled_studies

    seen = 0
    for key, study, labels in iter_labelled_studies(tmp_path / "syn", index.table):
        rows = truth.loc[study.image_ids]
        assert key.startswith(rows["study_uid"].iloc[0] + "|")
        assert rows["true_index"].tolist() == list(range(study.n_slices))
        np.testing.assert_array_equal(labels, rows[list(CLASSES)].to_numpy())
        seen += study.n_slices
    assert seen == len(truth)


def test_header_pool_survives_a_script_runner_main(tmp_path, monkeypatch) -> None:
    """Streamlit leaves its page script as __main__; spawned workers must not re-run it."""
    import sys
    import types

    from hohoho_core.rsna import _scan_headers

    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('the page script ran in a worker')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake)
    paths = [str(tmp_path / f"missing{i}.dcm") for i in range(4)]
    results = _scan_headers(paths, workers=2, progress=False, chunk=2)
    assert len(results) == 4
    assert sys.modules["__main__"] is fake  # restored


def test_index_of_the_stage_1_layout_uses_its_csv(rsna_root, tmp_path):
    root, order, labelled, unlabelled = rsna_root
    (root / "stage_2_train").rename(root / "stage_1_train_images")
    (root / "stage_2_train.csv").rename(root / "stage_1_train.csv")
    index = build_index(root, workers=1, progress=False, use_cache=False)
    assert len(index.table) == 10
    assert index.table["path"].str.startswith("stage_1_train_images/").all()
    by_id = index.table.set_index("image_id")
    for image_id, value in labelled.items():
        assert by_id.loc[image_id, "any"] == value
    assert index.missing_labels == [unlabelled]


def test_index_of_a_renamed_subfolder(rsna_root, tmp_path):
    root, order, labelled, unlabelled = rsna_root
    (root / "stage_2_train").rename(root / "images")
    index = build_index(root, workers=1, progress=False, use_cache=False)
    assert len(index.table) == 10
    assert index.table["path"].str.startswith("images/").all()
    assert index.missing_labels == [unlabelled]  # still paired with stage_2_train.csv


def test_index_with_nothing_to_index_names_where_it_looked(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ID_1.dcm").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as info:
        build_index(tmp_path, workers=1, progress=False, use_cache=False)
    message = str(info.value)
    assert str(tmp_path / "stage_2_train") in message
    assert str(tmp_path / "stage_1_train_images") in message
    assert "2 hold .dcm files (a, b)" in message


def test_an_interrupted_header_scan_resumes_where_it_stopped(rsna_root, tmp_path, monkeypatch):
    """Ctrl-C part-way through indexing: the rerun reads only the files not yet read, and
    gives the index an uninterrupted scan gives."""
    root, *_ = rsna_root
    reference = build_index(root, workers=1, progress=False, use_cache=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(rsna, "_CHUNK", 3)  # 11 files: four chunks
    calls: list[str] = []
    original = rsna._read_index_header

    def interrupted(path):
        if len(calls) == 7:  # inside the third chunk
            raise KeyboardInterrupt
        calls.append(path)
        return original(path)

    monkeypatch.setattr(rsna, "_read_index_header", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(root, cache_dir=cache, workers=1, progress=False)
    journal = next(cache.glob("rsna_headers_*"))
    assert len(list(journal.glob("chunk_*.json"))) == 2  # the two finished chunks
    assert not list(cache.glob("rsna_index_*"))  # no index from a partial scan

    finished = set(calls[:6])  # the files of the two recorded chunks
    calls.clear()
    monkeypatch.setattr(rsna, "_read_index_header", lambda p: (calls.append(p), original(p))[1])
    resumed = build_index(root, cache_dir=cache, workers=1, progress=False)
    assert len(calls) == 11 - 6  # only the chunks that had not finished
    assert not finished & set(calls)
    pd.testing.assert_frame_equal(resumed.table, reference.table)
    pd.testing.assert_frame_equal(resumed.skipped, reference.skipped)
    assert resumed.unreadable == reference.unreadable
    assert not journal.exists()  # the finished index replaces the journal


def test_header_journal_round_trips_records_without_identifiers(rsna_root, tmp_path):
    from hohoho_core.dicom.headers import read_header
    from hohoho_core.header_journal import record_from_json, record_to_json

    root, *_ = rsna_root
    path = sorted((root / "stage_2_train").glob("ID_*.dcm"))[0]
    rec = read_header(path)
    back = record_from_json(json.loads(json.dumps(record_to_json(rec))))
    assert back.identifiers == {} and back.metadata == {}
    for name in ("study_uid", "series_uid", "sop_uid", "position", "orientation",
                 "pixel_spacing", "instance_number", "rows", "columns", "rescale_slope"):
        assert getattr(back, name) == getattr(rec, name), name
    assert "PatientName" not in json.dumps(record_to_json(rec))
