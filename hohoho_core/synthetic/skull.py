"""Painting what lies outside the brain: headrest, scalp, vault, cranial floor, skull base."""

from __future__ import annotations

import numpy as np

from hohoho_core.synthetic.head import HeadGrid, SliceContext
from hohoho_core.synthetic.shapes import ellipsoid


def paint_scalp_and_vault(g: HeadGrid, s: SliceContext, hu: np.ndarray) -> None:
    """Headrest, skin, fat, temporalis, the skull vault and the frontal sinus, into ``hu``."""
    an = g.an
    h, H = s.h, an.H
    hu[g.foam] = an.foam
    hu[g.shell_m] = an.shell
    # Scalp: skin, subcutaneous fat, temporalis muscle; face and neck below the vault.
    skin = s.d_skin > 0
    hu[skin] = an.soft
    outside = skin & (s.d_out < 0)
    fat_top = 1.2 + 0.35 * s.scalp
    hu[outside & (s.d_skin > 1.2) & (s.d_skin < fat_top)] = an.fat
    hu[outside & (s.d_skin >= fat_top) & (s.temporalis > 1)] = an.soft + 8
    vault = (s.d_out > 0) & (h > g.shell_floor)
    bone = vault & (s.d_in <= 0)
    if s.hmin < 0.25 * H:
        hu[skin & ~bone & (s.d_out > 0) & g.fat_planes & (h < 0.25 * H)] = an.fat
    hu[bone] = an.diploe + g.trabecular[bone]
    hu[bone & ((s.d_out < 1.8) | (s.d_in > -1.5))] = an.table
    if s.sinus is not None:  # frontal sinus: air inside the thickened frontal bone
        hu[bone & (s.sinus > 0.35) & (s.d_out > 2.2) & (s.d_in < -2.0)] = -950


def paint_skull_base(g: HeadGrid, s: SliceContext, hu: np.ndarray) -> None:
    """Bone under the cranial floor, then the sinuses, orbits, ears, pharynx and spine."""
    an = g.an
    if s.hmin >= 0.4 * an.H:
        return
    h, floor = s.h, g.floor
    base = (s.d_out > 0) & ~s.ic & (h <= floor) & (floor - h < g.tb)
    hu[base] = an.base_bone + g.base_tex[base]
    _paint_cavities(g, s, hu)


def _paint_cavities(g: HeadGrid, s: SliceContext, hu: np.ndarray) -> None:
    """Sinuses, orbits, mastoids, nasal cavity, pharynx and upper cervical spine."""
    an = g.an
    H, a, b = an.H, an.a, an.b
    u, v, h, d_skin = g.u, g.v, s.h, s.d_skin
    extra = (d_skin > 0) & ~s.ic & (h < g.floor)
    d = g.ell(s, (0, -0.30 * b, 0.15 * H), (13, 11, 10))
    if d is not None:  # sphenoid sinus
        hu[extra & (d < 1)] = -950
    d = g.ell(s, (0, -0.62 * b, 0.17 * H), (9, 16, 12))
    if d is not None:  # ethmoid air cells: honeycomb of air and thin bone
        e = extra & (d < 1)
        cells = g.cells(h, 1.0) > -0.25
        hu[e] = np.where(cells[e], -900, 750)
    d = g.ell(s, (0, -0.65 * b, 0.0), (9, 24, 24))
    if d is not None:  # nasal cavity with a bony septum
        nas = extra & (d < 1)
        hu[nas] = np.where(np.abs(u[nas]) < 0.8, 750, -950)
    for sg in (-1.0, 1.0):
        d = g.ell(s, (sg * 0.30 * a, -0.55 * b, 0.0), (15.5, 18, 18))
        if d is not None:  # maxillary sinus with a thin wall
            hu[extra & (d < 1)] = 700
            hu[extra & (d < 0.9)] = -960
        apex, front = (sg * 0.13 * a, -0.40 * b, 0.17 * H), (sg * 0.35 * a, -0.74 * b, 0.16 * H)
        d = g.cap(s, apex, front, 3.0, 17.5, 10.0)
        if d is not None:  # orbit: bony walls, fat cone, globe with a denser sclera
            hu[extra & (d < 1)] = 800
            hu[extra & (d < 0.86)] = an.fat
            globe = ellipsoid(u, v, h, (front[0], front[1] - 4, front[2]), (11.5, 11.5, 11.5))
            hu[(globe < 1) & (d_skin > 0)] = 45
            hu[(globe < 0.88) & (d_skin > 0)] = 12
        d = g.ell(s, (sg * 0.74 * a, 0.20 * b, 0.08 * H), (12, 15, 16))
        if d is not None:  # mastoid air cells
            mast = extra & (d < 1)
            hu[mast] = np.where((g.cells(h, 1.3) > 0.15)[mast], -850, 900)
        ear = ((sg * 0.70 * a, 0.02 * b, 0.1 * H), (sg * 1.05 * a, 0.0, 0.1 * H))
        d = g.cap(s, *ear, 3.5, 4.0, 4.0)
        if d is not None:  # external ear canal
            hu[(d < 1) & (d_skin > 0)] = -980
    if s.hmin < 0:  # pharynx and upper cervical spine below the foramen magnum
        d = g.ell(s, (0, -0.22 * b, -0.15 * H), (12, 8, 25))
        if d is not None:
            hu[(d_skin > 0) & (d < 1)] = -980
        below = (d_skin > 0) & (h < -3)
        ring = ((u / 24) ** 2 + ((v - 0.14 * b) / 22) ** 2) < 1
        canal = ((u / 12) ** 2 + ((v - 0.22 * b) / 13) ** 2) < 1
        hu[below & ring] = an.base_bone
        hu[below & canal] = an.csf
        hu[below & ((u / 5.5) ** 2 + ((v - 0.22 * b) / 5.0) ** 2 < 1)] = an.wm + 5
        hu[below & (((u / 6) ** 2 + ((v + 0.02 * b) / 6) ** 2) < 1)] = an.base_bone
