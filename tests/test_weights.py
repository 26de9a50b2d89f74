"""Weights folder: safetensors + config.json round trip, pickle refusal, mismatch errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hohoho_core.models import LstmConfig, SequenceModel, create_model
from hohoho_core.preprocess import PreprocessConfig
from hohoho_core.weights import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    TENSORS_FILE,
    ModelConfig,
    WeightsError,
    default_weights_dir,
    load_calibration,
    load_weights,
    save_calibration,
    save_weights,
)

REPO = Path(__file__).resolve().parents[1]

LSTM_KW = {"hidden": 8, "layers": 2, "use_logits": True, "use_diffs": True}


def _models(seed: int = 0):
    torch.manual_seed(seed)
    cnn = create_model("resnet18").eval()
    lstm = SequenceModel(cnn.embed_dim, **LSTM_KW).eval()
    # Non-trivial BatchNorm statistics, so the round trip covers buffers too.
    for m in cnn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    config = ModelConfig(
        arch="resnet18",
        embed_dim=512,
        preprocess={"mode": "stacked", "size": 64, "crop": True},
        lstm=dict(LSTM_KW),
        thresholds=[0.3, 0.4, 0.5, 0.5, 0.6, 0.45],
        training={"loss": "asl", "epochs": 1},
        data={"source": "test"},
        metrics={"f2_macro": 0.1},
    )
    return cnn, lstm, config


def _outputs(cnn, lstm, x):
    with torch.no_grad():
        emb, logits = cnn(x)
        mask = torch.ones(1, x.shape[0], dtype=torch.bool)
        seq = lstm(emb[None], mask, logits[None]) if lstm is not None else None
    return emb, logits, seq


def test_round_trip_float32_is_identical(tmp_path: Path) -> None:
    cnn, lstm, config = _models()
    save_weights(tmp_path / "w", cnn, lstm, config, dtype=torch.float32)
    loaded_cnn, loaded_lstm, loaded_cfg = load_weights(tmp_path / "w")
    x = torch.rand(4, 3, 64, 64)
    for a, b in zip(_outputs(cnn, lstm, x), _outputs(loaded_cnn, loaded_lstm, x), strict=True):
        assert torch.equal(a, b)
    assert loaded_cfg.thresholds == config.thresholds
    assert loaded_cfg.lstm == LstmConfig(**LSTM_KW)
    assert loaded_cfg.training == {"loss": "asl", "epochs": 1}
    assert loaded_cfg.created  # filled in at save time
    assert not loaded_cnn.training


def test_float16_storage_loads_as_float32(tmp_path: Path) -> None:
    cnn, lstm, config = _models(1)
    save_weights(tmp_path / "w", cnn, lstm, config)  # default float16
    stored = load_file(str(tmp_path / "w" / TENSORS_FILE))
    assert stored["cnn.backbone.conv1.weight"].dtype == torch.float16
    assert stored["cnn.backbone.bn1.num_batches_tracked"].dtype == torch.int64
    assert all(k.startswith(("cnn.", "lstm.")) for k in stored)
    loaded = load_weights(tmp_path / "w")
    assert loaded.cnn.head.weight.dtype == torch.float32
    x = torch.rand(2, 3, 64, 64)
    a, b = _outputs(cnn, lstm, x), _outputs(loaded.cnn, loaded.lstm, x)
    torch.testing.assert_close(a[1], b[1], rtol=0.05, atol=0.05)
    # Saving the loaded model again in float16 and reloading is exact (idempotent).
    save_weights(tmp_path / "w2", loaded.cnn, loaded.lstm, loaded.config)
    again = load_weights(tmp_path / "w2")
    for p, q in zip(
        _outputs(loaded.cnn, loaded.lstm, x), _outputs(again.cnn, again.lstm, x), strict=True
    ):
        assert torch.equal(p, q)


def test_cnn_only_folder(tmp_path: Path) -> None:
    cnn, _, config = _models(2)
    config.lstm = None
    save_weights(tmp_path, cnn, None, config)
    loaded = load_weights(tmp_path)
    assert loaded.lstm is None
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["arch"] == "resnet18"


@pytest.mark.parametrize("name", ["model.pt", "checkpoint.pth", "weights.bin", "x.pkl", "a.ckpt"])
def test_pickle_in_folder_is_refused(tmp_path: Path, name: str) -> None:
    cnn, lstm, config = _models()
    save_weights(tmp_path, cnn, lstm, config)
    (tmp_path / name).write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(WeightsError, match="pickle"):
        load_weights(tmp_path)


def test_renamed_torch_save_is_refused(tmp_path: Path) -> None:
    cnn, lstm, config = _models()
    save_weights(tmp_path, cnn, lstm, config)
    # A torch.save zip written under the safetensors name, without ever loading it back.
    torch.save({"cnn.head.weight": torch.zeros(6, 512)}, tmp_path / TENSORS_FILE)
    with pytest.raises(WeightsError, match="not a safetensors file.*pickle"):
        load_weights(tmp_path)
    # A legacy (non-zip) pickle too.
    (tmp_path / TENSORS_FILE).write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_weights(tmp_path)


def test_mismatched_config_is_a_clear_error(tmp_path: Path) -> None:
    cnn, lstm, config = _models()
    save_weights(tmp_path, cnn, lstm, config)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())

    # Config says resnet34: more layers than the file holds.
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "arch": "resnet34"}))
    with pytest.raises(WeightsError, match=r"missing \d+ tensors.*cnn\.backbone\.layer"):
        load_weights(tmp_path)
    # Config says no LSTM while the file holds one.
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "lstm": None}))
    with pytest.raises(WeightsError, match=r"unexpected \d+ tensors.*lstm\."):
        load_weights(tmp_path)
    # Another hidden size: same names, other shapes.
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "lstm": {**LSTM_KW, "hidden": 16}}))
    with pytest.raises(WeightsError, match="other shapes"):
        load_weights(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "thresholds": [0.5] * 5}))
    with pytest.raises(WeightsError, match="thresholds"):
        load_weights(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "preprocess": {"mode": "rgb"}}))
    with pytest.raises(WeightsError, match="preprocess"):
        load_weights(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "version": 99}))
    with pytest.raises(WeightsError, match="newer"):
        load_weights(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(WeightsError, match="cannot read"):
        load_weights(tmp_path)


def test_missing_and_extra_tensors_named(tmp_path: Path) -> None:
    cnn, lstm, config = _models()
    save_weights(tmp_path, cnn, lstm, config)
    tensors = load_file(str(tmp_path / TENSORS_FILE))
    del tensors["cnn.head.bias"]
    tensors["cnn.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / TENSORS_FILE))
    with pytest.raises(WeightsError) as info:
        load_weights(tmp_path)
    assert "cnn.head.bias" in str(info.value) and "cnn.extra.weight" in str(info.value)


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "absent")
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_weights(tmp_path)


def test_save_checks_config_against_models(tmp_path: Path) -> None:
    cnn, lstm, config = _models()
    with pytest.raises(WeightsError, match="lstm"):
        save_weights(tmp_path, cnn, None, config)
    config.arch = "resnet34"
    with pytest.raises(WeightsError, match="does not match"):
        save_weights(tmp_path, cnn, lstm, config)
    assert not (tmp_path / TENSORS_FILE).exists()


def test_numpy_values_in_config_are_saved_as_json(tmp_path: Path) -> None:
    import numpy as np

    cnn, lstm, config = _models()
    config.thresholds = list(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=np.float32))
    config.metrics = {"auc": np.array([0.5, np.nan]), "f2": np.float32(0.25), "n": np.int64(3)}
    config.training = {"out": tmp_path / "run"}
    save_weights(tmp_path / "w", cnn, lstm, config)
    loaded = load_weights(tmp_path / "w").config
    assert loaded.thresholds == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert loaded.metrics["f2"] == 0.25 and loaded.metrics["n"] == 3
    # strict JSON: a NaN metric is stored as null
    assert loaded.metrics["auc"][0] == 0.5 and loaded.metrics["auc"][1] is None
    assert loaded.training == {"out": str(tmp_path / "run")}
    config.data = {"bad": object()}
    with pytest.raises(TypeError):
        save_weights(tmp_path / "w3", cnn, lstm, config)
    assert not (tmp_path / "w3" / TENSORS_FILE).exists()


# --------------------------------------------------------------------------- typed config


def test_shipped_config_loads_typed_and_saves_the_same_json() -> None:
    raw = json.loads((REPO / "weights" / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = ModelConfig.from_dict(raw)
    assert isinstance(cfg.preprocess, PreprocessConfig) and cfg.preprocess.size == 160
    assert cfg.preprocess.mode == "windows"
    assert isinstance(cfg.lstm, LstmConfig) and cfg.lstm.use_logits and cfg.lstm.dropout == 0.2
    again = json.loads(json.dumps(cfg.to_dict()))
    assert again == raw
    assert list(again) == list(raw)  # same key order, so the file text is the same too
    assert ModelConfig.from_dict(again) == cfg


def test_config_round_trip_through_save_writes_identical_json(tmp_path: Path) -> None:
    cnn, lstm, config = _models()
    save_weights(tmp_path / "a", cnn, lstm, config)
    first = (tmp_path / "a" / CONFIG_FILE).read_text(encoding="utf-8")
    c2, l2, cfg2 = load_weights(tmp_path / "a")
    save_weights(tmp_path / "b", c2, l2, cfg2)
    assert (tmp_path / "b" / CONFIG_FILE).read_text(encoding="utf-8") == first
    assert json.loads(first)["lstm"] == {**LstmConfig().to_dict(), **LSTM_KW}


def test_dict_and_dataclass_configs_are_the_same_config() -> None:
    as_dicts = ModelConfig(preprocess={"mode": "gray", "size": 32}, lstm={"hidden": 4})
    typed = ModelConfig(preprocess=PreprocessConfig(mode="gray", size=32),
                        lstm=LstmConfig(hidden=4))
    assert as_dicts == typed
    with pytest.raises(WeightsError, match="lstm config is invalid"):
        ModelConfig(lstm={"hidden": 4, "heads": 2})
    with pytest.raises(WeightsError, match="in_dim"):
        ModelConfig(lstm={"in_dim": 512})
    with pytest.raises(WeightsError, match="preprocess"):
        ModelConfig(preprocess={"size": 3})


def test_lstm_config_builds_the_sequence_model() -> None:
    model = LstmConfig(hidden=6, layers=1, use_logits=True).build(in_dim=10)
    assert isinstance(model, SequenceModel) and model.use_logits
    assert model.lstm.hidden_size == 6 and model.lstm.num_layers == 1


# --------------------------------------------------------------------------- default folder


def test_default_weights_dir_prefers_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOHOHO_WEIGHTS", str(tmp_path / "mine"))
    assert default_weights_dir() == tmp_path / "mine"
    monkeypatch.delenv("HOHOHO_WEIGHTS")
    # In this checkout the repository's weights/ sits beside the package.
    assert default_weights_dir() == REPO / "weights"


def test_default_weights_dir_falls_back_to_the_working_folder(monkeypatch, tmp_path) -> None:
    import hohoho_core.weights_dir as W

    monkeypatch.delenv("HOHOHO_WEIGHTS", raising=False)
    # As installed into site-packages: no repository beside the package.
    fake = tmp_path / "site-packages" / "hohoho_core" / "weights_dir.py"
    monkeypatch.setattr(W, "__file__", str(fake))
    assert W.default_weights_dir() == Path("weights")
    assert default_weights_dir() == Path("weights")  # the name weights.py re-exports


# --------------------------------------------------------------------------- calibration


def test_calibration_round_trip_is_exact_and_compact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    whole = rng.integers(-1024, 3000, size=(3, 8, 8)).astype(np.float32)
    fractional = whole[:2] + 0.25
    save_calibration(tmp_path, [whole, fractional], "test")
    back = load_calibration(tmp_path)
    assert back is not None and len(back) == 2
    assert np.array_equal(back[0], whole) and np.array_equal(back[1], fractional)
    assert all(a.dtype == np.float32 for a in back)
    stored = load_file(str(tmp_path / CALIBRATION_FILE))
    assert [stored[k].dtype for k in sorted(stored)] == [torch.int16, torch.float32]
    assert load_calibration(tmp_path / "none") is None
    with pytest.raises(ValueError, match=r"\[S, H, W\]"):
        save_calibration(tmp_path, [whole[0]])


def test_calibration_file_refuses_a_pickle(tmp_path: Path) -> None:
    (tmp_path / CALIBRATION_FILE).write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(WeightsError, match="not a safetensors"):
        load_calibration(tmp_path)


def test_shipped_calibration_file_holds_two_whole_hu_studies() -> None:
    stored = load_file(str(REPO / "weights" / CALIBRATION_FILE))
    assert sorted(stored) == ["study_000", "study_001"]
    assert all(t.dtype == torch.int16 and t.shape == (16, 256, 256) for t in stored.values())


def test_nan_metrics_are_written_as_null_strict_json(tmp_path: Path) -> None:
    cnn, lstm, config = _models()
    config.metrics = {"test": {"f2_macro": float("nan")}, "val": [1.0, float("inf")]}
    save_weights(tmp_path / "w", cnn, lstm, config)
    text = (tmp_path / "w" / CONFIG_FILE).read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = load_weights(tmp_path / "w").config
    assert loaded.metrics == {"test": {"f2_macro": None}, "val": [1.0, None]}
