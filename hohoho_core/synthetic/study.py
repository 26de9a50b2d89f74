"""One phantom study: anatomy, bleeds and slices rendered from the study's own seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hohoho_core.labels import ANY_INDEX
from hohoho_core.synthetic.anatomy import draw_anatomy
from hohoho_core.synthetic.bleeds import draw_bleed
from hohoho_core.synthetic.head import HeadGrid
from hohoho_core.synthetic.phantom import render_slice
from hohoho_core.synthetic.plan import AREA_THRESHOLD_MM2, SUBTYPE_COLUMN, Bleed, StudyPlan
from hohoho_core.synthetic.randomise import (
    Variation,
    acquire,
    blend_partial_volume,
    draw_variation,
    variation_rng,
    vary_anatomy,
    vary_bleed,
)

#: Tries at drawing a study before keeping one whose planned bleeds miss every slice.
_ATTEMPTS = 6


@dataclass
class SyntheticStudy:
    """One rendered study.

    Attributes:
        hu: float32 ``[S, H, W]`` HU as written to disk (noise included), slice 0 inferior.
        labels: uint8 ``(S, 6)`` clean labels in ``CLASSES`` order.
        areas: float32 ``(S, 5)`` area (mm^2) of each subtype's voxels in each slice.
        z: float64 ``(S,)`` position along the slice normal (mm).
        positions: float64 ``(S, 3)`` ImagePositionPatient.
        orientation: ImageOrientationPatient (6 cosines).
        levels: float32 ``(S,)`` height of the image centre above the foramen magnum (mm).
    """

    hu: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    z: np.ndarray
    positions: np.ndarray
    orientation: tuple[float, ...]
    pixel_spacing: float
    slice_spacing: float
    tilt_deg: float
    plan: StudyPlan
    bleeds: list[Bleed]
    levels: np.ndarray
    head_height: float


#: Most slices of a study rendered at a forced (thin) slice spacing.
MAX_THIN_SLICES = 400


def study_rng(seed: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator of study ``index`` of a dataset (one stream per redraw attempt)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index, attempt)))


def make_study(
    seed: int,
    index: int = 0,
    *,
    size: int = 512,
    plan: StudyPlan | None = None,
    variation: Variation | None = None,
) -> SyntheticStudy:
    """Render one phantom study, deterministic for ``(seed, index, size, plan)``.

    Args:
        plan: subtypes (bleeds to place), tilt, encoding and slice count; default: a
            normal 30-slice study without tilt. ``plan.randomise`` draws a `Variation`.
        variation: a fixed variation instead of a drawn one (montages of extremes); its
            artefacts still draw their details from the study's variation stream.

    Returns:
        The rendered study; a planned bleed that ends up on no positive slice is redrawn
        (a few tries), so ``labels`` carry every planned subtype.
    """
    plan = plan or StudyPlan()
    top = 80 if plan.slice_spacing is None else MAX_THIN_SLICES
    if not 8 <= plan.n_slices <= top:
        raise ValueError(f"n_slices must be in 8..{top}")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    for attempt in range(_ATTEMPTS):
        # Draw order per attempt: anatomy, bleeds, then each slice's noise.
        rng = study_rng(seed, index, attempt)
        an = draw_anatomy(rng, size, plan)
        var, vrng = None, None
        if plan.randomise or variation is not None:
            # Its own stream: the plain draws above and below stay the same.
            vrng = variation_rng(seed, index, attempt)
            var = draw_variation(vrng) if variation is None else variation
            an = vary_anatomy(an, var)
        grid = HeadGrid(an)
        subtle = plan.subtle or tuple(False for _ in plan.subtypes)
        bleeds = [
            draw_bleed(rng, grid, st, sb) for st, sb in zip(plan.subtypes, subtle, strict=True)
        ]
        if var is not None:
            bleeds = [vary_bleed(b, var, vrng) for b in bleeds]
        hu = np.empty((an.n, size, size), dtype=np.float32)
        areas = np.zeros((an.n, 5), dtype=np.float32)
        for k in range(an.n):
            hu[k], areas[k] = render_slice(grid, bleeds, k, rng, var)
        if var is not None:
            hu = blend_partial_volume(hu, var.partial_volume)
            for k in range(an.n):
                hu[k] = acquire(hu[k], grid, k, var, vrng)
        labels = slice_labels(
            areas, AREA_THRESHOLD_MM2 if var is None else var.area_threshold_mm2
        )
        if all(labels[:, SUBTYPE_COLUMN[st]].any() for st in plan.subtypes):
            break
    return SyntheticStudy(
        hu=encode_range(hu, plan),
        labels=labels,
        areas=areas,
        z=grid.z.copy(),
        positions=grid.positions.copy(),
        orientation=grid.orientation,
        pixel_spacing=an.ps,
        slice_spacing=an.sp,
        tilt_deg=math.degrees(an.tilt),
        plan=plan,
        bleeds=bleeds,
        levels=grid.centre_heights().astype(np.float32),
        head_height=an.H,
    )


def slice_labels(areas: np.ndarray, threshold_mm2: float = AREA_THRESHOLD_MM2) -> np.ndarray:
    """``(S, 5)`` subtype areas (mm^2) -> ``(S, 6)`` uint8 labels, ``any`` their OR.

    A subtype is positive on a slice when it covers more than ``threshold_mm2`` there.
    """
    labels = np.zeros((areas.shape[0], 6), dtype=np.uint8)
    labels[:, :5] = areas > threshold_mm2
    labels[:, ANY_INDEX] = labels[:, :5].max(axis=1)
    return labels


def encode_range(hu: np.ndarray, plan: StudyPlan) -> np.ndarray:
    """Clip HU to what the study's encoding can hold (and add FOV padding when planned)."""
    if plan.encoding == "quirk12":
        return np.clip(np.rint(hu), -1000, 3095).astype(np.float32)
    if plan.encoding == "uint16":
        hi = 3071 if plan.bits12_plain else 4000
        return np.clip(np.rint(hu), -1024, hi).astype(np.float32)
    hu = np.clip(np.rint(hu), -1024, 4000).astype(np.float32)
    if plan.pad_fov:
        n = hu.shape[-1]
        yy, xx = np.mgrid[:n, :n]
        outside = (yy - (n - 1) / 2) ** 2 + (xx - (n - 1) / 2) ** 2 > (n / 2) ** 2
        hu[:, outside] = -2000
    return hu


def unwrap_quirk(stored: np.ndarray) -> np.ndarray:
    """Undo the RSNA 12-bit wrap on stored values: ``((px + 1000) % 4096) - 1000``."""
    return ((np.asarray(stored, dtype=np.int64) + 1000) % 4096) - 1000
