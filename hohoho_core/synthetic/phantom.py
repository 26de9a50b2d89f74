"""Rendering one slice of a phantom study: paint the tissues, then acquire it like a scanner."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from hohoho_core.synthetic.anatomy import Anatomy
from hohoho_core.synthetic.bleeds import paint_bleeds
from hohoho_core.synthetic.brain import paint_brain
from hohoho_core.synthetic.head import HeadGrid
from hohoho_core.synthetic.plan import Bleed
from hohoho_core.synthetic.randomise import Variation, paint_hard_negatives
from hohoho_core.synthetic.skull import paint_scalp_and_vault, paint_skull_base


def render_slice(
    g: HeadGrid,
    bleeds: Sequence[Bleed],
    k: int,
    rng: np.random.Generator,
    variation: Variation | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HU image ``(N, N)`` float32 of slice ``k`` and subtype areas ``(5,)`` (mm^2).

    ``rng`` is the study's generator: each slice draws its noise from it in turn.
    ``variation`` (domain randomisation) adds the hard negatives; it draws nothing here.
    """
    an = g.an
    f32 = np.float32
    s = g.slice_context(k)
    hu = np.full(g.u.shape, -1000.0, dtype=f32)
    paint_scalp_and_vault(g, s, hu)
    paint_skull_base(g, s, hu)
    areas = np.zeros(5, dtype=f32)
    if s.ic.any():
        tissue = paint_brain(g, s, hu)
        if variation is not None:  # before the bleeds, so blood is never painted over
            paint_hard_negatives(g, s, hu, variation)
        paint_bleeds(g, s, tissue, bleeds, hu, areas)
        if an.cupping:  # beam hardening leaves the brain next to bone slightly brighter
            hu[s.ic] += f32(an.cupping) * np.clip(1 - s.d_in[s.ic] / 25, 0, 1)
    return _acquire(hu, an, rng), areas * f32(an.ps * an.ps)


def _acquire(hu: np.ndarray, an: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Scanner blur, correlated noise and a small calibration offset."""
    f32 = np.float32
    hu = gaussian_filter(hu, max(0.5, an.blur_mm / an.ps), mode="nearest")
    noise = rng.standard_normal(hu.shape, dtype=f32)
    ns = 0.6
    noise = gaussian_filter(noise, ns, mode="wrap") * f32(2 * math.sqrt(math.pi) * ns * an.noise)
    hu += noise
    hu[hu > -900] += f32(an.offset)
    return hu
