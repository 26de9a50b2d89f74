"""``python -m hohoho_core evaluate``: per-class report, strict JSON, retuned weights folders."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from hohoho_core.__main__ import main
from hohoho_core.labels import CLASSES
from hohoho_core.retune import retune_thresholds, thresholds_for_sensitivity
from hohoho_core.weights import load_weights
from tests.test_predict import make_weights


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("eval_weights"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hohoho_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("eval_rsna")
    generate_dataset(root, n_studies=3, seed=11, size=96, slices=(8, 9), positive_fraction=1.0)
    return root


def _run(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def test_sensitivity_rule_is_the_highest_cut_reaching_the_target() -> None:
    y = np.array([[1], [1], [1], [1], [0], [0]])
    p = np.array([[0.9], [0.8], [0.4], [0.2], [0.85], [0.1]])
    assert thresholds_for_sensitivity(y, p, 0.5, np.array([0.7]))[0] == pytest.approx(0.8)
    assert thresholds_for_sensitivity(y, p, 0.75, np.array([0.7]))[0] == pytest.approx(0.4)
    assert thresholds_for_sensitivity(y, p, 1.0, np.array([0.7]))[0] == pytest.approx(0.2)
    # no positives: the fallback stays
    assert thresholds_for_sensitivity(y * 0, p, 0.9, np.array([0.7]))[0] == 0.7
    with pytest.raises(ValueError, match="sensitivity"):
        thresholds_for_sensitivity(y, p, 0.0, np.array([0.5]))


def test_fbeta_rule_keeps_the_old_threshold_for_a_class_without_positives() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0], [-1, -1]])
    p = np.array([[0.9, 0.3], [0.2, 0.6], [0.7, 0.1], [0.5, 0.5]])
    thr = retune_thresholds(y, p, np.array([0.5, 0.42]))
    assert 0.2 < thr[0] <= 0.7 and thr[1] == 0.42


def test_evaluate_prints_per_class_writes_strict_json_and_retunes(
    weights_dir: Path, labelled: Path, tmp_path: Path
) -> None:
    report, new = tmp_path / "rep.json", tmp_path / "retuned"
    rc, out = _run(["evaluate", "--weights", str(weights_dir), "--data", str(labelled),
                    "--out", str(report), "--retune", str(new), "--sensitivity", "0.9"])
    assert rc == 0
    for c in CLASSES:
        assert c in out
    assert "3 studies" in out and f"-> {new}" in out
    text = report.read_text()
    assert "NaN" not in text and "Infinity" not in text
    rep = json.loads(text)
    assert rep["studies"] == 3 and set(rep["reports"]) >= {"cnn"}
    assert rep["retuned"]["rule"] == "sensitivity"
    # The new folder loads, has the retuned thresholds and says what they were tuned on;
    # the original folder is untouched.
    old, loaded = load_weights(weights_dir).config, load_weights(new).config
    np.testing.assert_allclose(loaded.thresholds, rep["retuned"]["thresholds"])
    assert loaded.data["retuned"]["target"] == 0.9 and loaded.data["retuned"]["studies"] == 3
    assert "retuned" not in old.data
    # Every slice of a class with positives is kept at >= 90 % recall by the new thresholds.
    rc, _ = _run(["evaluate", "--weights", str(new), "--data", str(labelled)])
    assert rc == 0


def test_evaluate_refuses_to_overwrite_and_bad_arguments(
    weights_dir: Path, labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["evaluate", "--weights", str(weights_dir), "--data", str(labelled),
                 "--retune", str(busy)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (busy / "keep.txt").read_text() == "mine"
    assert main(["evaluate", "--weights", str(weights_dir), "--data", str(labelled),
                 "--retune", str(weights_dir)]) == 2
    assert main(["evaluate", "--data", str(labelled), "--sensitivity", "0.9"]) == 2
    assert "--retune" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "unlabelled"
    empty.mkdir()
    assert main(["evaluate", "--weights", str(weights_dir), "--data", str(empty)]) == 2


def test_evaluate_scores_the_precision_it_is_asked_for(
    weights_dir: Path, labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp32 unless asked; --precision bf16 scores the bf16 CNN, says so on stdout and in the
    report, and gives close but not identical probabilities (the same slices, scored)."""
    ref, fast = tmp_path / "fp32.json", tmp_path / "bf16.json"
    rc, out = _run(["evaluate", "--weights", str(weights_dir), "--data", str(labelled),
                    "--out", str(ref)])
    assert rc == 0 and "precision: fp32 (requested)" in out
    rc, out = _run(["evaluate", "--weights", str(weights_dir), "--data", str(labelled),
                    "--out", str(fast), "--precision", "bf16"])
    assert rc == 0 and "precision: bf16 (requested); CNN run by torch" in out
    a, b = json.loads(ref.read_text()), json.loads(fast.read_text())
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    assert b["engine"].startswith("torch") and a["slices"] == b["slices"] > 0
    loss_a, loss_b = a["reports"]["cnn"]["log_loss"], b["reports"]["cnn"]["log_loss"]
    assert loss_a != loss_b and abs(loss_a - loss_b) < 0.05
    # The fp32-only engine cannot run bf16: a clear error, not a silent fp32 run.
    assert main(["evaluate", "--weights", str(weights_dir), "--data", str(labelled),
                 "--precision", "bf16", "--engine", "onnxruntime"]) == 2
    assert "fp32 CNN on the CPU only" in capsys.readouterr().err


def test_predict_sample_submission_check_lists_missing_images(
    weights_dir: Path, labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    data = tmp_path / "test_set"
    shutil.copytree(labelled, data)
    files = sorted((data / "stage_2_train").glob("*.dcm"))
    ids = [f.stem for f in files]
    sample = tmp_path / "sample.csv"
    sample.write_text("ID,Label\n" + "".join(f"{i}_{c},0.5\n" for i in ids for c in CLASSES))
    out = tmp_path / "sub.csv"
    assert main(["predict", str(data), "--weights", str(weights_dir), "--out", str(out),
                 "--sample-submission", str(sample)]) == 0
    assert f"all {len(ids)} images" in capsys.readouterr().out
    # A corrupt file: reported by name, and the submission check fails listing its ID.
    files[3].write_bytes(files[3].read_bytes()[:1500])  # truncated, as a broken copy is
    assert main(["predict", str(data), "--weights", str(weights_dir), "--out", str(out),
                 "--sample-submission", str(sample)]) == 2
    err = capsys.readouterr().err
    assert "1 files not used" in err and files[3].name in err
    assert ".csv" not in err  # the labels CSVs beside the images are not noise here
    assert f"1 of {len(ids)} images of the sample submission have no prediction" in err
    assert ids[3] in err
    assert out.is_file()  # the work is kept


def test_index_names_its_cache_and_says_when_a_folder_has_no_labels(
    labelled: Path, tmp_path: Path
) -> None:
    import shutil

    cache = tmp_path / "idx"
    rc, out = _run(["index", str(labelled), "--cache-dir", str(cache)])
    assert rc == 0 and f"header index cached under: {cache}" in out
    assert "positive slices:" in out and "labels: none" not in out
    bare = tmp_path / "bare"
    shutil.copytree(labelled / "stage_2_train", bare)
    rc, out = _run(["index", str(bare), "--cache-dir", str(cache)])
    assert rc == 0 and "labels: none" in out and "positive slices" not in out
