"""A second, independent head-CT phantom generator ("foreign" data) in the RSNA 2019 layout.

The shipped demo model only ever saw studies from ``hohoho_core.synthetic``. This module
draws head-CT studies a different way, from scratch, so the model can be measured on data
from a generator it never saw (``bench/generalization.py``). It shares no code with the
project's generator or DICOM writer and imports neither.

How a study is built (all lengths in mm, HU throughout):

- Head frame: per study an in-plane offset and a small rotation map the scanner grid
  ``(X, Y)`` (pixel centres, Y posterior) to head coordinates ``(u, v)``; ``u`` points to
  the image right, ``v`` posterior. Everything is a function of the polar angle ``phi``
  and radius ``r`` in that frame, precomputed once per study.
- Levels: slice ``k`` (0 = lowest) sits at a level ``t`` in [about -0.1, 1] from the skull
  base to the vertex. The outline is a Fourier-perturbed ellipse scaled by ``s(t)``
  (widest at ``tm``, a dome towards the vertex); the *radial depth* ``s R(phi) - r`` below
  the outline decides the layers: skin, 2-4 bone layers (cortical / diploe), a thin CSF
  rim, a grey cortex ring of angle-dependent thickness, white matter.
- CSF spaces: sulci as thin radial wedges cut from the surface, Sylvian fissures, the
  interhemispheric fissure with a falx, lateral ventricles as two curved bands (quadratic
  centre lines, bulging frontal horns and atria, diverging occipital horns), a third
  ventricle slit, basal cisterns (a ring round the midbrain and a five-lobed suprasellar
  star) and a fourth ventricle. Skull-base bone (petrous bars with mastoid air, clivus,
  sphenoid sinus, anterior fossa floor) fades in at low levels.
- Scanner: a foam headrest and a flat table plate below the head (scanner frame), slight
  Gaussian blur, then white Gaussian noise (not smoothed), stored as unsigned 16-bit with
  RescaleIntercept -1024.
- Bleeds, each a per-slice 2D section of a 3D shape: EDH a biconvex lens against the
  inner table over few slices; SDH a long thin crescent along one hemisphere's inner
  table over many slices, stopped at the midline; SAH blood filling chosen sulci, Sylvian
  fissures, the interhemispheric fissure or the basal cisterns; IPH an irregular rounded
  mass with an oedema rim (15-22 HU); IVH a fluid level in the occipital horns (blood in
  the dependent, posterior part, the level horizontal in the scanner frame).
- Labels follow the masks: a slice is positive for a subtype when that subtype covers
  at least ``AREA_THRESHOLD_MM2`` on it; ``any`` is their OR.

DICOM conventions chosen unlike the project's generator: unsigned pixels with intercept
-1024 for every file, InstanceNumber 1 at the vertex (ascending downwards) with
ImagePositionPatient z decreasing, deterministic UIDs (``generate_uid`` with entropy from
the seed).

    python -m bench.foreign_phantom --out data/foreign --studies 60 --seed 7001 --size 512
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import gaussian_filter

__all__ = [
    "AREA_THRESHOLD_MM2",
    "CLASSES",
    "GENERATOR_VERSION",
    "SUBTYPES",
    "ForeignStudy",
    "main",
    "make_foreign_study",
    "save_foreign_montage",
    "write_foreign_dataset",
]

#: Bump when the drawing changes, so cached datasets are regenerated.
GENERATOR_VERSION = 1
SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
CLASSES: tuple[str, ...] = (*SUBTYPES, "any")
#: A slice is positive for a subtype when the subtype covers at least this area (mm^2).
AREA_THRESHOLD_MM2 = 10.0
SLICE_MM = 5.0
POSITIVE_FRACTION = 0.5
TWO_SUBTYPES = 0.3
_MAX_REDRAWS = 6
_AIR = -1000.0
_TAU = 2.0 * math.pi


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    """Angle to [-pi, pi)."""
    return (a + math.pi) % _TAU - math.pi


def _fourier(phi: np.ndarray | float, terms: Sequence[tuple[int, float, float]]) -> Any:
    """sum of amp * cos(k phi + phase) over ``terms`` = [(k, amp, phase), ...]."""
    out = np.zeros_like(phi, dtype=np.float32) if isinstance(phi, np.ndarray) else 0.0
    for k, amp, phase in terms:
        out = out + np.float32(amp) * np.cos(k * phi + phase)
    return out


def _terms(rng: np.random.Generator, ks: Sequence[int], amp: float) -> list[tuple[int, float, float]]:
    return [(int(k), float(rng.uniform(0.0, amp)), float(rng.uniform(0.0, _TAU))) for k in ks]


# --------------------------------------------------------------------------- anatomy


@dataclass
class _Sulcus:
    phi: float  # angle of its mouth (rad, head frame)
    t0: float  # level range it exists in
    t1: float
    depth: float  # mm below the brain surface
    half_width: float  # mm at the bottom (wider at the surface)
    bend: float  # rad per 40 mm of depth


@dataclass
class _Ventricles:
    septum: float  # half thickness of the septum pellucidum (mm)
    front_div: float  # how far the frontal horns diverge (mm)
    back_div: float  # how far the occipital horns diverge (mm)
    v_front: float  # frontal tip (negative, mm)
    v_back: float  # occipital tip (positive, mm)
    size: tuple[float, float]  # width factor per side (u < 0, u > 0)
    t0: float  # lowest level of the lateral ventricles
    t1: float  # highest


@dataclass
class _Head:
    """Every random choice of one study's anatomy and acquisition."""

    size: int
    ps: float  # pixel spacing (mm)
    n: int  # slices
    t_lo: float
    t_hi: float
    tm: float  # level of the widest section
    a: float  # semi-axis along u (mm)
    b: float  # semi-axis along v (mm)
    outline: list[tuple[int, float, float]]
    rot: float  # rad
    ox: float
    oy: float
    skin: float  # mm
    skin_hu: float
    skull: float  # mean thickness (mm)
    skull_terms: list[tuple[int, float, float]]
    layers: list[tuple[float, float]]  # (fraction of the skull thickness, HU), outer first
    csf_rim: float
    csf_hu: float
    grey_hu: float
    white_hu: float
    cortex: float  # mm
    cortex_terms: list[tuple[int, float, float]]
    nuclei_hu: float
    falx_hu: float
    ih_half: float  # half width of the interhemispheric fissure (mm)
    sulci: list[_Sulcus]
    sylvian: list[_Sulcus]  # index 0: u < 0 side, 1: u > 0 side
    vent: _Ventricles
    midbrain_v: float
    base_hu: float
    pad_top: float  # headrest foam top (scanner Y, mm)
    pad_hu: float
    plate_top: float
    plate_mm: float
    plate_hu: float
    noise: float  # HU
    blur_mm: float
    x_origin: float
    y_origin: float
    z_top: float

    @property
    def scale(self) -> float:
        """Head size relative to an average one."""
        return (self.a + self.b) / 165.0

    def level(self, k: float) -> float:
        return self.t_lo + (k + 0.5) / self.n * (self.t_hi - self.t_lo)

    def slice_of_level(self, t: float) -> float:
        return (t - self.t_lo) / (self.t_hi - self.t_lo) * self.n - 0.5

    def s(self, t: float) -> float:
        """Outline scale at level t: a dome above ``tm``, a slow taper below."""
        if t >= self.tm:
            x = (t - self.tm) / (1.07 - self.tm)
            return math.sqrt(max(1.0 - x * x, 0.04))
        return 0.74 + 0.26 * math.sin(0.5 * math.pi * max(t, -0.25) / self.tm)

    def base(self, t: float) -> float:
        """Skull-base weight: 0 above t = 0.24, 1 from t = 0.08 down."""
        return float(np.clip((0.24 - t) / 0.16, 0.0, 1.0))

    def radius(self, phi: Any) -> Any:
        """Outer outline radius at s = 1 along head-frame angle ``phi``."""
        c, sn = np.cos(phi), np.sin(phi)
        ell = 1.0 / np.sqrt((c / self.a) ** 2 + (sn / self.b) ** 2)
        return ell * (1.0 + _fourier(phi, self.outline))

    def skull_at(self, phi: Any) -> Any:
        return self.skull * (1.0 + _fourier(phi, self.skull_terms))

    def inner(self, phi: Any, t: float) -> Any:
        """Inner-table radius along ``phi`` at level ``t``."""
        return self.s(t) * self.radius(phi) - self.skin - self.skull_at(phi) * (
            1.0 + 0.9 * self.base(t)
        )


def _draw_head(rng: np.random.Generator, size: int) -> _Head:
    n = int(rng.integers(24, 37))
    ps = float(rng.uniform(0.42, 0.5)) * 512.0 / size
    height = float(np.clip(n * SLICE_MM / rng.uniform(1.0, 1.12), 125.0, 165.0))
    t_hi = float(rng.uniform(0.97, 1.02))
    t_lo = t_hi - n * SLICE_MM / height
    a = float(rng.uniform(66.0, 78.0))
    b = float(rng.uniform(a * 1.14, min(a * 1.32, 96.0)))
    oy = float(rng.uniform(-14.0, -4.0))
    n_layers = int(rng.integers(2, 5))
    cort = lambda: float(rng.uniform(1200.0, 1800.0))  # noqa: E731
    dipl = lambda: float(rng.uniform(500.0, 800.0))  # noqa: E731
    if n_layers == 2:
        fr = rng.uniform(0.4, 0.6)
        layers = [(fr, cort()), (1.0 - fr, cort())]
    elif n_layers == 3:
        o, i = rng.uniform(0.2, 0.32), rng.uniform(0.2, 0.3)
        layers = [(o, cort()), (1.0 - o - i, dipl()), (i, cort())]
    else:
        o, i = rng.uniform(0.18, 0.28), rng.uniform(0.18, 0.26)
        d1 = rng.uniform(0.3, 0.7) * (1.0 - o - i)
        layers = [(o, cort()), (d1, dipl()), (1.0 - o - i - d1, dipl()), (i, cort())]
    layers = [(float(f), float(h)) for f, h in layers]

    sulci = []
    for _ in range(int(rng.integers(10, 19))):
        t0 = float(rng.uniform(0.3, 0.75))
        sulci.append(
            _Sulcus(
                phi=float(rng.uniform(-math.pi, math.pi)),
                t0=t0,
                t1=min(t0 + float(rng.uniform(0.2, 0.5)), 1.05),
                depth=float(rng.uniform(6.0, 14.0)),
                half_width=float(rng.uniform(0.5, 1.0)),
                bend=float(rng.uniform(-0.25, 0.25)),
            )
        )
    sylvian = []
    for side in (-1.0, 1.0):
        tilt = float(rng.uniform(0.15, 0.45))
        sylvian.append(
            _Sulcus(
                phi=math.atan2(-math.sin(tilt), side * math.cos(tilt)),
                t0=float(rng.uniform(0.24, 0.3)),
                t1=float(rng.uniform(0.45, 0.52)),
                depth=float(rng.uniform(18.0, 28.0)),
                half_width=float(rng.uniform(0.9, 1.6)),
                bend=float(rng.uniform(0.2, 0.45)) * side,
            )
        )
    vsize = float(rng.uniform(0.75, 1.25))
    vent = _Ventricles(
        septum=float(rng.uniform(0.8, 1.5)),
        front_div=float(rng.uniform(3.0, 8.0)),
        back_div=float(rng.uniform(10.0, 18.0)),
        v_front=-float(rng.uniform(24.0, 32.0)),
        v_back=float(rng.uniform(27.0, 38.0)),
        size=(vsize * float(rng.uniform(0.9, 1.1)), vsize * float(rng.uniform(0.9, 1.1))),
        t0=float(rng.uniform(0.33, 0.38)),
        t1=float(rng.uniform(0.68, 0.75)),
    )
    y_back = oy + b * 1.03
    pad_top = y_back + float(rng.uniform(-3.0, 1.0))
    plate_top = pad_top + float(rng.uniform(8.0, 20.0))
    half_fov = (size - 1) / 2.0 * ps
    return _Head(
        size=size,
        ps=ps,
        n=n,
        t_lo=t_lo,
        t_hi=t_hi,
        tm=float(rng.uniform(0.42, 0.56)),
        a=a,
        b=b,
        outline=_terms(rng, (2, 3, 4, 5), 0.018),
        rot=math.radians(float(rng.uniform(-7.0, 7.0))),
        ox=float(rng.uniform(-8.0, 8.0)),
        oy=oy,
        skin=float(rng.uniform(2.0, 4.0)),
        skin_hu=float(rng.uniform(32.0, 48.0)),
        skull=float(rng.uniform(5.0, 7.5)),
        skull_terms=_terms(rng, (1, 2, 3), 0.12),
        layers=layers,
        csf_rim=float(rng.uniform(0.6, 1.6)),
        csf_hu=float(rng.uniform(5.0, 12.0)),
        grey_hu=float(rng.uniform(38.0, 42.0)),
        white_hu=float(rng.uniform(26.0, 32.0)),
        cortex=float(rng.uniform(2.5, 4.5)),
        cortex_terms=_terms(rng, (3, 5, 7, 9), 0.18),
        nuclei_hu=float(rng.uniform(34.0, 39.0)),
        falx_hu=float(rng.uniform(44.0, 60.0)),
        ih_half=float(rng.uniform(0.9, 1.8)),
        sulci=sulci,
        sylvian=sylvian,
        vent=vent,
        midbrain_v=float(rng.uniform(2.0, 8.0)),
        base_hu=float(rng.uniform(650.0, 950.0)),
        pad_top=pad_top,
        pad_hu=float(rng.uniform(-880.0, -650.0)),
        plate_top=plate_top,
        plate_mm=float(rng.uniform(3.0, 8.0)),
        plate_hu=float(rng.uniform(80.0, 400.0)),
        noise=float(rng.uniform(3.0, 10.0)),
        blur_mm=float(rng.uniform(0.22, 0.4)),
        x_origin=-half_fov + float(rng.uniform(-6.0, 6.0)),
        y_origin=-half_fov + float(rng.uniform(-30.0, 10.0)),
        z_top=float(rng.uniform(-40.0, 60.0)),
    )


def _ventricle_masks(
    h: _Head, u: np.ndarray, v: np.ndarray, t: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Lateral + third ventricle mask and each side's occipital-horn mask (u < 0, u > 0)."""
    vt = h.vent
    mask = np.zeros(u.shape, bool)
    horns = [np.zeros(u.shape, bool), np.zeros(u.shape, bool)]
    g = h.scale
    # Third ventricle: a midline slit just below the lateral ventricles.
    if vt.t0 - 0.09 <= t <= vt.t0 + 0.07:
        mask |= (np.abs(u) < 1.6 * vt.size[0]) & (v > -9.0 * g) & (v < 10.0 * g)
    if not vt.t0 <= t <= vt.t1:
        return mask, horns
    f = (t - vt.t0) / (vt.t1 - vt.t0)
    env = math.sin(math.pi * f) ** 0.5
    vf, vb = vt.v_front * g, vt.v_back * g
    vn = np.where(v < 0.0, v / vf, v / vb)  # 0 at the centre, 1 at either tip
    for i, side in enumerate((-1.0, 1.0)):
        su = side * u
        half = (
            3.6
            + 2.8 * np.exp(-(((v - 0.6 * vf) / 7.0) ** 2))  # frontal horn
            + 5.0 * np.exp(-(((v - 0.5 * vb) / 9.0) ** 2)) * (1.0 - 0.6 * f)  # atrium
        ) * (vt.size[i] * env * g)
        half = half * np.clip((v - vf) / 6.0, 0.0, 1.0)
        half = half * np.clip((vb * (1.0 - 0.45 * f) - v) / 8.0, 0.0, 1.0)
        div = np.where(v < 0.0, vt.front_div, vt.back_div * (0.4 + 0.6 * (1.0 - f)))
        # The bodies lean on a thin septum; the horns diverge from it at either end.
        centre = vt.septum + half + div * vn * vn
        band = np.abs(su - centre) < half
        if f < 0.42:
            # Low: frontal horns and atria/occipital horns, thalami between them.
            seg = (v < vf + 17.0 * g) | (v > 0.22 * vb)
        else:
            seg = (v > vf * (1.0 - 0.15 * (f - 0.42))) & (v < 0.62 * vb)
        side_mask = band & seg & (su > 0.0)
        mask |= side_mask
        horns[i] = side_mask & (v > 0.3 * vb)
    return mask, horns


@dataclass
class _Ctx:
    """One slice's geometry (flat arrays over the image) and its CSF structures."""

    k: int
    t: float
    s: float
    db: np.ndarray  # depth below the inner table (mm, flat); < 0 outside the cranium
    rin: np.ndarray  # inner-table radius along each pixel's angle
    cranium: np.ndarray  # bool: inside the inner table and not skull-base bone
    parenchyma: np.ndarray  # bool: brain tissue (not CSF, not bone)
    sulci: dict[int, np.ndarray] = field(default_factory=dict)  # sulcus -> flat indices
    sylvian: dict[int, np.ndarray] = field(default_factory=dict)  # side -> flat indices
    fissure: np.ndarray | None = None  # interhemispheric fissure (flat indices)
    cisterns: np.ndarray | None = None
    horns: list[np.ndarray] = field(default_factory=list)  # per side, flat indices


class _Grid:
    """Per-study pixel geometry, computed once (flat float32 arrays)."""

    def __init__(self, h: _Head) -> None:
        n = h.size
        c = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(h.ps)
        yy, xx = np.meshgrid(c, c, indexing="ij")
        self.X = xx.ravel()
        self.Y = yy.ravel()
        dx, dy = self.X - np.float32(h.ox), self.Y - np.float32(h.oy)
        cr, sr = np.float32(math.cos(h.rot)), np.float32(math.sin(h.rot))
        self.u = cr * dx + sr * dy
        self.v = -sr * dx + cr * dy
        self.r = np.hypot(self.u, self.v)
        self.phi = np.arctan2(self.v, self.u)
        self.R = h.radius(self.phi).astype(np.float32)
        self.skull = h.skull_at(self.phi).astype(np.float32)
        self.cortex = (h.cortex * (1.0 + _fourier(self.phi, h.cortex_terms))).astype(np.float32)
        g = h.scale
        self.core = np.flatnonzero(
            (np.abs(self.u) < 60.0 * g) & (self.v > -48.0 * g) & (self.v < 58.0 * g)
        )
        self.uc, self.vc = self.u[self.core], self.v[self.core]
        self.Yc = self.Y[self.core]


def _render_anatomy(h: _Head, grid: _Grid, k: int) -> tuple[np.ndarray, _Ctx]:
    """HU of slice ``k`` without bleeds, blur or noise (flat float32), and its geometry."""
    t = h.level(k)
    s = h.s(t)
    w = h.base(t)
    g = h.scale
    hu = np.full(grid.X.shape, _AIR, np.float32)

    # Headrest foam and table plate (scanner frame, flat under the head).
    X, Y = grid.X, grid.Y
    hu[(Y >= h.pad_top) & (Y < h.plate_top) & (np.abs(X) < 0.9 * h.a + 25.0)] = h.pad_hu
    hu[(Y >= h.plate_top) & (Y < h.plate_top + h.plate_mm)] = h.plate_hu

    depth = np.float32(s) * grid.R - grid.r
    skull = grid.skull * np.float32(1.0 + 0.9 * w)
    inner_depth = np.float32(h.skin) + skull
    db = depth - inner_depth
    rin = grid.r + db
    head = depth > 0.0
    hu[head] = h.skin_hu
    # Bone layers, outer first, as fractions of the local skull thickness.
    frac = (depth - np.float32(h.skin)) / skull
    edge = 0.0
    for j, (part, layer_hu) in enumerate(h.layers):
        sel = head & (frac >= edge)
        if j < len(h.layers) - 1:
            sel &= frac < edge + part
        hu[sel] = layer_hu
        edge += part
    cranium = db >= 0.0
    # Brain: white core, grey cortex ring of varying thickness, thin CSF rim.
    cortex = grid.cortex * np.float32(1.0 + 1.6 * max(t - 0.82, 0.0) / 0.18 + 0.8 * w)
    hu[cranium] = h.white_hu
    hu[cranium & (db < cortex)] = h.grey_hu
    csf = cranium & (db < h.csf_rim)

    u, v = grid.u, grid.v
    core = grid.core
    uc, vc = grid.uc, grid.vc
    ctx = _Ctx(k=k, t=t, s=s, db=db, rin=rin, cranium=cranium, parenchyma=cranium)

    # Deep grey nuclei (basal ganglia / thalami) on both sides.
    if 0.32 <= t <= 0.53:
        e = math.sin(math.pi * (t - 0.32) / 0.21)
        nuc = (((np.abs(uc) - 15.0 * g) / (7.0 * g * e + 0.1)) ** 2 + ((vc - 1.0) / (12.0 * g)) ** 2) < 1.0
        hu[core[nuc & cranium[core]]] = h.nuclei_hu

    # Sulci: radial wedges from the brain surface, wider at the mouth.
    shell = np.flatnonzero(cranium & (db < 32.0))
    p_sh, r_sh, d_sh = grid.phi[shell], grid.r[shell], db[shell]
    for i, sc in enumerate(h.sulci):
        if not sc.t0 <= t <= sc.t1:
            continue
        depth_i = sc.depth * math.sin(math.pi * (t - sc.t0) / (sc.t1 - sc.t0)) ** 0.5
        sel = d_sh < depth_i
        if not sel.any():
            continue
        dd = d_sh[sel]
        off = np.abs(_wrap(p_sh[sel] - sc.phi - sc.bend * dd / 40.0)) * r_sh[sel]
        hit = off < sc.half_width * (1.0 + 0.8 * (1.0 - dd / depth_i))
        idx = shell[sel][hit]
        if idx.size:
            ctx.sulci[i] = idx
            csf[idx] = True
    for i, sc in enumerate(h.sylvian):
        if not sc.t0 <= t <= sc.t1:
            continue
        depth_i = sc.depth * math.sin(math.pi * (t - sc.t0) / (sc.t1 - sc.t0)) ** 0.7
        sel = d_sh < depth_i
        dd = d_sh[sel]
        off = np.abs(_wrap(p_sh[sel] - sc.phi - sc.bend * dd / 40.0)) * r_sh[sel]
        hit = off < sc.half_width * (1.0 + 0.5 * (1.0 - dd / max(depth_i, 1e-3)))
        idx = shell[sel][hit]
        if idx.size:
            ctx.sylvian[i] = idx
            csf[idx] = True

    # Interhemispheric fissure and falx: full length high up, front and back lower down.
    if t > 0.12:
        if t > 0.62:
            seg = np.ones(uc.shape, bool)
        elif t > 0.3:
            seg = (vc < -18.0 * g * s) | (vc > 24.0 * g * s)
        else:
            seg = vc < -22.0 * g
        near = seg & cranium[core]
        fis = near & (np.abs(uc) < h.ih_half)
        ctx.fissure = core[fis]
        csf[ctx.fissure] = True

    # Basal cisterns: a ring round the midbrain and a five-lobed suprasellar star.
    if 0.16 <= t <= 0.31:
        e = math.sin(math.pi * (t - 0.16) / 0.15) ** 0.5
        mu, mv = uc / (11.0 * g), (vc - h.midbrain_v) / (9.5 * g)
        rm = np.hypot(mu, mv)
        ring = (rm >= 1.0) & (rm < 1.0 + 0.3 * e)
        sv = vc - (h.midbrain_v - 17.0 * g)
        psi = np.arctan2(sv, uc)
        star = np.hypot(uc, sv) < 8.0 * g * e * (1.0 + 0.3 * np.cos(5.0 * psi + math.pi / 2))
        cis = (ring | star) & cranium[core]
        ctx.cisterns = core[cis]
        csf[ctx.cisterns] = True
        hu[core[(rm < 1.0) & cranium[core]]] = 0.5 * (h.grey_hu + h.white_hu)
    # Fourth ventricle: a small posterior midline crescent low down.
    if 0.04 <= t <= 0.2:
        fu, fv = uc / (5.0 * g), (vc - h.midbrain_v - 16.0 * g) / (3.5 * g)
        csf[core[(np.hypot(fu, fv) < 1.0) & (fv < 0.6 - 0.5 * fu * fu) & cranium[core]]] = True

    vmask, horns = _ventricle_masks(h, uc, vc, t)
    csf[core[vmask & cranium[core]]] = True
    ctx.horns = [core[hm & cranium[core]] for hm in horns]

    hu[csf] = h.csf_hu
    if ctx.fissure is not None and t > 0.22:
        falx = np.abs(uc[fis]) < max(0.4, 0.5 * h.ps)
        hu[ctx.fissure[falx]] = h.falx_hu

    # Skull base, fading in below t = 0.24.
    bone = np.zeros(hu.shape, bool)
    if w > 0.0:
        cr = cranium[core]
        for side in (-1.0, 1.0):
            # Petrous ridge: posterolateral to anteromedial bar, mastoid air at its outer end.
            p0 = np.array([side * 10.0 * g, -6.0 * g])
            p1 = np.array([side * 0.8 * h.a * s, 20.0 * g])
            d = p1 - p0
            tt = np.clip(((uc - p0[0]) * d[0] + (vc - p0[1]) * d[1]) / float(d @ d), 0.0, 1.0)
            dist = np.hypot(uc - p0[0] - tt * d[0], vc - p0[1] - tt * d[1])
            bar = cr & (dist < (2.0 + 4.0 * w) * g)
            bone[core[bar]] = True
            hu[core[bar]] = 1150.0 + 350.0 * w
            cells = bar & (tt > 0.72) & (np.cos(uc * 1.3) * np.cos(vc * 1.3) > 0.55)
            hu[core[cells]] = -850.0
        clivus = cr & ((uc / (6.0 * g)) ** 2 + ((vc + 4.0 * g) / (12.0 * g)) ** 2 < w)
        bone[core[clivus]] = True
        hu[core[clivus]] = h.base_hu
        if w > 0.35:
            sph_r = np.hypot(uc / (11.0 * g), (vc + 24.0 * g) / (9.0 * g))
            sph = cr & (sph_r < 1.0 + 0.2 * w)
            bone[core[sph]] = True
            hu[core[sph]] = h.base_hu + 200.0
            hu[core[cr & (sph_r < 1.0 * w)]] = _AIR
        front = cranium & (v < -(0.66 - 0.2 * w) * h.b * s) & (db < 4.0 + 22.0 * w)
        bone |= front
        hu[front] = h.base_hu + 150.0 * np.cos(u[front] * 0.4)
    ctx.cranium = cranium & ~bone
    ctx.parenchyma = ctx.cranium & ~csf
    return hu, ctx


# --------------------------------------------------------------------------- bleeds


@dataclass
class _Bleed:
    kind: str  # a subtype name
    hu: float
    p: dict[str, Any]


def _dz(h: _Head, k: int, t_centre: float) -> float:
    return (k - h.slice_of_level(t_centre)) * SLICE_MM


def _draw_bleed(kind: str, h: _Head, grid: _Grid, rng: np.random.Generator) -> _Bleed:
    """Random placement and size of one bleed of ``kind``."""
    if kind == "epidural":
        return _Bleed(kind, float(rng.uniform(62.0, 85.0)), {
            "phi": float(rng.uniform(-math.pi, math.pi)),
            "t": float(rng.uniform(0.38, 0.85)),
            "hz": float(rng.uniform(7.0, 13.0)),
            "arc": float(rng.uniform(22.0, 38.0)),
            "thick": float(rng.uniform(8.0, 18.0)),
        })
    if kind == "subdural":
        side = float(rng.choice([-1.0, 1.0]))
        beta = float(rng.uniform(-0.7, 0.7))
        return _Bleed(kind, float(rng.uniform(58.0, 80.0)), {
            "side": side,
            "phi": math.atan2(math.sin(beta), side * math.cos(beta)),
            "t": float(rng.uniform(0.45, 0.72)),
            "hz": float(rng.uniform(22.0, 42.0)),
            "arc": float(rng.uniform(55.0, 95.0)),
            "thick": float(rng.uniform(3.5, 10.0)),
        })
    if kind == "intraparenchymal":
        for _ in range(40):
            t = float(rng.uniform(0.3, 0.78))
            psi = float(rng.uniform(-math.pi, math.pi))
            radius = float(rng.uniform(6.0, 17.0))
            rin = float(h.inner(psi, t))
            dist = float(rng.uniform(0.25, 0.7)) * rin
            cu, cv = dist * math.cos(psi), dist * math.sin(psi)
            if rin - dist < radius + 8.0:
                continue
            ang = np.linspace(0.0, _TAU, 16, endpoint=False)
            pu = np.r_[cu, cu + 0.9 * radius * np.cos(ang)]
            pv = np.r_[cv, cv + 0.9 * radius * np.sin(ang)]
            if _ventricle_masks(h, pu, pv, t)[0].any() or abs(cu) < 0.5 * radius:
                continue
            break
        return _Bleed(kind, float(rng.uniform(60.0, 82.0)), {
            "u": cu, "v": cv, "t": t, "r": radius,
            "hz": radius * float(rng.uniform(0.7, 1.2)),
            "terms": _terms(rng, (2, 3, 4, 5), 0.12),
            "rim": float(rng.uniform(2.5, 5.5)),
            "oedema": float(rng.uniform(15.0, 22.0)),
        })
    if kind == "intraventricular":
        sides = [0, 1] if rng.random() < 0.6 else [int(rng.integers(0, 2))]
        fill = float(rng.uniform(0.3, 0.55))
        ys = []
        for k in range(h.n):
            horns = _ventricle_masks(h, grid.uc, grid.vc, h.level(k))[1]
            ys.extend(grid.Yc[horns[i]] for i in sides)
        yy = np.concatenate(ys) if ys else np.zeros(0, np.float32)
        level = float(np.quantile(yy, 1.0 - fill)) if yy.size else 1e9
        return _Bleed(kind, float(rng.uniform(55.0, 75.0)), {"sides": sides, "y": level})
    if kind == "subarachnoid":
        opts = ["sulci", "sylvian", "fissure", "cisterns"]
        chosen = list(rng.choice(opts, size=int(rng.integers(1, 3)), replace=False,
                                 p=[0.4, 0.25, 0.15, 0.2]))
        sc = h.sulci[int(rng.integers(0, len(h.sulci)))]
        return _Bleed(kind, float(rng.uniform(55.0, 72.0)), {
            "where": [str(c) for c in chosen],
            "phi": sc.phi,
            "sector": float(rng.uniform(0.5, 1.2)),
            "sides": [0, 1] if rng.random() < 0.5 else [int(rng.integers(0, 2))],
            "t": float(rng.uniform(0.45, 0.85)),
            "dt": float(rng.uniform(0.08, 0.2)),
        })
    raise ValueError(f"unknown subtype {kind!r}")


def _bleed_mask(b: _Bleed, h: _Head, grid: _Grid, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray | None]:
    """Flat indices of the blood on this slice, and of an oedema rim (IPH) or None."""
    empty = np.zeros(0, np.int64)
    p = b.p
    k = ctx.k
    if b.kind in ("epidural", "subdural"):
        dz = _dz(h, k, p["t"]) / p["hz"]
        if abs(dz) >= 1.0:
            return empty, None
        cand = np.flatnonzero(ctx.cranium & (ctx.db < p["thick"]))
        arc = _wrap(grid.phi[cand] - p["phi"]) * ctx.rin[cand] / p["arc"]
        if b.kind == "epidural":
            # Biconvex lens: thickness parabolic along the arc and along z.
            thick = p["thick"] * (1.0 - arc * arc) * (1.0 - dz * dz)
            sel = ctx.db[cand] < thick
        else:
            # Crescent: nearly even thickness, tapering at its ends; one hemisphere only.
            thick = p["thick"] * (1.0 - np.abs(arc) ** 3) * (1.0 - abs(dz) ** 2.5)
            sel = (ctx.db[cand] < thick) & (p["side"] * grid.u[cand] > h.ih_half + 0.6)
        return cand[sel], None
    if b.kind == "intraparenchymal":
        dz = _dz(h, k, p["t"]) / p["hz"]
        if abs(dz) >= 1.0:
            return empty, None
        rz = p["r"] * math.sqrt(1.0 - dz * dz)
        reach = rz * 1.4 + p["rim"]
        du, dv = grid.u - np.float32(p["u"]), grid.v - np.float32(p["v"])
        cand = np.flatnonzero((np.abs(du) < reach) & (np.abs(dv) < reach) & ctx.cranium)
        rr = np.hypot(du[cand], dv[cand])
        edge = rz * (1.0 + _fourier(np.arctan2(dv[cand], du[cand]), p["terms"]))
        blood = cand[rr < edge]
        rim = cand[(rr >= edge) & (rr < edge + p["rim"] * math.sqrt(1.0 - dz * dz))]
        return blood, rim[ctx.parenchyma[rim]]
    if b.kind == "intraventricular":
        parts = [ctx.horns[i] for i in p["sides"] if len(ctx.horns) > i]
        idx = np.concatenate(parts) if parts else empty
        return idx[grid.Y[idx] > p["y"]], None
    if b.kind == "subarachnoid":
        parts = []
        if "sulci" in p["where"]:
            for i, idx in ctx.sulci.items():
                if abs(_wrap(h.sulci[i].phi - p["phi"])) < p["sector"]:
                    parts.append(idx)
        if "sylvian" in p["where"]:
            parts.extend(ctx.sylvian[i] for i in p["sides"] if i in ctx.sylvian)
        if "fissure" in p["where"] and ctx.fissure is not None and abs(ctx.t - p["t"]) < p["dt"]:
            parts.append(ctx.fissure)
        if "cisterns" in p["where"] and ctx.cisterns is not None:
            parts.append(ctx.cisterns)
        if not parts:
            return empty, None
        idx = np.unique(np.concatenate(parts))
        return idx[ctx.cranium[idx]], None
    raise ValueError(f"unknown subtype {b.kind!r}")


# --------------------------------------------------------------------------- studies


@dataclass
class ForeignStudy:
    """One rendered study: HU volume, per-slice labels and areas, acquisition values.

    ``hu`` is float32 ``[S, H, W]`` with slice 0 the lowest (skull base); ``labels`` is
    ``(S, 6)`` int8 in `CLASSES` order; ``areas`` ``(S, 5)`` mm^2 per subtype.
    """

    hu: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    planned: tuple[str, ...]
    pixel_spacing: float
    noise_hu: float
    z: np.ndarray  # ImagePositionPatient z of each slice (slice 0 lowest)
    origin: tuple[float, float]
    head: _Head = field(repr=False)


def _plan(rng: np.random.Generator) -> tuple[str, ...]:
    if rng.random() >= POSITIVE_FRACTION:
        return ()
    n = 2 if rng.random() < TWO_SUBTYPES else 1
    return tuple(str(s) for s in rng.choice(SUBTYPES, size=n, replace=False))


def make_foreign_study(
    seed: int, index: int, size: int = 512, subtypes: Sequence[str] | None = None
) -> ForeignStudy:
    """Render study ``index`` of the dataset ``seed`` (deterministic).

    ``subtypes`` forces the planned bleeds (``()`` for a normal study); by default about
    half the studies get one or two subtypes. A planned bleed that ends up under the area
    threshold on every slice is redrawn (a few times at most).
    """
    rng = np.random.default_rng([seed, index, 0x5EED])
    h = _draw_head(rng, size)
    planned = _plan(rng) if subtypes is None else tuple(subtypes)
    grid = _Grid(h)
    bleeds = [_draw_bleed(kind, h, grid, rng) for kind in planned]
    px_area = h.ps * h.ps
    for _ in range(_MAX_REDRAWS):
        hu = np.empty((h.n, size * size), np.float32)
        areas = np.zeros((h.n, len(SUBTYPES)))
        for k in range(h.n):
            sl, ctx = _render_anatomy(h, grid, k)
            for b in bleeds:
                blood, rim = _bleed_mask(b, h, grid, ctx)
                if rim is not None and rim.size:
                    sl[rim] = b.p["oedema"]
                if blood.size:
                    # Denser centre, a little texture: clot is not perfectly even.
                    sl[blood] = b.hu + 4.0 * np.cos(grid.u[blood] * 0.7) * np.sin(grid.v[blood] * 0.6)
                areas[k, SUBTYPES.index(b.kind)] += blood.size * px_area
            hu[k] = sl
        missing = [i for i, b in enumerate(bleeds)
                   if areas[:, SUBTYPES.index(b.kind)].max() < AREA_THRESHOLD_MM2]
        if not missing:
            break
        for i in missing:
            bleeds[i] = _draw_bleed(bleeds[i].kind, h, grid, rng)
    vol = hu.reshape(h.n, size, size)
    noise_rng = np.random.default_rng([seed, index, 0xA015E])
    sigma_px = h.blur_mm / h.ps
    for k in range(h.n):
        if sigma_px > 0.15:
            vol[k] = gaussian_filter(vol[k], sigma_px, mode="nearest", truncate=3.0)
        vol[k] += noise_rng.standard_normal((size, size), dtype=np.float32) * np.float32(h.noise)
    labels = np.zeros((h.n, len(CLASSES)), np.int8)
    labels[:, : len(SUBTYPES)] = areas >= AREA_THRESHOLD_MM2
    labels[:, -1] = labels[:, : len(SUBTYPES)].max(axis=1)
    z = h.z_top - (h.n - 1 - np.arange(h.n)) * SLICE_MM
    return ForeignStudy(
        hu=vol,
        labels=labels,
        areas=areas,
        planned=planned,
        pixel_spacing=h.ps,
        noise_hu=h.noise,
        z=z,
        origin=(h.x_origin, h.y_origin),
        head=h,
    )


# --------------------------------------------------------------------------- DICOM


def _ds(value: float) -> str:
    """A DS string within 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.6g}"


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["hohoho-foreign", str(seed),
                                                               *map(str, parts)])


def _image_id(seed: int, index: int, k: int) -> str:
    digest = hashlib.sha256(f"foreign/{seed}/{index}/{k}".encode()).hexdigest()
    return f"ID_{digest[:12]}"


def _write_slice(
    path: Path,
    hu: np.ndarray,
    *,
    study: ForeignStudy,
    seed: int,
    index: int,
    k: int,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    sop_uid: str,
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_ROOT_UID + "7001.1"
    meta.ImplementationVersionName = "FOREIGN_PH_1"

    ds = Dataset()
    ds.file_meta = meta
    n = study.hu.shape[0]
    instance = n - k  # 1 at the vertex, ascending downwards
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    day = 1 + (seed * 31 + index) % 28
    ds.StudyDate = f"201907{day:02d}"
    ds.SeriesDate = ds.StudyDate
    ds.StudyTime = f"{8 + index % 10:02d}{(index * 7) % 60:02d}00"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "Foreign Phantom Works"
    ds.ManufacturerModelName = "FPW head phantom"
    ds.InstitutionName = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "HEAD WO CONTRAST"
    ds.SeriesDescription = "AXIAL 5MM BRAIN"
    ds.PatientName = "FOREIGN^PHANTOM"
    ds.PatientID = f"FP-{seed}-{index:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.SliceThickness = _ds(SLICE_MM)
    ds.KVP = "120"
    ds.ConvolutionKernel = "FC21"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(index + 1)
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [_ds(study.origin[0]), _ds(study.origin[1]), _ds(float(study.z[k]))]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(float(study.z[k]))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [_ds(study.pixel_spacing), _ds(study.pixel_spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    stored = np.clip(np.rint(hu + 1024.0), 0, 65535).astype("<u2")
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------- dataset


def write_foreign_dataset(
    root: Path | str,
    studies: int,
    seed: int,
    size: int = 512,
    *,
    overwrite: bool = False,
    progress: bool = False,
    subtypes: Sequence[Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Write ``studies`` foreign phantom studies in the RSNA 2019 layout under ``root``.

    Writes ``root/stage_2_train/ID_<12 hex>.dcm`` (one slice per file, studies mixed),
    ``root/stage_2_train.csv`` (``ID,Label``, six rows per image), and for convenience
    ``root/foreign_truth.csv`` (the returned table) and ``root/foreign_studies.csv`` (one
    row per study: planned subtypes, slices, pixel spacing, noise).

    Args:
        overwrite: remove ``ID_*.dcm`` files already in ``stage_2_train`` first; without
            it a folder that already holds slices is refused (mixing datasets would
            corrupt the labels).
        progress: print one line per study to stderr.
        subtypes: force the bleeds of each study (one entry per study, ``()`` for a
            normal one); by default they are drawn from the seed.

    Returns:
        One row per slice, sorted by study then position: ``image_id``, ``study_uid``,
        ``series_uid``, ``sop_uid``, ``slice_index`` (0 = lowest along z, the order
        `hohoho_core.rsna.build_index` gives), ``instance_number`` (1 = top),
        ``z``, the six labels in `CLASSES` order (0/1), then ``area_<subtype>`` (mm^2 of
        each subtype on the slice, what the labels are thresholded from).
    """
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    if subtypes is not None and len(subtypes) != studies:
        raise ValueError(f"subtypes has {len(subtypes)} entries for {studies} studies")
    if size < 64:
        raise ValueError(f"size must be >= 64 px, got {size}")
    root = Path(root)
    folder = root / "stage_2_train"
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(folder.glob("ID_*.dcm"))
    if old:
        if not overwrite:
            raise FileExistsError(f"{folder} already holds {len(old)} slices (overwrite=True)")
        for p in old:
            p.unlink()
    rows: list[dict[str, Any]] = []
    info: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i in range(studies):
        st = make_foreign_study(seed, i, size, None if subtypes is None else subtypes[i])
        study_uid = _uid(seed, i, "study")
        series_uid = _uid(seed, i, "series")
        frame_uid = _uid(seed, i, "frame")
        for k in range(st.hu.shape[0]):
            image_id = _image_id(seed, i, k)
            sop = _uid(seed, i, "sop", k)
            _write_slice(folder / f"{image_id}.dcm", st.hu[k], study=st, seed=seed, index=i,
                         k=k, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                         sop_uid=sop)
            rows.append({
                "image_id": image_id,
                "study_uid": study_uid,
                "series_uid": series_uid,
                "sop_uid": sop,
                "slice_index": k,
                "instance_number": st.hu.shape[0] - k,
                "z": float(st.z[k]),
                **{c: int(st.labels[k, j]) for j, c in enumerate(CLASSES)},
                **{f"area_{c}": round(float(st.areas[k, j]), 2) for j, c in enumerate(SUBTYPES)},
            })
        info.append({
            "study_uid": study_uid,
            "index": i,
            "n_slices": st.hu.shape[0],
            "planned": "+".join(st.planned),
            "positive": "+".join(c for j, c in enumerate(SUBTYPES) if st.labels[:, j].any()),
            "pixel_spacing_mm": round(st.pixel_spacing, 4),
            "noise_hu": round(st.noise_hu, 2),
        })
        if progress:
            print(f"study {i + 1}/{studies}: {st.hu.shape[0]} slices, "
                  f"{'+'.join(st.planned) or 'normal'} ({time.perf_counter() - start:.1f} s)",
                  file=sys.stderr)
    truth = pd.DataFrame(rows)
    truth = truth.sort_values(["study_uid", "slice_index"], kind="mergesort").reset_index(drop=True)
    # The label file: six rows per image, images in id order like the RSNA file.
    by_id = truth.sort_values("image_id", kind="mergesort")
    ids = np.repeat(by_id["image_id"].to_numpy(), len(CLASSES))
    suffix = np.tile(np.array([f"_{c}" for c in CLASSES]), len(by_id))
    labels = by_id[list(CLASSES)].to_numpy().ravel()
    tmp = root / "stage_2_train.csv.tmp"
    pd.DataFrame({"ID": np.char.add(ids.astype(str), suffix), "Label": labels}).to_csv(
        tmp, index=False)
    shutil.move(tmp, root / "stage_2_train.csv")
    truth.to_csv(root / "foreign_truth.csv", index=False)
    pd.DataFrame(info).to_csv(root / "foreign_studies.csv", index=False)
    return truth


def read_truth(root: Path | str) -> pd.DataFrame:
    """The table `write_foreign_dataset` returned, read back from ``foreign_truth.csv``."""
    return pd.read_csv(Path(root) / "foreign_truth.csv",
                       dtype={"image_id": str, "study_uid": str, "series_uid": str,
                              "sop_uid": str})


# --------------------------------------------------------------------------- montage


def _brain_window(hu: np.ndarray) -> np.ndarray:
    return (np.clip((hu - 0.0) / 80.0, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_foreign_montage(path: Path | str, seed: int = 4242, size: int = 384) -> Path:
    """One PNG row: a normal slice and the slice with the most blood of each subtype.

    Brain window (40/80), one tile per subtype with its name; for a human to check
    the look of the foreign generator.
    """
    from PIL import Image, ImageDraw, ImageFont

    tiles: list[tuple[str, np.ndarray]] = []
    normal = make_foreign_study(seed, 0, size, subtypes=())
    tiles.append(("normal", normal.hu[int(normal.hu.shape[0] * 0.55)]))
    for j, kind in enumerate(SUBTYPES, start=1):
        st = make_foreign_study(seed, j, size, subtypes=(kind,))
        k = int(np.argmax(st.areas[:, SUBTYPES.index(kind)]))
        tiles.append((f"{kind} (slice {k + 1}/{st.hu.shape[0]})", st.hu[k]))
    tile = 256
    pad = 24
    canvas = Image.new("L", (tile * len(tiles), tile + pad), 0)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, (name, img) in enumerate(tiles):
        im = Image.fromarray(_brain_window(img)).resize((tile, tile), Image.BILINEAR)
        canvas.paste(im, (i * tile, pad))
        draw.text((i * tile + 4, 4), name, fill=255, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write foreign phantom head-CT studies (RSNA layout)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7001)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--overwrite", action="store_true", help="replace slices already in OUT")
    ap.add_argument("--montage", type=Path, default=None, help="also write a montage PNG here")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    truth = write_foreign_dataset(args.out, args.studies, args.seed, args.size,
                                  overwrite=args.overwrite, progress=True)
    pos = {c: int(truth[c].sum()) for c in CLASSES}
    print(f"wrote {truth['study_uid'].nunique()} studies, {len(truth)} slices to {args.out} "
          f"in {time.perf_counter() - start:.1f} s; positive slices {pos}")
    if args.montage is not None:
        print(f"montage: {save_foreign_montage(args.montage)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
