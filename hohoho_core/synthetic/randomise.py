"""Domain randomisation: per-study variation of anatomy, acquisition, artefacts, hard negatives
and the labelling rule, so a model trained on phantoms meets more than one "scanner".

Off by default (``StudyPlan.randomise``), and drawn from an RNG stream of its own, so the
default generator stays bit-identical. Ranges follow docs/domain.md ("What changes between
scanners, sites and patients"); each is written beside its field below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.ndimage import shift as nd_shift

from hohoho_core.synthetic.anatomy import Anatomy
from hohoho_core.synthetic.head import HeadGrid, SliceContext
from hohoho_core.synthetic.plan import Bleed

__all__ = [
    "NEUTRAL_VARIATION",
    "Variation",
    "acquire",
    "blend_partial_volume",
    "draw_variation",
    "paint_hard_negatives",
    "variation_rng",
    "vary_anatomy",
    "vary_bleed",
]

f32 = np.float32


@dataclass(frozen=True)
class Variation:
    """One study's draw. Every field is documented with its range in `draw_variation`."""

    head_scale: float
    yaw_deg: float | None
    shift_mm: tuple[float, float]
    gm: float
    wm: float
    csf: float
    blur_mm: float
    sharpen: float
    noise_hu: float
    noise_corr_mm: float
    offset_hu: float
    cupping: float
    falx_hu: float
    choroid: bool
    pineal: bool
    sinus_hu: float | None
    basal_calc_hu: float | None
    rim_hu: float
    rim_mm: float
    fossa_band_hu: float
    streaks: int
    streak_hu: float
    metal: tuple[float, float, float, float] | None  # u, v, h (mm), streak amplitude (HU)
    motion: tuple[float, float] | None  # probability per slice, shift (mm)
    partial_volume: float
    area_threshold_mm2: float
    bleed_density: str  # "acute" | "mixed" | "subacute" | "chronic" | "anaemic"


#: A variation with every artefact off and typical values: the base of montages and tests.
NEUTRAL_VARIATION = Variation(
    head_scale=1.0, yaw_deg=None, shift_mm=(0.0, 0.0), gm=40.0, wm=28.0, csf=8.0,
    blur_mm=0.5, sharpen=0.0, noise_hu=4.0, noise_corr_mm=0.6, offset_hu=0.0, cupping=2.0,
    falx_hu=90.0, choroid=True, pineal=True, sinus_hu=None, basal_calc_hu=None, rim_hu=0.0,
    rim_mm=1.0, fossa_band_hu=0.0, streaks=0, streak_hu=0.0, metal=None, motion=None,
    partial_volume=0.0, area_threshold_mm2=15.0, bleed_density="acute",
)


def variation_rng(seed: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The variation's own stream, apart from the study's, so that turning randomisation on
    changes nothing that the plain generator draws."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, index, attempt)))


def _maybe(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def draw_variation(rng: np.random.Generator) -> Variation:
    """Draw one study's variation (ranges in mm and HU, see docs/domain.md)."""
    gm = float(rng.uniform(30, 48))  # grey matter 35-45 HU, wider for kernels and calibration
    return Variation(
        head_scale=float(rng.uniform(0.84, 1.12)),  # children to large adults (in plane)
        yaw_deg=float(rng.uniform(-30, 30)) if _maybe(rng, 0.5) else None,
        shift_mm=(float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15))),
        gm=gm,
        wm=float(np.clip(gm - rng.uniform(4, 16), 18, 34)),  # grey/white contrast 4-16 HU
        csf=float(rng.uniform(0, 15)),
        blur_mm=float(rng.uniform(0.2, 1.2)),  # soft to sharp reconstruction
        sharpen=float(rng.uniform(0.3, 1.5)) if _maybe(rng, 0.35) else 0.0,  # bone kernels
        noise_hu=float(np.exp(rng.uniform(math.log(2.0), math.log(14.0)))),  # dose, head size
        noise_corr_mm=float(rng.uniform(0.2, 1.4)),  # sharp kernel: fine; soft: blotchy
        offset_hu=float(rng.normal(0, 4)),  # calibration drift between scanners
        cupping=float(rng.uniform(0, 12)),  # beam hardening next to the inner table
        falx_hu=float(rng.uniform(50, 250)),  # calcifies with age
        choroid=_maybe(rng, 0.8),
        pineal=_maybe(rng, 0.7),
        sinus_hu=float(rng.uniform(55, 78)) if _maybe(rng, 0.5) else None,  # dense sinuses
        basal_calc_hu=float(rng.uniform(90, 250)) if _maybe(rng, 0.15) else None,
        rim_hu=float(rng.uniform(10, 45)) if _maybe(rng, 0.5) else 0.0,  # inner-table PV
        rim_mm=float(rng.uniform(0.5, 1.6)),
        fossa_band_hu=float(rng.uniform(-30, -8)) if _maybe(rng, 0.7) else 0.0,
        streaks=int(rng.poisson(1.0)),
        streak_hu=float(rng.uniform(-25, 20)),
        metal=(float(rng.uniform(-40, 40)), float(rng.uniform(-60, 60)),
               float(rng.uniform(40, 110)), float(rng.uniform(100, 350)))
        if _maybe(rng, 0.12) else None,
        motion=(float(rng.uniform(0.2, 0.6)), float(rng.uniform(1.0, 3.5)))
        if _maybe(rng, 0.15) else None,
        partial_volume=float(rng.uniform(0.08, 0.3)) if _maybe(rng, 0.4) else 0.0,
        area_threshold_mm2=float(rng.uniform(5, 40)),  # readers' rule for run edges
        bleed_density=str(rng.choice(["acute", "mixed", "subacute", "chronic", "anaemic"],
                                     p=[0.65, 0.15, 0.08, 0.04, 0.08])),
    )


def vary_anatomy(an: Anatomy, var: Variation) -> Anatomy:
    """The study's anatomy with the variation's tissue, size and acquisition values."""
    fov = an.size * an.ps
    scalp = an.scalp
    b = min(an.b * var.head_scale, 0.43 * fov - scalp - 2)
    a = an.a * (b / an.b)
    lim_x = max(0.0, 0.47 * fov - (a + scalp))
    lim_y = max(0.0, 0.47 * fov - (b + scalp))
    return replace(
        an,
        a=a, b=b,
        yaw=math.radians(var.yaw_deg) if var.yaw_deg is not None else an.yaw,
        hx=float(np.clip(an.hx + var.shift_mm[0], -lim_x, lim_x)),
        hy=float(np.clip(an.hy + var.shift_mm[1], -lim_y, lim_y)),
        gm=var.gm, wm=var.wm, deep_gm=0.5 * (var.gm + var.wm) + (an.deep_gm - 0.5 * (an.gm + an.wm)),
        csf=var.csf, blur_mm=var.blur_mm, noise=min(an.noise, 1.5), offset=var.offset_hu,
        cupping=var.cupping, falx=var.falx_hu, choroid=var.choroid, pineal=var.pineal,
    )


def vary_bleed(bleed: Bleed, var: Variation, rng: np.random.Generator) -> Bleed:
    """The bleed with the study's blood density: acute (as drawn), mixed, subacute, chronic
    or anaemic (docs/domain.md: blood is not always 50-90 HU)."""
    p, subtype = dict(bleed.params), bleed.subtype
    kind = var.bleed_density
    if kind == "mixed":  # hyperacute: unclotted, darker swirls inside the clot
        p["swirl"] = float(rng.uniform(10, 25))
    elif kind == "anaemic":
        p["hu"] = max(44.0, p["hu"] - float(rng.uniform(8, 15)))
    elif kind == "subacute":
        p["hu"] = float(rng.uniform(36, 48) if subtype in ("subdural", "epidural")
                        else rng.uniform(44, 54))
    elif kind == "chronic" and subtype == "subdural":
        p["hu"] = float(rng.uniform(16, 28))
    elif kind == "chronic":
        p["hu"] = max(44.0, p["hu"] - 10.0)
    return Bleed(subtype, bleed.subtle, p)


def _ellipse_mask(u, v, h, centre, radii) -> np.ndarray:
    return (((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2
            + ((h - centre[2]) / radii[2]) ** 2) < 1


def paint_hard_negatives(g: HeadGrid, s: SliceContext, hu: np.ndarray,
                         var: Variation) -> None:
    """Bright structures that are not blood (never labelled), painted into ``hu`` in place."""
    an = g.an
    H, A, B = an.H, an.a - an.t0, an.b - an.t0
    u, v, h, d_in, ic = g.u, g.v, s.h, s.d_in, s.ic
    if var.sinus_hu is not None:
        # Superior sagittal sinus: a triangle at the posterior midline under the inner table;
        # transverse sinuses along the back of the posterior fossa, low in the head.
        sss = ic & (d_in < 7) & (np.abs(g.mid_u) < 0.5 * (7 - d_in)) & (g.vn > 0.5) \
            & (h > 0.45 * H)
        trans = ic & (d_in < 4) & (g.vn > 0.55) & (h > 0.16 * H) & (h < 0.3 * H)
        hu[sss | trans] = f32(var.sinus_hu)
    if var.basal_calc_hu is not None:
        for sg in (-1.0, 1.0):
            m = _ellipse_mask(u, v, h, (sg * 0.30 * A, -0.07 * B, 0.47 * H), (3.5, 6, 5))
            hu[ic & m] = f32(var.basal_calc_hu)
    if var.rim_hu:  # partial volume of the inner table: a thin bright rim
        rim = ic & (d_in >= 0) & (d_in < var.rim_mm)
        hu[rim] += f32(var.rim_hu)
    if var.metal is not None:
        mu, mv, mh, _ = var.metal
        if abs(float(np.mean(h)) - mh) < 4:
            hu[ic & (((u - mu) ** 2 + (v - mv) ** 2) < 2.0 ** 2)] = 3000


def _line_distance(yy, xx, p0, p1) -> np.ndarray:
    d = np.asarray(p1, float) - np.asarray(p0, float)
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    return np.sqrt((yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2)


def _nearest_pixel(g: HeadGrid, u0: float, v0: float) -> tuple[int, int]:
    d = (g.u - u0) ** 2 + (g.v - v0) ** 2
    i = int(np.argmin(d))
    return i // d.shape[1], i % d.shape[1]


def acquire(hu: np.ndarray, g: HeadGrid, k: int, var: Variation,
            rng: np.random.Generator) -> np.ndarray:
    """Reconstruction and artefacts on rendered slice ``k`` (HU, ``(N, N)``): a sharp
    kernel's overshoot, beam-hardening bands and streaks, metal, motion, kernel noise."""
    an = g.an
    ps = an.ps
    out = hu.astype(f32, copy=True)
    if var.sharpen:
        # Edge enhancement, bounded so bone/air edges overshoot like a kernel, not ring.
        high = out - gaussian_filter(out, 0.8 / ps, mode="nearest")
        out += f32(var.sharpen) * np.clip(high, -80, 80)
    soft = (out > -200) & (out < 300)
    n = out.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(f32)
    h_mean = float(np.mean(g.heights(k)))
    A, B, H = an.a - an.t0, an.b - an.t0, an.H
    if var.fossa_band_hu and 0.08 * H < h_mean < 0.3 * H:
        # Dark band between the petrous bones (Hounsfield bar).
        p0 = _nearest_pixel(g, -0.55 * A, 0.25 * B)
        p1 = _nearest_pixel(g, 0.55 * A, 0.25 * B)
        w = 4.0 / ps
        out += soft * f32(var.fossa_band_hu) * np.exp(-(_line_distance(yy, xx, p0, p1) / w) ** 2)
    bone = np.argwhere(out > 600)
    for _ in range(var.streaks if len(bone) > 1 else 0):
        i, j = rng.integers(0, len(bone), 2)
        w = float(rng.uniform(1.5, 4.0)) / ps
        d = _line_distance(yy, xx, bone[i], bone[j])
        out += soft * f32(var.streak_hu * rng.uniform(0.5, 1.0)) * np.exp(-(d / w) ** 2)
    if var.metal is not None and abs(h_mean - var.metal[2]) < 25:
        pi, pj = _nearest_pixel(g, var.metal[0], var.metal[1])
        r = np.hypot(yy - pi, xx - pj) * ps
        phi = np.arctan2(yy - pi, xx - pj)
        c = np.cos(int(rng.integers(5, 12)) * phi + rng.uniform(0, 2 * np.pi))
        rays = np.sign(c) * np.abs(c) ** 6  # thin alternating bright and dark rays
        fall = math.exp(-abs(h_mean - var.metal[2]) / 10)
        out += (out > -500) * f32(var.metal[3] * fall) * rays * np.exp(-r / 40) * (r > 2)
    if var.motion is not None and rng.random() < var.motion[0]:
        ang = rng.uniform(0, 2 * np.pi)
        s = var.motion[1] / ps
        moved = nd_shift(out, (s * math.sin(ang), s * math.cos(ang)), order=1, mode="nearest")
        w = f32(rng.uniform(0.2, 0.5))
        out = (1 - w) * out + w * moved
    noise = gaussian_filter(rng.standard_normal(out.shape).astype(f32),
                            max(var.noise_corr_mm / ps, 0.3), mode="wrap")
    out += noise * f32(var.noise_hu / max(float(noise.std()), 1e-6)) * (out > -900)
    return out


def blend_partial_volume(hu: np.ndarray, frac: float) -> np.ndarray:
    """Thicker slices: each slice takes ``frac`` of each neighbour (ends repeat themselves)."""
    if frac <= 0 or len(hu) < 2:
        return hu
    prev = np.concatenate([hu[:1], hu[:-1]])
    nxt = np.concatenate([hu[1:], hu[-1:]])
    return ((1 - 2 * frac) * hu + frac * (prev + nxt)).astype(f32)
