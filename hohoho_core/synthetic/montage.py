"""A PNG grid of phantom slices in the brain window: one tile per subtype, for the docs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import binary_dilation, binary_opening, gaussian_filter

from hohoho_core.labels import ANY_INDEX, SHORT_NAMES, SUBTYPES
from hohoho_core.synthetic.labelnoise import positive_runs
from hohoho_core.synthetic.plan import SUBTYPE_COLUMN, StudyPlan
from hohoho_core.synthetic.randomise import NEUTRAL_VARIATION, Variation
from hohoho_core.synthetic.study import SyntheticStudy, make_study, unwrap_quirk


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
    return int(np.argmax(study.areas[:, SUBTYPE_COLUMN[what]]))


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
            for a, b in positive_runs(grp[name].to_numpy()):
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
    have: dict[str, np.ndarray] = {}
    if isinstance(source, (str, Path)):
        have = _tiles_from_dir(Path(source))
    elif source is not None:
        for st in source:
            for name in SUBTYPES:
                if st.labels[:, SUBTYPE_COLUMN[name]].any() and name not in have:
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
    return _save_grid(out_png, images, tile, columns)


def _save_grid(
    out_png: Path, images: Sequence[tuple[str, np.ndarray]], tile: int, columns: int
) -> Path:
    """Titled tiles of HU images in the brain window, ``columns`` per row, as one PNG."""
    from PIL import Image, ImageDraw, ImageFont

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


def _extremes() -> list[tuple[str, StudyPlan, Variation, float]]:
    """(title, plan, variation, relative slice height) for each tile of the extremes."""
    n = NEUTRAL_VARIATION
    sdh, iph = StudyPlan(subtypes=("subdural",)), StudyPlan(subtypes=("intraparenchymal",))
    return [
        ("neutral", StudyPlan(), n, 0.6),
        ("child head, rotated 30 deg", StudyPlan(), replace(n, head_scale=0.84, yaw_deg=30.0), 0.6),
        ("large head, off centre", StudyPlan(), replace(n, head_scale=1.12, shift_mm=(15.0, -15.0)), 0.6),
        ("grey/white 30/26 HU", StudyPlan(), replace(n, gm=30.0, wm=26.0), 0.6),
        ("low dose, soft kernel", StudyPlan(), replace(n, noise_hu=14.0, noise_corr_mm=1.4), 0.6),
        ("bone kernel", StudyPlan(), replace(n, sharpen=1.5, blur_mm=0.2, noise_hu=8.0,
                                              noise_corr_mm=0.2), 0.6),
        ("beam hardening, streaks", StudyPlan(), replace(n, fossa_band_hu=-30.0, streaks=3,
                                                          streak_hu=-25.0), 0.2),
        ("metal", StudyPlan(), replace(n, metal=(10.0, -20.0, 75.0, 350.0)), 0.55),
        ("motion, thick slices", StudyPlan(), replace(n, motion=(1.0, 3.5), partial_volume=0.3), 0.6),
        ("dense sinus, calcifications", StudyPlan(), replace(
            n, sinus_hu=78.0, falx_hu=250.0, basal_calc_hu=200.0, rim_hu=45.0), 0.5),
        ("chronic SDH (positive)", sdh, replace(n, bleed_density="chronic"), -1.0),
        ("mixed-density IPH (positive)", iph, replace(n, bleed_density="mixed"), -1.0),
    ]


def save_randomisation_montage(
    out_png: Path, *, seed: int = 0, size: int = 256, tile: int = 256, columns: int = 4
) -> Path:
    """PNG of domain-randomisation extremes (`hohoho_core.synthetic.randomise`), one per tile.

    A tile whose height is negative shows the slice with the most blood of its planned bleed.
    """
    images = []
    for i, (title, plan, var, rel) in enumerate(_extremes()):
        st = make_study(seed, 2000 + i, size=size, plan=plan, variation=var)
        if rel < 0:
            k = int(np.argmax(st.areas[:, SUBTYPE_COLUMN[plan.subtypes[0]]]))
        else:
            k = int(np.argmin(np.abs(st.levels / st.head_height - rel)))
        images.append((title, st.hu[k]))
    return _save_grid(out_png, images, tile, columns)
