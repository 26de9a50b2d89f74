"""Multi-label losses for the six hemorrhage outputs.

Every loss takes raw logits ``[..., K]`` and {0, 1} targets of the same shape (``K = 6``,
columns ``labels.CLASSES``) and returns a scalar (``reduction="mean"`` or ``"sum"``) or the
per-element loss (``"none"``).

``"mean"`` is a weighted mean over rows: ``sum(w_k * l_nk) / (N * sum(w))`` where ``N`` is
the number of rows (all leading dimensions) and ``w`` the per-class weight. With no weight
this is the plain mean over all elements; with ``w = (1, 1, 1, 1, 1, 2)`` and BCE it is the
RSNA 2019 weighted log loss.

None of these losses switches autograd globally (the asymmetric-loss reference code does,
which silently re-enables gradients inside ``torch.no_grad()``); all are safe in validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hohoho_core.labels import ANY_INDEX, CLASSES

__all__ = [
    "LOSS_NAMES",
    "AsymmetricLoss",
    "FocalLoss",
    "WeightedBCE",
    "any_weights",
    "build_loss",
    "masked_bce",
]

_REDUCTIONS = ("mean", "sum", "none")


def any_weights(any_weight: float = 2.0, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """Per-class weights ``(K,)``: 1 for each subtype, ``any_weight`` for "any".

    "any" is column ``ANY_INDEX`` (the last) of the six RSNA classes; for another ``K`` the
    last column takes ``any_weight``.
    """
    if any_weight <= 0:
        raise ValueError(f"any_weight must be > 0, got {any_weight}")
    w = torch.ones(num_classes)
    w[ANY_INDEX if num_classes == len(CLASSES) else num_classes - 1] = float(any_weight)
    return w


def _as_weight(weight: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float32).flatten()
    if w.numel() == 0 or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError("weight must be a non-empty vector of finite values >= 0")
    if float(w.sum()) <= 0:
        raise ValueError("weight must not be all zero")
    return w


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Apply the per-class ``weight (K,)`` to ``loss [..., K]`` and reduce (see module doc)."""
    if weight is not None:
        if weight.numel() != loss.shape[-1]:
            raise ValueError(f"weight has {weight.numel()} values for {loss.shape[-1]} classes")
        weight = weight.to(device=loss.device, dtype=loss.dtype)
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    rows = loss.numel() // max(loss.shape[-1], 1)
    total_w = weight.sum() if weight is not None else loss.new_tensor(float(loss.shape[-1]))
    return loss.sum() / (rows * total_w)


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    return targets.to(dtype=logits.dtype)


def _pow_weight(log_base: torch.Tensor, gamma: float) -> torch.Tensor:
    """``base ** gamma`` from ``log(base)``; finite values and gradients for any finite logit.

    Working in log space avoids ``0 ** (gamma - 1)`` in the backward pass, which is
    infinite for gamma < 1 and turns into NaN when multiplied by a zero gradient.
    """
    if gamma == 0:
        return torch.ones_like(log_base)
    return torch.exp(gamma * log_base)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-label classification (Ben-Baruch et al., ICCV 2021).

    With ``p = sigmoid(x)`` and the shifted probability ``p_m = max(p - clip, 0)``::

        L+ = -(1 - p) ** gamma_pos * log(p)           (positives, y = 1)
        L- = -p_m ** gamma_neg * log(1 - p_m)         (negatives, y = 0)

    The clip ("probability margin") zeroes the loss of easy negatives with ``p <= clip``.
    ``(0, 0, 0)`` is binary cross-entropy; ``(g, g, 0)`` is focal loss without alpha.

    Args:
        gamma_neg: focusing exponent for negatives (>= 0).
        gamma_pos: focusing exponent for positives (>= 0).
        clip: probability margin for negatives, in [0, 1).
        eps: lower bound for the argument of ``log(1 - p_m)`` when ``clip > 0``; the other
            logarithms use ``logsigmoid`` and need no clamp.
        reduction: "mean" (weighted mean, module doc), "sum" or "none".
        weight: optional per-class weights ``(K,)``, e.g. ``any_weights(2.0)``.
        detach_focus: treat the focusing weights as constants in the backward pass (the
            reference code's ``disable_torch_grad_focal_loss``), done with ``detach`` rather
            than a global autograd switch.
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: str = "mean",
        weight: Sequence[float] | torch.Tensor | None = None,
        *,
        detach_focus: bool = False,
    ) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(
                f"gammas must be >= 0, got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}"
            )
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip must be in [0, 1), got {clip}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.eps = float(eps)
        self.reduction = _check_reduction(reduction)
        self.detach_focus = bool(detach_focus)
        w = _as_weight(weight)
        self.register_buffer("weight", w if w is not None else torch.empty(0), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
            f"reduction={self.reduction!r}"
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``logits``, ``targets``: ``[..., K]`` (targets in {0, 1}; soft targets also work)."""
        y = _check_shapes(logits, targets)
        # Positive branch: log(p) and (1 - p) = sigmoid(-x), both from logsigmoid (stable at ±50).
        log_p = F.logsigmoid(logits)
        log_1mp = F.logsigmoid(-logits)
        if self.clip > 0:
            # 1 - p_m = min(1 - p + clip, 1); sigmoid(-x) keeps precision where p is near 1.
            one_minus_pm = (torch.sigmoid(-logits) + self.clip).clamp(max=1.0)
            log_neg = torch.log(one_minus_pm.clamp(min=self.eps))
            p_m = (1.0 - one_minus_pm).clamp(min=0.0)
            if self.gamma_neg == 0:
                w_neg = torch.ones_like(p_m)
            else:
                # p_m ** gamma_neg: exactly 0 for easy negatives, with a finite gradient there.
                log_pm = torch.log(p_m.clamp(min=self.eps))
                w_neg = torch.where(p_m > 0, _pow_weight(log_pm, self.gamma_neg), 0.0)
        else:
            log_neg = log_1mp
            w_neg = _pow_weight(log_p, self.gamma_neg)  # p ** gamma_neg
        w_pos = _pow_weight(log_1mp, self.gamma_pos)  # (1 - p) ** gamma_pos
        if self.detach_focus:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        loss = -(y * w_pos * log_p + (1.0 - y) * w_neg * log_neg)
        weight = self.weight if self.weight.numel() else None
        return _reduce(loss, weight, self.reduction)


class WeightedBCE(nn.Module):
    """Binary cross-entropy on logits with the "any" column weighted ``any_weight``.

    ``WeightedBCE(2.0)`` with ``reduction="mean"`` equals the RSNA 2019 weighted log loss.
    """

    def __init__(self, any_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.any_weight = float(any_weight)
        self.reduction = _check_reduction(reduction)
        self.register_buffer("weight", any_weights(any_weight), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = _check_shapes(logits, targets)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        weight = self.weight if logits.shape[-1] == self.weight.numel() else None
        if weight is None and self.any_weight != 1.0:
            raise ValueError(
                f"any_weight needs {self.weight.numel()} classes, got {logits.shape[-1]}"
            )
        return _reduce(loss, weight, self.reduction)


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al., ICCV 2017): ``-alpha_t (1 - p_t) ** gamma log(p_t)``.

    ``alpha`` weighs positives (``1 - alpha`` negatives); ``None`` means no alpha weighting,
    which equals ``AsymmetricLoss(gamma, gamma, clip=0)``.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = None,
        reduction: str = "mean",
        weight: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.gamma = float(gamma)
        self.alpha = alpha
        self.reduction = _check_reduction(reduction)
        w = _as_weight(weight)
        self.register_buffer("weight", w if w is not None else torch.empty(0), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = _check_shapes(logits, targets)
        # log(p_t) and log(1 - p_t) for y in {0, 1}, via logsigmoid of the signed logit.
        log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
        ce = -(y * log_p + (1.0 - y) * log_1mp)
        log_1m_pt = y * log_1mp + (1.0 - y) * log_p
        loss = _pow_weight(log_1m_pt, self.gamma) * ce
        if self.alpha is not None:
            loss = (y * self.alpha + (1.0 - y) * (1.0 - self.alpha)) * loss
        weight = self.weight if self.weight.numel() else None
        return _reduce(loss, weight, self.reduction)


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    any_weight: float = 1.0,
) -> torch.Tensor:
    """Stage-2 BCE over padded studies; padded slices never count.

    Args:
        logits: ``[B, S, K]`` per-slice logits.
        targets: ``[B, S, K]`` in {0, 1} (values at padded slices are ignored, even NaN).
        mask: ``[B, S]`` bool, True for real slices.
        any_weight: weight of the "any" column (last), 1 for each subtype.

    Returns:
        Scalar ``sum_valid(w_k * bce) / (n_valid * sum(w))``.
    """
    if logits.shape != targets.shape or logits.shape[:2] != mask.shape:
        raise ValueError(
            f"shapes differ: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
            f"mask {tuple(mask.shape)}"
        )
    mask = mask.to(dtype=torch.bool, device=logits.device)
    n_valid = int(mask.sum())
    if n_valid == 0:
        raise ValueError("mask selects no slice")
    # Select real slices first so NaN or junk in padded targets cannot leak into the sum.
    sel_logits, sel_targets = logits[mask], targets[mask].to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(sel_logits, sel_targets, reduction="none")
    weight = any_weights(any_weight, logits.shape[-1]).to(loss)
    return (loss * weight).sum() / (n_valid * weight.sum())


LOSS_NAMES: tuple[str, ...] = ("asl", "bce", "focal")


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name: "asl" (AsymmetricLoss), "bce" (WeightedBCE), "focal" (FocalLoss)."""
    builders: dict[str, type[nn.Module]] = {
        "asl": AsymmetricLoss,
        "bce": WeightedBCE,
        "focal": FocalLoss,
    }
    key = name.lower()
    if key not in builders:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSS_NAMES}")
    return builders[key](**kwargs)
