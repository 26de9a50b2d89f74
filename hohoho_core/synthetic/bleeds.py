"""Haemorrhages: drawing each bleed's 3D shape, and painting it into a slice.

A bleed is a shape in head coordinates (mm), so its labels follow its voxels: the area it
covers on a slice decides whether that slice is positive for its subtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hohoho_core.synthetic.brain import Tissue
from hohoho_core.synthetic.head import HeadGrid, SliceContext
from hohoho_core.synthetic.plan import SUBTYPE_COLUMN, Bleed
from hohoho_core.synthetic.shapes import ellipsoid


def draw_bleed(rng: np.random.Generator, g: HeadGrid, subtype: str, subtle: bool) -> Bleed:
    """Shape parameters (mm) of one bleed placed inside the scanned range."""
    an = g.an
    H, A, B = an.H, an.a - an.t0, an.b - an.t0
    centre_h = g.centre_heights()
    scan_lo, scan_hi = float(centre_h.min()), float(centre_h.max())

    def level(lo: float, hi: float, margin: float) -> float:
        lo2, hi2 = max(lo, scan_lo + margin), min(hi, scan_hi - margin)
        if lo2 >= hi2:
            lo2, hi2 = max(scan_lo, lo), min(scan_hi, hi)
        if lo2 >= hi2:
            return 0.5 * (max(lo, scan_lo) + min(hi, scan_hi))
        return float(rng.uniform(lo2, hi2))

    s = subtle
    # Acute blood spans 50-90 HU: above 80 it is as white as bone in the brain window, so a
    # model must also find bright bleeds by shape, not only by a grey a little above brain.
    if subtype == "epidural":
        side = float(rng.choice([-1.0, 1.0]))
        ang = math.radians(float(rng.uniform(-55, 40)))
        theta = ang if side > 0 else math.pi - ang
        lh = float(rng.uniform(7, 10) if s else rng.uniform(12, 22))
        h0 = level(0.4 * H, 0.75 * H, 0.5 * lh)
        p = {
            "theta": theta,
            "h0": h0,
            "lh": lh,
            "ls": float(rng.uniform(11, 15) if s else rng.uniform(18, 32)),
            "t": float(rng.uniform(3.5, 5.5) if s else rng.uniform(8, 20)),
            "hu": float(rng.uniform(52, 58) if s else rng.uniform(60, 90)),
            "fracture": float(rng.random() < 0.7),
            "fracture_off": float(rng.uniform(-6, 6)),
        }
        p["hlo"], p["hhi"] = h0 - lh, h0 + lh
    elif subtype == "subdural":
        side = float(rng.choice([-1.0, 1.0]))
        ang = math.radians(float(rng.uniform(-25, 25)))
        theta = ang if side > 0 else math.pi - ang
        lh = float(rng.uniform(18, 28) if s else rng.uniform(30, 50))
        h0 = level(0.45 * H, 0.75 * H, 0.3 * lh)
        p = {
            "theta": theta,
            "h0": h0,
            "lh": lh,
            "side": side,
            "ls": float(rng.uniform(35, 60) if s else rng.uniform(60, 110)),
            "t": float(rng.uniform(2.5, 4.0) if s else rng.uniform(6, 16)),
            "hu": float(rng.uniform(50, 57) if s else rng.uniform(58, 90)),
        }
        p["hlo"], p["hhi"] = h0 - lh, h0 + lh
    elif subtype == "subarachnoid":
        kind = float(rng.random())
        if kind < 0.45:  # basal cisterns and Sylvian fissures
            h0 = level(0.28 * H, 0.4 * H, 5)
            r = float(rng.uniform(18, 24) if s else rng.uniform(35, 55))
            cu, cv = 0.0, -0.05 * B
        else:  # convexity sulci
            th = float(rng.uniform(0, 2 * math.pi))
            h0 = level(0.5 * H, 0.85 * H, 8)
            r = float(rng.uniform(13, 17) if s else rng.uniform(20, 35))
            cu, cv = g.level_point(th, 4.0, h0)
        p = {
            "cu": cu,
            "cv": cv,
            "h0": h0,
            "r": r,
            "rh": r * 0.8,
            "hu": float(rng.uniform(48, 55) if s else rng.uniform(58, 85)),
        }
        p["hlo"], p["hhi"] = h0 - r, h0 + r
    elif subtype == "intraparenchymal":
        kind = float(rng.random())
        r = float(rng.uniform(4.0, 6.5) if s else rng.uniform(9, 22))
        if kind < 0.45:  # basal ganglia / thalamus
            sg = float(rng.choice([-1.0, 1.0]))
            cu, cv = sg * float(rng.uniform(0.18, 0.32)) * A, float(rng.uniform(-0.1, 0.08)) * B
            h0 = level(0.42 * H, 0.56 * H, 3)
        elif kind < 0.9:  # lobar
            th = float(rng.uniform(0, 2 * math.pi))
            h0 = level(0.5 * H, 0.8 * H, 3)
            cu, cv = g.level_point(th, r + float(rng.uniform(8, 18)), h0)
        else:  # cerebellar
            sg = float(rng.choice([-1.0, 1.0]))
            cu, cv, h0 = sg * 0.3 * A, 0.55 * B, level(0.1 * H, 0.2 * H, 2)
            r = min(r, 12.0)
        rh = r * float(rng.uniform(0.8, 1.2))
        p = {
            "cu": cu,
            "cv": cv,
            "h0": h0,
            "r": r,
            "rh": rh,
            "irr": float(rng.uniform(0.05, 0.25)),
            "ph1": float(rng.uniform(0, 6.3)),
            "ph2": float(rng.uniform(0, 6.3)),
            "rim": float(rng.uniform(1.0, 2.5) if s else rng.uniform(3, 7)),
            "oedema": float(rng.uniform(12, 20)),
            "hu": float(rng.uniform(52, 60) if s else rng.uniform(60, 90)),
        }
        p["hlo"], p["hhi"] = h0 - rh - 8, h0 + rh + 8
    elif subtype == "intraventricular":
        mode = 0 if rng.random() < 0.75 else 1
        p = {"mode": float(mode), "hu": float(rng.uniform(48, 56) if s else rng.uniform(55, 88))}
        both = rng.random() < 0.6
        first = int(rng.integers(0, 2))
        for sgi in (0, 1):
            on = both or sgi == first
            p[f"side{sgi}"] = float(on)
            frac = float(rng.uniform(0.55, 0.8) if s else rng.uniform(0.15, 0.55))
            p[f"level{sgi}"] = g.occipital_level(-1.0 if sgi == 0 else 1.0, frac)
        p["hlo"], p["hhi"] = (0.42 * H, 0.6 * H) if mode == 0 else (0.05 * H, 0.55 * H)
    else:
        raise ValueError(f"unknown subtype {subtype!r}")
    return Bleed(subtype, subtle, p)


def paint_bleeds(
    g: HeadGrid,
    s: SliceContext,
    tissue: Tissue,
    bleeds: Sequence[Bleed],
    hu: np.ndarray,
    areas: np.ndarray,
) -> None:
    """Paint every bleed into ``hu`` and add its pixel count to ``areas`` ``(5,)``."""
    u, v = g.u, g.v
    for bl in bleeds:
        p = bl.params
        if s.hmax < p["hlo"] or s.hmin > p["hhi"]:
            continue
        m = _BLEED_MASKS[bl.subtype](g, s, tissue, p, hu)
        if not m.any():
            continue
        texture = 3 * np.sin(u * 0.8 + p.get("ph1", 0.0)) * np.sin(v * 0.7)
        if "swirl" in p:  # hyperacute blood: darker unclotted swirls inside the clot
            texture = texture - p["swirl"] * np.clip(np.sin(u * 0.35) * np.sin(v * 0.3 + 1), 0, 1)
        hu[m] = p["hu"] + texture[m]
        areas[SUBTYPE_COLUMN[bl.subtype]] += float(np.count_nonzero(m))


def _epidural(
    g: HeadGrid, s: SliceContext, tissue: Tissue, p: dict[str, float], hu: np.ndarray
) -> np.ndarray:
    """Lens against the inner table, often under a fracture line (painted here)."""
    h, d_in = s.h, s.d_in
    arc = _arc(g, s, p)
    q2 = (arc / p["ls"]) ** 2 + ((h - p["h0"]) / p["lh"]) ** 2
    thick = p["t"] * np.sqrt(np.clip(1 - q2, 0, 1))
    m = s.ic & (d_in >= -0.3) & (d_in < thick)
    if p.get("fracture", 0) > 0:  # a thin lucent line through the skull
        fr = np.abs(arc - p["fracture_off"] - 0.3 * (h - p["h0"])) < 0.7
        fr &= (d_in < 0) & (s.d_out > 0) & (np.abs(h - p["h0"]) < p["lh"])
        hu[fr] = g.an.soft
    return m


def _subdural(
    g: HeadGrid, s: SliceContext, tissue: Tissue, p: dict[str, float], hu: np.ndarray
) -> np.ndarray:
    """Crescent along the inner table over one hemisphere."""
    arc = _arc(g, s, p)
    ang = np.sqrt(np.clip(1 - (arc / p["ls"]) ** 2, 0, 1))
    vert = np.clip(1 - ((s.h - p["h0"]) / p["lh"]) ** 2, 0, 1)
    thick = p["t"] * ang * np.sqrt(vert)
    # A subdural collection stops at the falx: it never crosses the midline.
    return s.ic & (s.d_in >= -0.3) & (s.d_in < thick) & (g.mid_u * p["side"] > 1.5)


def _subarachnoid(
    g: HeadGrid, s: SliceContext, tissue: Tissue, p: dict[str, float], hu: np.ndarray
) -> np.ndarray:
    """Blood in the subarachnoid CSF within an ellipsoidal region."""
    reg = ellipsoid(g.u, g.v, s.h, (p["cu"], p["cv"], p["h0"]), (p["r"], p["r"], p["rh"]))
    return tissue.csf_sub & (reg < 1)


def _intraparenchymal(
    g: HeadGrid, s: SliceContext, tissue: Tissue, p: dict[str, float], hu: np.ndarray
) -> np.ndarray:
    """Irregular blob with a rim of oedema (painted here) in the parenchyma."""
    du, dv, dh = g.u - p["cu"], g.v - p["cv"], (s.h - p["h0"]) * (p["r"] / p["rh"])
    phi = np.arctan2(dv, du)
    irregular = 1 + p["irr"] * (
        0.6 * np.cos(3 * phi + p["ph1"]) + 0.4 * np.cos(5 * phi + p["ph2"] + dh / 5)
    )
    dist = np.sqrt(du * du + dv * dv + dh * dh) / (p["r"] * irregular)
    hu[tissue.brain & (dist >= 1) & (dist < 1 + p["rim"] / p["r"])] = p["oedema"]
    return s.ic & ~tissue.vent & (dist < 1)


def _intraventricular(
    g: HeadGrid, s: SliceContext, tissue: Tissue, p: dict[str, float], hu: np.ndarray
) -> np.ndarray:
    """Blood layering in the occipital horns, or a cast of the third and fourth ventricles."""
    m = np.zeros_like(s.ic)
    if p["mode"] == 0:  # blood layering in the dependent occipital horns
        for sgi in (0, 1):
            if p[f"side{sgi}"] > 0:
                d = g.cap(s, *g.ventricles["occipital"][sgi])
                if d is not None:
                    m |= tissue.vent & (d < 1) & (g.y > p[f"level{sgi}"])
    else:  # cast of the third and fourth ventricles
        for key in ("third", "fourth"):
            for part in g.ventricles[key]:
                d = g.cap(s, *part)
                if d is not None:
                    m |= tissue.vent & (d < 1)
    return m


def _arc(g: HeadGrid, s: SliceContext, p: dict[str, float]) -> np.ndarray:
    """Arc length (mm) along the inner table from the bleed's centre angle."""
    dth = np.angle(np.exp(1j * (g.theta - p["theta"]))).astype(np.float32)
    return dth * g.rloc * s.si


_BLEED_MASKS = {
    "epidural": _epidural,
    "subdural": _subdural,
    "subarachnoid": _subarachnoid,
    "intraparenchymal": _intraparenchymal,
    "intraventricular": _intraventricular,
}
