"""train.tta_trial: the per-study batch-norm copy normalises with the batch's statistics."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hohoho_core.models import create_model
from train.tta_trial import study_statistics_cnn


def _study() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=g) * 3 + 1  # far from the initial statistics


def test_adapted_copy_uses_the_batch_statistics_and_leaves_the_model() -> None:
    torch.manual_seed(0)
    cnn = create_model("resnet18").eval()
    before = copy.deepcopy(cnn.state_dict())
    x = _study()
    adapted = study_statistics_cnn(cnn, stem_only=False)
    reference = copy.deepcopy(cnn).train()  # training-mode batch norm: the batch's statistics
    with torch.no_grad():
        e_adapted, lg_adapted = adapted(x)
        e_ref, lg_ref = reference(x)
        e_plain, _ = cnn(x)
    assert torch.allclose(e_adapted, e_ref, atol=1e-5)
    assert torch.allclose(lg_adapted, lg_ref, atol=1e-5)
    assert not torch.allclose(e_adapted, e_plain, atol=1e-3)
    assert not cnn.training
    for key, value in cnn.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_stem_only_keeps_the_running_statistics_of_the_deeper_stages() -> None:
    adapted = study_statistics_cnn(create_model("resnet18"), stem_only=True)
    batch = {n for n, m in adapted.backbone.named_modules()
             if isinstance(m, nn.BatchNorm2d) and m.running_mean is None}
    running = {n for n, m in adapted.backbone.named_modules()
               if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None}
    assert "bn1" in batch and any(n.startswith("layer1.") for n in batch)
    assert batch == {n for n in batch if n == "bn1" or n.startswith("layer1.")}
    assert running and all(n.startswith(("layer2.", "layer3.", "layer4.")) for n in running)
