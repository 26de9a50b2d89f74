"""The phantom generator: RSNA layout, determinism, labels that follow voxels, realistic HU."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from hohoho_core.labels import CLASSES, SUBTYPES
from hohoho_core.synthetic import (
    AREA_THRESHOLD_MM2,
    StudyPlan,
    generate_dataset,
    inject_label_noise,
    main,
    make_study,
    save_montage,
)

N_STUDIES = 10
SIZE = 128
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("syn")
    truth = generate_dataset(root, N_STUDIES, seed=11, size=SIZE, label_noise=0.3, slices=(20, 30))
    return root, truth


def _csv_labels(root: Path) -> pd.DataFrame:
    """stage_2_train.csv -> (image_id x CLASSES) table, parsed independently of the module."""
    raw = pd.read_csv(root / "stage_2_train.csv")
    parts = raw["ID"].str.extract(r"^(ID_[0-9a-f]{9})_(\w+)$")
    raw["image_id"], raw["class"] = parts[0], parts[1]
    return raw.pivot(index="image_id", columns="class", values="Label")[list(CLASSES)]


def _read_hu(path: Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """HU from a file; the 12-bit quirk is unwrapped here, by the test's own code."""
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.astype(np.int64)
    intercept, slope = float(ds.RescaleIntercept), float(ds.RescaleSlope)
    if ds.BitsStored == 12 and ds.PixelRepresentation == 0 and intercept > -100:
        px = np.where(px >= 3096, px - 4096, px)  # same as ((px + 1000) % 4096) - 1000
    return px * slope + intercept, ds


def test_rsna_layout(dataset):
    root, _ = dataset
    raw = pd.read_csv(root / "stage_2_train.csv")
    assert list(raw.columns) == ["ID", "Label"]
    assert set(raw["Label"].unique()) <= {0, 1}
    ids = raw["ID"].str.rsplit("_", n=1).str[0]
    classes = raw["ID"].str.rsplit("_", n=1).str[1]
    assert len(raw) % 6 == 0
    # Six consecutive rows per image, in CLASSES order.
    assert (classes.to_numpy().reshape(-1, 6) == np.array(CLASSES)).all()
    assert (ids.to_numpy().reshape(-1, 6) == ids.to_numpy().reshape(-1, 6)[:, :1]).all()
    files = sorted(p.stem for p in (root / "stage_2_train").glob("*.dcm"))
    assert sorted(ids.unique()) == files
    assert all(re.fullmatch(r"ID_[0-9a-f]{9}", f) for f in files)
    truth = pd.read_csv(root / "truth.csv")
    assert sorted(truth["image_id"]) == files
    assert {"image_id", "study_uid", "series_uid", "true_index", "z", *CLASSES} <= set(
        truth.columns
    )
    assert truth["study_uid"].nunique() == N_STUDIES
    sizes = truth.groupby("study_uid").size()
    assert sizes.between(20, 30).all()


def test_truth_any_is_or_and_index_follows_z(dataset):
    root, _ = dataset
    truth = pd.read_csv(root / "truth.csv")
    sub = truth[list(SUBTYPES)].to_numpy()
    assert (truth["any"].to_numpy() == sub.max(axis=1)).all()
    for _, g in truth.groupby("study_uid"):
        g = g.sort_values("true_index")
        assert g["true_index"].tolist() == list(range(len(g)))
        assert (np.diff(g["z"].to_numpy()) > 0).all()  # 0 = most inferior


def test_positive_fraction_and_subtypes(dataset):
    root, _ = dataset
    truth = pd.read_csv(root / "truth.csv")
    positive = truth.groupby("study_uid")["any"].max()
    assert 0.3 <= positive.mean() <= 0.5
    # Each positive study is positive for at least one subtype on several slices.
    per_study = truth.groupby("study_uid")[list(SUBTYPES)].sum()
    assert (per_study[positive == 1].max(axis=1) >= 2).all()


def test_label_errors_are_exactly_the_differences(dataset):
    root, res = dataset
    truth = pd.read_csv(root / "truth.csv").set_index("image_id")[list(CLASSES)]
    csv = _csv_labels(root).loc[truth.index]
    rows, cols = np.nonzero(csv.to_numpy() != truth.to_numpy())
    diff = []
    for r, c in zip(rows, cols, strict=True):
        img, cls = truth.index[r], CLASSES[c]
        diff.append((img, cls, int(truth.at[img, cls]), int(csv.at[img, cls])))
    errors = pd.read_csv(root / "label_errors.csv")
    assert list(errors.columns) == ["image_id", "class", "clean", "noisy"]
    listed = sorted(errors.itertuples(index=False, name=None))
    assert listed == sorted(diff)
    assert len(listed) >= 1
    assert (errors["clean"] != errors["noisy"]).all()
    assert len(res.errors) == len(errors)


def test_dicom_headers_vary_like_scanners(dataset):
    root, res = dataset
    truth = pd.read_csv(root / "truth.csv")
    tilts, encodings, orders, multi = [], set(), set(), False
    for _, g in truth.groupby("study_uid"):
        g = g.sort_values("true_index")
        headers = [
            pydicom.dcmread(root / "stage_2_train" / f"{i}.dcm", stop_before_pixels=True)
            for i in g["image_id"]
        ]
        iop = np.array([float(x) for x in headers[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        proj = [float(np.dot(normal, [float(x) for x in h.ImagePositionPatient])) for h in headers]
        assert (np.diff(proj) > 0).all()  # sorting on the normal gives the true order
        np.testing.assert_allclose(proj, g["z"].to_numpy(), atol=1e-3)
        tilts.append(abs(np.degrees(np.arcsin(np.clip(iop[5], -1, 1)))))
        inst = [int(h.InstanceNumber) for h in headers]
        orders.add(
            "ascending"
            if inst == sorted(inst)
            else "descending"
            if inst == sorted(inst)[::-1]
            else "other"
        )
        h0 = headers[0]
        encodings.add((int(h0.PixelRepresentation), int(h0.BitsStored), float(h0.RescaleIntercept)))
        multi |= h0["WindowCenter"].VM > 1
        assert h0.Modality == "CT" and h0.StudyInstanceUID and h0.SeriesInstanceUID
        assert len({h.SeriesInstanceUID for h in headers}) == 1
        spacing = float(h0.PixelSpacing[0]) * SIZE / 512
        assert 0.4 <= spacing <= 0.55
    assert any(10 <= t <= 25 for t in tilts), tilts
    assert sum(t > 1 for t in tilts) <= N_STUDIES // 2
    assert (0, 12, 0.0) in encodings  # the RSNA 12-bit quirk
    assert {e[0] for e in encodings} == {0, 1}  # unsigned and signed pixels
    assert orders - {"ascending"}  # instance numbers are not always in z order
    assert multi
    assert set(res.studies["encoding"]) <= {"uint16", "int16", "quirk12"}


def test_hu_ranges_after_rescale_and_unwrap(dataset):
    root, _ = dataset
    truth = pd.read_csv(root / "truth.csv")
    seen_quirk = False
    for _, g in truth.groupby("study_uid"):
        g = g.sort_values("true_index")
        k = int(round(0.6 * (len(g) - 1)))  # a mid-brain level: skull, brain, ventricles
        hu, ds = _read_hu(root / "stage_2_train" / f"{g['image_id'].iloc[k]}.dcm")
        n = hu.shape[0]
        c, r = n // 2, int(0.12 * n)
        brain = np.median(hu[c - r : c + r, c - r : c + r])
        assert 15 <= brain <= 50, brain
        assert np.percentile(hu, 99.5) > 700  # skull
        assert hu.max() < 3100
        air = hu[1:4, c - 3 : c + 3]  # in front of the face, inside the field of view
        assert -1100 <= air.mean() <= -900
        if ds.BitsStored == 12 and float(ds.RescaleIntercept) == 0:
            seen_quirk = True
            naive = ds.pixel_array.astype(float) * float(ds.RescaleSlope)
            assert naive[1:4, c - 3 : c + 3].mean() > 3000  # a naive reader sees air as noise
    assert seen_quirk


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_labels_follow_bleed_voxels(subtype):
    st = make_study(3, 0, size=96, plan=StudyPlan(subtypes=(subtype,), n_slices=24))
    j = SUBTYPES.index(subtype)
    assert st.labels[:, j].sum() >= 1
    np.testing.assert_array_equal(st.labels[:, :5], st.areas > AREA_THRESHOLD_MM2)
    np.testing.assert_array_equal(st.labels[:, 5], st.labels[:, :5].max(axis=1))
    others = [i for i in range(5) if i != j]
    assert st.areas[:, others].sum() == 0
    # The most affected slice really holds blood-density pixels inside the skull.
    k = int(np.argmax(st.areas[:, j]))
    blood = (st.hu[k] > 48) & (st.hu[k] < 95)
    assert blood.sum() * st.pixel_spacing**2 > AREA_THRESHOLD_MM2 / 2


def test_normal_study_has_no_labels_and_levels_rise():
    st = make_study(4, 1, size=64, plan=StudyPlan(n_slices=20))
    assert st.labels.sum() == 0
    assert st.hu.shape == (20, 64, 64) and st.hu.dtype == np.float32
    assert (np.diff(st.levels) > 0).all()


def test_inject_label_noise_by_hand():
    # One study, 12 slices, subdural run at 3..7 and an epidural run at 9..10.
    labels = np.zeros((12, 6), dtype=np.uint8)
    labels[3:8, 4] = 1
    labels[9:11, 0] = 1
    labels[:, 5] = labels[:, :5].max(axis=1)
    studies = np.array(["s"] * 12)
    order = np.arange(12)[::-1].copy()  # rows stored in reverse: order still defines the runs
    same, none = inject_label_noise(labels, studies, order, 0.0, np.random.default_rng(0))
    assert (same == labels).all() and none.empty
    seen = set()
    for seed in range(40):
        noisy, err = inject_label_noise(labels, studies, order, 1.0, np.random.default_rng(seed))
        rows, cols = np.nonzero(noisy != labels)
        assert sorted(zip(err["row"], err["class"], strict=True)) == sorted(
            (int(r), CLASSES[c]) for r, c in zip(rows, cols, strict=True)
        )
        assert len(err) >= 1
        seen |= set(err["kind"])
        ordinary = err[err["kind"] != "any"]
        for r in set(ordinary["row"]):  # ordinary errors keep "any" = OR of subtypes
            if r not in set(err.loc[err["kind"] == "any", "row"]):
                assert noisy[r, 5] == noisy[r, :5].max()
    assert {"gap", "isolated", "extend", "shorten", "any"} <= seen
    with pytest.raises(ValueError):
        inject_label_noise(labels, studies, order, 1.5, np.random.default_rng(0))


def test_deterministic_for_a_seed_and_workers(tmp_path):
    a = generate_dataset(tmp_path / "a", 2, seed=5, size=64, slices=(20, 21))
    b = generate_dataset(tmp_path / "b", 2, seed=5, size=64, slices=(20, 21), workers=2)
    c = generate_dataset(tmp_path / "c", 2, seed=6, size=64, slices=(20, 21))
    for name in ("stage_2_train.csv", "truth.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "truth.csv").read_bytes() != (
        tmp_path / "c" / "truth.csv"
    ).read_bytes()
    for image_id in a.truth["image_id"]:
        fa = pydicom.dcmread(tmp_path / "a" / "stage_2_train" / f"{image_id}.dcm")
        fb = pydicom.dcmread(tmp_path / "b" / "stage_2_train" / f"{image_id}.dcm")
        assert fa.PixelData == fb.PixelData
        assert fa.SOPInstanceUID == fb.SOPInstanceUID
    assert set(a.truth["image_id"]).isdisjoint(c.truth["image_id"])
    assert not (tmp_path / "a" / "label_errors.csv").exists()
    assert b.labels.equals(a.labels)


def test_montage_png(tmp_path):
    from PIL import Image

    studies = [make_study(8, 0, size=64, plan=StudyPlan(subtypes=("subdural",), n_slices=20))]
    out = save_montage(tmp_path / "m.png", studies, seed=2, size=64, tile=100, columns=4)
    img = np.asarray(Image.open(out))
    assert img.shape[1] == 400
    assert img.shape[0] > 200  # two rows of titled tiles
    assert img.std() > 20  # not a blank canvas


def test_cli_writes_dataset(tmp_path, capsys):
    rc = main(
        [
            "--out",
            str(tmp_path / "d"),
            "--studies",
            "1",
            "--seed",
            "1",
            "--size",
            "48",
            "--min-slices",
            "20",
            "--max-slices",
            "20",
        ]
    )
    assert rc == 0
    assert len(list((tmp_path / "d" / "stage_2_train").glob("ID_*.dcm"))) == 20
    out = capsys.readouterr().out
    assert "SYN" not in out  # no patient identifiers in the log line


def test_cli_randomise_fraction_is_the_library_mix(tmp_path, capsys):
    """--randomise-fraction F writes what generate_dataset(randomise=F) writes (the recipe
    for half-randomised data in train/README.md), and a fraction outside (0, 1] is refused."""
    args = ["--studies", "4", "--seed", "5", "--size", "48", "--min-slices", "8",
            "--max-slices", "8"]
    assert main(["--out", str(tmp_path / "cli"), *args, "--randomise-fraction", "0.5"]) == 0
    generate_dataset(tmp_path / "lib", 4, seed=5, size=48, slices=(8, 8), randomise=0.5)
    plain = generate_dataset(tmp_path / "plain", 4, seed=5, size=48, slices=(8, 8))
    for name in ("truth.csv", "stage_2_train.csv"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    cli_files = sorted((tmp_path / "cli" / "stage_2_train").glob("*.dcm"))
    lib_files = sorted((tmp_path / "lib" / "stage_2_train").glob("*.dcm"))
    assert [f.name for f in cli_files] == [f.name for f in lib_files]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(cli_files, lib_files, strict=True))
    # ...and it is a mix: not every study is the plain dataset's.
    plain_bytes = {f.name: f.read_bytes()
                   for f in (plain.root / "stage_2_train").glob("*.dcm")}
    same = [plain_bytes.get(f.name) == f.read_bytes() for f in cli_files]
    assert not all(same)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), *args, "--randomise-fraction", "1.5"])
    with pytest.raises(SystemExit):  # both: which one was meant?
        main(["--out", str(tmp_path / "bad"), *args, "--randomise", "--randomise-fraction", "0.5"])
    assert not (tmp_path / "bad").exists()


def test_thin_slice_series_of_the_same_exams(tmp_path, capsys):
    """--slice-spacing 1.25: every study is another series of the same exam, cut at 1.25 mm
    (about four times the slices over about the same extent), labelled by the same rule."""
    args = ["--studies", "3", "--seed", "7", "--size", "48", "--min-slices", "10",
            "--max-slices", "12"]
    assert main(["--out", str(tmp_path / "thick"), *args]) == 0
    assert main(["--out", str(tmp_path / "thin"), *args, "--slice-spacing", "1.25"]) == 0
    thick = pd.read_csv(tmp_path / "thick" / "truth.csv")
    thin = pd.read_csv(tmp_path / "thin" / "truth.csv")
    assert set(thick["study_uid"]) == set(thin["study_uid"])
    assert not set(thick["series_uid"]) & set(thin["series_uid"])
    assert not set(thick["image_id"]) & set(thin["image_id"])
    n_thick = thick.groupby("study_uid").size()
    n_thin = thin.groupby("study_uid").size()
    for uid, n in n_thick.items():  # (n - 1) x 5 mm / 1.25 mm + 1 slices
        assert n_thin[uid] == round((n - 1) * 5.0 / 1.25) + 1
    for uid, rows in thin.groupby("study_uid"):
        z = np.sort(rows["z"].to_numpy())
        assert np.allclose(np.diff(z), 1.25, atol=0.05), uid
    files = sorted((tmp_path / "thin" / "stage_2_train").glob("*.dcm"))
    assert float(pydicom.dcmread(files[0], stop_before_pixels=True).SliceThickness) == 1.25
    # two spacings of one seed, and another seed's plain dataset, share no image id
    other = generate_dataset(tmp_path / "thin2", 3, seed=7, size=48, slices=(10, 12),
                             slice_spacing=2.0)
    plain8 = generate_dataset(tmp_path / "plain8", 3, seed=7 + 10**6, size=48, slices=(10, 12))
    for ids in (set(other.truth["image_id"]), set(plain8.truth["image_id"])):
        assert not ids & set(thin["image_id"])
    with pytest.raises(ValueError, match="slice_spacing must be in"):
        generate_dataset(tmp_path / "bad", 1, seed=1, size=48, slices=(8, 8), slice_spacing=0.1)
    capsys.readouterr()


def test_refuses_to_mix_with_other_files(tmp_path):
    generate_dataset(tmp_path, 1, seed=1, size=48, slices=(20, 20))
    generate_dataset(tmp_path, 1, seed=1, size=48, slices=(20, 20))  # same files: fine
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, 1, seed=2, size=48, slices=(20, 20))


def test_positive_fraction_enriches_bleeds(tmp_path: Path) -> None:
    rich = generate_dataset(
        tmp_path / "rich", 6, seed=3, size=64, slices=(8, 9), positive_fraction=1.0
    )
    plain = generate_dataset(tmp_path / "plain", 6, seed=3, size=64, slices=(8, 9))
    n_rich = int((rich.studies["subtypes"] != "").sum())
    n_plain = int((plain.studies["subtypes"] != "").sum())
    # every study is planned with a bleed; a tiny 64 px study can lose one to the area rule
    assert n_rich >= 4 and n_rich > n_plain, (n_rich, n_plain)
    with pytest.raises(ValueError, match="positive_fraction"):
        generate_dataset(tmp_path / "bad", 2, seed=3, size=64, slices=(8, 9), positive_fraction=1.5)


def _run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hohoho_core.synthetic", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_python_m_writes_the_same_tiny_dataset_as_the_library(tmp_path: Path) -> None:
    args = ["--studies", "1", "--seed", "4", "--size", "32", "--min-slices", "8"]
    res = _run_module("--out", str(tmp_path / "cli"), *args, "--max-slices", "8")
    assert res.returncode == 0, res.stderr
    assert "wrote 1 studies, 8 slices" in res.stdout
    made = generate_dataset(tmp_path / "lib", 1, seed=4, size=32, slices=(8, 8))
    files = sorted((tmp_path / "cli" / "stage_2_train").glob("ID_*.dcm"))
    assert [p.stem for p in files] == sorted(made.truth["image_id"])
    for name in ("stage_2_train.csv", "truth.csv"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    for path in files:
        assert path.read_bytes() == (tmp_path / "lib" / "stage_2_train" / path.name).read_bytes()


def test_python_m_help_lists_every_option() -> None:
    res = _run_module("--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: python -m hohoho_core.synthetic")
    for option in (
        "--out",
        "--studies",
        "--seed",
        "--size",
        "--label-noise",
        "--min-slices",
        "--max-slices",
        "--workers",
        "--positive-fraction",
        "--slice-spacing",
        "--montage",
    ):
        assert option in res.stdout


def test_public_names_are_importable() -> None:
    import hohoho_core
    from hohoho_core import synthetic
    from hohoho_core.synthetic import plan, study, writer

    expected = {
        "AREA_THRESHOLD_MM2",
        "DEFAULT_POSITIVE_FRACTION",
        "ENCODINGS",
        "NEUTRAL_VARIATION",
        "Bleed",
        "StudyPlan",
        "SyntheticStudy",
        "SyntheticTruth",
        "Variation",
        "ct_dataset",
        "draw_variation",
        "generate_dataset",
        "inject_label_noise",
        "main",
        "make_study",
        "save_montage",
        "save_randomisation_montage",
        "stored_values",
        "unwrap_quirk",
        "write_dataset",
    }
    assert set(synthetic.__all__) == expected
    for name in expected:
        assert getattr(synthetic, name) is not None, name
    # One definition each: the package re-exports its modules' objects, it does not copy them.
    assert synthetic.StudyPlan is plan.StudyPlan and synthetic.make_study is study.make_study
    assert synthetic.write_dataset is writer.write_dataset
    assert hohoho_core.generate_dataset is synthetic.generate_dataset
    assert hohoho_core.save_montage is synthetic.save_montage
    assert synthetic.DEFAULT_POSITIVE_FRACTION == 0.4
    assert synthetic.ENCODINGS == ("uint16", "int16", "quirk12")


#: Modules on the inference path: none of them may import the phantom generator.
INFERENCE_MODULES = ("predict", "dicom", "rsna", "preprocess", "models", "weights", "cache")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_inference_modules_never_import_the_generator() -> None:
    core = REPO / "hohoho_core"
    files: list[Path] = []
    for name in INFERENCE_MODULES:
        files += [core / f"{name}.py"] if (core / f"{name}.py").exists() else []
        files += sorted((core / name).rglob("*.py")) if (core / name).is_dir() else []
    assert len(files) >= len(INFERENCE_MODULES)
    for path in files:
        bad = {m for m in _imported_modules(path) if "synthetic" in m}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
