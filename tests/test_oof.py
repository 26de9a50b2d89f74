"""Out-of-fold probabilities (train.oof_predict) and the audit scoring arithmetic
(bench.audit_scoring)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import audit_scoring as bench
from hohoho_core.audit import read_probs_csv
from hohoho_core.labels import CLASSES
from train import oof_predict

# --- a tiny real run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def oof_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from hohoho_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("oof")
    data = root / "data"
    truth = generate_dataset(data, 4, seed=3, size=128, label_noise=0.05, slices=(8, 10))
    out = root / "oof.csv"
    args = oof_predict.get_args_parser().parse_args([
        "--data", str(data), "--folds", "2", "--seed", "1", "--size", "32", "--epochs", "1",
        "--batch-size", "8", "--threads", "1", "--device", "cpu", "--out", str(out),
        "--run-dir", str(root / "run"), "--no-progress", "--stage2", "--lstm-epochs", "1",
    ])
    result = oof_predict.main(args)
    return {"data": data, "truth": truth.truth, "out": out, "run": root / "run",
            "result": result}


@pytest.mark.parametrize("which", ["cnn+lstm", "cnn"])
def test_oof_writes_six_probabilities_for_every_image(oof_run: dict, which: str) -> None:
    path = oof_run["out"] if which == "cnn+lstm" else oof_predict.cnn_path(oof_run["out"])
    frame = pd.read_csv(path, dtype={"ID": str})
    assert list(frame.columns) == ["ID", "Label"]
    images = sorted(oof_run["truth"]["image_id"])
    expected = {f"{i}_{c}" for i in images for c in CLASSES}
    assert len(frame) == 6 * len(images)
    assert set(frame["ID"]) == expected
    prob = read_probs_csv(path, images)
    assert prob.shape == (len(images), 6)
    assert np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()
    assert oof_run["result"]["stage"] == "cnn+lstm"
    assert oof_run["result"]["images"] == len(images)


def test_stage2_probabilities_are_the_lstms_not_a_copy(oof_run: dict) -> None:
    images = sorted(oof_run["truth"]["image_id"])
    lstm = read_probs_csv(oof_run["out"], images)
    cnn = read_probs_csv(oof_predict.cnn_path(oof_run["out"]), images)
    assert np.abs(lstm - cnn).max() > 1e-3
    for fold in (0, 1):  # the LSTM trained on the fold's training studies only
        emb = np.load(oof_run["run"] / f"fold_{fold}" / "emb" / "emb_train.npz")
        splits = json.loads((oof_run["run"] / f"fold_{fold}" / "splits.json").read_text())
        assert set(emb["study"].tolist()) == set(splits["train"])


def test_each_image_predicted_once_by_a_model_that_never_saw_its_study(oof_run: dict) -> None:
    folds = pd.read_csv(oof_predict.folds_path(oof_run["out"]), dtype={"image_id": str})
    assert sorted(folds["image_id"]) == sorted(oof_run["truth"]["image_id"])
    assert not folds["image_id"].duplicated().any()
    assert set(folds["fold"]) == {0, 1}
    for fold, part in folds.groupby("fold"):
        # what the fold's model was trained on, as train_cnn.py recorded it
        splits = json.loads((oof_run["run"] / f"fold_{fold}" / "splits.json").read_text())
        assert set(part["study_key"]).isdisjoint(splits["train"])
        assert set(part["study_key"]) == set(splits["val"])
        assert (oof_run["run"] / f"fold_{fold}" / "checkpoint.safetensors").is_file()
    # a study's slices all come from one fold
    assert (folds.groupby("study_key")["fold"].nunique() == 1).all()


# --- folds ----------------------------------------------------------------------------


def _studies(patients: list[str], positive: list[int]) -> pd.DataFrame:
    n = len(patients)
    return pd.DataFrame({"key": [f"k{i:02d}" for i in range(n)],
                         "study_uid": [f"s{i:02d}" for i in range(n)],
                         "patient": patients, "positive": positive})


def test_assign_folds_keeps_a_patient_in_one_fold_and_spreads_positives() -> None:
    patients = ["p0", "p0", "p1", "p2", "p2", "p3", "p4", "p5", "p6", "p7"]
    positive = [1, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    out = oof_predict.assign_folds(_studies(patients, positive), 2, seed=0)
    assert set(out["fold"]) == {0, 1}
    assert (out.groupby("group")["fold"].nunique() == 1).all()
    assert out.loc[out["key"] == "k00", "fold"].item() == out.loc[out["key"] == "k01", "fold"].item()
    # 4 positive patients over 2 folds: 2 each
    pos_groups = out[out["positive"] == 1].drop_duplicates("group")
    assert sorted(pos_groups["fold"].value_counts().tolist()) == [2, 2]
    for fold in (0, 1):
        s = oof_predict.fold_splits(out, fold)
        assert set(s["train"]).isdisjoint(s["val"])
        assert sorted(s["train"] + s["val"]) == sorted(out["key"])


def test_assign_folds_falls_back_to_studies_and_rejects_too_many_folds() -> None:
    out = oof_predict.assign_folds(_studies(["", "", "", ""], [0, 1, 0, 1]), 2, seed=0)
    assert list(out["group"]) == ["s00", "s01", "s02", "s03"]
    with pytest.raises(ValueError, match="cannot fill"):
        oof_predict.assign_folds(_studies(["", "", ""], [0, 0, 0]), 4, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        oof_predict.assign_folds(_studies(["", ""], [0, 0]), 1, seed=0)


def test_write_probs_csv_round_trips_through_the_audit_reader(tmp_path: Path) -> None:
    ids = ["ID_0b", "ID_0a"]
    prob = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    path = oof_predict.write_probs_csv(tmp_path / "p.csv", ids, prob)
    text = path.read_text().splitlines()
    assert text[0] == "ID,Label"
    assert text[1] == "ID_0a_epidural,0.9"  # sorted by image id, CLASSES order
    np.testing.assert_allclose(read_probs_csv(path, ids), prob)
    with pytest.raises(ValueError):
        oof_predict.write_probs_csv(tmp_path / "bad.csv", ids, prob[:1])


# --- scoring arithmetic ---------------------------------------------------------------


def _ranked() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"],
        "class": ["any", "epidural", "any", "subdural", "any"],
        "score": [0.9, 0.8, 0.5, 0.0, 0.0],
    })


def _errors() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["b", "d", "c"], "class": ["epidural", "subdural", "subdural"]})


def test_precision_recall_at_k_by_hand() -> None:
    ranked, errors = _ranked(), _errors()
    r = bench.precision_recall_at_k(ranked, errors, 2)
    assert (r["hits"], r["precision"], r["recall"]) == (1, 0.5, pytest.approx(1 / 3))
    # d is an error inside the top 4 but scored 0: not a flag, not found; c is flagged for
    # "any", the error is its "subdural" cell: not found either
    r = bench.precision_recall_at_k(ranked, errors, 4)
    assert (r["hits"], r["precision"], r["recall"]) == (1, 0.25, pytest.approx(1 / 3))
    r = bench.precision_recall_at_k(ranked, errors.iloc[:1], 1)
    assert (r["hits"], r["precision"], r["recall"]) == (0, 0.0, 0.0)
    with pytest.raises(ValueError):
        bench.precision_recall_at_k(ranked, errors, 0)


def test_k_values_and_wilson_interval() -> None:
    assert bench.k_values(5) == [2, 5, 10]
    assert bench.k_values(1) == [1, 2]
    lo, hi = bench.wilson_interval(5, 10)  # textbook value: 0.2366 to 0.7634
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = bench.wilson_interval(0, 4)
    assert lo == 0.0 and hi == pytest.approx(0.4899, abs=1e-4)
    assert all(math.isnan(v) for v in bench.wilson_interval(0, 0))


def test_error_kinds_names_each_injected_error() -> None:
    n = 6
    truth = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "study_uid": "s",
                          "true_index": range(n)})
    for c in CLASSES:
        truth[c] = 0
    truth["subdural"] = [0, 1, 1, 1, 0, 0]
    truth["intraparenchymal"] = [1, 1, 0, 0, 0, 0]
    truth["any"] = [1, 1, 1, 1, 0, 0]
    truth = truth.sample(frac=1.0, random_state=0)  # order must come from true_index
    errors = pd.DataFrame({
        "image_id": ["i2", "i4", "i5", "i1", "i2", "i3"],
        "class": ["subdural", "subdural", "epidural", "intraparenchymal", "any", "any"],
        "clean": [1, 0, 0, 1, 1, 1],
        "noisy": [0, 1, 1, 0, 0, 0],
    })
    kinds = bench.error_kinds(truth, errors)
    assert kinds.tolist() == ["gap", "extend", "isolated", "shorten", "any + gap", "any flip"]


def test_score_rankings_and_verdict() -> None:
    errors = _errors()
    rankings = {name: _ranked() for name, _ in bench.SIGNALS}
    # combined finds b and d (d scored > 0 here), the others only b
    combined = _ranked()
    combined.loc[combined["image_id"] == "d", "score"] = 0.7
    combined = combined.sort_values("score", ascending=False, kind="stable")
    rankings["combined"] = combined
    kinds = pd.Series(["extend", "gap", "gap"])
    scores = bench.score_rankings(rankings, errors, kinds)
    assert scores["n_errors"] == 3 and scores["k"] == [2, 3, 6]
    comb = scores["signals"]["combined"]
    assert [r["hits"] for r in comb["at_k"]] == [1, 2, 2]
    assert comb["recall_by_kind_at_2x"] == {"extend": [1, 1], "gap": [1, 2]}
    assert scores["signals"]["sequence only"]["flags"] == 3
    v = bench.verdict(scores)
    assert v["k"] == 6 and v["combined_recall"] == pytest.approx(2 / 3)
    assert not v["reaches_target"] and v["above_each_alone"]
    assert "does not reach" in bench.verdict_sentence(v, scores)
    cause = bench.cause_sentence(scores)
    assert "1 gap" in cause and "extend" not in cause


def test_stale_cached_labels_are_detected(oof_run: dict, tmp_path: Path) -> None:
    from hohoho_core.cache import StudyCache

    cache = StudyCache(oof_run["run"] / "cache" / "studies")
    keys = cache.keys()
    csv = oof_run["data"] / "stage_2_train.csv"
    assert oof_predict.stale_label_studies(cache, keys, csv) == 0
    frame = pd.read_csv(csv, dtype={"ID": str})
    frame.loc[0, "Label"] = 1 - frame.loc[0, "Label"]  # a reviewer relabels one cell
    edited = tmp_path / "relabelled.csv"
    frame.to_csv(edited, index=False)
    assert oof_predict.stale_label_studies(cache, keys, edited) == 1


# --- one fold per call, the training cache, torchrun ----------------------------------


def _oof_cmd(data: Path, run: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--folds", "2", "--seed", "1", "--size", "32", "--epochs", "1",
            "--batch-size", "8", "--threads", "1", "--device", "cpu", "--out", str(out),
            "--run-dir", str(run), "--cache-dir", str(cache), "--no-progress", *extra]


def _cache_files(cache: Path) -> dict[str, int]:
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns
            for p in (cache / "studies").rglob("*") if p.is_file()}


def test_one_fold_per_call_reusing_the_training_cache(oof_run: dict, tmp_path: Path) -> None:
    """--fold K calls (any order) on the cache another run built: nothing is cached again,
    --out appears only when the last fold is done, and equals the all-folds run's."""
    cache = oof_run["run"] / "cache"  # built by the fixture's run, as train_cnn would
    before = _cache_files(cache)
    run, out = tmp_path / "run", tmp_path / "oof.csv"
    parse = oof_predict.get_args_parser().parse_args
    prepared = oof_predict.main(parse(_oof_cmd(oof_run["data"], run, out, cache,
                                               "--prepare-only")))
    assert prepared == {"prepared": 4} and (run / "folds.json").is_file()
    first = oof_predict.main(parse(_oof_cmd(oof_run["data"], run, out, cache, "--fold", "1")))
    assert first == {"done_folds": [1], "missing_folds": [0]}
    assert not out.exists() and oof_predict.part_path(run, 1).is_file()
    last = oof_predict.main(parse(_oof_cmd(oof_run["data"], run, out, cache, "--fold", "0")))
    assert last["images"] == len(oof_run["truth"]) and out.is_file()
    assert _cache_files(cache) == before  # the existing cache was reused, not rewritten

    # Same folds, seeds and settings as the fixture's all-folds run: same probabilities.
    images = sorted(oof_run["truth"]["image_id"])
    np.testing.assert_allclose(read_probs_csv(out, images),
                               read_probs_csv(oof_predict.cnn_path(oof_run["out"]), images),
                               atol=2e-6)
    folds = pd.read_csv(oof_predict.folds_path(out), dtype={"image_id": str})
    ref = pd.read_csv(oof_predict.folds_path(oof_run["out"]), dtype={"image_id": str})
    assert folds["fold"].tolist() == ref["fold"].tolist()


def test_a_call_with_other_settings_is_refused(oof_run: dict, tmp_path: Path) -> None:
    run, out, cache = tmp_path / "run", tmp_path / "oof.csv", oof_run["run"] / "cache"
    parse = oof_predict.get_args_parser().parse_args
    oof_predict.main(parse(_oof_cmd(oof_run["data"], run, out, cache, "--prepare-only")))
    with pytest.raises(SystemExit, match="--epochs"):
        oof_predict.main(parse(_oof_cmd(oof_run["data"], run, out, cache, "--fold", "0",
                                        "--epochs", "2")))
    with pytest.raises(SystemExit, match="--fold 2 is not in 0..1"):
        oof_predict.main(parse(_oof_cmd(oof_run["data"], run, out, cache, "--fold", "2")))
    assert not oof_predict.part_path(run, 0).exists()


@pytest.mark.slow
def test_folds_under_torchrun_with_two_processes(oof_run: dict, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    run, out = tmp_path / "run", tmp_path / "oof.csv"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "train.oof_predict",
           *_oof_cmd(oof_run["data"], run, out, oof_run["run"] / "cache", "--fold", "0",
                     "--fold", "1")]
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads((run / "oof_result.json").read_text())
    assert [f["processes"] for f in result["per_fold"]] == [2, 2]
    assert "cpu x2" in res.stdout + res.stderr  # each fold trained by both ranks
    folds = pd.read_csv(oof_predict.folds_path(out), dtype={"image_id": str})
    assert sorted(folds["image_id"]) == sorted(oof_run["truth"]["image_id"])  # once each
    images = sorted(oof_run["truth"]["image_id"])
    prob = read_probs_csv(out, images)
    assert np.isfinite(prob).all() and prob.shape == (len(images), 6)
