"""Smooth analytic shapes in head coordinates (mm): the phantom's building blocks.

Every function is elementwise float32 NumPy; the exact expressions matter, because the
generated data must stay bit-identical for a seed.
"""

from __future__ import annotations

import numpy as np


def window(h: np.ndarray | float, lo: float, hi: float, soft: float) -> np.ndarray:
    """Smooth trapezoid in ``h``: 1 inside ``[lo, hi]``, 0 beyond ``soft`` mm outside."""
    h = np.asarray(h, dtype=np.float32)
    return np.clip((h - (lo - soft)) / soft, 0, 1) * np.clip(((hi + soft) - h) / soft, 0, 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def harmonics(theta: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """Sum of ``amp * cos(k * theta + phase)`` for rows ``(k, amp, phase)`` of ``coefs``."""
    out = np.zeros_like(theta)
    for k, amp, phase in coefs:
        out += np.float32(amp) * np.cos(np.float32(k) * theta + np.float32(phase))
    return out


def ellipsoid(u, v, h, centre, radii) -> np.ndarray:
    """Normalised distance (< 1 inside) to an axis-aligned ellipsoid in head coordinates."""
    cu, cv, ch = centre
    ru, rv, rh = radii
    return np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 + ((h - ch) / rh) ** 2)


def capsule(u, v, h, p0, p1, r0: float, r1: float, rh: float) -> np.ndarray:
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


def height_range(p0, p1, rh: float) -> tuple[float, float]:
    """Lowest and highest height (mm) a capsule from ``p0`` to ``p1`` reaches."""
    return min(p0[2], p1[2]) - rh, max(p0[2], p1[2]) + rh
