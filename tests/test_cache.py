"""Tests for hohoho_core.cache: the memory-mapped training cache and its builders."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hohoho_core import cache as cache_mod
from hohoho_core.cache import (
    StudyCache,
    StudyItem,
    build_cache,
    build_cache_from_index,
    study_key,
)
from hohoho_core.labels import CLASSES
from hohoho_core.preprocess import PreprocessConfig, crop_and_resize_hu
from hohoho_core.study import LoadReport, SliceInfo, Study

CFG = PreprocessConfig(size=32, crop=True)


def head_volume(s: int, n: int = 64, seed: int = 0) -> np.ndarray:
    """Float32 HU [s, n, n]: air with a noisy disc 'head' (fractional HU on purpose)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    hu = np.full((s, n, n), -1000.0, np.float32)
    hu[:, (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 3) ** 2] = 40.0
    return hu + rng.normal(0, 30, hu.shape).astype(np.float32)


def make_item(s: int = 3, seed: int = 0) -> StudyItem:
    labels = np.zeros((s, 6), np.int8)
    labels[1, [4, 5]] = 1
    return StudyItem(
        hu=head_volume(s, seed=seed),
        image_ids=[f"ID_{seed:02d}{i:04x}" for i in range(s)],
        labels=labels,
        study_uid=f"1.2.{seed}",
        series_uid=f"1.2.{seed}.1",
    )


class CountingLoader:
    """In-process loader that counts how often it is called."""

    def __init__(self, item: StudyItem) -> None:
        self.item = item
        self.calls = 0

    def __call__(self) -> StudyItem:
        self.calls += 1
        return self.item


def load_seeded(seed: int) -> StudyItem:
    """Module-level (picklable) loader for the process-pool test."""
    return make_item(s=3, seed=seed)


# --- StudyCache -----------------------------------------------------------------------


def test_put_get_round_trip(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path)
    hu = np.random.default_rng(0).uniform(-1100, 3000, (4, 16, 16)).astype(np.float32)
    labels = np.array([[0] * 6, [1, 0, 0, 0, 0, 1], [-1] * 6, [0, 0, 0, 1, 1, 1]])
    ids = ["ID_a", "ID_b", "ID_c", "ID_d"]
    cache.put("s1", hu, labels, ids, {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "crop": False})
    got = cache.get("s1")
    assert isinstance(got.hu, np.memmap) and got.hu.dtype == np.int16
    assert got.hu.shape == (4, 16, 16)
    assert np.abs(got.hu - hu).max() <= 0.5  # int16 rounding only
    np.testing.assert_array_equal(got.hu, np.rint(hu))
    assert got.labels.dtype == np.int8
    np.testing.assert_array_equal(got.labels, labels)
    assert got.image_ids == ids
    assert (got.study_uid, got.series_uid, got.size, got.crop) == ("1.2.3", "1.2.3.4", 16, False)
    assert got.n_slices == 4
    assert cache.keys() == ["s1"] and "s1" in cache and len(cache) == 1
    assert list(cache) == ["s1"]


def test_memmap_is_read_only(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path)
    cache.put("s", np.zeros((2, 8, 8)), None, ["a", "b"])
    got = cache.get("s")
    with pytest.raises(ValueError):
        got.hu[0, 0, 0] = 5


def test_unknown_labels_are_minus_one_and_hu_is_clipped(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path)
    hu = np.array([[[-40000.0, 40000.0], [1.4, -1.6]]])
    cache.put("s", hu, None, ["a"])
    got = cache.get("s")
    np.testing.assert_array_equal(got.labels, -np.ones((1, 6)))
    np.testing.assert_array_equal(got.hu[0], [[-32768, 32767], [1, -2]])


def test_put_replaces_previous_version(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path)
    cache.put("s", np.zeros((2, 8, 8)), None, ["a", "b"])
    cache.put("s", np.ones((3, 4, 4)), None, ["a", "b", "c"])
    got = cache.get("s")
    assert got.hu.shape == (3, 4, 4) and got.image_ids == ["a", "b", "c"]
    assert cache.keys() == ["s"]


@pytest.mark.parametrize("key", ["", "../x", "a/b", ".hidden", "a b", "x" * 201])
def test_bad_keys_rejected(tmp_path: Path, key: str) -> None:
    cache = StudyCache(tmp_path)
    with pytest.raises(ValueError):
        cache.put(key, np.zeros((1, 4, 4)), None, ["a"])
    assert key not in cache


def test_put_validates_inputs(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path)
    with pytest.raises(ValueError, match="image ids"):
        cache.put("s", np.zeros((2, 4, 4)), None, ["a"])
    with pytest.raises(ValueError, match="shape"):
        cache.put("s", np.zeros((2, 4, 4)), np.zeros((2, 5)), ["a", "b"])
    with pytest.raises(ValueError, match="-1"):
        cache.put("s", np.zeros((2, 4, 4)), np.full((2, 6), 2), ["a", "b"])
    with pytest.raises(ValueError):
        cache.put("s", np.zeros((2, 4, 5)), None, ["a", "b"])  # not square
    assert cache.keys() == []


def test_get_missing_key(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        StudyCache(tmp_path).get("nope")


def test_leftovers_of_a_killed_build_are_not_studies(tmp_path: Path) -> None:
    cache = StudyCache(tmp_path)
    cache.put("done", np.zeros((1, 4, 4)), None, ["a"])
    # what a kill can leave: temp files, and an array whose sidecar never landed
    (tmp_path / ".half.npy.abc123.tmp").write_bytes(b"\x93NUMPY partial")
    (tmp_path / ".half.json.abc123.tmp").write_text("{")
    np.save(tmp_path / "arrayonly.npy", np.zeros((1, 4, 4), np.int16))
    assert cache.keys() == ["done"]
    assert "half" not in cache and "arrayonly" not in cache


def test_failed_write_leaves_no_study_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = StudyCache(tmp_path)

    def broken_save(f, arr, allow_pickle=False) -> None:
        f.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.np, "save", broken_save)
    with pytest.raises(OSError):
        cache.put("s", np.zeros((2, 4, 4)), None, ["a", "b"])
    monkeypatch.undo()
    assert "s" not in cache and cache.keys() == []
    assert list(tmp_path.iterdir()) == []


def test_study_key_is_a_safe_file_stem() -> None:
    assert study_key("1.2.3", "4.5") == "1.2.3_4.5"
    assert study_key("../a", "b/c") == "_a_b_c"
    assert "/" not in study_key("x/y", "z")


# --- build_cache ----------------------------------------------------------------------


def test_build_cache_stores_cropped_resized_and_is_idempotent(tmp_path: Path) -> None:
    loaders = {"a": CountingLoader(make_item(3, seed=1)), "b": CountingLoader(make_item(2, seed=2))}
    cache = build_cache(loaders.items(), tmp_path, CFG, progress=False)
    assert cache.keys() == ["a", "b"]
    assert [ld.calls for ld in loaders.values()] == [1, 1]
    got = cache.get("a")
    item = loaders["a"].item
    expected = crop_and_resize_hu(item.hu, CFG)
    assert got.hu.shape == (3, 32, 32)
    assert np.abs(got.hu - expected).max() <= 0.5
    np.testing.assert_array_equal(got.labels, item.labels)
    assert got.image_ids == item.image_ids
    assert (got.study_uid, got.series_uid, got.size, got.crop) == ("1.2.1", "1.2.1.1", 32, True)
    assert PreprocessConfig.from_dict(got.meta["preprocess"]) == CFG

    again = build_cache(loaders.items(), tmp_path, CFG, progress=False)
    assert [ld.calls for ld in loaders.values()] == [1, 1]  # nothing reloaded
    assert again.keys() == ["a", "b"]


def test_build_cache_refuses_other_settings(tmp_path: Path) -> None:
    build_cache([("a", CountingLoader(make_item()))], tmp_path, CFG, progress=False)
    with pytest.raises(ValueError, match="size=32"):
        build_cache(
            [("a", CountingLoader(make_item()))],
            tmp_path,
            PreprocessConfig(size=64),
            progress=False,
        )


def test_build_cache_accepts_study_objects(tmp_path: Path) -> None:
    hu = head_volume(2)
    study = Study(
        "1.9",
        "1.9.1",
        hu,
        [SliceInfo(f"ID_{i}", f"{i}.dcm", None, i, None, float(i)) for i in range(2)],
        (0.5, 0.5),
        5.0,
        LoadReport(),
    )
    cache = build_cache([("s", lambda: study)], tmp_path, CFG, progress=False)
    got = cache.get("s")
    np.testing.assert_array_equal(got.labels, -np.ones((2, 6)))
    assert got.image_ids == ["ID_0", "ID_1"] and got.study_uid == "1.9"


def test_build_cache_skips_failing_study_without_leaking_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def bad() -> StudyItem:
        raise RuntimeError("PatientName=DOE^JANE PatientID=12345")

    with caplog.at_level(logging.WARNING, logger="hohoho_core.cache"):
        cache = build_cache(
            [("bad", bad), ("good", CountingLoader(make_item()))], tmp_path, CFG, progress=False
        )
    assert cache.keys() == ["good"] and cache.build_failures == ["bad"]
    assert "bad" in caplog.text and "RuntimeError" in caplog.text
    assert "DOE" not in caplog.text and "12345" not in caplog.text


def test_build_cache_rejects_duplicate_keys(tmp_path: Path) -> None:
    ld = CountingLoader(make_item())
    with pytest.raises(ValueError, match="duplicate"):
        build_cache([("a", ld), ("a", ld)], tmp_path, CFG, progress=False)


def test_build_cache_process_pool_matches_serial(tmp_path: Path) -> None:
    jobs = [(f"s{i}", functools.partial(load_seeded, i)) for i in range(3)]
    serial = build_cache(jobs, tmp_path / "serial", CFG, workers=1, progress=False)
    pooled = build_cache(jobs, tmp_path / "pool", CFG, workers=2, progress=False)
    assert pooled.keys() == serial.keys() == ["s0", "s1", "s2"]
    for key in serial.keys():
        a, b = serial.get(key), pooled.get(key)
        np.testing.assert_array_equal(a.hu, b.hu)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.image_ids == b.image_ids


def test_process_pool_needs_picklable_loaders(tmp_path: Path) -> None:
    item = make_item()
    jobs = [("a", lambda: item), ("b", lambda: item)]
    with pytest.raises(TypeError, match="picklable"):
        build_cache(jobs, tmp_path, CFG, workers=2, progress=False)
    assert StudyCache(tmp_path).keys() == []


# --- build_cache_from_index -----------------------------------------------------------

#: Fake per-file HU offsets so the test can tell which file ended up where.
FAKE_HU = {"f0.dcm": 0.0, "f1.dcm": 10.0, "f2.dcm": 20.0, "g0.dcm": 30.0, "g1.dcm": 40.0}


def fake_load_study(paths: list[Path]) -> Study:
    """Stand-in for dicom.load_study: sorts by descending file name (i.e. not table order)
    and drops 'f2.dcm' as a reader would drop a duplicate slice."""
    names = sorted((p.name for p in paths if p.name != "f2.dcm"), reverse=True)
    hu = np.stack([head_volume(1)[0] * 0 + FAKE_HU[n] for n in names]).astype(np.float32)
    slices = [SliceInfo(f"ID_{n[:2]}", n, None, None, None, float(k)) for k, n in enumerate(names)]
    return Study("ignored", "ignored", hu, slices, (1.0, 1.0), 1.0, LoadReport())


def index_table() -> pd.DataFrame:
    rows = [
        # image_id, study, series, path, labels (epidural ... any)
        ("ID_f0", "1.1", "1.1.1", "f0.dcm", [0, 0, 0, 0, 0, 0]),
        ("ID_f1", "1.1", "1.1.1", "f1.dcm", [0, 1, 0, 0, 0, 1]),
        ("ID_f2", "1.1", "1.1.1", "f2.dcm", [1, 0, 0, 0, 0, 1]),
        ("ID_g1", "2.2", "2.2.1", "g1.dcm", [0, 0, 0, 1, 0, 1]),
        ("ID_g0", "2.2", "2.2.1", "g0.dcm", [np.nan] * 6),  # no labels for this image
    ]
    table = pd.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "study_uid": [r[1] for r in rows],
            "series_uid": [r[2] for r in rows],
            "slice_index": [0, 1, 2, 1, 0],
            "n_slices": [3, 3, 3, 2, 2],
            "z": [0.0, 5.0, 10.0, 5.0, 0.0],
            "path": [r[3] for r in rows],
        }
    )
    for k, c in enumerate(CLASSES):
        table[c] = [r[4][k] for r in rows]
    return table


def test_build_cache_from_index_groups_and_aligns_labels(tmp_path: Path) -> None:
    cfg = PreprocessConfig(size=16, crop=False)
    cache = build_cache_from_index(
        index_table(),
        tmp_path / "data",
        tmp_path / "cache",
        cfg,
        progress=False,
        loader=fake_load_study,
    )
    assert cache.keys() == ["1.1_1.1.1", "2.2_2.2.1"]
    a = cache.get("1.1_1.1.1")
    assert a.image_ids == ["ID_f1", "ID_f0"]  # the loader's order, f2 dropped
    np.testing.assert_array_equal(a.hu[:, 8, 8], [10, 0])
    np.testing.assert_array_equal(a.labels, [[0, 1, 0, 0, 0, 1], [0] * 6])
    assert (a.study_uid, a.series_uid) == ("1.1", "1.1.1")
    b = cache.get("2.2_2.2.1")
    assert b.image_ids == ["ID_g1", "ID_g0"]
    np.testing.assert_array_equal(b.hu[:, 3, 3], [40, 30])
    np.testing.assert_array_equal(b.labels, [[0, 0, 0, 1, 0, 1], [-1] * 6])


def test_build_cache_dispatches_index_tables(tmp_path: Path) -> None:
    cfg = PreprocessConfig(size=16, crop=False)
    with pytest.raises(ValueError, match="data_root"):
        build_cache(index_table(), tmp_path / "cache", cfg, progress=False)
    cache = build_cache(
        index_table(),
        tmp_path / "cache",
        cfg,
        progress=False,
        data_root=tmp_path,
        loader=fake_load_study,
    )
    assert len(cache) == 2


def test_index_without_label_columns_gives_unknown(tmp_path: Path) -> None:
    table = index_table().drop(columns=list(CLASSES))
    cache = build_cache_from_index(
        table,
        tmp_path,
        tmp_path / "cache",
        PreprocessConfig(size=16),
        progress=False,
        loader=fake_load_study,
    )
    np.testing.assert_array_equal(cache.get("1.1_1.1.1").labels, -np.ones((2, 6)))


def test_index_missing_required_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path"):
        build_cache_from_index(
            index_table().drop(columns=["path"]), tmp_path, tmp_path / "c", CFG, progress=False
        )


def write_rsna_series(root: Path, study: str, series: str, zs: list[float], seed: int) -> list[str]:
    """Write one RSNA-style series (files ``ID_<hex>.dcm``); slice at z holds HU = z."""
    from hohoho_core.synthetic.writer import ct_dataset, write_dataset

    names = []
    for k, z in enumerate(zs):
        hu = np.full((24, 24), -1000.0)
        hu[6:18, 6:18] = z  # the slice's z doubles as its tissue HU, to check the order
        name = f"ID_{seed:02x}{k:06x}.dcm"
        ds = ct_dataset(
            hu,
            study_uid=study,
            series_uid=series,
            sop_uid=f"{series}.{k + 1}",
            position=(0.0, 0.0, z),
            instance_number=k + 1,
            rescale_intercept=-1024.0,
        )
        write_dataset(ds, root / "stage_2_train" / name)
        names.append(name)
    return names


@pytest.mark.parametrize("workers", [1, 2])
def test_build_cache_from_index_with_real_dicom(tmp_path: Path, workers: int) -> None:
    data = tmp_path / "rsna"
    rows = []
    for seed, (study, series, zs) in enumerate(
        [("1.2.840.1", "1.2.840.1.1", [20.0, 0.0, 10.0]), ("1.2.840.2", "1.2.840.2.1", [5.0, 15.0])]
    ):
        for name, z in zip(write_rsna_series(data, study, series, zs, seed), zs, strict=True):
            rows.append(
                {
                    "image_id": name[:-4],
                    "study_uid": study,
                    "series_uid": series,
                    "z": z,
                    "path": f"stage_2_train/{name}",
                    # positive "any" only where z >= 10
                    **{c: int(z >= 10 and c in ("subdural", "any")) for c in CLASSES},
                }
            )
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # table order is irrelevant
    cfg = PreprocessConfig(size=16, crop=False)
    cache = build_cache_from_index(
        table, data, tmp_path / "cache", cfg, workers=workers, progress=False
    )
    assert cache.build_failures == []
    assert cache.keys() == ["1.2.840.1_1.2.840.1.1", "1.2.840.2_1.2.840.2.1"]
    a = cache.get("1.2.840.1_1.2.840.1.1")
    # slices sorted by z (0, 10, 20): image ids follow, and HU at the centre equals z
    by_z = table[table.study_uid == "1.2.840.1"].sort_values("z")
    assert a.image_ids == by_z.image_id.tolist()
    np.testing.assert_array_equal(a.hu[:, 8, 8], [0, 10, 20])
    np.testing.assert_array_equal(a.labels, by_z[list(CLASSES)].to_numpy())
    assert a.labels[:, 5].tolist() == [0, 1, 1]
    b = cache.get("1.2.840.2_1.2.840.2.1")
    np.testing.assert_array_equal(b.hu[:, 8, 8], [5, 15])
