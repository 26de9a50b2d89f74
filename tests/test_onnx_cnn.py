"""The fp32 CNN run by ONNX Runtime (`hohoho_core.onnx_cnn`): same answers as torch, or torch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hohoho_core import onnx_cnn as onnx_mod
from hohoho_core.__main__ import main
from hohoho_core.predict import Predictor
from hohoho_core.synthetic import generate_dataset
from tests.test_predict import make_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("onnx") / "w", size=32)


def _input(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 32, 32), dtype=np.float32)


def test_auto_runs_onnxruntime_with_torch_answers(weights: Path) -> None:
    fast = Predictor.from_folder(weights, precision="fp32")
    slow = Predictor.from_folder(weights, precision="fp32", engine="torch")
    assert fast.engine == "onnxruntime" and slow.engine == "torch"
    assert "CNN run by onnxruntime" in fast.path_note
    x = _input(20)
    e1, l1 = fast.predict_input(x)
    e0, l0 = slow.predict_input(x)
    assert e1.dtype == np.float32 and e1.shape == e0.shape and l1.shape == l0.shape
    # The same fp32 arithmetic in other kernels: rounding apart, not bit for bit.
    np.testing.assert_allclose(l1, l0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e1, e0, rtol=1e-4, atol=1e-5)
    # Same bits every call, and a slice's answer does not depend on its batch.
    assert np.array_equal(fast.predict_input(x)[1], l1)
    one = Predictor.from_folder(weights, precision="fp32", batch_size=1)
    assert one.engine == "onnxruntime"
    assert np.array_equal(one.predict_input(x)[1], l1)


def test_other_paths_and_missing_runtime_stay_in_torch(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Predictor.from_folder(weights, precision="bf16").engine == "torch (TorchScript)"
    with pytest.raises(ValueError, match="fp32 CNN on the CPU only"):
        Predictor.from_folder(weights, precision="bf16", engine="onnxruntime")
    with pytest.raises(ValueError, match="engine must be one of"):
        Predictor.from_folder(weights, precision="fp32", engine="tensorrt")
    monkeypatch.setattr(onnx_mod, "onnx_available", lambda: False)
    assert Predictor.from_folder(weights, precision="fp32").engine == "torch"
    with pytest.raises(ValueError, match="not installed or cannot run"):
        Predictor.from_folder(weights, precision="fp32", engine="onnxruntime")


def test_an_export_that_disagrees_with_torch_never_runs(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Predictor.from_folder(weights, precision="fp32").engine == "onnxruntime"
    real_call = onnx_mod.OnnxCnn.__call__

    def off_by_a_bit(self: onnx_mod.OnnxCnn, x: torch.Tensor) -> tuple:
        emb, logits = real_call(self, x)
        return emb, logits + 0.01

    monkeypatch.setattr(onnx_mod.OnnxCnn, "__call__", off_by_a_bit)
    predictor = Predictor.from_folder(weights, precision="fp32")
    assert predictor.engine == "torch"

    def broken(self: onnx_mod.OnnxCnn, x: torch.Tensor) -> tuple:
        raise RuntimeError("a kernel this CPU lacks")

    monkeypatch.setattr(onnx_mod.OnnxCnn, "__call__", broken)
    assert Predictor.from_folder(weights, precision="fp32").engine == "torch"


def test_onnx_without_onnxruntime_is_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_mod.onnx_available()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    assert not onnx_mod.onnx_available()


def test_cli_says_which_engine_ran_and_both_agree(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    generate_dataset(data, n_studies=1, seed=5, size=48, slices=(8, 8))
    outs = {}
    for engine in ("auto", "torch"):
        out = tmp_path / f"{engine}.csv"
        rc = main(["predict", str(data), "--weights", str(weights), "--out", str(out),
                   "--workers", "0", "--engine", engine])
        assert rc == 0
        printed = capsys.readouterr().out
        want = "onnxruntime" if engine == "auto" else "torch"
        assert f"CNN run by {want}" in printed
        outs[engine] = np.loadtxt(out, delimiter=",", skiprows=1, usecols=1)
    np.testing.assert_allclose(outs["auto"], outs["torch"], atol=1e-4)
    rc = main(["predict", str(data), "--weights", str(weights), "--out",
               str(tmp_path / "x.csv"), "--precision", "int8", "--engine", "onnxruntime"])
    assert rc != 0
    assert "fp32 CNN on the CPU only" in capsys.readouterr().err


def test_sessions_are_reused_for_the_same_weights_only(weights: Path, tmp_path: Path) -> None:
    a = Predictor.from_folder(weights, precision="fp32")
    b = Predictor.from_folder(weights, precision="fp32")
    other = Predictor.from_folder(make_weights(tmp_path / "w2", size=32, seed=1),
                                  precision="fp32")
    assert a._infer_cnn is b._infer_cnn  # same bytes: the export is not repeated
    assert other.engine == "onnxruntime" and other._infer_cnn is not a._infer_cnn
    x = _input(4, seed=3)
    slow = Predictor.from_folder(tmp_path / "w2", precision="fp32", engine="torch")
    np.testing.assert_allclose(other.predict_input(x)[1], slow.predict_input(x)[1],
                               rtol=1e-4, atol=1e-5)
    # A single changed weight is another model: a fresh session, with its own answers.
    cnn, lstm, config = a.cnn, a.lstm, a.config
    with torch.no_grad():
        cnn.head.weight[0, 0] += 1.0
    changed = Predictor(cnn, lstm, config)
    assert changed._infer_cnn is not a._infer_cnn
    assert not np.array_equal(changed.predict_input(x)[1], a.predict_input(x)[1])
