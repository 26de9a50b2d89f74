"""SimCLR for head CT: two CT-suited views, a projection head and the NT-Xent loss.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020. Colour jitter, hue, saturation and grayscale make no sense on windowed CT
(docs/domain.md), so the views jitter the display window instead, keep crops large (area >= 0.4)
so that small bleeds survive, and add rotation, flips, noise and blur. Neighbouring slices of
one study may serve as extra positives (``neighbour_positive_mask``).

The pieces compose in ``train/pretrain_simclr.py``: views -> ``SliceClassifier`` embedding ->
``ProjectionHead`` -> ``nt_xent``; ``models.save_backbone`` then writes the checkpoint that
``models.create_model(init=<path>)`` and ``train_cnn.py --init`` start from.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hohoho_core.augment import AugmentConfig, HUAugment, to_model_input
from hohoho_core.preprocess import PreprocessConfig

__all__ = [
    "SIMCLR_AUGMENT",
    "CTViews",
    "ProjectionHead",
    "neighbour_positive_mask",
    "nt_xent",
    "study_codes",
]

#: Views for SimCLR: large crops, rotation, flips, window jitter, noise, blur.
SIMCLR_AUGMENT = AugmentConfig(
    rotation=30.0,
    crop_scale=(0.4, 1.0),
    hflip=0.5,
    centre_jitter=15.0,
    width_jitter=0.3,
    noise=8.0,
    blur=0.5,
    blur_sigma=(0.3, 1.5),
)


class CTViews:
    """Two independently augmented views of a batch of HU slabs.

    ``CTViews(preprocess)(hu [N, C, H, W], generator) -> (v1, v2)``, each ``[N, 3, H, W]``
    in [0, 1], windowed as ``preprocess`` says (the same input mode the classifier uses).
    """

    def __init__(self, preprocess: PreprocessConfig, augment: AugmentConfig = SIMCLR_AUGMENT):
        self.preprocess = preprocess
        self.augment = HUAugment(augment)

    def __call__(
        self, hu: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v1 = to_model_input(self.augment(hu, generator), self.preprocess)
        v2 = to_model_input(self.augment(hu, generator), self.preprocess)
        return v1, v2


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden -> out_dim`` (512 -> 512 -> 128 for ResNet-18), as in SimCLR."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [N, in_dim] -> z [N, out_dim]`` (not normalised; ``nt_xent`` normalises)."""
        return self.net(h)


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.2,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy (NT-Xent), mean over the 2N anchors.

    z1, z2: ``[N, D]`` projections of two views; row i of z1 and of z2 come from one slice.
    With ``s = cos_sim / temperature`` over the 2N embeddings, anchor a with positive p has
    loss ``-log(exp(s_ap) / sum_{k != a} exp(s_ak))``.

    positives: optional bool ``[N, N]`` of extra positive pairs between *slices* (e.g.
    neighbours in one study, from ``neighbour_positive_mask``); the diagonal is ignored. When
    given, each anchor averages the loss over all its positives (the other view of itself,
    and both views of each extra positive), the multi-positive form of Khosla et al. 2020.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be [N, D], got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], 0).float(), dim=1)  # [2N, D]
    logits = z @ z.t() / temperature  # [2N, 2N]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # [2N, 2N]

    idx = torch.arange(n, device=z.device)
    pos = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=z.device)
    pos[idx, idx + n] = True  # view 1 of slice i <-> view 2 of slice i
    pos[idx + n, idx] = True
    if positives is not None:
        if positives.shape != (n, n):
            raise ValueError(f"positives must be [{n}, {n}], got {tuple(positives.shape)}")
        extra = positives.to(z.device).bool() & ~torch.eye(n, dtype=torch.bool, device=z.device)
        pos |= extra.repeat(2, 2)
    pos &= ~self_mask
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1)
    return per_anchor.mean()


def neighbour_positive_mask(
    study: torch.Tensor, slice_index: torch.Tensor, max_gap: int = 1
) -> torch.Tensor:
    """Bool ``[N, N]``: True where two slices share a study and lie within ``max_gap``.

    study: ``(N,)`` integer study codes; slice_index: ``(N,)`` positions in the sorted study.
    """
    same = study.view(-1, 1) == study.view(1, -1)
    close = (slice_index.view(-1, 1) - slice_index.view(1, -1)).abs() <= max_gap
    return same & close & ~torch.eye(len(study), dtype=torch.bool, device=study.device)


def study_codes(keys: list[str]) -> np.ndarray:
    """Integer code per key, equal keys equal codes: ``(N,) int64`` for positive masks."""
    _, codes = np.unique(np.asarray(keys), return_inverse=True)
    return codes.astype(np.int64)
