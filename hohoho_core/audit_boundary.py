"""Evidence aimed at run boundaries: should a labelled run end one slice earlier or later?

Readers disagree most about the first and last slice of a bleed, and such an error leaves
no pattern in the labels (a run one slice too long or too short is still a run). What can
reveal it is how the edge slice compares with its neighbours on each side:

* the model's probabilities (the sequence model's contextual ones and the per-slice
  CNN's): an edge slice that is truly negative looks like the slice outside the run;
* the slice embeddings: cosine similarity to the run's inner slices versus the outside;
* the image itself: the area of dense acute-blood voxels (60-100 HU, `docs/domain.md`) inside the
  skull, on the edge slice and on both sides.

For every run edge two hypotheses are scored, each as the one cell it would change:
``shorter`` (the edge slice should be 0: the run ends one slice earlier, or starts one
later) and ``longer`` (the outside neighbour should be 1). Each gets oriented evidence
terms: positive when the slice to flip resembles the side it would join more than the side
it is on now. NumPy/pandas in, pandas out; arrays ``(N, 6)`` in ``labels.CLASSES`` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from hohoho_core.labels import CLASSES

__all__ = [
    "BLOOD_HU",
    "ALL_TERMS",
    "EVIDENCE_TERMS",
    "RELATIVE_TERMS",
    "SENSITIVE_BLOOD_HU",
    "SliceEvidence",
    "blood_area",
    "blood_map",
    "brain_area",
    "boundary_candidates",
    "cell_candidates",
]

#: Dense acute blood (HU). `docs/domain.md` gives 50-100 (clot 60-80); below 60, grey matter
#: (35-45 HU) plus image noise leaks in even after smoothing, so the count starts at 60.
BLOOD_HU: tuple[float, float] = (60.0, 100.0)
#: The whole acute range of `docs/domain.md` (50-100 HU), counted after less smoothing
#: (1 mm): thin or faint blood (a sulcus of SAH, a thin SDH, blood mixed with CSF) that the
#: strict range misses. Grey matter and the falx leak in, but equally on both sides of a
#: run edge, so only relative changes across the edge are used.
SENSITIVE_BLOOD_HU: tuple[float, float] = (50.0, 100.0)
#: Oriented evidence terms of a candidate (columns of `boundary_candidates`).
EVIDENCE_TERMS: tuple[str, ...] = ("d_prob", "d_cnn", "d_emb", "d_blood", "s_blood", "d_focal")
#: The same comparisons made relative (`boundary_candidates`): each difference divided by
#: the step between the two reference slices, so a term reads "how far the slice to flip
#: sits towards the side it would join" (-1 .. 1) whatever the scale of the evidence on a
#: given scanner or generator (issue 14: the foreign generator's scales differ from ours).
RELATIVE_TERMS: tuple[str, ...] = ("r_prob", "r_cnn", "r_emb", "r_blood", "r_focal",
                                   "r_focal_lo", "r_frac")
ALL_TERMS: tuple[str, ...] = (*EVIDENCE_TERMS, *RELATIVE_TERMS)
# Scales that map each term to about +-1 in the hand-made boundary score: a logit step of
# 2 (0.5 -> 0.88), a cosine-similarity difference of 0.05, a factor e in blood area.
_SCALES = {"d_prob": 2.0, "d_cnn": 2.0, "d_emb": 0.05, "d_blood": 1.0, "s_blood": 1.0,
           "d_focal": 1.0}
# A relative term needs a step between the references: below these, the two sides look
# alike and the ratio is noise (NaN: no evidence). Logit 0.5; cosine 0.01; log-area 0.3.
_MIN_STEP = {"prob": 0.5, "emb": 0.01, "area": 0.3}
# Blood fractions are per mille of the area inside the skull; the floor keeps a slice at
# the skull base (little brain) from turning a few voxels into a large fraction.
_MIN_BRAIN_MM2 = 2000.0
_BONE_HU = 250.0
_WATER_HU = 10.0
_PROB_CLIP = 1e-4
_N_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class SliceEvidence:
    """Per-slice evidence besides the final probabilities, rows aligned with the audit table.

    Attributes:
        cnn_prob: ``(N, 6)`` stage-1 (per-slice CNN) probabilities, or None.
        embeddings: ``(N, D)`` slice embeddings (the CNN's pooled features), or None.
        blood: ``(N,)`` acute-blood area inside the skull per slice in mm^2
            (`blood_area`), or None.
        blood_map: ``(N, G, G)`` where that blood lies (`blood_map`), or None; lets a
            boundary candidate look for blood where the run's bleed is, not anywhere.
        blood_map_lo: ``(N, G, G)`` `blood_map` with ``SENSITIVE_BLOOD_HU`` and 1 mm
            smoothing, or None.
        brain: ``(N,)`` area inside the skull per slice in mm^2 (`brain_area`), or None;
            blood areas are divided by it, so a head's size or the slice level does not
            pass for more or less blood.
    """

    cnn_prob: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    blood: np.ndarray | None = None
    blood_map: np.ndarray | None = None
    blood_map_lo: np.ndarray | None = None
    brain: np.ndarray | None = None

    def check(self, n: int) -> None:
        """Raise ValueError unless every array given has ``n`` finite rows."""
        for name, arr, ndim in (("cnn_prob", self.cnn_prob, 2),
                                ("embeddings", self.embeddings, 2), ("blood", self.blood, 1),
                                ("blood_map", self.blood_map, 3),
                                ("blood_map_lo", self.blood_map_lo, 3),
                                ("brain", self.brain, 1)):
            if arr is None:
                continue
            a = np.asarray(arr)
            if a.ndim != ndim or a.shape[0] != n:
                raise ValueError(f"evidence.{name} must have {n} rows and {ndim} dims, "
                                 f"got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"evidence.{name} has NaN or infinite values")
        if self.cnn_prob is not None and np.asarray(self.cnn_prob).shape[1] != _N_CLASSES:
            raise ValueError(f"evidence.cnn_prob must have {_N_CLASSES} columns")


def blood_map(
    hu: np.ndarray,
    pixel_spacing: float = 1.0,
    *,
    grid: int = 32,
    hu_range: tuple[float, float] = BLOOD_HU,
    smooth_mm: float = 2.0,
) -> np.ndarray:
    """Where the acute-blood voxels inside the skull are, on a coarse in-plane grid.

    Args:
        hu: float ``[S, H, W]`` HU volume.
        pixel_spacing: in-plane pixel size (mm).
        grid: cells per side of the map (each about ``H / grid`` pixels square).
        hu_range: the HU range counted as blood (inclusive).
        smooth_mm: Gaussian smoothing (sigma, mm) before thresholding, so that image noise
            (3-10 HU) does not push grey matter (35-45 HU) into the blood range.

    Returns:
        ``(S, grid, grid)`` float32 blood area (mm^2) per cell. Inside the skull means:
        enclosed by bone (> 250 HU) and more than about 1.5 mm from it, so the
        partial-volume rim of the inner table does not count. A slice whose bone ring is
        open (skull base) has little or no area.
    """
    vol = np.asarray(hu, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"hu must be [S, H, W], got {vol.shape}")
    if not pixel_spacing > 0:
        raise ValueError(f"pixel_spacing must be > 0, got {pixel_spacing}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    sigma = smooth_mm / pixel_spacing
    margin = max(1, round(1.5 / pixel_spacing))
    lo, hi = hu_range
    s, h, w = vol.shape
    bh, bw = -(-h // grid), -(-w // grid)  # block size, rounded up; the image is padded
    out = np.zeros((s, grid, grid), dtype=np.float32)
    for k, sl in enumerate(vol):
        inside = _inside_skull(sl, margin)
        if not inside.any():
            continue
        # Bone and air become water before smoothing, so the blur does not spread the
        # skull into a band of blood-range values along the inner table.
        soft = np.where((sl > _BONE_HU) | (sl < -200.0), np.float32(_WATER_HU), sl)
        sm = ndimage.gaussian_filter(soft, sigma) if sigma > 0.1 else soft
        mask = np.zeros((grid * bh, grid * bw), dtype=np.float32)
        mask[:h, :w] = inside & (sm >= lo) & (sm <= hi)
        out[k] = mask.reshape(grid, bh, grid, bw).sum(axis=(1, 3)) * pixel_spacing**2
    return out


def _inside_skull(sl: np.ndarray, margin: int) -> np.ndarray:
    """Pixels enclosed by bone (> 250 HU) and more than ``margin`` pixels from it."""
    bone = ndimage.binary_dilation(sl > _BONE_HU, iterations=margin)
    return ndimage.binary_fill_holes(bone) & ~bone


def brain_area(hu: np.ndarray, pixel_spacing: float = 1.0) -> np.ndarray:
    """Area inside the skull on each slice (the region `blood_map` counts in): ``(S,)``
    float64 mm^2; 0 where the bone ring is open (skull base, vertex)."""
    vol = np.asarray(hu, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"hu must be [S, H, W], got {vol.shape}")
    if not pixel_spacing > 0:
        raise ValueError(f"pixel_spacing must be > 0, got {pixel_spacing}")
    margin = max(1, round(1.5 / pixel_spacing))
    return np.array([float(_inside_skull(sl, margin).sum()) for sl in vol]) * pixel_spacing**2


def blood_area(
    hu: np.ndarray,
    pixel_spacing: float = 1.0,
    *,
    hu_range: tuple[float, float] = BLOOD_HU,
    smooth_mm: float = 2.0,
) -> np.ndarray:
    """Area of acute-blood voxels inside the skull on each slice: ``(S,)`` float64 mm^2.

    `blood_map` summed over the slice; the same arguments.
    """
    return blood_map(hu, pixel_spacing, grid=1, hu_range=hu_range,
                     smooth_mm=smooth_mm).reshape(-1).astype(np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _PROB_CLIP, 1.0 - _PROB_CLIP)
    return np.log(p / (1.0 - p))


def _runs(col: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` positions of the runs of ones in a 0/1 vector."""
    padded = np.concatenate([[0], col.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def boundary_candidates(
    labels: np.ndarray,
    series: np.ndarray,
    slice_index: np.ndarray,
    prob: np.ndarray,
    evidence: SliceEvidence | None = None,
) -> pd.DataFrame:
    """Score "this run should end one slice earlier / later" at every run edge.

    Args:
        labels: ``(N, 6)`` 0/1 labels, columns ``CLASSES``.
        series: ``(N,)`` series key; rows with one key form one sequence.
        slice_index: ``(N,)`` position in the sorted series (only the order matters).
        prob: ``(N, 6)`` final (sequence-model) probabilities.
        evidence: CNN probabilities, embeddings and blood areas, each optional.

    Returns:
        One row per (run edge, hypothesis) with columns ``row`` (the cell to flip: the
        edge slice for ``shorter``, the outside neighbour for ``longer``), ``class``,
        ``class_index``, ``kind`` (``shorter`` | ``longer``), ``edge`` (``start`` |
        ``end``: the inferior or superior end of the run), ``run_length``,
        ``proposed_label`` (0 for ``shorter``, 1 for ``longer``), the oriented evidence
        terms ``EVIDENCE_TERMS`` (NaN where the evidence or a neighbour is missing):

        * ``d_prob`` / ``d_cnn``: ``|z_f - z_cur| - |z_f - z_join|`` on the logit of the
          final / CNN probability, where ``f`` is the slice to flip, ``cur`` its
          neighbour on the side it belongs to now and ``join`` its neighbour on the side
          it would join (``shorter``: cur = the run's next inner slice, join = the outside
          slice; ``longer``: cur = the next outside slice, join = the edge slice; where
          that outside slice is missing, the negative slice beyond the run's other end);
        * ``d_emb``: cosine similarity of ``f``'s embedding to the side it would join
          minus to its current side (the run side is the mean of the run's slices other
          than ``f``);
        * ``d_blood``: as ``d_prob`` on ``log1p(blood area)``; ``s_blood``: the signed
          blood change that supports the flip (``shorter``: ``b_cur - b_f``; ``longer``:
          ``b_f - b_cur``);
        * ``d_focal``: as ``d_blood``, counting only blood inside the footprint of the run
          side's blood (``evidence.blood_map`` of the run-side slice, grown by one cell):
          a bleed is a 3D blob, so a slice that continues it has blood at the same place;

        the relative terms ``RELATIVE_TERMS``, each ``(|f - cur| - |f - join|) / |cur -
        join|`` clipped to [-1, 1] (+1: ``f`` equals the side it would join; -1: equals
        its current side; NaN when the two references differ by less than a minimum
        step): ``r_prob``, ``r_cnn`` (logits), ``r_emb`` (``d_emb`` over ``1 - cos`` of
        the two sides), ``r_blood`` (``log1p`` area), ``r_focal`` / ``r_focal_lo``
        (``log1p`` area inside the run's footprint, on ``blood_map`` / ``blood_map_lo``;
        the ``_lo`` footprint is where the run side has more sensitive-range blood than
        the outside side), ``r_frac`` (``log1p`` of blood per mille of the brain area);
        and ``boundary_score`` in (0, 1), a hand-set summary (the mean of
        ``tanh(term / scale)`` over the terms present, mapped to (0, 1); 0.5 = no
        evidence either way), and ``detail`` (a phrase for the reason text).
        Runs of one slice get only ``longer`` candidates (a lone positive is the
        isolated-positive rule's case). Sorted by row, class, kind.
    """
    lab = np.asarray(labels)
    n = lab.shape[0]
    p = np.asarray(prob, dtype=np.float64)
    ev = evidence or SliceEvidence()
    ev.check(n)
    z = _logit(p)
    zc = _logit(ev.cnn_prob) if ev.cnn_prob is not None else None
    emb = _unit(np.asarray(ev.embeddings, dtype=np.float64)) if ev.embeddings is not None else None
    blood = np.log1p(np.asarray(ev.blood, dtype=np.float64)) if ev.blood is not None else None
    bmap = np.asarray(ev.blood_map, dtype=np.float32) if ev.blood_map is not None else None
    bmap_lo = (np.asarray(ev.blood_map_lo, dtype=np.float32) if ev.blood_map_lo is not None
               else None)
    frac = None
    if ev.blood is not None and ev.brain is not None:
        area = np.maximum(np.asarray(ev.brain, dtype=np.float64), _MIN_BRAIN_MM2)
        frac = np.log1p(1000.0 * np.asarray(ev.blood, dtype=np.float64) / area)
    ctx = {"z": z, "zc": zc, "emb": emb, "blood": blood, "bmap": bmap, "bmap_lo": bmap_lo,
           "frac": frac}

    codes, _ = pd.factorize(pd.Series(np.asarray(series), dtype=object))
    order = np.lexsort((np.asarray(slice_index), codes))
    records: list[tuple] = []
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, bounds):
        m = len(rows)
        if m < 2:
            continue
        for j in range(_N_CLASSES):
            col = lab[rows, j]
            for first, last in _runs(col):
                length = last - first + 1
                for edge, e, step in (("start", first, -1), ("end", last, 1)):
                    o = e + step  # the outside neighbour
                    inner = e - step if length >= 2 else None
                    # A negative slice beyond the run's other end: the reference for "outside"
                    # where this side has none (series end, or another run one slice away).
                    other = (last + 1) if step == -1 else (first - 1)
                    other = other if 0 <= other < m and col[other] == 0 else None
                    if length >= 2:
                        outside = o if 0 <= o < m else other
                        records.append(_candidate(rows, j, "shorter", edge, length, f=e,
                                                  cur=inner, join=outside, run=(first, last),
                                                  **ctx))
                    if 0 <= o < m and col[o] == 0:
                        o2 = o + step
                        cur = o2 if 0 <= o2 < m and col[o2] == 0 else other
                        records.append(_candidate(rows, j, "longer", edge, length, f=o,
                                                  cur=cur, join=e, run=(first, last),
                                                  **ctx))
    columns = ["row", "class", "class_index", "kind", "edge", "run_length", "proposed_label",
               *ALL_TERMS, "boundary_score", "detail"]
    if not records:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        for c in ("row", "class_index", "run_length", "proposed_label"):
            frame[c] = frame[c].astype(np.int64)
        for c in (*ALL_TERMS, "boundary_score"):
            frame[c] = frame[c].astype(np.float64)
        return frame
    out = pd.DataFrame.from_records(
        records, columns=["row", "class_index", "kind", "edge", "run_length", *ALL_TERMS]
    )
    out["class"] = np.asarray(CLASSES, dtype=object)[out["class_index"].to_numpy()]
    out["proposed_label"] = np.where(out["kind"] == "shorter", 0, 1).astype(np.int64)
    terms = np.column_stack([np.tanh(out[t].to_numpy() / _SCALES[t]) for t in EVIDENCE_TERMS])
    present = np.isfinite(terms)
    mean = np.where(present, terms, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    out["boundary_score"] = 0.5 + 0.5 * mean
    out["detail"] = [_detail(k, e, ln) for k, e, ln in
                     zip(out["kind"], out["edge"], out["run_length"], strict=True)]
    out = out.sort_values(["row", "class_index", "kind"], kind="stable")
    return out[columns].reset_index(drop=True)


def cell_candidates(
    labels: np.ndarray,
    series: np.ndarray,
    slice_index: np.ndarray,
    prob: np.ndarray,
    evidence: SliceEvidence | None = None,
) -> dict[str, Any]:
    """`boundary_candidates` spread over the ``N * 6`` cells (flat index ``row * 6 + class``).

    A cell next to two runs (a one-slice gap between them) keeps its strongest candidate.

    Returns:
        ``candidate`` (``run_shorter`` | ``run_longer`` | ""), ``edge`` (``start`` |
        ``end`` | ""), ``boundary_score`` (0 off a candidate), ``run_length`` (0 off a
        candidate), ``detail`` (a phrase, "" off a candidate), each ``(N * 6,)``, and
        ``terms``: ``{name: (N * 6,)}`` of `ALL_TERMS` (NaN off a candidate).
    """
    n_cells = np.asarray(labels).shape[0] * _N_CLASSES
    cand = boundary_candidates(labels, series, slice_index, prob, evidence)
    cand = cand.sort_values("boundary_score", ascending=False, kind="stable")
    flat = cand["row"].to_numpy(dtype=np.int64) * _N_CLASSES + cand["class_index"].to_numpy(
        dtype=np.int64)
    keep = ~pd.Series(flat).duplicated().to_numpy()
    cand, flat = cand.loc[keep], flat[keep]
    out: dict[str, Any] = {
        "candidate": np.full(n_cells, "", dtype=object),
        "edge": np.full(n_cells, "", dtype=object),
        "boundary_score": np.zeros(n_cells),
        "run_length": np.zeros(n_cells, dtype=np.int64),
        "detail": np.full(n_cells, "", dtype=object),
        "terms": {t: np.full(n_cells, np.nan) for t in ALL_TERMS},
    }
    out["candidate"][flat] = np.where(cand["kind"] == "shorter", "run_shorter", "run_longer")
    out["edge"][flat] = cand["edge"].to_numpy()
    out["boundary_score"][flat] = cand["boundary_score"].to_numpy()
    out["run_length"][flat] = cand["run_length"].to_numpy()
    out["detail"][flat] = [f"{d} (boundary evidence {b:.2f})" for d, b in
                           zip(cand["detail"], cand["boundary_score"], strict=True)]
    for t in ALL_TERMS:
        out["terms"][t][flat] = cand[t].to_numpy()
    return out


def _relative(a: float, c: float, w: float, min_step: float) -> float:
    """``(|a - c| - |a - w|) / |c - w|`` in [-1, 1]: +1 where ``a`` equals ``w`` (the side
    it would join), -1 where it equals ``c`` (its side now); NaN below ``min_step``."""
    step = abs(c - w)
    if not np.isfinite(step) or step < min_step:
        return float("nan")
    return float(np.clip((abs(a - c) - abs(a - w)) / step, -1.0, 1.0))


def _candidate(rows, j, kind, edge, length, *, f, cur, join, run, z, zc, emb, blood,
               bmap, bmap_lo=None, frac=None) -> tuple:
    """One candidate's oriented evidence terms (see `boundary_candidates`)."""
    rf = rows[f]
    rc = rows[cur] if cur is not None else None
    rj = rows[join] if join is not None else None
    nan = float("nan")

    def values(v: np.ndarray) -> tuple[float, float, float]:
        return tuple(float(v[r, j] if v.ndim == 2 else v[r]) for r in (rf, rc, rj))

    def diff(v: np.ndarray | None) -> float:
        if v is None or rc is None or rj is None:
            return nan
        a, c, w = values(v)
        return float(abs(a - c) - abs(a - w))

    def rel(v: np.ndarray | None, min_step: float) -> float:
        if v is None or rc is None or rj is None:
            return nan
        return _relative(*values(v), min_step)

    d_emb = r_emb = nan
    if emb is not None:
        first, last = run
        run_rows = [rows[i] for i in range(first, last + 1) if i != f]
        if run_rows:
            run_side = _unit(emb[run_rows].mean(axis=0))
            out_side = rc if kind == "longer" else rj
            if out_side is not None:
                sim_run = float(emb[rf] @ run_side)
                sim_out = float(emb[rf] @ emb[out_side])
                d_emb = sim_out - sim_run if kind == "shorter" else sim_run - sim_out
                apart = 1.0 - float(run_side @ emb[out_side])
                if apart >= _MIN_STEP["emb"]:
                    r_emb = float(np.clip(d_emb / apart, -1.0, 1.0))
    s_blood = nan
    if blood is not None and rc is not None:
        s_blood = float(blood[rc] - blood[rf]) if kind == "shorter" else float(blood[rf] - blood[rc])
    d_focal = r_focal = r_focal_lo = nan
    if rc is not None and rj is not None:
        # run_ref / out_ref: the neighbours on the run side and on the outside.
        run_ref, out_ref = (rj, rc) if kind == "longer" else (rc, rj)
        if bmap is not None:
            # The bleed's footprint: blood cells of the run-side neighbour, grown by one
            # cell (a bleed shifts a little from slice to slice). Blood elsewhere (sinuses,
            # other bleeds) does not count.
            foot = ndimage.binary_dilation(bmap[run_ref] > 0)
            a, c, w = (float(np.log1p(bmap[r][foot].sum())) for r in (rf, rc, rj))
            d_focal = abs(a - c) - abs(a - w)
            r_focal = _relative(a, c, w, _MIN_STEP["area"])
        if bmap_lo is not None:
            # The sensitive map counts some normal tissue everywhere; the footprint is
            # where the run side holds clearly more of it than the outside (> 1 mm^2).
            foot = ndimage.binary_dilation(bmap_lo[run_ref] - bmap_lo[out_ref] > 1.0)
            a, c, w = (float(np.log1p(bmap_lo[r][foot].sum())) for r in (rf, rc, rj))
            r_focal_lo = _relative(a, c, w, _MIN_STEP["area"])
    return (int(rf), j, kind, edge, int(length), diff(z), diff(zc), d_emb, diff(blood), s_blood,
            d_focal, rel(z, _MIN_STEP["prob"]), rel(zc, _MIN_STEP["prob"]), r_emb,
            rel(blood, _MIN_STEP["area"]), r_focal, r_focal_lo, rel(frac, _MIN_STEP["area"]))


def _detail(kind: str, edge: str, length: int) -> str:
    if kind == "shorter":
        where = "end one slice earlier" if edge == "end" else "start one slice later"
        return f"edge slice of a {length}-slice run: the run may {where}"
    where = "end one slice later" if edge == "end" else "start one slice earlier"
    return f"next to a {length}-slice run: the run may {where}"
