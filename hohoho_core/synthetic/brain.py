"""Painting the brain: grey and white matter, sulci, fissures, nuclei, CSF spaces, ventricles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hohoho_core.synthetic.head import HeadGrid, SliceContext
from hohoho_core.synthetic.shapes import capsule, ellipsoid, height_range
from hohoho_core.synthetic.shapes import window as hwindow


@dataclass(frozen=True)
class Tissue:
    """Masks ``(N, N)`` bool of one slice that bleeds are drawn into."""

    csf_sub: np.ndarray  # subarachnoid CSF: convexity, sulci, fissures, cisterns
    vent: np.ndarray  # ventricles
    brain: np.ndarray  # parenchyma (neither of the above)


def paint_brain(g: HeadGrid, s: SliceContext, hu: np.ndarray) -> Tissue:
    """Paint the brain of slice ``s`` into ``hu``; return its CSF, ventricle and brain masks."""
    an = g.an
    H, B = an.H, an.b - an.t0
    ic, h = s.ic, s.h
    cereb = ic & (g.vn > 0.1) & (h < g.tent)
    hu[ic] = an.wm
    hu[cereb] = an.wm + 0.6 * (an.gm - an.wm)
    sulc = _paint_cortex(g, s, hu, cereb)
    sylv = _paint_sylvian_and_nuclei(g, s, hu)
    for centre, radii in (  # medulla, pons, midbrain
        ((0, 0.16 * B, 0.02 * H), (9, 9, 14)),
        ((0, 0.10 * B, 0.16 * H), (13, 12, 11)),
        ((0, 0.06 * B, 0.31 * H), (12, 11, 8)),
    ):
        d = g.ell(s, centre, radii)
        if d is not None:
            hu[ic & (d < 1)] = an.wm + 4
    # Subarachnoid space: convexity layer, sulci, fissures, basal cisterns.
    d_brain = np.minimum(s.d_in, (h - g.floor) * 1.5)
    csf_sub = (ic & (d_brain < an.csf_layer)) | sulc | sylv
    if s.hmin < 0.45 * H and s.hmax > 0.2 * H:
        supra = ic & (np.sqrt(g.star**2 + ((h - 0.31 * H) / 5.5) ** 2) < 1)
        mid = ellipsoid(g.u, g.v, h, (0, 0.06 * B, 0.31 * H), (12, 11, 8))
        ambient = ic & (mid >= 1) & (mid < 1.3) & (g.v > 0.02 * B)
        quad = ic & (ellipsoid(g.u, g.v, h, (0, 0.24 * B, 0.36 * H), (7, 5, 6)) < 1)
        csf_sub |= supra | ambient | quad
    csf_sub = _paint_falx(g, s, hu, cereb, csf_sub)
    vent = _paint_ventricles(g, s, hu)
    brain = ic & ~csf_sub & ~vent
    return Tissue(csf_sub=csf_sub, vent=vent, brain=brain)


def _paint_cortex(g: HeadGrid, s: SliceContext, hu: np.ndarray, cereb: np.ndarray) -> np.ndarray:
    """Cortical ribbon and sulci (cerebellar folia included); returns the sulcal CSF mask.

    Sulci are sheets roughly perpendicular to the surface that meander with smooth random
    fields; an integer count round the head so the pattern closes on itself. Folia in the
    cerebellum are finer and shallower.
    """
    f32 = np.float32
    an = g.an
    A, B = an.a - an.t0, an.b - an.t0
    ic, d_in, theta = s.ic, s.d_in, g.theta
    d_brain = np.minimum(d_in, (s.h - g.floor) * 1.5)
    lev = float(g.profile(np.array([0.5 * (s.hmin + s.hmax)], f32), an.c_top)[0])
    circ = 2 * math.pi * max(lev, 0.2) * 0.5 * (A + B)
    m_cb = max(6, round(circ / an.sulc_period))
    m_cer = max(8, round(circ / 5.5))
    hm = float(0.5 * (s.hmin + s.hmax)) / 22.0
    wander = g.fields[0] * f32(math.cos(hm)) + g.fields[1] * f32(math.sin(hm))
    phase = m_cb * theta + 2.2 * wander + 0.6 * np.sin(d_in / 4.0 + 3 * theta) + an.sulc_phase
    dist_s = f32(circ / m_cb / math.pi) * np.arcsin(np.abs(np.sin(0.5 * phase)))
    depth = np.clip(11 + 6 * g.fields[2], 4, 19)
    hw = an.sulc_hw * (0.75 + 0.5 * np.abs(g.fields[1]))
    cortex = ~cereb & (
        (d_brain < an.csf_layer + 2.8) | ((dist_s < hw + 2.6) & (d_in < depth + 2.6))
    )
    hu[ic & cortex] = an.gm
    sulc = ic & ~cereb & (dist_s < hw) & (d_in < depth)
    if cereb.any():
        ph_c = m_cer * theta + 1.2 * wander
        dist_c = f32(circ / m_cer / math.pi) * np.arcsin(np.abs(np.sin(0.5 * ph_c)))
        sulc |= cereb & (dist_c < 0.45) & (d_brain < 5)
    return sulc


def _paint_sylvian_and_nuclei(g: HeadGrid, s: SliceContext, hu: np.ndarray) -> np.ndarray:
    """Insular cortex and deep grey nuclei on both sides; returns the Sylvian fissure mask."""
    an = g.an
    H, A, B = an.H, an.a - an.t0, an.b - an.t0
    ic, h = s.ic, s.h
    sylv = np.zeros_like(ic)
    vw = g.v - 2.5 * np.sin(g.u / 6.0 + an.sulc_phase)  # a gently wavy fissure
    for sg in (-1.0, 1.0):
        d = g.ell(s, (sg * 0.40 * A, -0.06 * B, 0.42 * H), (4.5, 16, 13))
        if d is not None:  # insular cortex
            hu[ic & (d < 1)] = an.gm
        r = 0.6 + 0.7 * an.sulc_hw
        for p0, p1, rh in (
            ((sg * 0.40 * A, -0.07 * B, 0.42 * H), (sg * 0.95 * A, -0.03 * B, 0.44 * H), 10.0),
            ((sg * 0.12 * A, -0.17 * B, 0.31 * H), (sg * 0.40 * A, -0.08 * B, 0.37 * H), 4.0),
        ):
            lo, hi = height_range(p0, p1, rh)
            if s.hmax > lo and s.hmin < hi:
                sylv |= ic & (capsule(g.u, vw, h, p0, p1, r, 1.3 * r, rh) < 1)
        for centre, radii in (
            ((sg * 0.12 * A, 0.05 * B, 0.47 * H), (8, 11, 10)),  # thalamus
            ((sg * 0.21 * A, -0.27 * B, 0.53 * H), (5, 7, 10)),  # caudate head
            ((sg * 0.31 * A, -0.06 * B, 0.47 * H), (6, 14, 10)),  # lentiform nucleus
        ):
            d = g.ell(s, centre, radii)
            if d is not None:
                hu[ic & (d < 1)] = an.deep_gm
    return sylv


def _paint_falx(
    g: HeadGrid, s: SliceContext, hu: np.ndarray, cereb: np.ndarray, csf_sub: np.ndarray
) -> np.ndarray:
    """Interhemispheric fissure with the falx, interrupted by the corpus callosum.

    Paints all subarachnoid CSF too (after the fissure's cortex, before the falx, so each
    overwrites the last); returns ``csf_sub`` with the fissure added.
    """
    an = g.an
    H, ic, h, vn = an.H, s.ic, s.h, g.vn
    cc = hwindow(h, 0.48 * H, 0.68 * H, 3) > 0.5
    fiss_region = (
        ic
        & ~cereb
        & (
            (h > 0.68 * H)
            | (cc & (np.abs(vn) > 0.38))
            | (~cc & (h > 0.3 * H) & ((vn < -0.3) | (vn > 0.45)))
        )
    )
    if fiss_region.any():
        amu = np.abs(g.mid_u)
        fhw = 0.8 + 0.6 * an.sulc_hw
        hu[fiss_region & (amu < fhw + 2.8)] = an.gm
        csf_sub |= fiss_region & (amu < fhw)
        hu[csf_sub] = an.csf
        hu[fiss_region & (amu < 0.55)] = an.falx
    else:
        hu[csf_sub] = an.csf
    return csf_sub


def _paint_ventricles(g: HeadGrid, s: SliceContext, hu: np.ndarray) -> np.ndarray:
    """Ventricles and the calcifications often seen beside them; returns the ventricle mask."""
    an = g.an
    A, B, H = an.a - an.t0, an.b - an.t0, an.H
    vent = np.zeros_like(s.ic)
    for part in g.ventricles.values():
        for p0, p1, r0, r1, rh in part:
            d = g.cap(s, p0, p1, r0, r1, rh)
            if d is not None:
                vent |= s.ic & (d < 1)
    hu[vent] = an.csf
    if an.choroid:
        for sg in (-1.0, 1.0):
            p = (sg * (3.2 * an.vscale + 1 + 0.07 * A), 0.27 * B, 0.56 * H)
            d = g.ell(s, p, (2.2, 2.2, 2.5))
            if d is not None:
                hu[d < 1] = 180
    if an.pineal:
        d = g.ell(s, (0, 0.17 * B, 0.46 * H), (1.8, 1.8, 2.2))
        if d is not None:
            hu[d < 1] = 150
    return vent
