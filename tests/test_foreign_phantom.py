"""The foreign phantom generator (bench/foreign_phantom.py) and the generalisation check.

Small: three studies at 192 px written once per module, two more at 128 px for the
determinism and end-to-end checks; the shipped weights run on two tiny studies.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import ndimage

from bench.foreign_phantom import (
    AREA_THRESHOLD_MM2,
    CLASSES,
    SUBTYPES,
    save_foreign_montage,
    write_foreign_dataset,
)
from hohoho_core import labels as project_labels
from hohoho_core.dicom import load_study
from hohoho_core.rsna import build_index, read_labels

REPO = Path(__file__).resolve().parents[1]
PLANS = [("epidural",), (), ("intraventricular", "subdural")]
SEED = 11


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("foreign")
    truth = write_foreign_dataset(root, len(PLANS), SEED, size=192, subtypes=PLANS)
    return root, truth


def _study_files(root: Path, truth: pd.DataFrame, study: int) -> tuple[pd.DataFrame, list[Path]]:
    uids = list(dict.fromkeys(truth.sort_values("image_id")["study_uid"]))
    info = pd.read_csv(root / "foreign_studies.csv", dtype={"study_uid": str})
    uid = info.loc[info["index"] == study, "study_uid"].item()
    assert uid in uids
    rows = truth[truth["study_uid"] == uid].sort_values("slice_index")
    return rows, [root / "stage_2_train" / f"{i}.dcm" for i in rows["image_id"]]


def test_classes_match_the_project() -> None:
    assert CLASSES == project_labels.CLASSES
    assert SUBTYPES == project_labels.SUBTYPES


def test_layout_csv_and_labels(dataset: tuple[Path, pd.DataFrame]) -> None:
    root, truth = dataset
    names = sorted(p.name for p in (root / "stage_2_train").iterdir())
    assert len(names) == len(truth)
    assert all(re.fullmatch(r"ID_[0-9a-f]{12}\.dcm", n) for n in names)
    raw = pd.read_csv(root / "stage_2_train.csv")
    assert list(raw.columns) == ["ID", "Label"]
    assert len(raw) == 6 * len(truth)
    # Six rows per image, in the RSNA class order.
    suffixes = raw["ID"].str.extract(r"^ID_[0-9a-f]{12}_([a-z]+)$")[0]
    assert suffixes.notna().all()
    assert (suffixes.to_numpy().reshape(-1, 6) == np.array(CLASSES)).all()
    lab = read_labels(root / "stage_2_train.csv")
    t = truth.set_index("image_id").loc[lab.index]
    assert (lab.to_numpy() == t[list(CLASSES)].to_numpy()).all()
    # Labels are the area rule; "any" is the OR of the subtypes.
    for c in SUBTYPES:
        assert ((truth[f"area_{c}"] >= AREA_THRESHOLD_MM2) == (truth[c] == 1)).all()
    assert (truth["any"] == truth[list(SUBTYPES)].max(axis=1)).all()
    # The planned subtypes (and only they) are present, each on a few slices at least.
    for i, plan in enumerate(PLANS):
        rows, _ = _study_files(root, truth, i)
        present = {c for c in SUBTYPES if rows[c].any()}
        assert present == set(plan)
    assert 24 <= truth.groupby("study_uid").size().min()
    assert truth.groupby("study_uid").size().max() <= 36


def test_index_and_reader_order(dataset: tuple[Path, pd.DataFrame]) -> None:
    root, truth = dataset
    index = build_index(root, workers=1, progress=False, use_cache=False)
    assert not index.unreadable and not index.missing_files and not index.missing_labels
    table = index.table
    assert index.n_studies == len(PLANS)
    merged = table.merge(truth, on="image_id", suffixes=("", "_t"))
    assert len(merged) == len(truth) == len(table)
    assert (merged["slice_index"] == merged["slice_index_t"]).all()
    assert (merged["study_uid"] == merged["study_uid_t"]).all()
    for c in CLASSES:
        assert (merged[c] == merged[f"{c}_t"]).all()

    rows, paths = _study_files(root, truth, 2)
    shuffled = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))]
    study = load_study(shuffled, workers=1)
    assert not study.report.skipped
    assert study.n_slices == len(rows)
    assert study.image_ids == list(rows["image_id"])
    z = np.array([s.z for s in study.slices])
    assert np.diff(z) == pytest.approx(np.full(len(z) - 1, 5.0))  # by position, lowest first
    inst = [s.instance_number for s in study.slices]
    assert inst == list(range(len(rows), 0, -1))  # InstanceNumber 1 is the top slice
    assert study.slice_spacing == pytest.approx(5.0)
    spacing = study.pixel_spacing[0]
    assert 0.42 * 512 / 192 <= spacing <= 0.5 * 512 / 192
    # Air outside, bone in the skull, the vertex slice smaller than a middle one.
    assert study.hu.min() < -950 and study.hu.max() > 1100
    head = (study.hu > -300).sum(axis=(1, 2))
    assert head[-1] < 0.7 * head[len(head) // 2]

    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert (ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored) == (0, 16, 16)
    assert (float(ds.RescaleIntercept), float(ds.RescaleSlope)) == (-1024.0, 1.0)
    assert str(ds.PatientName) == "FOREIGN^PHANTOM"
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert ds.pixel_array.dtype == np.uint16


def _bright_mm2(hu: np.ndarray, spacing: float) -> tuple[float, float]:
    """Inside the skull (found from the image alone): blood-range area (mm^2) and max.

    Bone (and sinus air) is set to a brain value before a 5x5 mean, so only extended
    regions above 52 HU count (noise, the falx and bone edges average away).
    """
    bone = hu > 250
    cavity = ndimage.binary_fill_holes(bone) & ~ndimage.binary_dilation(bone, iterations=2)
    img = np.where((hu > 150) | (hu < -100), 35.0, hu)
    mean = ndimage.uniform_filter(img, 5)
    inside = mean[cavity]
    bright = (inside >= 52) & (inside <= 95)
    return float(bright.sum() * spacing**2), float(inside.max())


def test_labelled_slices_are_bright_where_the_label_says(
    dataset: tuple[Path, pd.DataFrame],
) -> None:
    root, truth = dataset
    # EDH study: the slice with most epidural blood shows a blood-range region inside the
    # skull; its mid-level slices without any label do not.
    rows, paths = _study_files(root, truth, 0)
    study = load_study(paths, workers=1)
    sp = study.pixel_spacing[0]
    k = int(rows["area_epidural"].to_numpy().argmax())
    assert rows["epidural"].iloc[k] == 1
    area, peak = _bright_mm2(study.hu[k], sp)
    assert 55.0 <= peak <= 90.0
    assert area >= 0.5 * rows["area_epidural"].iloc[k]
    n = len(rows)
    mid = [j for j in range(int(0.45 * n), int(0.85 * n)) if rows["any"].iloc[j] == 0]
    assert mid
    for j in mid:
        area, peak = _bright_mm2(study.hu[j], sp)
        assert area < 5.0 and peak < 52.0

    # Normal study: nothing in the blood range at mid levels.
    rows, paths = _study_files(root, truth, 1)
    study = load_study(paths, workers=1)
    n = len(rows)
    for j in range(int(0.45 * n), int(0.85 * n)):
        area, peak = _bright_mm2(study.hu[j], study.pixel_spacing[0])
        assert area < 5.0 and peak < 52.0

    # IVH + SDH study: the most subdural slice is bright too; IVH sits in the posterior
    # (dependent) half of the head.
    rows, paths = _study_files(root, truth, 2)
    study = load_study(paths, workers=1)
    k = int(rows["area_subdural"].to_numpy().argmax())
    area, _ = _bright_mm2(study.hu[k], study.pixel_spacing[0])
    assert area >= 0.3 * rows["area_subdural"].iloc[k]
    k = int(rows["area_intraventricular"].to_numpy().argmax())
    sl = study.hu[k]
    head_rows = np.flatnonzero((sl > 250).any(axis=1))
    centre = 0.5 * (head_rows.min() + head_rows.max())
    blood = ndimage.uniform_filter(np.where(sl > 150, 35.0, sl), 3) >= 55
    blood &= ndimage.binary_fill_holes(sl > 250) & ~ndimage.binary_dilation(sl > 250, iterations=2)
    ys = np.nonzero(blood)[0]
    assert ys.size and np.median(ys) > centre


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "stage_2_train").iterdir()):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update((root / "stage_2_train.csv").read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_foreign_dataset(tmp_path / "a", 1, 3, size=128)
    b = write_foreign_dataset(tmp_path / "b", 1, 3, size=128)
    c = write_foreign_dataset(tmp_path / "c", 1, 4, size=128)
    pd.testing.assert_frame_equal(a, b)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert set(a["study_uid"]) != set(c["study_uid"])
    with pytest.raises(FileExistsError):
        write_foreign_dataset(tmp_path / "a", 1, 3, size=128)


def test_montage(tmp_path: Path) -> None:
    from PIL import Image

    out = save_foreign_montage(tmp_path / "m.png", size=128)
    with Image.open(out) as im:
        assert im.size == (6 * 256, 256 + 24)  # a normal tile and one per subtype
        assert np.asarray(im).std() > 20


def test_generalization_end_to_end(tmp_path: Path) -> None:
    from bench import generalization

    argv = ["--weights", str(REPO / "weights"), "--studies", "2", "--seed", "5", "--size",
            "128", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out" / "gen"),
            "--threads", "1"]
    assert generalization.main(argv) == 0
    res = json.loads((tmp_path / "out" / "gen.json").read_text())
    truth = pd.read_csv(tmp_path / "data" / "foreign_truth.csv")
    assert res["data"]["slices"] == len(truth) and res["data"]["studies"] == 2
    assert res["data"]["reused"] is False
    shipped = json.loads((REPO / "weights" / "config.json").read_text())
    for stage, key in (("cnn", "cnn_thresholds"), ("cnn_lstm", "thresholds")):
        m = res["metrics"][stage]
        assert list(m["thresholds"].values()) == pytest.approx(shipped[key])
        assert 0.0 <= m["slice"]["macro"] <= 1.0
        assert set(m["slice"]["per_class"]) == set(CLASSES)
    md = (tmp_path / "out" / "gen.md").read_text()
    assert "Smoke run" in md and "| **macro** |" in md
    # fp32 by default whatever this CPU would pick under auto, and the report says so.
    assert res["model"]["precision"] == "fp32" and "Measured once, fp32," in md
    # A second run reuses the data (the marker matches).
    assert generalization.main(argv) == 0
    assert json.loads((tmp_path / "out" / "gen.json").read_text())["data"]["reused"] is True
