"""Whole-study inference with small random models saved and loaded through the real format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hohoho_core.labels import CLASSES
from hohoho_core.models import SequenceModel, create_model
from hohoho_core.predict import (
    Predictor,
    positive_runs,
    prediction_record,
    submission_id,
    write_predictions,
)
from hohoho_core.study import LoadReport, SliceInfo, Study
from hohoho_core.weights import ModelConfig, load_weights, save_weights
from tests.conftest import phantom_volume

THRESHOLDS = [0.5, 0.5, 0.5, 0.5, 0.5, 0.0]  # "any" at 0: every slice positive


def make_weights(
    folder: Path,
    *,
    lstm: bool = True,
    seed: int = 0,
    size: int = 64,
    dtype: torch.dtype = torch.float16,
    thresholds: list[float] | None = None,
) -> Path:
    """A small random ResNet-18 (+ LSTM) saved as a real weights folder."""
    torch.manual_seed(seed)
    cnn = create_model("resnet18").eval()
    lstm_kw = {"hidden": 8, "layers": 2, "use_logits": True, "use_diffs": True}
    seq = SequenceModel(cnn.embed_dim, **lstm_kw).eval() if lstm else None
    config = ModelConfig(
        arch="resnet18",
        embed_dim=cnn.embed_dim,
        preprocess={"mode": "stacked", "size": size, "crop": True},
        lstm=lstm_kw if lstm else None,
        thresholds=list(thresholds or THRESHOLDS),
        training={"note": "random test model"},
    )
    return save_weights(folder, cnn, seq, config, dtype=dtype)


def make_study(n_slices: int = 5, size: int = 64, seed: int = 0) -> Study:
    hu = phantom_volume(n_slices, size, seed)
    slices = [
        SliceInfo(f"ID_{seed:02x}{k:06x}", f"ID_{seed:02x}{k:06x}.dcm", None, k + 1, None, 5.0 * k)
        for k in range(n_slices)
    ]
    return Study(f"1.2.3.{seed}", f"1.2.3.{seed}.1", hu, slices, (0.5, 0.5), 5.0, LoadReport())


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights"))


def test_predict_shapes_labels_and_summary(weights_dir: Path) -> None:
    predictor = Predictor.from_folder(weights_dir, batch_size=2)
    study = make_study(5)
    pred = predictor.predict(study)
    assert pred.image_ids == study.image_ids
    assert pred.cnn_prob.shape == (5, 6) and pred.lstm_prob.shape == (5, 6)
    assert pred.embeddings.shape == (5, 512) and pred.embeddings.dtype == np.float32
    np.testing.assert_array_equal(pred.prob, pred.lstm_prob)  # the LSTM is the final output
    assert ((pred.cnn_prob > 0) & (pred.cnn_prob < 1)).all()
    np.testing.assert_array_equal(pred.labels, pred.prob >= np.array(THRESHOLDS))
    s = pred.summary
    assert s.n_slices == 5 and s.positive["any"] and s.ranges["any"] == [(0, 4)]
    for k, c in enumerate(CLASSES):
        assert s.max_prob[c] == pytest.approx(float(pred.prob[:, k].max()))
        assert s.positive[c] == bool(pred.labels[:, k].any())
        assert s.ranges[c] == positive_runs(pred.labels[:, k])


def test_predict_matches_models_and_is_deterministic(weights_dir: Path) -> None:
    predictor = Predictor.from_folder(weights_dir, batch_size=4)
    study = make_study(6, seed=1)
    a, b = predictor.predict(study), predictor.predict(study)
    for name in ("cnn_prob", "lstm_prob", "embeddings", "labels"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name  # bit-identical
    # Same numbers as running the loaded models by hand on the preprocessed input.
    cnn, lstm, _ = load_weights(weights_dir)
    x = torch.from_numpy(predictor.preprocess(study))
    assert x.shape == (6, 3, 64, 64)
    with torch.no_grad():
        emb, logits = cnn(x)
        seq = lstm(emb[None], torch.ones(1, 6, dtype=torch.bool), logits[None])[0]
    np.testing.assert_allclose(a.embeddings, emb.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.cnn_prob, torch.sigmoid(logits).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.lstm_prob, torch.sigmoid(seq).numpy(), rtol=1e-4, atol=1e-6)
    # Batch size changes only rounding.
    small = Predictor.from_folder(weights_dir, batch_size=1).predict(study)
    np.testing.assert_allclose(small.cnn_prob, a.cnn_prob, rtol=1e-4, atol=1e-6)
    emb2, logits2 = predictor.predict_input(x.numpy())
    assert np.array_equal(emb2, a.embeddings) and logits2.shape == (6, 6)


def test_save_load_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    first = make_weights(tmp_path / "a", seed=3, dtype=torch.float32)
    cnn, lstm, config = load_weights(first)
    save_weights(tmp_path / "b", cnn, lstm, config, dtype=torch.float32)
    study = make_study(4, seed=2)
    in_memory = Predictor(cnn, lstm, config).predict(study)
    reloaded = Predictor.from_folder(tmp_path / "b").predict(study)
    for name in ("cnn_prob", "lstm_prob", "embeddings", "labels"):
        assert np.array_equal(getattr(in_memory, name), getattr(reloaded, name)), name


def test_cnn_only_weights(tmp_path: Path) -> None:
    folder = make_weights(tmp_path, lstm=False, thresholds=[1.0] * 6)
    pred = Predictor.from_folder(folder).predict(make_study(3))
    assert pred.lstm_prob is None
    np.testing.assert_array_equal(pred.prob, pred.cnn_prob)
    assert not pred.labels.any() and pred.summary.ranges["any"] == []


def test_positive_runs() -> None:
    assert positive_runs(np.array([0, 1, 1, 0, 1, 0, 1, 1, 1], bool)) == [(1, 2), (4, 4), (6, 8)]
    assert positive_runs(np.zeros(4, bool)) == []
    assert positive_runs(np.ones(3, bool)) == [(0, 2)]


def test_write_predictions_csv_and_json(weights_dir: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_folder(weights_dir)
    preds = [predictor.predict(make_study(3, seed=s)) for s in (4, 5)]
    records = [prediction_record(p) for p in preds]
    out = tmp_path / "preds.csv"
    written = write_predictions(records, out)
    assert written == [out, tmp_path / "preds_studies.csv"]
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Label"] and len(rows) == 1 + 2 * 3 * 6
    assert rows[1][0] == f"{preds[0].image_ids[0]}_epidural"
    assert rows[6][0] == f"{preds[0].image_ids[0]}_any"
    assert float(rows[6][1]) == pytest.approx(float(preds[0].prob[0, 5]), rel=1e-5)
    assert not any(r[0].startswith("ID_ID_") for r in rows[1:])
    with (tmp_path / "preds_studies.csv").open() as f:
        studies = list(csv.DictReader(f))
    assert [s["study_uid"] for s in studies] == ["1.2.3.4", "1.2.3.5"]
    assert studies[0]["positive_any"] == "1" and studies[0]["n_slices"] == "3"
    doc = json.loads(write_predictions(records, tmp_path / "p.json")[0].read_text())
    assert doc["classes"] == list(CLASSES) and len(doc["studies"]) == 2
    assert doc["studies"][1]["image_ids"] == preds[1].image_ids
    assert submission_id("1.2.840.99", "any") == "ID_1.2.840.99_any"
    with pytest.raises(ValueError):
        write_predictions(records, tmp_path / "p.txt")


# --------------------------------------------------------------------------- process state


@pytest.fixture
def odd_torch_state():
    """Thread count and int8 engine set to values no library default would pick."""
    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(3)
    torch.backends.quantized.engine = "qnnpack"
    yield 3, "qnnpack"
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = engine


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_constructing_a_predictor_leaves_process_state_alone(
    weights_dir: Path, odd_torch_state: tuple[int, str], precision: str
) -> None:
    threads, engine = odd_torch_state
    cnn, lstm, config = load_weights(weights_dir)
    study = make_study(4)
    calib = Predictor(cnn, lstm, config).preprocess(study)
    deterministic = torch.backends.cudnn.deterministic
    predictor = Predictor(cnn, lstm, config, precision=precision, calibration=calib)
    predictor.predict(study)
    Predictor.from_folder(weights_dir, precision=precision).predict(study)
    assert torch.get_num_threads() == threads
    assert torch.backends.quantized.engine == engine
    assert torch.backends.cudnn.deterministic == deterministic


def test_int8_refuses_to_run_under_another_engine(
    weights_dir: Path, odd_torch_state: tuple[int, str]
) -> None:
    cnn, lstm, config = load_weights(weights_dir)
    study = make_study(4)
    int8 = Predictor(cnn, lstm, config, precision="int8")  # qnnpack, calibrated lazily
    int8.predict(study)
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines \
        else "fbgemm"
    with pytest.raises(RuntimeError, match="quantised for the 'qnnpack' engine"):
        int8.predict(study)


def test_int8_without_calibration_calibrates_on_the_first_study(weights_dir: Path) -> None:
    cnn, lstm, config = load_weights(weights_dir)
    study = make_study(6, seed=3)
    lazy = Predictor(cnn, lstm, config, precision="int8")
    explicit = Predictor(cnn, lstm, config, precision="int8",
                         calibration=Predictor(cnn, lstm, config).preprocess(study))
    a, b = lazy.predict(study), explicit.predict(study)
    assert np.array_equal(a.cnn_prob, b.cnn_prob)
    # Later studies reuse that calibration: same model, same output as the explicit one.
    other = make_study(5, seed=7)
    assert np.array_equal(lazy.predict(other).cnn_prob, explicit.predict(other).cnn_prob)


def test_from_folder_int8_uses_the_calibration_file(weights_dir: Path, tmp_path: Path) -> None:
    import shutil

    from hohoho_core.weights import save_calibration

    folder = tmp_path / "w"
    shutil.copytree(weights_dir, folder)
    studies = [make_study(6, seed=11).hu, make_study(5, seed=12).hu]
    save_calibration(folder, studies, "test phantoms")
    cnn, lstm, config = load_weights(folder)
    fp32 = Predictor(cnn, lstm, config)
    calib = np.concatenate([fp32.preprocess(make_study(6, seed=11)),
                            fp32.preprocess(make_study(5, seed=12))])
    want = Predictor(cnn, lstm, config, precision="int8", calibration=calib)
    got = Predictor.from_folder(folder, precision="int8")
    study = make_study(4, seed=1)
    assert np.array_equal(got.predict(study).cnn_prob, want.predict(study).cnn_prob)
    # Calibrating on the study itself instead gives another int8 model.
    assert not np.array_equal(
        Predictor.from_folder(weights_dir, precision="int8").predict(study).cnn_prob,
        got.predict(study).cnn_prob)


def test_inference_never_imports_the_phantom_generator() -> None:
    import subprocess
    import sys

    code = ("import sys, hohoho_core.predict, hohoho_core.evaluate, hohoho_core.weights; "
            "print(any(m.startswith('hohoho_core.synthetic') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_temperatures_in_the_config_calibrate_both_outputs(weights_dir: Path,
                                                           tmp_path: Path) -> None:
    """config.temperatures divide the LSTM logits and cnn_temperatures the CNN's; the
    LSTM itself still reads the raw CNN logits, so only the reported probabilities move."""
    cnn, lstm, config = load_weights(weights_dir)
    study = make_study()
    plain = Predictor(cnn, lstm, config).predict(study)
    temps = [2.0, 0.5, 1.0, 3.0, 1.5, 4.0]
    config.temperatures, config.cnn_temperatures = temps, temps[::-1]
    folder = save_weights(tmp_path / "w", cnn, lstm, config)
    hot = Predictor.from_folder(folder).predict(study)

    def scaled(p: np.ndarray, t: list[float]) -> np.ndarray:
        z = np.log(p) - np.log1p(-p)
        return 1 / (1 + np.exp(-z / np.asarray(t)))

    np.testing.assert_allclose(hot.prob, scaled(plain.prob, temps), atol=2e-3)
    np.testing.assert_allclose(hot.cnn_prob, scaled(plain.cnn_prob, temps[::-1]), atol=2e-3)
    np.testing.assert_array_equal(hot.embeddings, plain.embeddings)


def test_temperatures_are_validated_and_absent_keys_stay_absent() -> None:
    from hohoho_core.weights import WeightsError

    base = ModelConfig().to_dict()
    assert "temperatures" not in base and "cnn_temperatures" not in base
    with pytest.raises(WeightsError, match="temperatures"):
        ModelConfig.from_dict({**base, "temperatures": [1.0, 0.0, 1, 1, 1, 1]})
    with pytest.raises(WeightsError, match="cnn_temperatures"):
        ModelConfig.from_dict({**base, "cnn_temperatures": [1.0] * 5})
    ok = ModelConfig.from_dict({**base, "temperatures": [1.5] * 6})
    assert ok.to_dict()["temperatures"] == [1.5] * 6


def test_predict_prepared_gives_the_bits_of_predict(weights_dir: Path) -> None:
    """The batch pipeline preprocesses in another process and calls predict_prepared."""
    predictor = Predictor.from_folder(weights_dir)
    study = make_study(6, seed=3)
    whole = predictor.predict(study)
    split = predictor.predict_prepared(predictor.preprocess(study), study.study_uid,
                                       study.series_uid, study.image_ids)
    assert prediction_record(split) == prediction_record(whole)
    with pytest.raises(ValueError, match="image ids"):
        predictor.predict_prepared(predictor.preprocess(study), "s", "r", ["one"])
