"""Stage-2 options for data from another source (issue 13): the residual sequence model,
the logits-only input, sequence augmentation along z, and their place in the weights config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hohoho_core.labels import CLASSES
from hohoho_core.models import LstmConfig, SequenceModel, create_model
from hohoho_core.predict import Predictor
from hohoho_core.weights import (
    ModelConfig,
    WeightsError,
    load_weights,
    save_weights,
    shipped_weights_dir,
)
from tests.test_predict import make_study
from train import train_lstm

K = len(CLASSES)


def _batch(b: int = 2, s: int = 7, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, s, d, generator=g)
    logits = 3 * torch.randn(b, s, K, generator=g)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 5:] = False  # a shorter study, padded
    return emb, mask, logits


@pytest.mark.parametrize("train_mode", [False, True])
def test_untrained_residual_model_returns_the_cnn_logits_exactly(train_mode: bool) -> None:
    torch.manual_seed(0)
    model = SequenceModel(16, hidden=8, residual=True, use_logits=True, dropout=0.3)
    model.train(train_mode)  # dropout acts inside; the zero head still adds nothing
    emb, mask, logits = _batch()
    out = model(emb, mask, logits)
    assert torch.equal(out[mask], logits[mask])
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    base, seq = model.parts(emb, mask, logits)
    assert torch.equal(seq, torch.zeros_like(seq)) and torch.equal(base, out)


def test_residual_correction_is_added_to_the_scaled_logits() -> None:
    torch.manual_seed(1)
    model = SequenceModel(16, hidden=8, residual=True, use_logits=True).eval()
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.normal_()
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-0.5)
    emb, mask, logits = _batch(seed=3)
    base, seq = model.parts(emb, mask, logits)
    assert seq[mask].abs().min() > 0  # a real correction now
    torch.testing.assert_close(base[mask], 2.0 * logits[mask] - 0.5)
    torch.testing.assert_close(model(emb, mask, logits), base + seq)


def test_plain_model_output_is_the_lstm_head_as_before() -> None:
    """Non-residual models compute exactly what they always did: head(LSTM(norm(x)))."""
    torch.manual_seed(2)
    model = SequenceModel(16, hidden=8, use_logits=True, use_diffs=True).eval()
    assert not hasattr(model, "logit_scale")
    emb, mask, logits = _batch(seed=4)
    x = model.norm(model.features(emb, mask, logits))
    ref = []
    for i, n in enumerate(mask.sum(1).tolist()):
        out, _ = model.lstm(x[i : i + 1, :n])
        ref.append(model.head(out)[0])
    got = model(emb, mask, logits)
    for i, r in enumerate(ref):
        torch.testing.assert_close(got[i, : len(r)], r, rtol=1e-5, atol=1e-6)
    assert model.parts(emb, mask, logits)[0] is None


def test_logits_only_model_ignores_the_embeddings() -> None:
    torch.manual_seed(3)
    model = SequenceModel(16, hidden=8, use_logits=True, use_embeddings=False).eval()
    assert model.feature_dim == K
    emb, mask, logits = _batch(seed=5)
    a = model(emb, mask, logits)
    b = model(torch.randn_like(emb), mask, logits)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw, msg", [
    ({"residual": True, "use_logits": False}, "use_logits"),
    ({"use_embeddings": False, "use_logits": False}, "use_embeddings or use_logits"),
    ({"use_embeddings": False, "use_logits": True, "use_diffs": True}, "use_diffs"),
])
def test_impossible_input_combinations_are_refused(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        SequenceModel(16, **kw)
    with pytest.raises(ValueError, match=msg):
        LstmConfig(**kw)


def test_new_keys_are_written_only_when_used() -> None:
    old = {"hidden": 128, "layers": 2, "bidirectional": True, "dropout": 0.2,
           "use_logits": True, "use_diffs": False}
    assert LstmConfig.from_dict(old).to_dict() == old  # old layouts stay byte for byte
    new = LstmConfig.from_dict({**old, "residual": True})
    assert new.to_dict() == {**old, "residual": True}
    assert LstmConfig.from_dict(new.to_dict()) == new


def test_config_refuses_a_residual_flag_that_is_not_a_bool(tmp_path: Path) -> None:
    cfg = ModelConfig(lstm={"hidden": 8, "use_logits": True, "residual": True})
    d = cfg.to_dict()
    d["lstm"]["residual"] = "yes"
    with pytest.raises(WeightsError, match="residual"):
        ModelConfig.from_dict(d).validate()
    d["lstm"]["residual"] = True
    d["lstm"]["use_logits"] = False
    with pytest.raises(WeightsError, match="use_logits"):
        ModelConfig.from_dict(d)


@pytest.fixture(scope="module")
def residual_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder written the way train_lstm writes it with --residual."""
    args = train_lstm.get_args_parser().parse_args(
        ["--cnn-run", "x", "--embeddings", "x", "--output-dir", "x", "--residual",
         "--hidden", "8", "--layers", "1"])
    kw = train_lstm.lstm_kwargs(args)
    assert kw["residual"] is True and "use_embeddings" not in kw
    torch.manual_seed(0)
    cnn = create_model("resnet18").eval()
    seq = SequenceModel(cnn.embed_dim, **kw).eval()
    config = ModelConfig(arch="resnet18", embed_dim=cnn.embed_dim,
                         preprocess={"mode": "stacked", "size": 64, "crop": True},
                         lstm=kw, thresholds=[0.5] * K)
    return save_weights(tmp_path_factory.mktemp("residual"), cnn, seq, config,
                        dtype=torch.float16)


def test_residual_flag_round_trips_through_the_saved_config(residual_folder: Path) -> None:
    saved = json.loads((residual_folder / "config.json").read_text(encoding="utf-8"))
    assert saved["lstm"]["residual"] is True
    _, lstm, config = load_weights(residual_folder)
    assert config.lstm.residual and lstm.residual
    assert torch.equal(lstm.logit_scale, torch.ones(K))


def test_untrained_residual_predictor_gives_the_cnn_probabilities(residual_folder: Path) -> None:
    pred = Predictor.from_folder(residual_folder).predict(make_study(6))
    np.testing.assert_array_equal(pred.lstm_prob, pred.cnn_prob)


def test_shipped_weights_load_as_a_plain_model_with_an_unchanged_config() -> None:
    folder = shipped_weights_dir()
    if not (folder / "model.safetensors").is_file():
        pytest.skip("no shipped weights in this checkout")
    _, lstm, config = load_weights(folder)
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config.lstm.to_dict() == saved["lstm"]  # no new key appears
    assert lstm is not None and not lstm.residual and lstm.use_embeddings
    assert not any(k.startswith("logit_") for k in lstm.state_dict())


def test_z_augment_rows_keeps_order_labels_and_at_least_two_slices() -> None:
    rng = np.random.default_rng(0)
    n = 30
    assert np.array_equal(train_lstm.z_augment_rows(n, rng), np.arange(n))
    flipped = train_lstm.z_augment_rows(n, rng, flip=1.0)
    assert np.array_equal(flipped, np.arange(n)[::-1])
    for _ in range(50):
        idx = train_lstm.z_augment_rows(n, rng, stride=1.0)
        assert len(idx) == 15 and set(np.diff(idx)) == {2}
        idx = train_lstm.z_augment_rows(n, rng, crop=1.0)
        assert len(idx) >= 15 and set(np.diff(idx)) == {1}
        idx = train_lstm.z_augment_rows(n, rng, drop=0.99)
        assert len(idx) >= 2 and (np.diff(idx) > 0).all()
    assert len(train_lstm.z_augment_rows(3, rng, stride=1.0, crop=1.0)) == 3


def test_z_augmented_dataset_moves_labels_with_their_slices() -> None:
    from hohoho_core.datasets import EmbeddingSequenceDataset, EmbeddingTable

    n = 12
    table = EmbeddingTable(
        embeddings=np.arange(n, dtype=np.float32)[:, None].repeat(4, 1),
        logits=np.zeros((n, K), np.float32),
        labels=(np.arange(n)[:, None] % 2 == np.zeros((1, K))).astype(np.int8),
        study=np.asarray(["s"] * n), image_id=np.asarray([f"i{k}" for k in range(n)]),
        slice_index=np.arange(n, dtype=np.int32))
    args = train_lstm.get_args_parser().parse_args(
        ["--cnn-run", "x", "--embeddings", "x", "--output-dir", "x", "--z-flip", "1",
         "--z-stride", "1"])
    assert train_lstm.z_augmenting(args)
    ds = train_lstm.ZAugmented(EmbeddingSequenceDataset(table), args,
                               np.random.default_rng(0))
    item = ds[0]
    pos = item["emb"][:, 0].long()
    assert len(pos) == 6 and (pos.diff() == -2).all()  # every second slice, reversed
    assert torch.equal(item["rows"], pos)
    assert torch.equal(item["labels"][:, 0], (pos % 2 == 0).float())


def test_make_demo_weights_passes_the_stage2_options_through(tmp_path: Path) -> None:
    from train import make_demo_weights as mdw

    def lstm_cmd(*extra: str) -> list[str]:
        args = mdw.get_args_parser().parse_args(["--threads", "1", *extra])
        args.threads, args.epochs = 1, 2
        return mdw.stage_args(args, tmp_path, tmp_path / "cache", tmp_path / "s.json")[
            "train_lstm"]

    plain = train_lstm.get_args_parser().parse_args(lstm_cmd())
    assert not plain.residual and plain.z_stride == 0 and not train_lstm.z_augmenting(plain)
    assert "--residual" not in lstm_cmd()  # the plain recipe's command is unchanged
    chosen = train_lstm.get_args_parser().parse_args(
        lstm_cmd("--lstm-residual", "--lstm-residual-penalty", "0.05", "--lstm-z-augment", "0.5",
                 "--lstm-label-smoothing", "0.05"))
    assert chosen.residual and chosen.residual_penalty == 0.05
    assert chosen.label_smoothing == 0.05 and plain.label_smoothing == 0
    assert chosen.z_stride == chosen.z_crop == chosen.z_flip == 0.5
    assert train_lstm.lstm_kwargs(chosen)["residual"] is True


def test_perturbed_validation_copies_and_the_selection_rule() -> None:
    from hohoho_core.datasets import EmbeddingTable
    from train import stage2_transfer as st

    n = 5
    table = EmbeddingTable(
        embeddings=np.arange(2 * n, dtype=np.float32)[:, None],
        logits=np.zeros((2 * n, K), np.float32), labels=np.zeros((2 * n, K), np.int8),
        study=np.asarray(["a"] * n + ["b"] * n),
        image_id=np.asarray([f"i{k}" for k in range(2 * n)]),
        slice_index=np.tile(np.arange(n, dtype=np.int32), 2))
    z = st.perturb(table, "stride2")
    assert sorted(set(z.study.tolist())) == ["a#z0", "a#z1", "b#z0", "b#z1"]
    assert z.embeddings[z.study == "a#z0", 0].tolist() == [0, 2, 4]
    assert z.slice_index[z.study == "a#z1"].tolist() == [0, 1]
    r = st.perturb(table, "reverse")
    assert r.embeddings[r.study == "b", 0].tolist() == [9, 8, 7, 6, 5]
    with pytest.raises(ValueError, match="perturbation"):
        st.perturb(table, "shuffle")

    base = {"name": "B", "val": 0.55, "margins": {"x": 0.05, "y": -0.02}}
    rows = [base,
            {"name": "worse_val", "val": 0.53, "margins": {"x": 0.2, "y": 0.2}},
            {"name": "below_cnn", "val": 0.55, "margins": {"x": 0.3, "y": -0.001}},
            {"name": "small_gain", "val": 0.55, "margins": {"x": 0.03, "y": 0.02}},
            {"name": "ok", "val": 0.545, "margins": {"x": 0.06, "y": 0.04}},
            {"name": "best", "val": 0.56, "margins": {"x": 0.08, "y": 0.06}}]
    v = st.verdict(rows)
    assert v["qualifies"] == {"worse_val": False, "below_cnn": False, "small_gain": False,
                              "ok": True, "best": True}
    assert v["winner"] == "best"
    assert st.verdict(rows[:4])["winner"] is None


def test_model_card_names_the_stage2_options_only_when_used() -> None:
    from train.make_demo_weights import _stage2_text

    plain = {"dropout": 0.2, "emb_noise": 0.1, "weight_decay": 1e-4, "residual": False,
             "residual_penalty": 0.01, "z_augment": 0.0}
    assert _stage2_text(plain) == "" and _stage2_text({}) == ""
    text = _stage2_text({**plain, "residual": True, "z_augment": 0.5})
    assert "residual" in text and "0.01" in text and "probability 0.5" in text
