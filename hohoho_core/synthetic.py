"""Phantom head-CT studies in the RSNA 2019 layout: the project's demo and test data.

Each study is drawn from smooth analytic 3D shapes in head coordinates (mm), rendered slice
by slice at realistic Hounsfield units, and written as one DICOM file per slice with the
header variety real scanners produce (gantry tilt, unsigned/signed pixels, the RSNA 12-bit
wrap quirk, shuffled instance numbers, multi-valued window tags). Bleeds are 3D shapes too;
a slice is labelled positive for a subtype when that subtype covers more than
``AREA_THRESHOLD_MM2`` of it, so labels follow the voxels, and ``any`` is their OR.

Coordinates: patient LPS (x to the patient's left, y posterior, z superior). Head
coordinates ``(u, v, h)``: ``u`` left, ``v`` posterior, both rotated by the study's yaw
about the head centre, and ``h`` height above the foramen magnum. Volumes are float32
``[S, H, W]`` with slice 0 the most inferior.

Run ``python -m hohoho_core.synthetic --out DIR --studies N --seed S`` to write a dataset.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid
from scipy.ndimage import binary_dilation, binary_opening, gaussian_filter

from hohoho_core.dicom_writer import ct_dataset, write_dataset
from hohoho_core.labels import ANY_INDEX, CLASSES, SHORT_NAMES, SUBTYPES

__all__ = [
    "AREA_THRESHOLD_MM2",
    "ENCODINGS",
    "Bleed",
    "StudyPlan",
    "SyntheticStudy",
    "SyntheticTruth",
    "generate_dataset",
    "inject_label_noise",
    "main",
    "make_study",
    "save_montage",
    "unwrap_quirk",
]

#: A slice is positive for a subtype when the subtype covers more than this area (mm^2).
AREA_THRESHOLD_MM2 = 15.0
#: Pixel encodings: unsigned with intercept -1024, signed with intercept 0, RSNA 12-bit quirk.
ENCODINGS: tuple[str, ...] = ("uint16", "int16", "quirk12")

#: Fraction of studies with at least one bleed unless asked otherwise.
DEFAULT_POSITIVE_FRACTION = 0.4
_POSITIVE_FRACTION = DEFAULT_POSITIVE_FRACTION
_TILT_FRACTION = 1 / 5
_QUIRK_FRACTION = 1 / 6
_SECOND_SUBTYPE = 0.3
_SUBTLE = 0.3
_UID_ROOT = "hohoho-synthetic"
_SUB = {name: i for i, name in enumerate(SUBTYPES)}


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Bleed:
    """One haemorrhage: its subtype, whether it is subtle, and its shape parameters (mm)."""

    subtype: str
    subtle: bool
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPlan:
    """What a study must contain; everything else is drawn from the study's own seed."""

    subtypes: tuple[str, ...] = ()
    subtle: tuple[bool, ...] = ()
    tilt: bool = False
    encoding: str = "int16"
    n_slices: int = 30
    instance_order: str = "descending"  # "ascending" | "descending" | "shuffled"
    windows: int = 0  # index into _WINDOW_TAGS
    pad_fov: bool = False  # circular field of view padded with -2000 (signed only)
    bits12_plain: bool = False  # unsigned with BitsStored 12 and intercept -1024 (no wrap)


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


@dataclass
class SyntheticTruth:
    """What `generate_dataset` wrote.

    Attributes:
        root: the dataset folder.
        truth: one row per slice: image_id, study_uid, series_uid, true_index, z, six clean
            labels (the content of ``truth.csv``).
        labels: index image_id, six int columns: what ``stage_2_train.csv`` says (noisy).
        errors: image_id, class, clean, noisy, kind: every injected label error.
        studies: one row per study: study_uid, series_uid, n_slices, pixel_spacing,
            slice_spacing, tilt_deg, encoding, instance_order, subtypes (";"-joined).
        seconds: wall time of the generation.
    """

    root: Path
    truth: pd.DataFrame
    labels: pd.DataFrame
    errors: pd.DataFrame
    studies: pd.DataFrame
    seconds: float


# Window tags written per study: single-valued or multi-valued like many RSNA files.
_WINDOW_TAGS: tuple[tuple[float | list[float], float | list[float]], ...] = (
    (40.0, 80.0),
    ([40.0, 40.0], [80.0, 80.0]),
    ([40.0, 400.0], [80.0, 2000.0]),
    (35.0, 100.0),
)


# --------------------------------------------------------------------------- small shapes


def _window(h: np.ndarray | float, lo: float, hi: float, soft: float) -> np.ndarray:
    """Smooth trapezoid in ``h``: 1 inside ``[lo, hi]``, 0 beyond ``soft`` mm outside."""
    h = np.asarray(h, dtype=np.float32)
    return np.clip((h - (lo - soft)) / soft, 0, 1) * np.clip(((hi + soft) - h) / soft, 0, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _harmonics(theta: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """Sum of ``amp * cos(k * theta + phase)`` for rows ``(k, amp, phase)`` of ``coefs``."""
    out = np.zeros_like(theta)
    for k, amp, phase in coefs:
        out += np.float32(amp) * np.cos(np.float32(k) * theta + np.float32(phase))
    return out


def _ellipsoid(u, v, h, centre, radii) -> np.ndarray:
    """Normalised distance (< 1 inside) to an axis-aligned ellipsoid in head coordinates."""
    cu, cv, ch = centre
    ru, rv, rh = radii
    return np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 + ((h - ch) / rh) ** 2)


def _capsule(u, v, h, p0, p1, r0: float, r1: float, rh: float) -> np.ndarray:
    """Normalised distance (< 1 inside) to a tapered 3D capsule from ``p0`` to ``p1``.

    The in-plane radius runs from ``r0`` to ``r1`` along the axis; ``rh`` is the vertical
    radius (heights are rescaled so the capsule is round in the scaled space).
    """
    k = 0.5 * (r0 + r1) / rh
    a = np.array([p0[0], p0[1], p0[2] * k], dtype=np.float32)
    d = np.array([p1[0] - p0[0], p1[1] - p0[1], (p1[2] - p0[2]) * k], dtype=np.float32)
    pu, pv, ph = u - a[0], v - a[1], h * np.float32(k) - a[2]
    dd = float(d @ d) or 1e-6
    t = np.clip((pu * d[0] + pv * d[1] + ph * d[2]) / dd, 0, 1)
    du, dv, dh = pu - t * d[0], pv - t * d[1], ph - t * d[2]
    r = np.float32(r0) + np.float32(r1 - r0) * t
    return np.sqrt(du * du + dv * dv + dh * dh) / r


def _hrange(p0, p1, rh: float) -> tuple[float, float]:
    return min(p0[2], p1[2]) - rh, max(p0[2], p1[2]) + rh


# --------------------------------------------------------------------------- the phantom


@dataclass
class _Anatomy:
    """Per-study random anatomy and acquisition parameters (mm, HU)."""

    size: int
    ps: float  # pixel spacing (mm)
    sp: float  # slice spacing along the normal (mm)
    n: int
    tilt: float  # radians
    yaw: float  # radians
    hx: float
    hy: float
    z0: float  # table position of slice 0 (h of the image centre at slice 0)
    H: float  # vertex height above the foramen magnum
    hc: float
    c_top: float
    c_low: float
    a: float  # outer skull half width (left-right)
    b: float  # outer skull half length (antero-posterior)
    t0: float  # skull thickness
    t_top: float
    scalp: float
    shape: np.ndarray  # (K, 3) harmonics of the head outline
    thick: np.ndarray  # (K, 3) harmonics of the skull thickness
    vscale: float  # ventricle size (atrophy)
    sulc_hw: float  # sulcal half width (mm)
    csf_layer: float  # subarachnoid layer at the convexity (mm)
    sulc_period: float
    sulc_phase: float
    gm: float
    wm: float
    deep_gm: float
    csf: float
    table: float
    diploe: float
    base_bone: float
    soft: float
    fat: float
    falx: float
    foam: float
    shell: float
    headrest_r: float
    noise: float
    blur_mm: float
    offset: float
    choroid: bool
    pineal: bool
    frontal_sinus: bool
    cupping: float
    waves: np.ndarray  # (3, 6, 3) wave vectors (1/mm) and phases of smooth random fields
    cell_seed: int  # seed of the fine random texture of air cells


def _draw_anatomy(rng: np.random.Generator, size: int, plan: StudyPlan) -> _Anatomy:
    ps512 = float(rng.uniform(0.40, 0.55))
    fov = 512 * ps512
    H = float(rng.uniform(128, 145))
    hc = H * float(rng.uniform(0.46, 0.52))
    c_top = H - hc
    b = float(rng.uniform(84, 96))
    scalp = float(rng.uniform(4.0, 6.5))
    b = min(b, 0.43 * fov - scalp - 2)  # keep the head inside the field of view
    a = b * float(rng.uniform(0.76, 0.86))
    t0 = float(rng.uniform(5.0, 7.5))
    ks = np.arange(2, 7)
    shape = np.stack(
        [ks, rng.normal(0, 0.022, ks.size) / (ks - 1) ** 0.7, rng.uniform(0, 2 * np.pi, ks.size)], 1
    )
    kt = np.arange(1, 5)
    thick = np.stack([kt, rng.normal(0, 0.1, kt.size), rng.uniform(0, 2 * np.pi, kt.size)], 1)
    atrophy = float(rng.beta(2.0, 4.0))
    sp = float(rng.choice([4.0, 4.5, 5.0, 5.0, 5.0, 6.0]))
    n = plan.n_slices
    if n >= 34 and rng.random() < 0.5:
        sp = 3.0
    sp = min(sp, (H + 45) / (n - 1))
    extent = (n - 1) * sp
    top = H + float(rng.uniform(-6, 6))
    z0 = max(top - extent, -40.0)
    tilt = (
        math.radians(float(rng.uniform(10, 25))) * float(rng.choice([-1, 1])) if plan.tilt else 0.0
    )
    hy_lim = 0.47 * fov - (b + scalp)
    gm = float(rng.uniform(36, 44))
    wm = float(np.clip(gm - rng.uniform(10, 15), 20, 30))
    return _Anatomy(
        size=size,
        ps=ps512 * 512 / size,
        sp=sp,
        n=n,
        tilt=tilt,
        yaw=math.radians(float(np.clip(rng.normal(0, 5), -14, 14))),
        hx=float(np.clip(rng.normal(0, 4), -10, 10)),
        hy=float(np.clip(rng.normal(0, 5), -hy_lim, hy_lim)),
        z0=z0,
        H=H,
        hc=hc,
        c_top=c_top,
        c_low=c_top * float(rng.uniform(1.5, 1.7)),
        a=a,
        b=b,
        t0=t0,
        t_top=t0 * float(rng.uniform(1.0, 1.3)),
        scalp=scalp,
        shape=shape,
        thick=thick,
        vscale=0.85 + 0.8 * atrophy,
        sulc_hw=0.45 + 1.3 * atrophy,
        csf_layer=0.6 + 2.0 * atrophy,
        sulc_period=float(rng.uniform(11, 15)),
        sulc_phase=float(rng.uniform(0, 2 * np.pi)),
        gm=gm,
        wm=wm,
        deep_gm=0.5 * (gm + wm) + float(rng.uniform(1, 4)),
        csf=float(rng.uniform(3, 12)),
        table=float(rng.uniform(1300, 1800)),
        diploe=float(rng.uniform(820, 1000)),
        base_bone=float(rng.uniform(1000, 1450)),
        soft=float(rng.uniform(35, 50)),
        fat=float(rng.uniform(-110, -75)),
        falx=float(rng.uniform(60, 130)),
        foam=float(rng.uniform(-95, -60)),
        shell=float(rng.uniform(60, 100)),
        headrest_r=float(rng.uniform(95, 125)),
        noise=float(rng.uniform(3.0, 6.5)),
        blur_mm=float(rng.uniform(0.3, 0.55)),
        offset=float(rng.normal(0, 2)),
        choroid=bool(rng.random() < 0.6),
        pineal=bool(rng.random() < 0.5),
        frontal_sinus=bool(rng.random() < 0.85),
        cupping=float(rng.uniform(0, 4)),
        waves=_draw_waves(rng),
        cell_seed=int(rng.integers(0, 2**31)),
    )


def _draw_waves(rng: np.random.Generator) -> np.ndarray:
    """Random plane waves (wavelength 18-45 mm) for three smooth random in-plane fields."""
    angle = rng.uniform(0, 2 * np.pi, (3, 6))
    k = 2 * np.pi / rng.uniform(18, 45, (3, 6))
    return np.stack([k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, (3, 6))], -1)


class _Phantom:
    """Renders one study slice by slice from its anatomy and bleeds.

    The table moves along z and every image centre sits on the gantry axis, so a pixel's
    in-plane patient coordinates (x, y) are the same on every slice, tilted or not; only
    its height changes. Everything that depends on (x, y) alone is computed once here.
    """

    def __init__(self, an: _Anatomy, bleeds: list[Bleed]) -> None:
        f32 = np.float32
        self.an = an
        self.bleeds = bleeds
        n, ps = an.size, an.ps
        ct, st = math.cos(an.tilt), math.sin(an.tilt)
        self.row = np.array([1.0, 0.0, 0.0])
        self.col = np.array([0.0, ct, st])
        self.normal = np.cross(self.row, self.col)
        self.orientation = (1.0, 0.0, 0.0, 0.0, round(ct, 6), round(st, 6))
        half = (n - 1) / 2 * ps
        dz = an.sp / ct  # table step; the spacing along the tilted normal stays an.sp
        self.positions = np.array(
            [
                np.array([0.0, 0.0, an.z0 + k * dz]) - half * (self.row + self.col)
                for k in range(an.n)
            ]
        )
        self.z = self.positions @ self.normal
        grid = np.arange(n, dtype=f32) * f32(ps)
        p = self.positions[0]
        self.x = (f32(p[0]) + grid)[None, :]
        self.y = (f32(p[1]) + grid * f32(ct))[:, None]
        self.zrow = (grid * f32(st))[:, None]
        cy, sy = f32(math.cos(an.yaw)), f32(math.sin(an.yaw))
        dx, dy = self.x - f32(an.hx), self.y - f32(an.hy)
        u = cy * dx + sy * dy
        v = -sy * dx + cy * dy
        self.u, self.v = u, v
        self.un, self.vn = u / f32(an.a), v / f32(an.b)
        theta = np.arctan2(self.vn, self.un)
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        self.theta = theta
        self.r_mm = np.sqrt(u * u + v * v)
        self.rloc = np.sqrt((an.a * cos_t) ** 2 + (an.b * sin_t) ** 2)
        self.pert = 1 + _harmonics(theta, an.shape)
        self.pr = self.pert * self.rloc
        self.lat2 = cos_t * cos_t
        self.post = np.maximum(sin_t, 0)
        self.front8 = np.maximum(-sin_t, 0) ** 8
        self.thick = f32(an.t0) * (1 + 0.5 * _harmonics(theta, an.thick))
        self.scalp = f32(an.scalp) * (1 + 0.3 * self.post)
        self.temporalis = 8 * self.lat2 * self.lat2
        H = an.H
        ant = np.maximum(-sin_t, 0)
        self.shell_floor = np.where(
            sin_t < 0,
            0.03 * H + ant * np.sqrt(ant) * 0.21 * H,
            0.03 * H - self.post * (0.03 * H + 8),
        ).astype(f32)
        fields = []
        for waves in an.waves:
            acc = np.zeros_like(u)
            for ku, kv, ph in waves:
                acc += np.sin(f32(ku) * u + f32(kv) * v + f32(ph))
            fields.append(acc / f32(math.sqrt(len(waves))))
        self.fields = fields
        self.floor, self.tb = self._floor(self.un, self.vn)
        # Real fossae are not drawn with a ruler: let the floor undulate a few mm.
        self.floor += 1.5 * fields[1]
        # Tentorium: highest at the incisura, sloping down to the sides and the back.
        self.tent = (
            0.33 * H - 0.12 * H * np.clip((self.vn - 0.05) / 0.85, 0, 1) - 0.3 * H * self.un**2
        )
        self.fat_planes = fields[2] + 0.3 * fields[0] > 1.4
        self.trabecular = 100 * np.sin(u * 1.3) * np.sin(v * 1.1)
        self.base_tex = 150 * np.sin(u * 0.9 + v * 0.7)
        self.mid_u = u + 1.5 * np.sin(self.vn * 2.0 + an.sulc_phase)
        B = an.b - an.t0
        phi = np.arctan2(v + 0.14 * B, u)
        self.star = np.sqrt(u * u + (v + 0.14 * B) ** 2) / (
            9.5 * (1 + 0.14 * np.cos(5 * phi + np.pi / 2) + 0.06 * np.cos(3 * phi + an.sulc_phase))
        )
        # Headrest: foam pad and plastic shell, a cradle along z under the occiput.
        r1 = an.headrest_r
        hr_c = an.hy + an.b + an.scalp + 1.0 - r1
        dist = np.sqrt((self.x - an.hx) ** 2 + (self.y - hr_c) ** 2)
        below = self.y > hr_c + 0.7 * r1
        self.foam = below & (dist >= r1) & (dist < r1 + 12)
        self.shell_m = below & (dist >= r1 + 12) & (dist < r1 + 15)
        self._ventricles = self._ventricle_capsules()
        self._cell_noise: list[np.ndarray] | None = None

    # ---- geometry helpers
    def heights(self, k: int) -> np.ndarray:
        """Height above the foramen magnum of each row of slice ``k``, ``(N, 1)`` mm."""
        return np.float32(self.positions[k][2]) + self.zrow

    def _profile(self, h: np.ndarray, c_top: float) -> np.ndarray:
        """Cross-section scale of an ellipsoid-like vault at height ``h`` (0 beyond it)."""
        an = self.an
        c = np.where(h >= an.hc, np.float32(c_top), np.float32(an.c_low))
        return np.sqrt(np.clip(1 - ((h - an.hc) / c) ** 2, 0, 1)).astype(np.float32)

    def level_point(self, theta: float, depth: float, h: float) -> tuple[float, float]:
        """(u, v) of the point ``depth`` mm inside the inner table along elliptic angle theta."""
        an = self.an
        rloc = math.hypot(an.a * math.cos(theta), an.b * math.sin(theta))
        pert = 1 + float(_harmonics(np.array([theta], np.float32), an.shape)[0])
        si = float(self._profile(np.array([h], np.float32), an.c_top - an.t_top)[0])
        r = max(si * pert * (rloc - an.t0) - depth, 0.0)
        return r / rloc * an.a * math.cos(theta), r / rloc * an.b * math.sin(theta)

    def _ventricle_capsules(self) -> dict[str, list[tuple]]:
        """Ventricle parts as tapered capsules ``(p0, p1, r0, r1, rh)`` in head coordinates."""
        an = self.an
        A, B, H, s = an.a - an.t0, an.b - an.t0, an.H, an.vscale
        ru = 3.2 * s
        med = ru + 1.0  # septum pellucidum about 2 mm thick
        parts: dict[str, list[tuple]] = {"lateral": [], "occipital": [], "third": [], "fourth": []}
        for sg in (-1.0, 1.0):
            parts["lateral"] += [
                (
                    (sg * med, -0.08 * B, 0.56 * H),
                    (sg * (med + 0.12 * A), -0.36 * B, 0.52 * H),
                    ru,
                    0.8 * ru,
                    9 * s,
                ),
                (
                    (sg * med, -0.10 * B, 0.63 * H),
                    (sg * (med + 0.05 * A), 0.22 * B, 0.64 * H),
                    ru,
                    ru,
                    6 * s,
                ),
                (
                    (sg * (med + 0.05 * A), 0.22 * B, 0.60 * H),
                    (sg * 0.25 * A, 0.34 * B, 0.52 * H),
                    ru,
                    1.5 * ru,
                    8 * s,
                ),
                (
                    (sg * 0.40 * A, -0.12 * B, 0.33 * H),
                    (sg * 0.26 * A, 0.28 * B, 0.45 * H),
                    0.35 * ru,
                    0.6 * ru,
                    3 * s,
                ),
            ]
            parts["occipital"] += [
                (
                    (sg * 0.25 * A, 0.34 * B, 0.52 * H),
                    (sg * 0.21 * A, 0.64 * B, 0.48 * H),
                    1.4 * ru,
                    0.5 * ru,
                    5 * s,
                ),
            ]
        parts["third"] = [
            ((0.0, -0.14 * B, 0.44 * H), (0.0, 0.10 * B, 0.47 * H), 0.45 * ru, 0.45 * ru, 7.0)
        ]
        parts["fourth"] = [((-4.0, 0.27 * B, 0.16 * H), (4.0, 0.27 * B, 0.16 * H), 3.5, 3.5, 5.5)]
        return parts

    def occipital_level(self, side: float, frac: float) -> float:
        """Patient y of a point ``frac`` of the way down the occipital horn (for layering)."""
        an = self.an
        p0, p1 = self._ventricles["occipital"][0 if side < 0 else 1][:2]
        vv = p0[1] + frac * (p1[1] - p0[1])
        uu = p0[0] + frac * (p1[0] - p0[0])
        return an.hy + math.sin(an.yaw) * uu + math.cos(an.yaw) * vv

    def _ell(self, h, hmin, hmax, centre, radii) -> np.ndarray | None:
        """`_ellipsoid` on this slice, or None when the slice misses it."""
        if hmax < centre[2] - radii[2] or hmin > centre[2] + radii[2]:
            return None
        return _ellipsoid(self.u, self.v, h, centre, radii)

    def _cap(self, h, hmin, hmax, p0, p1, r0, r1, rh) -> np.ndarray | None:
        """`_capsule` on this slice, or None when the slice misses it."""
        lo, hi = _hrange(p0, p1, rh)
        if hmax < lo or hmin > hi:
            return None
        return _capsule(self.u, self.v, h, p0, p1, r0, r1, rh)

    def _cells(self, h: np.ndarray, k: float) -> np.ndarray:
        """Irregular air-cell texture (unit variance) of cell size about ``1/k`` mm."""
        if self._cell_noise is None:
            rng = np.random.default_rng(self.an.cell_seed)
            sig = max(0.6, 0.9 / self.an.ps)
            pair = []
            for _ in range(2):
                w = gaussian_filter(rng.standard_normal(self.u.shape, dtype=np.float32), sig)
                pair.append(w / max(float(w.std()), 1e-6))
            self._cell_noise = pair
        a, b = self._cell_noise
        mix = float(np.mean(h)) * 0.3 * k
        return a * np.float32(math.cos(mix)) + b * np.float32(math.sin(mix))

    # ---- the renderer
    def render(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """HU image ``(N, N)`` float32 of slice ``k`` and subtype areas ``(5,)`` (mm^2)."""
        an = self.an
        f32 = np.float32
        h = self.heights(k)
        hmin, hmax = float(h.min()), float(h.max())
        H = an.H
        # Skull thickness: thin temporal squama, thicker occiput low down, frontal sinus bulge.
        t = self.thick * (1 - 0.4 * self.lat2 * _window(h, 0.22 * H, 0.5 * H, 15))
        t = t * (1 + 0.35 * self.post * _window(h, -20, 0.3 * H, 20))
        sinus = None
        if an.frontal_sinus and hmax > 0.2 * H and hmin < 0.44 * H:
            sinus = self.front8 * _window(h, 0.26 * H, 0.38 * H, 6)
            t = t + 9 * sinus
        so = self._profile(h, an.c_top)
        si = self._profile(h, an.c_top - an.t_top)
        ss = self._profile(h, an.c_top + an.scalp)
        temporalis = self.temporalis * _window(h, 0.2 * H, 0.55 * H, 12)
        scalp = self.scalp + temporalis
        d_out = so * self.pr - self.r_mm  # mm inside the outer table
        d_in = si * self.pert * (self.rloc - t) - self.r_mm  # mm inside the inner table
        d_skin = ss * self.pert * (self.rloc + scalp) - self.r_mm

        hu = np.full(self.u.shape, -1000.0, dtype=f32)
        hu[self.foam] = an.foam
        hu[self.shell_m] = an.shell
        # Scalp: skin, subcutaneous fat, temporalis muscle; face and neck below the vault.
        skin = d_skin > 0
        hu[skin] = an.soft
        outside = skin & (d_out < 0)
        fat_top = 1.2 + 0.35 * scalp
        hu[outside & (d_skin > 1.2) & (d_skin < fat_top)] = an.fat
        hu[outside & (d_skin >= fat_top) & (temporalis > 1)] = an.soft + 8
        vault = (d_out > 0) & (h > self.shell_floor)
        bone = vault & (d_in <= 0)
        if hmin < 0.25 * H:
            hu[skin & ~bone & (d_out > 0) & self.fat_planes & (h < 0.25 * H)] = an.fat
        hu[bone] = an.diploe + self.trabecular[bone]
        hu[bone & ((d_out < 1.8) | (d_in > -1.5))] = an.table
        if sinus is not None:  # frontal sinus: air inside the thickened frontal bone
            hu[bone & (sinus > 0.35) & (d_out > 2.2) & (d_in < -2.0)] = -950
        # Cranial floor and the bone under it.
        floor = self.floor
        ic = (d_in > 0) & (h > floor)
        if hmin < 0.4 * H:
            base = (d_out > 0) & ~ic & (h <= floor) & (floor - h < self.tb)
            hu[base] = an.base_bone + self.base_tex[base]
            self._skull_base(hu, h, d_skin, ic, hmin, hmax)

        areas = np.zeros(5, dtype=f32)
        if ic.any():
            csf_sub, vent, brain = self._brain(hu, h, d_in, ic, hmin, hmax)
            self._bleeds(hu, areas, h, si, d_in, d_out, ic, csf_sub, vent, brain, hmin, hmax)
            if an.cupping:  # beam hardening leaves the brain next to bone slightly brighter
                hu[ic] += f32(an.cupping) * np.clip(1 - d_in[ic] / 25, 0, 1)

        # Acquisition: blur, correlated noise, a small calibration offset.
        hu = gaussian_filter(hu, max(0.5, an.blur_mm / an.ps), mode="nearest")
        noise = rng.standard_normal(hu.shape, dtype=f32)
        ns = 0.6
        noise = gaussian_filter(noise, ns, mode="wrap") * f32(
            2 * math.sqrt(math.pi) * ns * an.noise
        )
        hu += noise
        hu[hu > -900] += f32(an.offset)
        return hu, areas * f32(an.ps * an.ps)

    def _floor(self, un: np.ndarray, vn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Height (mm) of the cranial floor and the bone thickness under it, ``(N, N)``."""
        an = self.an
        H = an.H
        au = np.abs(un)
        # Orbital roofs, with the olfactory groove lower in the midline (gyrus rectus).
        f_ant = 0.235 * H + 0.04 * H * np.minimum(au / 0.25, 1) + 0.02 * H * un * un
        f_mid = 0.085 * H + 0.05 * H * (vn + 0.1) ** 2
        f_cen = 0.22 * H - np.clip((vn + 0.30) / 0.42, 0, 1) * 0.20 * H
        f_post = 0.02 * H + 0.16 * H * ((un / 0.75) ** 2 + ((vn - 0.45) / 0.55) ** 2)
        # The sphenoid wing curves forward laterally: the middle fossa reaches further front.
        w_ant = _sigmoid((-0.2 - 0.32 * un * un - vn) / 0.04)
        w_post = _sigmoid((vn - 0.12) / 0.04)
        w_cen = _sigmoid((0.22 - au) / 0.04)
        mid = w_cen * f_cen + (1 - w_cen) * f_mid
        floor = w_ant * f_ant + (1 - w_ant) * (w_post * f_post + (1 - w_post) * mid)
        # Petrous ridges: a bony crest from the clivus out to the mastoid on each side.
        pu, pv = au * an.a, vn * an.b
        p0 = np.array([0.18 * an.a, 0.02 * an.b], np.float32)
        p1 = np.array([0.78 * an.a, 0.32 * an.b], np.float32)
        d = p1 - p0
        tt = np.clip(((pu - p0[0]) * d[0] + (pv - p0[1]) * d[1]) / float(d @ d), 0, 1)
        ridge_d = np.sqrt((pu - p0[0] - tt * d[0]) ** 2 + (pv - p0[1] - tt * d[1]) ** 2)
        floor = np.maximum(floor, 0.24 * H - 1.2 * ridge_d)
        # Foramen magnum: the canal goes down through the floor.
        fm = (un / 0.17) ** 2 + ((vn - 0.22) / 0.16) ** 2 < 1
        floor = np.where(fm, np.float32(-1000), floor).astype(np.float32)
        # Thin floors under the fossae, a thick clivus and sphenoid body, dense petrous bone.
        tb = 4 + 26 * w_cen * (1 - w_ant) * (1 - w_post) + 4 * w_post + 18 * (ridge_d < 12)
        # Under the anterior fossa: orbital roofs and sphenoid wings down to the orbits.
        tb = np.where(w_ant > 0.5, np.where(au < 0.4, 8.0, 12.0), tb).astype(np.float32)
        return floor, tb

    def _skull_base(self, hu, h, d_skin, ic, hmin, hmax) -> None:
        """Sinuses, orbits, mastoids, nasal cavity, pharynx and upper cervical spine."""
        an = self.an
        H, a, b = an.H, an.a, an.b
        u, v = self.u, self.v
        extra = (d_skin > 0) & ~ic & (h < self.floor)
        d = self._ell(h, hmin, hmax, (0, -0.30 * b, 0.15 * H), (13, 11, 10))
        if d is not None:  # sphenoid sinus
            hu[extra & (d < 1)] = -950
        d = self._ell(h, hmin, hmax, (0, -0.62 * b, 0.17 * H), (9, 16, 12))
        if d is not None:  # ethmoid air cells: honeycomb of air and thin bone
            e = extra & (d < 1)
            cells = self._cells(h, 1.0) > -0.25
            hu[e] = np.where(cells[e], -900, 750)
        d = self._ell(h, hmin, hmax, (0, -0.65 * b, 0.0), (9, 24, 24))
        if d is not None:  # nasal cavity with a bony septum
            nas = extra & (d < 1)
            hu[nas] = np.where(np.abs(u[nas]) < 0.8, 750, -950)
        for sg in (-1.0, 1.0):
            d = self._ell(h, hmin, hmax, (sg * 0.30 * a, -0.55 * b, 0.0), (15.5, 18, 18))
            if d is not None:  # maxillary sinus with a thin wall
                hu[extra & (d < 1)] = 700
                hu[extra & (d < 0.9)] = -960
            apex, front = (sg * 0.13 * a, -0.40 * b, 0.17 * H), (sg * 0.35 * a, -0.74 * b, 0.16 * H)
            d = self._cap(h, hmin, hmax, apex, front, 3.0, 17.5, 10.0)
            if d is not None:  # orbit: bony walls, fat cone, globe with a denser sclera
                hu[extra & (d < 1)] = 800
                hu[extra & (d < 0.86)] = an.fat
                g = _ellipsoid(u, v, h, (front[0], front[1] - 4, front[2]), (11.5, 11.5, 11.5))
                hu[(g < 1) & (d_skin > 0)] = 45
                hu[(g < 0.88) & (d_skin > 0)] = 12
            d = self._ell(h, hmin, hmax, (sg * 0.74 * a, 0.20 * b, 0.08 * H), (12, 15, 16))
            if d is not None:  # mastoid air cells
                mast = extra & (d < 1)
                hu[mast] = np.where((self._cells(h, 1.3) > 0.15)[mast], -850, 900)
            d = self._cap(
                h,
                hmin,
                hmax,
                (sg * 0.70 * a, 0.02 * b, 0.1 * H),
                (sg * 1.05 * a, 0.0, 0.1 * H),
                3.5,
                4.0,
                4.0,
            )
            if d is not None:  # external ear canal
                hu[(d < 1) & (d_skin > 0)] = -980
        if hmin < 0:  # pharynx and upper cervical spine below the foramen magnum
            d = self._ell(h, hmin, hmax, (0, -0.22 * b, -0.15 * H), (12, 8, 25))
            if d is not None:
                hu[(d_skin > 0) & (d < 1)] = -980
            below = (d_skin > 0) & (h < -3)
            ring = ((u / 24) ** 2 + ((v - 0.14 * b) / 22) ** 2) < 1
            canal = ((u / 12) ** 2 + ((v - 0.22 * b) / 13) ** 2) < 1
            hu[below & ring] = an.base_bone
            hu[below & canal] = an.csf
            hu[below & ((u / 5.5) ** 2 + ((v - 0.22 * b) / 5.0) ** 2 < 1)] = an.wm + 5
            hu[below & (((u / 6) ** 2 + ((v + 0.02 * b) / 6) ** 2) < 1)] = an.base_bone

    def _brain(self, hu, h, d_in, ic, hmin, hmax):
        """Paint the brain; return masks of subarachnoid CSF, ventricles and parenchyma."""
        an = self.an
        f32 = np.float32
        H, A, B = an.H, an.a - an.t0, an.b - an.t0
        u, v, theta = self.u, self.v, self.theta
        d_brain = np.minimum(d_in, (h - self.floor) * 1.5)
        cereb = ic & (self.vn > 0.1) & (h < self.tent)
        hu[ic] = an.wm
        hu[cereb] = an.wm + 0.6 * (an.gm - an.wm)
        # Sulci: sheets roughly perpendicular to the surface that meander with smooth random
        # fields; an integer count round the head so the pattern closes on itself. Folia in
        # the cerebellum are finer and shallower.
        lev = float(self._profile(np.array([0.5 * (hmin + hmax)], f32), an.c_top)[0])
        circ = 2 * math.pi * max(lev, 0.2) * 0.5 * (A + B)
        m_cb = max(6, round(circ / an.sulc_period))
        m_cer = max(8, round(circ / 5.5))
        hm = float(0.5 * (hmin + hmax)) / 22.0
        wander = self.fields[0] * f32(math.cos(hm)) + self.fields[1] * f32(math.sin(hm))
        phase = m_cb * theta + 2.2 * wander + 0.6 * np.sin(d_in / 4.0 + 3 * theta) + an.sulc_phase
        dist_s = f32(circ / m_cb / math.pi) * np.arcsin(np.abs(np.sin(0.5 * phase)))
        depth = np.clip(11 + 6 * self.fields[2], 4, 19)
        hw = an.sulc_hw * (0.75 + 0.5 * np.abs(self.fields[1]))
        cortex = ~cereb & (
            (d_brain < an.csf_layer + 2.8) | ((dist_s < hw + 2.6) & (d_in < depth + 2.6))
        )
        hu[ic & cortex] = an.gm
        sulc = ic & ~cereb & (dist_s < hw) & (d_in < depth)
        if cereb.any():
            ph_c = m_cer * theta + 1.2 * wander
            dist_c = f32(circ / m_cer / math.pi) * np.arcsin(np.abs(np.sin(0.5 * ph_c)))
            sulc |= cereb & (dist_c < 0.45) & (d_brain < 5)
        # Sylvian fissures with the insular cortex, then deep grey nuclei.
        sylv = np.zeros_like(ic)
        vw = v - 2.5 * np.sin(u / 6.0 + an.sulc_phase)  # a gently wavy fissure
        for sg in (-1.0, 1.0):
            d = self._ell(h, hmin, hmax, (sg * 0.40 * A, -0.06 * B, 0.42 * H), (4.5, 16, 13))
            if d is not None:  # insular cortex
                hu[ic & (d < 1)] = an.gm
            r = 0.6 + 0.7 * an.sulc_hw
            for p0, p1, rh in (
                ((sg * 0.40 * A, -0.07 * B, 0.42 * H), (sg * 0.95 * A, -0.03 * B, 0.44 * H), 10.0),
                ((sg * 0.12 * A, -0.17 * B, 0.31 * H), (sg * 0.40 * A, -0.08 * B, 0.37 * H), 4.0),
            ):
                lo, hi = _hrange(p0, p1, rh)
                if hmax > lo and hmin < hi:
                    sylv |= ic & (_capsule(u, vw, h, p0, p1, r, 1.3 * r, rh) < 1)
            for centre, radii in (
                ((sg * 0.12 * A, 0.05 * B, 0.47 * H), (8, 11, 10)),  # thalamus
                ((sg * 0.21 * A, -0.27 * B, 0.53 * H), (5, 7, 10)),  # caudate head
                ((sg * 0.31 * A, -0.06 * B, 0.47 * H), (6, 14, 10)),  # lentiform nucleus
            ):
                d = self._ell(h, hmin, hmax, centre, radii)
                if d is not None:
                    hu[ic & (d < 1)] = an.deep_gm
        for centre, radii in (  # medulla, pons, midbrain
            ((0, 0.16 * B, 0.02 * H), (9, 9, 14)),
            ((0, 0.10 * B, 0.16 * H), (13, 12, 11)),
            ((0, 0.06 * B, 0.31 * H), (12, 11, 8)),
        ):
            d = self._ell(h, hmin, hmax, centre, radii)
            if d is not None:
                hu[ic & (d < 1)] = an.wm + 4
        # Subarachnoid space: convexity layer, sulci, fissures, basal cisterns.
        csf_sub = (ic & (d_brain < an.csf_layer)) | sulc | sylv
        if hmin < 0.45 * H and hmax > 0.2 * H:
            supra = ic & (np.sqrt(self.star**2 + ((h - 0.31 * H) / 5.5) ** 2) < 1)
            mid = _ellipsoid(u, v, h, (0, 0.06 * B, 0.31 * H), (12, 11, 8))
            ambient = ic & (mid >= 1) & (mid < 1.3) & (v > 0.02 * B)
            quad = ic & (_ellipsoid(u, v, h, (0, 0.24 * B, 0.36 * H), (7, 5, 6)) < 1)
            csf_sub |= supra | ambient | quad
        # Interhemispheric fissure with the falx, interrupted by the corpus callosum.
        vn = self.vn
        cc = _window(h, 0.48 * H, 0.68 * H, 3) > 0.5
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
            amu = np.abs(self.mid_u)
            fhw = 0.8 + 0.6 * an.sulc_hw
            hu[fiss_region & (amu < fhw + 2.8)] = an.gm
            csf_sub |= fiss_region & (amu < fhw)
            hu[csf_sub] = an.csf
            hu[fiss_region & (amu < 0.55)] = an.falx
        else:
            hu[csf_sub] = an.csf
        # Ventricles and the calcifications often seen beside them.
        vent = np.zeros_like(ic)
        for part in self._ventricles.values():
            for p0, p1, r0, r1, rh in part:
                d = self._cap(h, hmin, hmax, p0, p1, r0, r1, rh)
                if d is not None:
                    vent |= ic & (d < 1)
        hu[vent] = an.csf
        if an.choroid:
            for sg in (-1.0, 1.0):
                p = (sg * (3.2 * an.vscale + 1 + 0.07 * A), 0.27 * B, 0.56 * H)
                d = self._ell(h, hmin, hmax, p, (2.2, 2.2, 2.5))
                if d is not None:
                    hu[d < 1] = 180
        if an.pineal:
            d = self._ell(h, hmin, hmax, (0, 0.17 * B, 0.46 * H), (1.8, 1.8, 2.2))
            if d is not None:
                hu[d < 1] = 150
        brain = ic & ~csf_sub & ~vent
        return csf_sub, vent, brain

    def _bleeds(self, hu, areas, h, si, d_in, d_out, ic, csf_sub, vent, brain, hmin, hmax) -> None:
        """Paint every bleed into ``hu`` and add its pixel count to ``areas``."""
        an = self.an
        u, v, theta = self.u, self.v, self.theta
        for bl in self.bleeds:
            p = bl.params
            if hmax < p["hlo"] or hmin > p["hhi"]:
                continue
            if bl.subtype in ("epidural", "subdural"):
                dth = np.angle(np.exp(1j * (theta - p["theta"]))).astype(np.float32)
                arc = dth * self.rloc * si
                if bl.subtype == "epidural":
                    q2 = (arc / p["ls"]) ** 2 + ((h - p["h0"]) / p["lh"]) ** 2
                    thick = p["t"] * np.sqrt(np.clip(1 - q2, 0, 1))
                    m = ic & (d_in >= -0.3) & (d_in < thick)
                    if p.get("fracture", 0) > 0:  # a thin lucent line through the skull
                        fr = np.abs(arc - p["fracture_off"] - 0.3 * (h - p["h0"])) < 0.7
                        fr &= (d_in < 0) & (d_out > 0) & (np.abs(h - p["h0"]) < p["lh"])
                        hu[fr] = an.soft
                else:
                    ang = np.sqrt(np.clip(1 - (arc / p["ls"]) ** 2, 0, 1))
                    vert = np.clip(1 - ((h - p["h0"]) / p["lh"]) ** 2, 0, 1)
                    thick = p["t"] * ang * np.sqrt(vert)
                    # A subdural collection stops at the falx: it never crosses the midline.
                    m = ic & (d_in >= -0.3) & (d_in < thick) & (self.mid_u * p["side"] > 1.5)
            elif bl.subtype == "subarachnoid":
                reg = _ellipsoid(u, v, h, (p["cu"], p["cv"], p["h0"]), (p["r"], p["r"], p["rh"]))
                m = csf_sub & (reg < 1)
            elif bl.subtype == "intraparenchymal":
                du, dv, dh = u - p["cu"], v - p["cv"], (h - p["h0"]) * (p["r"] / p["rh"])
                phi = np.arctan2(dv, du)
                irregular = 1 + p["irr"] * (
                    0.6 * np.cos(3 * phi + p["ph1"]) + 0.4 * np.cos(5 * phi + p["ph2"] + dh / 5)
                )
                dist = np.sqrt(du * du + dv * dv + dh * dh) / (p["r"] * irregular)
                hu[brain & (dist >= 1) & (dist < 1 + p["rim"] / p["r"])] = p["oedema"]
                m = ic & ~vent & (dist < 1)
            else:  # intraventricular
                m = np.zeros_like(ic)
                if p["mode"] == 0:  # blood layering in the dependent occipital horns
                    for sgi in (0, 1):
                        if p[f"side{sgi}"] > 0:
                            p0, p1, r0, r1, rh = self._ventricles["occipital"][sgi]
                            d = self._cap(h, hmin, hmax, p0, p1, r0, r1, rh)
                            if d is not None:
                                m |= vent & (d < 1) & (self.y > p[f"level{sgi}"])
                else:  # cast of the third and fourth ventricles
                    for key in ("third", "fourth"):
                        for p0, p1, r0, r1, rh in self._ventricles[key]:
                            d = self._cap(h, hmin, hmax, p0, p1, r0, r1, rh)
                            if d is not None:
                                m |= vent & (d < 1)
            if not m.any():
                continue
            hu[m] = p["hu"] + 3 * (np.sin(u * 0.8 + p.get("ph1", 0.0)) * np.sin(v * 0.7))[m]
            areas[_SUB[bl.subtype]] += float(np.count_nonzero(m))


# --------------------------------------------------------------------------- bleeds


def _draw_bleed(rng: np.random.Generator, ph: _Phantom, subtype: str, subtle: bool) -> Bleed:
    """Shape parameters (mm) of one bleed placed inside the scanned range."""
    an = ph.an
    H, A, B = an.H, an.a - an.t0, an.b - an.t0
    centre_h = ph.positions[:, 2] + (an.size - 1) / 2 * an.ps * ph.col[2]
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
            cu, cv = ph.level_point(th, 4.0, h0)
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
            cu, cv = ph.level_point(th, r + float(rng.uniform(8, 18)), h0)
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
            p[f"level{sgi}"] = ph.occipital_level(-1.0 if sgi == 0 else 1.0, frac)
        p["hlo"], p["hhi"] = (0.42 * H, 0.6 * H) if mode == 0 else (0.05 * H, 0.55 * H)
    else:
        raise ValueError(f"unknown subtype {subtype!r}")
    return Bleed(subtype, subtle, p)


# --------------------------------------------------------------------------- studies


def _study_rng(seed: int, index: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index, attempt)))


def make_study(
    seed: int,
    index: int = 0,
    *,
    size: int = 512,
    plan: StudyPlan | None = None,
) -> SyntheticStudy:
    """Render one phantom study, deterministic for ``(seed, index, size, plan)``.

    Args:
        plan: subtypes (bleeds to place), tilt, encoding and slice count; default: a
            normal 30-slice study without tilt.

    Returns:
        The rendered study; a planned bleed that ends up on no positive slice is redrawn
        (a few tries), so ``labels`` carry every planned subtype.
    """
    plan = plan or StudyPlan()
    if not 8 <= plan.n_slices <= 80:
        raise ValueError("n_slices must be in 8..80")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    for attempt in range(6):
        rng = _study_rng(seed, index, attempt)
        an = _draw_anatomy(rng, size, plan)
        ph = _Phantom(an, [])
        subtle = plan.subtle or tuple(False for _ in plan.subtypes)
        ph.bleeds = [
            _draw_bleed(rng, ph, st, sb) for st, sb in zip(plan.subtypes, subtle, strict=True)
        ]
        hu = np.empty((an.n, size, size), dtype=np.float32)
        areas = np.zeros((an.n, 5), dtype=np.float32)
        for k in range(an.n):
            hu[k], areas[k] = ph.render(k, rng)
        labels = np.zeros((an.n, 6), dtype=np.uint8)
        labels[:, :5] = areas > AREA_THRESHOLD_MM2
        labels[:, ANY_INDEX] = labels[:, :5].max(axis=1)
        if all(labels[:, _SUB[st]].any() for st in plan.subtypes):
            break
    hu = _encode_range(hu, plan)
    centre_h = ph.positions[:, 2] + (size - 1) / 2 * an.ps * ph.col[2]
    return SyntheticStudy(
        hu=hu,
        labels=labels,
        areas=areas,
        z=ph.z.copy(),
        positions=ph.positions.copy(),
        orientation=ph.orientation,
        pixel_spacing=an.ps,
        slice_spacing=an.sp,
        tilt_deg=math.degrees(an.tilt),
        plan=plan,
        bleeds=ph.bleeds,
        levels=centre_h.astype(np.float32),
        head_height=an.H,
    )


def _encode_range(hu: np.ndarray, plan: StudyPlan) -> np.ndarray:
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


# --------------------------------------------------------------------------- dataset


def _plan_dataset(
    seed: int,
    n_studies: int,
    slices: tuple[int, int],
    positive_fraction: float = _POSITIVE_FRACTION,
) -> list[StudyPlan]:
    """Stratified plans: 40 % positive (by default), 1 in 5 tilted, 1 in 6 with the 12-bit quirk."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n = n_studies

    def pick(frac: float) -> set[int]:
        k = round(frac * n)
        if n >= 2:
            k = max(k, 1)
        return set(rng.permutation(n)[:k].tolist())

    positives, tilted, quirk = pick(positive_fraction), pick(_TILT_FRACTION), pick(_QUIRK_FRACTION)
    order = list(rng.permutation(len(SUBTYPES)))
    partner = {
        "intraparenchymal": "intraventricular",
        "subdural": "subarachnoid",
        "epidural": "subdural",
        "subarachnoid": "intraventricular",
        "intraventricular": "intraparenchymal",
    }
    plans, j = [], 0
    for i in range(n):
        subtypes: tuple[str, ...] = ()
        if i in positives:
            first = SUBTYPES[order[j % len(order)]]
            j += 1
            subtypes = (first,)
            if rng.random() < _SECOND_SUBTYPE:
                subtypes = (first, partner[first])
        subtle = tuple(bool(rng.random() < _SUBTLE) for _ in subtypes)
        if i in quirk:
            encoding = "quirk12"
        else:
            encoding = "uint16" if rng.random() < 0.5 else "int16"
        plans.append(
            StudyPlan(
                subtypes=subtypes,
                subtle=subtle,
                tilt=i in tilted,
                encoding=encoding,
                n_slices=int(rng.integers(slices[0], slices[1] + 1)),
                instance_order=str(
                    rng.choice(["descending", "ascending", "shuffled"], p=[0.5, 0.3, 0.2])
                ),
                windows=int(rng.integers(0, len(_WINDOW_TAGS))),
                pad_fov=encoding == "int16" and bool(rng.random() < 0.3),
                bits12_plain=encoding == "uint16" and bool(rng.random() < 0.4),
            )
        )
    return plans


def _image_ids(seed: int, plans: Sequence[StudyPlan]) -> list[list[str]]:
    """Unique 9-hex-digit RSNA-style ids, deterministic for the seed."""
    seen: set[str] = set()
    out = []
    for i, plan in enumerate(plans):
        ids = []
        for k in range(plan.n_slices):
            salt = 0
            while True:
                key = f"{_UID_ROOT}:{seed}:{i}:{k}:{salt}".encode()
                hx = hashlib.sha256(key).hexdigest()[:9]
                if hx not in seen:
                    break
                salt += 1
            seen.add(hx)
            ids.append(f"ID_{hx}")
        out.append(ids)
    return out


def _write_study(
    args: tuple[int, int, int, StudyPlan, list[str], str],
) -> list[dict]:
    """Render study ``index`` and write its DICOM files; return its truth rows."""
    seed, index, size, plan, ids, folder = args
    st = make_study(seed, index, size=size, plan=plan)
    uid = [_UID_ROOT, str(seed), str(index)]
    study_uid = generate_uid(entropy_srcs=[*uid, "study"])
    series_uid = generate_uid(entropy_srcs=[*uid, "series"])
    n = st.hu.shape[0]
    order_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, index)))
    if plan.instance_order == "ascending":
        inst = np.arange(1, n + 1)
    elif plan.instance_order == "descending":
        inst = np.arange(n, 0, -1)
    else:
        inst = order_rng.permutation(n) + 1
    if plan.encoding == "quirk12":
        enc = {"pixel_representation": 0, "bits_stored": 12, "rescale_intercept": 0.0}
    elif plan.encoding == "uint16":
        enc = {
            "pixel_representation": 0,
            "bits_stored": 12 if plan.bits12_plain else 16,
            "rescale_intercept": -1024.0,
        }
    else:
        enc = {"pixel_representation": 1, "bits_stored": 16, "rescale_intercept": 0.0}
    wc, ww = _WINDOW_TAGS[plan.windows]
    rows = []
    for k in range(n):
        ds = ct_dataset(
            st.hu[k],
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=generate_uid(entropy_srcs=[*uid, "sop", str(k)]),
            position=tuple(float(round(c, 4)) for c in st.positions[k]),
            orientation=st.orientation,
            pixel_spacing=(round(st.pixel_spacing, 6), round(st.pixel_spacing, 6)),
            slice_thickness=st.slice_spacing,
            instance_number=int(inst[k]),
            rescale_slope=1.0,
            patient_name=f"SYNTHETIC^CASE{index:04d}",
            patient_id=f"SYN{index:04d}",
            window_centre=wc,
            window_width=ww,
            **enc,
        )
        if abs(st.tilt_deg) > 0:
            ds.GantryDetectorTilt = f"{st.tilt_deg:.3f}"
        write_dataset(ds, Path(folder) / f"{ids[k]}.dcm")
        row = {
            "image_id": ids[k],
            "study_uid": study_uid,
            "series_uid": series_uid,
            "true_index": k,
            "z": round(float(st.z[k]), 4),
        }
        row.update({c: int(st.labels[k, j]) for j, c in enumerate(CLASSES)})
        row["_tilt"] = st.tilt_deg
        row["_spacing"] = st.slice_spacing
        row["_ps"] = st.pixel_spacing
        rows.append(row)
    return rows


def _runs(col: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` runs of ones in a 0/1 vector."""
    padded = np.concatenate([[0], col.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def inject_label_noise(
    labels: np.ndarray,
    study_ids: np.ndarray,
    order: np.ndarray,
    rate: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Sequential mislabels of the kind the poster shows, in about ``rate`` of positive runs.

    Args:
        labels: ``(N, 6)`` 0/1 clean labels, ``CLASSES`` order.
        study_ids: ``(N,)`` study of each row.
        order: ``(N,)`` position of each row in its study (0 = most inferior).
        rate: fraction of (study, subtype) positive runs that get one error, in [0, 1].

    Returns:
        ``(noisy (N, 6) uint8, errors)`` where ``errors`` has columns row, class, clean,
        noisy, kind (gap | isolated | extend | shorten | any) and lists exactly the cells
        where the two arrays differ.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be in [0, 1]")
    clean = np.asarray(labels, dtype=np.uint8)
    noisy = clean.copy()
    study_ids, order = np.asarray(study_ids), np.asarray(order)
    kinds: dict[tuple[int, int], str] = {}
    runs = []  # (rows of the study in order, class, start, stop)
    studies = {}
    for sid in pd.unique(study_ids):
        rows = np.flatnonzero(study_ids == sid)
        rows = rows[np.argsort(order[rows], kind="stable")]
        studies[sid] = rows
        for j in range(5):
            for start, stop in _runs(clean[rows, j]):
                runs.append((rows, j, start, stop))
    if rate == 0 or not runs:
        return noisy, pd.DataFrame(columns=["row", "class", "clean", "noisy", "kind"])
    k = max(1, round(rate * len(runs)))
    chosen = rng.permutation(len(runs))[:k]
    touched: set[int] = set()
    any_flips = []
    for ci in sorted(chosen.tolist()):
        rows, j, start, stop = runs[ci]
        n, length = len(rows), stop - start
        col = clean[rows, j]
        options = {"extend": 0.2, "isolated": 0.25, "any": 0.1}
        if length >= 3:
            options["gap"] = 0.3
        if length >= 2:
            options["shorten"] = 0.15
        names = list(options)
        probs = np.array([options[x] for x in names])
        kind = str(rng.choice(names, p=probs / probs.sum()))
        target: int | None = None
        value = 0
        if kind == "gap":
            target = int(rng.integers(start + 1, stop - 1))
        elif kind == "shorten":
            target = start if rng.random() < 0.5 else stop - 1
        elif kind == "extend":
            ends = [i for i in (start - 1, stop) if 0 <= i < n and col[i] == 0]
            if ends:
                target, value = int(rng.choice(ends)), 1
            else:
                kind = "any"
        if kind == "isolated":
            near = np.convolve(col, np.ones(5), mode="same") > 0
            free = np.flatnonzero(~near)
            if free.size:
                target, value = int(rng.choice(free)), 1
            else:
                kind = "any"
        if kind == "any":
            any_flips.append(int(rows[int(rng.integers(start, stop))]))
            continue
        r = int(rows[target])
        noisy[r, j] = value
        kinds[(r, j)] = kind
        touched.add(r)
    # Keep "any" consistent for ordinary errors; "any" errors break it on purpose.
    for r in touched:
        new = noisy[r, :5].max()
        if new != noisy[r, ANY_INDEX]:
            noisy[r, ANY_INDEX] = new
            kinds[(r, ANY_INDEX)] = kinds.get((r, ANY_INDEX), "derived")
    for r in any_flips:
        noisy[r, ANY_INDEX] = 1 - noisy[r, ANY_INDEX]
        kinds[(r, ANY_INDEX)] = "any"
    diff_r, diff_c = np.nonzero(noisy != clean)
    parent = {r: kd for (r, c), kd in kinds.items() if c < 5}
    records = []
    for r, c in zip(diff_r.tolist(), diff_c.tolist(), strict=True):
        kd = kinds.get((r, c), "any")
        if kd == "derived":
            kd = parent.get(r, "any")
        records.append(
            {
                "row": r,
                "class": CLASSES[c],
                "clean": int(clean[r, c]),
                "noisy": int(noisy[r, c]),
                "kind": kd,
            }
        )
    return noisy, pd.DataFrame(records, columns=["row", "class", "clean", "noisy", "kind"])


def generate_dataset(
    out: Path,
    n_studies: int,
    seed: int,
    size: int = 512,
    label_noise: float = 0.0,
    slices: tuple[int, int] = (20, 40),
    workers: int = 1,
    positive_fraction: float = _POSITIVE_FRACTION,
) -> SyntheticTruth:
    """Write ``n_studies`` phantom studies in the RSNA 2019 layout under ``out``.

    Writes ``stage_2_train.csv`` (``ID,Label``, six rows per image, noisy labels when
    ``label_noise > 0``), ``stage_2_train/ID_<hex>.dcm``, ``truth.csv`` and, with noise,
    ``label_errors.csv``. Deterministic for ``seed`` (and independent of ``workers``).
    ``positive_fraction`` (default 0.4, like the generator's natural mix) lets a training
    set be enriched with bleeds so rare subtypes get enough examples.

    Raises:
        FileExistsError: ``out/stage_2_train`` holds DICOM files of another dataset.
    """
    if n_studies < 1:
        raise ValueError("n_studies must be at least 1")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if not 8 <= slices[0] <= slices[1] <= 80:
        raise ValueError("slices must satisfy 8 <= low <= high <= 80")
    start = time.perf_counter()
    out = Path(out)
    folder = out / "stage_2_train"
    folder.mkdir(parents=True, exist_ok=True)
    plans = _plan_dataset(seed, n_studies, slices, positive_fraction)
    ids = _image_ids(seed, plans)
    # Never mix with other files: stale slices would contradict the new label CSV.
    wanted = {f"{i}.dcm" for study_ids in ids for i in study_ids}
    stale = [p.name for p in folder.glob("*.dcm") if p.name not in wanted]
    if stale:
        raise FileExistsError(
            f"{folder} already holds {len(stale)} other DICOM files; choose an empty folder"
        )
    (out / "label_errors.csv").unlink(missing_ok=True)
    jobs = [(seed, i, size, plans[i], ids[i], str(folder)) for i in range(n_studies)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_study, jobs))
    else:
        results = [_write_study(job) for job in jobs]
    truth = pd.DataFrame([row for rows in results for row in rows])
    extra = truth[["_tilt", "_spacing", "_ps"]]
    truth = truth.drop(columns=["_tilt", "_spacing", "_ps"])
    clean = truth[list(CLASSES)].to_numpy(np.uint8)
    noise_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    noisy, err = inject_label_noise(
        clean, truth["study_uid"].to_numpy(), truth["true_index"].to_numpy(), label_noise, noise_rng
    )
    errors = pd.DataFrame(
        {
            "image_id": truth["image_id"].to_numpy()[err["row"].to_numpy(int)],
            "class": err["class"].to_numpy(str),
            "clean": err["clean"].to_numpy(int),
            "noisy": err["noisy"].to_numpy(int),
            "kind": err["kind"].to_numpy(str),
        }
    )
    labels = pd.DataFrame(noisy.astype(int), columns=list(CLASSES), index=truth["image_id"])
    labels.index.name = "image_id"
    _write_label_csv(out / "stage_2_train.csv", labels)
    truth.to_csv(out / "truth.csv", index=False)
    if label_noise > 0:
        errors[["image_id", "class", "clean", "noisy"]].to_csv(
            out / "label_errors.csv", index=False
        )
    studies = []
    for i, plan in enumerate(plans):
        rows = truth.index[truth["image_id"].isin(ids[i])]
        first = rows[0]
        present = [c for c in SUBTYPES if truth.loc[rows, c].any()]
        studies.append(
            {
                "study_uid": truth.at[first, "study_uid"],
                "series_uid": truth.at[first, "series_uid"],
                "n_slices": len(rows),
                "pixel_spacing": float(extra.at[first, "_ps"]),
                "slice_spacing": float(extra.at[first, "_spacing"]),
                "tilt_deg": float(extra.at[first, "_tilt"]),
                "encoding": plan.encoding,
                "instance_order": plan.instance_order,
                "subtypes": ";".join(present),
            }
        )
    return SyntheticTruth(
        root=out,
        truth=truth,
        labels=labels,
        errors=errors,
        studies=pd.DataFrame(studies),
        seconds=time.perf_counter() - start,
    )


def _write_label_csv(path: Path, labels: pd.DataFrame) -> None:
    """``ID,Label`` with six rows per image in ``CLASSES`` order, images sorted by id."""
    lab = labels.sort_index()
    ids = np.repeat(lab.index.to_numpy(str), len(CLASSES))
    names = np.tile(np.array(CLASSES), len(lab))
    frame = pd.DataFrame(
        {
            "ID": np.char.add(np.char.add(ids.astype(str), "_"), names),
            "Label": lab.to_numpy().ravel(),
        }
    )
    frame.to_csv(path, index=False)


# --------------------------------------------------------------------------- montage


def _brain_window(hu: np.ndarray) -> np.ndarray:
    return (np.clip((hu - 0.0) / 80.0, 0, 1) * 255).astype(np.uint8)


def _read_hu(path: Path) -> tuple[np.ndarray, float]:
    """One slice back as HU ``(H, W)`` (12-bit quirk unwrapped) and its pixel area (mm^2)."""
    import pydicom

    ds = pydicom.dcmread(path)
    px = ds.pixel_array.astype(np.int64)
    intercept, slope = float(ds.RescaleIntercept), float(ds.RescaleSlope)
    if ds.BitsStored == 12 and ds.PixelRepresentation == 0 and intercept > -100:
        px = unwrap_quirk(px)
    area = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1])
    return (px * slope + intercept).astype(np.float32), area


def _montage_plans() -> list[tuple[str, StudyPlan, str]]:
    """(title, plan, what to show) for each montage tile."""
    plans = [("normal", StudyPlan(), "normal"), ("skull base", StudyPlan(), "low")]
    for name in SUBTYPES:
        plans.append((f"{SHORT_NAMES[name]} ({name})", StudyPlan(subtypes=(name,)), name))
    plans.append(
        ("subtle SDH (image right)", StudyPlan(subtypes=("subdural",), subtle=(True,)), "subdural")
    )
    return plans


def _pick_slice(study: SyntheticStudy, what: str) -> int:
    """Index of the slice that best shows ``what`` (a subtype, "normal" or "low")."""
    rel = study.levels / study.head_height
    if what == "normal":
        return int(np.argmin(np.abs(rel - 0.6)))
    if what == "low":
        return int(np.argmin(np.abs(rel - 0.12)))
    return int(np.argmax(study.areas[:, _SUB[what]]))


def _tiles_from_dir(
    root: Path, candidates: int = 6, min_blood_mm2: float = 40.0
) -> dict[str, np.ndarray]:
    """One HU image per subtype present in a dataset folder, and a normal slice.

    For each subtype the middles of the longest positive runs are read (at most
    ``candidates`` files) and the one with the most blood-density pixels wins, if it
    shows at least ``min_blood_mm2`` of them (subtle cases are left to rendered tiles).
    """
    truth = pd.read_csv(root / "truth.csv")
    out: dict[str, np.ndarray] = {}
    for name in SUBTYPES:
        runs: list[tuple[int, str]] = []
        for _, grp in truth.groupby("study_uid"):
            grp = grp.sort_values("true_index")
            for a, b in _runs(grp[name].to_numpy()):
                runs.append((b - a, grp["image_id"].iloc[(a + b) // 2]))
        best, best_score = None, min_blood_mm2
        for _, image_id in sorted(runs, reverse=True)[:candidates]:
            hu, px_area = _read_hu(root / "stage_2_train" / f"{image_id}.dcm")
            # Blood-density blobs: smoothed against noise, opened to drop thin lines (falx),
            # and away from the blurred edge of the skull.
            smooth = gaussian_filter(hu, 1.5)
            blood = (smooth > 56) & (smooth < 90) & ~binary_dilation(hu > 150, iterations=3)
            score = np.count_nonzero(binary_opening(blood, iterations=2)) * px_area
            if score >= best_score:
                best, best_score = hu, score
        if best is not None:
            out[name] = best
    neg = truth.groupby("study_uid")["any"].max()
    neg_ids = neg.index[neg == 0]
    if len(neg_ids):
        grp = truth[truth["study_uid"] == neg_ids[0]].sort_values("true_index")
        k = int(round(0.65 * (len(grp) - 1)))
        out["normal"] = _read_hu(root / "stage_2_train" / f"{grp['image_id'].iloc[k]}.dcm")[0]
    return out


def save_montage(
    out_png: Path,
    source: Path | Sequence[SyntheticStudy] | None = None,
    *,
    seed: int = 0,
    size: int = 512,
    tile: int = 300,
    columns: int = 4,
) -> Path:
    """Save a PNG grid of phantom slices in the brain window (40/80), each tile titled.

    Tiles: a normal slice, a skull-base slice, one per subtype and a subtle subdural.
    ``source`` may be a dataset folder written by `generate_dataset` (its slices are used
    where present) or rendered studies; missing tiles are rendered from ``seed``.
    """
    from PIL import Image, ImageDraw, ImageFont

    have: dict[str, np.ndarray] = {}
    if isinstance(source, (str, Path)):
        have = _tiles_from_dir(Path(source))
    elif source is not None:
        for st in source:
            for name in SUBTYPES:
                if st.labels[:, _SUB[name]].any() and name not in have:
                    have[name] = st.hu[_pick_slice(st, name)]
            if not st.labels[:, ANY_INDEX].any() and "normal" not in have:
                have["normal"] = st.hu[_pick_slice(st, "normal")]
    images: list[tuple[str, np.ndarray]] = []
    for i, (title, plan, what) in enumerate(_montage_plans()):
        key = what if title[:6] != "subtle" else "subtle"
        img = have.get(key) if what != "low" else None
        if img is None:
            st = make_study(seed, 1000 + i, size=size, plan=plan)
            img = st.hu[_pick_slice(st, what)]
        images.append((title, img))
    bar = max(24, tile // 11)
    font = ImageFont.load_default(size=int(bar * 0.7))
    rows = math.ceil(len(images) / columns)
    canvas = Image.new("L", (columns * tile, rows * (tile + bar)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, (title, img) in enumerate(images):
        x0, y0 = (i % columns) * tile, (i // columns) * (tile + bar)
        pic = Image.fromarray(_brain_window(img)).resize((tile, tile), Image.Resampling.LANCZOS)
        canvas.paste(pic, (x0, y0 + bar))
        draw.text((x0 + 6, y0 + 2), title, fill=255, font=font)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png)
    return out_png


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hohoho_core.synthetic --out DIR --studies N --seed S [...]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hohoho_core.synthetic",
        description="Write phantom head-CT studies in the RSNA 2019 layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--studies", type=int, required=True, help="number of studies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512, help="image size in pixels")
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        help="fraction of positive runs given one sequential label error",
    )
    parser.add_argument("--min-slices", type=int, default=20)
    parser.add_argument("--max-slices", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--positive-fraction",
        type=float,
        default=_POSITIVE_FRACTION,
        help="share of studies with a bleed (default 0.4; enrich a training set with more)",
    )
    parser.add_argument("--montage", type=Path, default=None, help="also save a PNG montage")
    args = parser.parse_args(argv)
    res = generate_dataset(
        args.out,
        args.studies,
        args.seed,
        size=args.size,
        label_noise=args.label_noise,
        slices=(args.min_slices, args.max_slices),
        workers=args.workers,
        positive_fraction=args.positive_fraction,
    )
    n_img = len(res.truth)
    pos = int((res.studies["subtypes"] != "").sum())
    print(
        f"wrote {len(res.studies)} studies, {n_img} slices ({pos} positive studies, "
        f"{len(res.errors)} injected label errors) to {res.root} in {res.seconds:.1f} s"
    )
    if args.montage is not None:
        save_montage(args.montage, args.out, seed=args.seed, size=args.size)
        print(f"montage: {args.montage}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
