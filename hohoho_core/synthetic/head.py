"""A study's scan geometry and everything about the head that depends on (x, y) alone.

The table moves along z and every image centre sits on the gantry axis, so a pixel's
in-plane patient coordinates (x, y) are the same on every slice, tilted or not; only its
height changes. `HeadGrid` computes those per-pixel maps once per study; `SliceContext`
adds what depends on one slice's heights (distances to the skull, the intracranial mask),
so the painters in `skull`, `brain` and `bleeds` share one set of arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from hohoho_core.synthetic.anatomy import Anatomy, Capsule, ventricle_capsules
from hohoho_core.synthetic.shapes import capsule, ellipsoid, harmonics, height_range, sigmoid
from hohoho_core.synthetic.shapes import window as hwindow


class HeadGrid:
    """Slice positions and per-pixel head coordinates, fields and landmarks of one study.

    Attributes (``(N, N)`` float32 unless said): ``u``, ``v`` head coordinates (mm),
    ``un``, ``vn`` normalised by the skull half axes, ``theta`` elliptic angle, ``r_mm``
    radius, ``fields`` three smooth random fields, ``floor``/``tb`` the cranial floor height
    and the bone under it, ``tent`` the tentorium height; ``positions`` ``(S, 3)`` and ``z``
    ``(S,)`` the slices' ImagePositionPatient and position along the normal.
    """

    def __init__(self, an: Anatomy) -> None:
        f32 = np.float32
        self.an = an
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
        self._head_coordinates()
        self._landmarks()
        self.ventricles: dict[str, list[Capsule]] = ventricle_capsules(an)
        self._cell_noise: list[np.ndarray] | None = None

    def _head_coordinates(self) -> None:
        """Head coordinates, outline, skull and scalp thickness maps, smooth random fields."""
        f32 = np.float32
        an = self.an
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
        self.pert = 1 + harmonics(theta, an.shape)
        self.pr = self.pert * self.rloc
        self.lat2 = cos_t * cos_t
        self.post = np.maximum(sin_t, 0)
        self.front8 = np.maximum(-sin_t, 0) ** 8
        self.thick = f32(an.t0) * (1 + 0.5 * harmonics(theta, an.thick))
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

    def _landmarks(self) -> None:
        """Cranial floor, tentorium, textures, midline, suprasellar star and the headrest."""
        an = self.an
        H, u, v, fields = an.H, self.u, self.v, self.fields
        self.floor, self.tb = cranial_floor(an, self.un, self.vn)
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

    # ---- geometry helpers
    def heights(self, k: int) -> np.ndarray:
        """Height above the foramen magnum of each row of slice ``k``, ``(N, 1)`` mm."""
        return np.float32(self.positions[k][2]) + self.zrow

    def centre_heights(self) -> np.ndarray:
        """Height (mm) of each slice's image centre above the foramen magnum, ``(S,)``."""
        return self.positions[:, 2] + (self.an.size - 1) / 2 * self.an.ps * self.col[2]

    def profile(self, h: np.ndarray, c_top: float) -> np.ndarray:
        """Cross-section scale of an ellipsoid-like vault at height ``h`` (0 beyond it)."""
        an = self.an
        c = np.where(h >= an.hc, np.float32(c_top), np.float32(an.c_low))
        return np.sqrt(np.clip(1 - ((h - an.hc) / c) ** 2, 0, 1)).astype(np.float32)

    def level_point(self, theta: float, depth: float, h: float) -> tuple[float, float]:
        """(u, v) of the point ``depth`` mm inside the inner table along elliptic angle theta."""
        an = self.an
        rloc = math.hypot(an.a * math.cos(theta), an.b * math.sin(theta))
        pert = 1 + float(harmonics(np.array([theta], np.float32), an.shape)[0])
        si = float(self.profile(np.array([h], np.float32), an.c_top - an.t_top)[0])
        r = max(si * pert * (rloc - an.t0) - depth, 0.0)
        return r / rloc * an.a * math.cos(theta), r / rloc * an.b * math.sin(theta)

    def occipital_level(self, side: float, frac: float) -> float:
        """Patient y of a point ``frac`` of the way down the occipital horn (for layering)."""
        an = self.an
        p0, p1 = self.ventricles["occipital"][0 if side < 0 else 1][:2]
        vv = p0[1] + frac * (p1[1] - p0[1])
        uu = p0[0] + frac * (p1[0] - p0[0])
        return an.hy + math.sin(an.yaw) * uu + math.cos(an.yaw) * vv

    def ell(self, s: SliceContext, centre, radii) -> np.ndarray | None:
        """`shapes.ellipsoid` on slice ``s``, or None when the slice misses it."""
        if s.hmax < centre[2] - radii[2] or s.hmin > centre[2] + radii[2]:
            return None
        return ellipsoid(self.u, self.v, s.h, centre, radii)

    def cap(self, s: SliceContext, p0, p1, r0, r1, rh) -> np.ndarray | None:
        """`shapes.capsule` on slice ``s``, or None when the slice misses it."""
        lo, hi = height_range(p0, p1, rh)
        if s.hmax < lo or s.hmin > hi:
            return None
        return capsule(self.u, self.v, s.h, p0, p1, r0, r1, rh)

    def cells(self, h: np.ndarray, k: float) -> np.ndarray:
        """Irregular air-cell texture (unit variance) of cell size about ``1/k`` mm."""
        if self._cell_noise is None:
            # Its own generator, drawn lazily: the study's generator never sees these draws.
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

    def slice_context(self, k: int) -> SliceContext:
        """Heights, skull distances and the intracranial mask of slice ``k``."""
        an = self.an
        h = self.heights(k)
        hmin, hmax = float(h.min()), float(h.max())
        H = an.H
        # Skull thickness: thin temporal squama, thicker occiput low down, frontal sinus bulge.
        t = self.thick * (1 - 0.4 * self.lat2 * hwindow(h, 0.22 * H, 0.5 * H, 15))
        t = t * (1 + 0.35 * self.post * hwindow(h, -20, 0.3 * H, 20))
        sinus = None
        if an.frontal_sinus and hmax > 0.2 * H and hmin < 0.44 * H:
            sinus = self.front8 * hwindow(h, 0.26 * H, 0.38 * H, 6)
            t = t + 9 * sinus
        so = self.profile(h, an.c_top)
        si = self.profile(h, an.c_top - an.t_top)
        ss = self.profile(h, an.c_top + an.scalp)
        temporalis = self.temporalis * hwindow(h, 0.2 * H, 0.55 * H, 12)
        scalp = self.scalp + temporalis
        d_in = si * self.pert * (self.rloc - t) - self.r_mm
        return SliceContext(
            h=h,
            hmin=hmin,
            hmax=hmax,
            si=si,
            d_out=so * self.pr - self.r_mm,
            d_in=d_in,
            d_skin=ss * self.pert * (self.rloc + scalp) - self.r_mm,
            scalp=scalp,
            temporalis=temporalis,
            sinus=sinus,
            ic=(d_in > 0) & (h > self.floor),
        )


@dataclass(frozen=True)
class SliceContext:
    """What every painter of one slice needs, computed once (mm; ``(N, N)`` unless said).

    Attributes:
        h: ``(N, 1)`` height of each row above the foramen magnum; ``hmin``/``hmax`` its range.
        si: inner-table profile scale at ``h``.
        d_out, d_in, d_skin: signed depth inside the outer table, inner table and skin.
        scalp: scalp thickness (temporalis included); temporalis: the muscle's share.
        sinus: frontal sinus weight, or None when the slice misses it.
        ic: intracranial mask (inside the inner table, above the cranial floor).
    """

    h: np.ndarray
    hmin: float
    hmax: float
    si: np.ndarray
    d_out: np.ndarray
    d_in: np.ndarray
    d_skin: np.ndarray
    scalp: np.ndarray
    temporalis: np.ndarray
    sinus: np.ndarray | None
    ic: np.ndarray


def cranial_floor(an: Anatomy, un: np.ndarray, vn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height (mm) of the cranial floor and the bone thickness under it, ``(N, N)``."""
    H = an.H
    au = np.abs(un)
    # Orbital roofs, with the olfactory groove lower in the midline (gyrus rectus).
    f_ant = 0.235 * H + 0.04 * H * np.minimum(au / 0.25, 1) + 0.02 * H * un * un
    f_mid = 0.085 * H + 0.05 * H * (vn + 0.1) ** 2
    f_cen = 0.22 * H - np.clip((vn + 0.30) / 0.42, 0, 1) * 0.20 * H
    f_post = 0.02 * H + 0.16 * H * ((un / 0.75) ** 2 + ((vn - 0.45) / 0.55) ** 2)
    # The sphenoid wing curves forward laterally: the middle fossa reaches further front.
    w_ant = sigmoid((-0.2 - 0.32 * un * un - vn) / 0.04)
    w_post = sigmoid((vn - 0.12) / 0.04)
    w_cen = sigmoid((0.22 - au) / 0.04)
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
