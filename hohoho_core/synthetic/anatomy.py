"""Per-study random anatomy: head size and shape, tissue HU, acquisition, ventricles.

Everything here is drawn once per study from the study's generator, in a fixed order:
changing the order of the draws changes every dataset generated from a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hohoho_core.synthetic.plan import StudyPlan

#: Slice spacings (mm) a study is drawn with (repeats weight the draw), and the thinner one
#: long studies get half the time. Studies of up to 58 slices (the recipes use 20-40), plain
#: or randomised, lie in `SPACING_RANGE_MM`, which a model trained on them states in its
#: config (`hohoho_core.spacing`); longer ones are squeezed below 3 mm to fit the head.
SLICE_SPACINGS_MM = (4.0, 4.5, 5.0, 5.0, 5.0, 6.0)
THIN_SPACING_MM = 3.0
SPACING_RANGE_MM = (THIN_SPACING_MM, max(SLICE_SPACINGS_MM))
#: Smallest head height (mm) `draw_anatomy` draws; with 45 mm below it, the z extent a
#: study's slices must fit in.
_MIN_HEAD_MM = 128.0


def spacing_range_mm(max_slices: int) -> tuple[float, float]:
    """The slice spacings (mm) studies of at most ``max_slices`` slices can have."""
    squeezed = (_MIN_HEAD_MM + 45.0) / max(1, max_slices - 1)
    return min(SPACING_RANGE_MM[0], squeezed), SPACING_RANGE_MM[1]

#: A tapered capsule ``(p0, p1, r0, r1, rh)`` in head coordinates (mm), see `shapes.capsule`.
Point = tuple[float, float, float]
Capsule = tuple[Point, Point, float, float, float]


@dataclass
class Anatomy:
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


def draw_anatomy(rng: np.random.Generator, size: int, plan: StudyPlan) -> Anatomy:
    """Draw one study's anatomy and acquisition for ``plan`` at ``size`` pixels."""
    ps512 = float(rng.uniform(0.40, 0.55))
    fov = 512 * ps512
    H = float(rng.uniform(_MIN_HEAD_MM, 145))
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
    sp = float(rng.choice(list(SLICE_SPACINGS_MM)))
    n = plan.n_slices
    if n >= 34 and rng.random() < 0.5:
        sp = THIN_SPACING_MM
    if plan.slice_spacing is not None:  # a forced (thin) spacing: the plan's n is its own
        sp = float(plan.slice_spacing)
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
    return Anatomy(
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


def ventricle_capsules(an: Anatomy) -> dict[str, list[Capsule]]:
    """Ventricle parts as tapered capsules ``(p0, p1, r0, r1, rh)`` in head coordinates."""
    A, B, H, s = an.a - an.t0, an.b - an.t0, an.H, an.vscale
    ru = 3.2 * s
    med = ru + 1.0  # septum pellucidum about 2 mm thick
    parts: dict[str, list[Capsule]] = {"lateral": [], "occipital": [], "third": [], "fourth": []}
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
