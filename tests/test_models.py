"""Slice CNN registry, initialisations, and the sequence model's padding behaviour."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from captum.attr import LayerGradCam
from safetensors.torch import save_file

from hohoho_core.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_NAMES,
    PretrainedWeightsUnavailable,
    SequenceModel,
    SliceClassifier,
    create_model,
    masked_bce,
    save_backbone,
)

EMBED = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "densenet121": 1024}


def test_registry_holds_the_poster_backbones() -> None:
    assert MODEL_NAMES[0] == "resnet18"
    assert set(MODEL_NAMES) == set(EMBED)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg16")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backbone_forward_shapes_and_cam(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert isinstance(model, SliceClassifier)
    assert model.embed_dim == EMBED[name]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        emb, logits = model(x)
    assert emb.shape == (2, EMBED[name]) and logits.shape == (2, 6)
    assert torch.isfinite(emb).all() and torch.isfinite(logits).all()
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), logits)
    # The CAM layer is something captum's LayerGradCam can hook: a spatial map per input.
    cam = LayerGradCam(model.logits, model.cam_layer).attribute(x[:1], target=5)
    assert cam.ndim == 4 and cam.shape[:2] == (1, 1) and cam.shape[-1] > 1
    assert torch.isfinite(cam).all()


def test_normalisation_inside_the_model() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    air = torch.zeros(1, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model.head(model.backbone((air - mean) / std))
        torch.testing.assert_close(model.logits(air), want)
    # Normalisation constants are fixed, not learned and not saved with the weights.
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 32, 32))


def test_imagenet_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("resnet18", init="imagenet")
    msg = str(info.value)
    assert "resnet18-f37072fd.pth" in msg and "TORCH_HOME" in msg and "init='random'" in msg


def _densenet_old_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's published DenseNet files use 'norm.1' where the model has 'norm1'."""
    out = {}
    for k, v in state.items():
        for part in ("norm1", "norm2", "relu1", "relu2", "conv1", "conv2"):
            if "denselayer" in k and f".{part}." in k:
                k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
                break
        out[k] = v
    return out


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_imagenet_state_is_loaded(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    torch.manual_seed(1)
    ref = getattr(tvm, name)(weights=None)
    state = ref.state_dict()
    if name == "densenet121":
        state = _densenet_old_keys(state)
        assert any(".norm.1." in k for k in state)
    seen = {}

    def fake_download(url, *args, **kwargs):
        seen["url"], seen["weights_only"] = url, kwargs.get("weights_only")
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = create_model(name, init="imagenet")
    assert seen["weights_only"] is True and seen["url"].endswith(".pth")
    first = "conv1.weight" if name == "resnet18" else "features.conv0.weight"
    torch.testing.assert_close(model.backbone.state_dict()[first], ref.state_dict()[first])


def test_simclr_init_round_trip_and_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(2)
    src = create_model("resnet18")
    path = tmp_path / "simclr.safetensors"
    save_backbone(src, path)
    model = create_model("resnet18", init=path)
    for k, v in src.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)
    with pytest.raises(ValueError, match="arch 'resnet18'"):
        create_model("resnet34", init=path)
    # A checkpoint missing a backbone tensor is refused by name.
    state = {f"backbone.{k}": v for k, v in src.backbone.state_dict().items()}
    del state["backbone.layer4.1.bn2.weight"]
    state["projector.0.weight"] = torch.zeros(4, 4)  # extra non-backbone keys are fine
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial), metadata={"arch": "resnet18"})
    with pytest.raises(ValueError, match="layer4.1.bn2.weight"):
        create_model("resnet18", init=partial)
    with pytest.raises(ValueError, match="init must be"):
        create_model("resnet18", init="pretrained")
    with pytest.raises(FileNotFoundError):
        create_model("resnet18", init=tmp_path / "absent.safetensors")


def _studies(seed: int = 0, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, d, generator=g), torch.randn(7, d, generator=g)


@pytest.mark.parametrize("use_diffs", [False, True])
@pytest.mark.parametrize("use_logits", [False, True])
def test_sequence_padding_never_changes_real_slices(use_diffs: bool, use_logits: bool) -> None:
    torch.manual_seed(3)
    model = SequenceModel(16, hidden=8, layers=2, use_logits=use_logits, use_diffs=use_diffs)
    model.eval()
    short, long = _studies()
    lg_short, lg_long = torch.randn(3, 6), torch.randn(7, 6)
    alone = model(
        short[None], torch.ones(1, 3, dtype=torch.bool), lg_short[None] if use_logits else None
    )
    emb = torch.zeros(2, 7, 16)
    emb[0, :3], emb[1] = short, long
    emb[0, 3:] = 99.0  # junk in the padding must not matter
    logits = torch.zeros(2, 7, 6)
    logits[0, :3], logits[1] = lg_short, lg_long
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, :3], mask[1] = True, True
    batch = model(emb, mask, logits if use_logits else None)
    assert batch.shape == (2, 7, 6) and alone.shape == (1, 3, 6)
    torch.testing.assert_close(batch[0, :3], alone[0], rtol=0, atol=1e-6)
    assert (batch[0, 3:] == 0).all()


@pytest.mark.parametrize("batch", [1, 3])
def test_sequence_without_padding_gives_the_packed_paths_bits(batch: int) -> None:
    """A batch with no padding skips packing (faster); the output must be bit for bit what
    the packed LSTM gives, or a run's probabilities would depend on the path."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(5)
    model = SequenceModel(16, hidden=8, layers=2, use_logits=True).eval()
    emb, lg = torch.randn(batch, 9, 16), torch.randn(batch, 9, 6)
    mask = torch.ones(batch, 9, dtype=torch.bool)
    with torch.inference_mode():
        fast = model(emb, mask, lg)
        x = model.norm(model.features(emb, mask, lg))
        packed = pack_padded_sequence(x, torch.full((batch,), 9), batch_first=True,
                                      enforce_sorted=False)
        out, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True)
        slow = model.head(out)
    assert torch.equal(fast, slow)


def test_sequence_features_and_gradients() -> None:
    model = SequenceModel(4, hidden=4, use_diffs=True)
    emb = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    f = model.features(emb, mask)
    assert f.shape == (2, 4, 12)
    # Study 0 has two slices: emb - prev is zero at slice 0, emb - next zero at slice 1.
    assert (f[0, 0, 4:8] == 0).all() and (f[0, 0, 8:] == -4).all()
    assert (f[0, 1, 4:8] == 4).all() and (f[0, 1, 8:] == 0).all()
    assert (f[0, 2:] == 0).all()
    # No gradient reaches padded embeddings.
    e = emb.clone().requires_grad_()
    model(e, mask).sum().backward()
    assert (e.grad[0, 2:] == 0).all() and e.grad[0, :2].abs().sum() > 0


def test_sequence_rejects_bad_masks_and_missing_logits() -> None:
    model = SequenceModel(4, hidden=4, use_logits=True)
    emb = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="pass logits"):
        model(emb, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="prefix"):
        model(emb, torch.tensor([[True, False, True]]), torch.zeros(1, 3, 6))
    with pytest.raises(ValueError):
        SequenceModel(4, dropout=1.0)


def test_sequence_training_step_with_masked_bce() -> None:
    torch.manual_seed(4)
    model = SequenceModel(8, hidden=8)
    emb = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    target = (torch.rand(2, 5, 6) < 0.5).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = masked_bce(model(emb, mask), target, mask, any_weight=2.0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
