"""Losses: ASL against BCE and hand-computed values, stability, no global autograd switch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hohoho_core.losses import (
    AsymmetricLoss,
    FocalLoss,
    WeightedBCE,
    any_weights,
    build_loss,
    masked_bce,
)
from hohoho_core.metrics import rsna_log_loss


def _data(seed: int = 0, n: int = 16, k: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 3
    targets = (torch.rand(n, k, generator=g) < 0.3).float()
    return logits, targets


def test_asl_zero_equals_bce() -> None:
    logits, targets = _data()
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    torch.testing.assert_close(asl(logits, targets), expected, rtol=1e-6, atol=1e-7)
    per = AsymmetricLoss(0, 0, 0, reduction="none")(logits, targets)
    torch.testing.assert_close(
        per, F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    )
    assert float(AsymmetricLoss(0, 0, 0, reduction="sum")(logits, targets)) == pytest.approx(
        float(expected) * logits.numel(), rel=1e-5
    )


def test_asl_hand_computed_values() -> None:
    # One positive and two negatives, defaults gamma_neg=4, gamma_pos=1, clip=0.05.
    x = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    p = 1 / (1 + math.exp(-2.0))  # 0.8808
    q = 1 / (1 + math.exp(1.0))  # 0.2689
    pos = -((1 - 0.5) ** 1) * math.log(0.5)  # positive at p = 0.5
    pm = p - 0.05
    neg1 = -(pm**4) * math.log(1 - pm)
    qm = q - 0.05
    neg2 = -(qm**4) * math.log(1 - qm)
    loss = AsymmetricLoss(reduction="none")(x, y)
    expected = torch.tensor([[pos, neg1, neg2]], dtype=torch.float32)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert float(AsymmetricLoss()(x, y)) == pytest.approx((pos + neg1 + neg2) / 3, rel=1e-5)


def test_asl_clip_drops_easy_negatives() -> None:
    # p = sigmoid(-4) = 0.018 < clip 0.05: an easy negative, zero loss and zero gradient.
    x = torch.tensor([[-4.0, -2.0]], requires_grad=True)
    y = torch.zeros(1, 2)
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05, reduction="none")(x, y)
    assert float(loss.detach()[0, 0]) == 0.0
    assert float(loss.detach()[0, 1]) > 0.0  # p = 0.119 > clip still counts
    loss.sum().backward()
    assert float(x.grad[0, 0]) == 0.0
    assert float(x.grad[0, 1]) > 0.0
    # Without the clip the same easy negative does count.
    assert float(AsymmetricLoss(4, 1, 0.0, reduction="none")(x.detach(), y)[0, 0]) > 0


@pytest.mark.parametrize("params", [(0, 0, 0), (2, 2, 0), (4, 1, 0.05), (0.5, 0.5, 0.2), (4, 0, 0)])
def test_asl_finite_at_extreme_logits(params: tuple[float, float, float]) -> None:
    x = torch.tensor([[50.0, -50.0, 50.0, -50.0, 0.0, 100.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    loss = AsymmetricLoss(*params)(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    # A confident wrong positive keeps a real gradient (no clamp flattening it to zero).
    assert float(x.grad[0, 1]) < 0


def test_asl_safe_inside_no_grad() -> None:
    logits, targets = _data()
    loss_fn = AsymmetricLoss()
    with torch.no_grad():
        loss = loss_fn(logits.requires_grad_(), targets)
        assert not torch.is_grad_enabled()  # the reference code's bug re-enables it here
    assert not loss.requires_grad
    assert torch.is_grad_enabled()
    with torch.inference_mode():
        assert torch.isfinite(loss_fn(logits.detach(), targets))


def test_asl_detach_focus_changes_gradient_not_value() -> None:
    logits, targets = _data(1)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    la = AsymmetricLoss(detach_focus=False)(a, targets)
    lb = AsymmetricLoss(detach_focus=True)(b, targets)
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    assert not torch.allclose(a.grad, b.grad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gamma_neg": -1},
        {"gamma_pos": -0.5},
        {"clip": 1.0},
        {"clip": -0.1},
        {"eps": 0.0},
        {"reduction": "avg"},
        {"weight": [1, -1, 1, 1, 1, 1]},
    ],
)
def test_asl_rejects_bad_hyper_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AsymmetricLoss(**kwargs)


def test_focal_matches_asl_and_hand_value() -> None:
    logits, targets = _data(2)
    torch.testing.assert_close(
        FocalLoss(gamma=2)(logits, targets), AsymmetricLoss(2, 2, 0)(logits, targets)
    )
    # Hand value: positive at p = 0.8, alpha = 0.25: -0.25 * 0.2^2 * log(0.8).
    x = torch.tensor([[math.log(0.8 / 0.2)]])
    got = FocalLoss(gamma=2, alpha=0.25, reduction="sum")(x, torch.ones(1, 1))
    assert float(got) == pytest.approx(-0.25 * 0.04 * math.log(0.8), rel=1e-5)


def test_weighted_bce_equals_rsna_log_loss() -> None:
    logits, targets = _data(3, n=40)
    loss = WeightedBCE(any_weight=2.0)(logits, targets)
    prob = torch.sigmoid(logits).double().numpy()
    expected = rsna_log_loss(targets.numpy().astype(int), prob, eps=1e-12)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # any_weight=1 is plain BCE.
    torch.testing.assert_close(
        WeightedBCE()(logits, targets), F.binary_cross_entropy_with_logits(logits, targets)
    )
    assert any_weights(3.0).tolist() == [1, 1, 1, 1, 1, 3]


def test_masked_bce_ignores_padding() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 6, generator=g)
    targets = (torch.rand(2, 5, 6, generator=g) < 0.5).float()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    base = masked_bce(logits, targets, mask, any_weight=2.0)
    # Junk (even NaN) in padded slots changes nothing.
    l2, t2 = logits.clone(), targets.clone()
    l2[0, 3:] = 1e4
    t2[0, 3:] = float("nan")
    assert float(masked_bce(l2, t2, mask, any_weight=2.0)) == float(base)
    # Equals the weighted BCE over the 8 real slices.
    real = torch.cat([logits[0, :3], logits[1]])
    real_t = torch.cat([targets[0, :3], targets[1]])
    torch.testing.assert_close(base, WeightedBCE(2.0)(real, real_t))
    with pytest.raises(ValueError):
        masked_bce(logits, targets, torch.zeros(2, 5, dtype=torch.bool))


def test_build_loss() -> None:
    assert isinstance(build_loss("asl", gamma_neg=2), AsymmetricLoss)
    assert isinstance(build_loss("BCE", any_weight=2.0), WeightedBCE)
    assert isinstance(build_loss("focal"), FocalLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge")


def test_asl_mean_does_not_grow_with_batch() -> None:
    logits, targets = _data(5, n=8)
    loss_fn = AsymmetricLoss()
    big = loss_fn(logits.repeat(4, 1), targets.repeat(4, 1))
    assert float(big) == pytest.approx(float(loss_fn(logits, targets)), rel=1e-6)
    assert np.isfinite(float(big))
