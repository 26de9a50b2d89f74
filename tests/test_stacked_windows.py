"""The neighbours x windows input ("stacked_windows", nine channels), end to end.

Issue 13 compares it with the poster's stacked input and the three-window input at equal
budget, so it must be the same model and pipeline with a wider first convolution.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hohoho_core.augment import slab_channels, to_model_input
from hohoho_core.models import SequenceModel, create_model
from hohoho_core.predict import Predictor
from hohoho_core.preprocess import (
    WINDOWS,
    PreprocessConfig,
    crop_and_resize_hu,
    make_input,
    stack_neighbours,
    window_hu,
)
from hohoho_core.weights import ModelConfig, load_weights, save_weights


def _hu(seed: int = 0, slices: int = 5, side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full((slices, side, side), -1000.0, np.float32)
    hu[:, 8:-8, 8:-8] = rng.normal(35, 40, (slices, side - 16, side - 16))
    hu[:, 20:30, 20:30] += np.arange(slices, dtype=np.float32)[:, None, None] * 30
    return hu


def test_nine_channels_are_each_window_of_each_neighbour() -> None:
    cfg = PreprocessConfig(mode="stacked_windows", size=32)
    hu = _hu()
    x = make_input(hu, cfg)
    assert cfg.channels == 9 and x.shape == (5, 9, 32, 32)
    small = crop_and_resize_hu(hu, cfg)
    for w, name in enumerate(cfg.windows):
        np.testing.assert_array_equal(
            x[:, 3 * w : 3 * w + 3], stack_neighbours(window_hu(small, *WINDOWS[name]))
        )
    # Window-major: the first three channels are exactly the poster's stacked input.
    np.testing.assert_array_equal(x[:, :3], make_input(hu, PreprocessConfig(size=32)))
    assert cfg.centre_channel == 1 and PreprocessConfig(mode="windows").centre_channel == 0
    # The subdural and bone groups differ from the brain group (not three copies).
    assert not np.array_equal(x[:, 0:3], x[:, 3:6])
    assert not np.array_equal(x[:, 3:6], x[:, 6:9])


def test_training_twin_matches_inference_input() -> None:
    cfg = PreprocessConfig(mode="stacked_windows", size=32)
    small = crop_and_resize_hu(_hu(1), cfg)
    assert slab_channels(cfg) == 3
    slabs = torch.from_numpy(stack_neighbours(small))
    np.testing.assert_array_equal(to_model_input(slabs, cfg).numpy(), make_input(_hu(1), cfg))


def test_widened_model_equals_the_three_channel_model_on_equal_groups() -> None:
    torch.manual_seed(0)
    three = create_model("resnet18").eval()
    nine = create_model("resnet18", in_channels=9).eval()
    assert nine.backbone.conv1.weight.shape[1] == 9
    # The widened kernel is the RGB kernel / 3 per group, so equal groups give equal outputs.
    state = three.state_dict()
    state["backbone.conv1.weight"] = state["backbone.conv1.weight"].repeat(1, 3, 1, 1) / 3
    nine.load_state_dict(state)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = three(x)[1], nine(x.repeat(1, 3, 1, 1))[1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\[N, 9, H, W\]"):
        nine(x)
    with pytest.raises(ValueError, match="multiple of 3"):
        create_model("resnet18", in_channels=4)


def test_weights_folder_rebuilds_nine_channels_and_predicts(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cnn = create_model("resnet18", in_channels=9).eval()
    lstm = SequenceModel(cnn.embed_dim, hidden=8, layers=1, use_logits=True).eval()
    config = ModelConfig(
        arch="resnet18", embed_dim=512,
        preprocess={"mode": "stacked_windows", "size": 32, "crop": True},
        lstm={"hidden": 8, "layers": 1, "use_logits": True},
        thresholds=[0.5] * 6,
    )
    save_weights(tmp_path / "w", cnn, lstm, config, dtype=torch.float32)
    loaded = load_weights(tmp_path / "w")
    assert loaded.cnn.in_channels == 9
    x = torch.rand(3, 9, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.cnn(x)[1], cnn(x)[1])
    predictor = Predictor(loaded.cnn, loaded.lstm, loaded.config)
    x_in = predictor.preprocess(SimpleNamespace(hu=_hu(2)))  # only .hu is read
    assert x_in.shape == (5, 9, 32, 32)
    emb, logits = predictor.predict_input(x_in)
    assert emb.shape == (5, 512) and logits.shape == (5, 6)
    with pytest.raises(ValueError, match=r"\[S, 9, H, W\]"):
        predictor.predict_input(x_in[:, :3])
