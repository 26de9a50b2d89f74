"""2. Preprocessing rates: slices per second for read, HU, crop + resize, window and stack, and
files per second per core for the RSNA header scan.
"""

from __future__ import annotations

import numpy as np

from bench.common import Section, Timing, ratio, time_call
from bench.context import BenchContext
from hohoho_core.dicom import load_study
from hohoho_core.preprocess import (
    WINDOWS,
    crop_and_resize_hu,
    make_input,
    stack_neighbours,
    window_hu,
)
from hohoho_core.rsna import build_index

__all__ = ["run"]


def _stored_and_rescale(hu: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored 16-bit values of a HU volume with the usual RSNA rescale (slope 1, -1024)."""
    intercept = -1024.0
    return np.round(hu - intercept).astype(np.int16), 1.0, intercept


def _to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU = stored * RescaleSlope + RescaleIntercept, float32 (the reader's arithmetic)."""
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def run(ctx: BenchContext) -> Section:
    sec = Section("preprocess", "2. Preprocessing")
    s = ctx.sizes
    folder = ctx.study_dir
    cfg = ctx.model.preprocess
    study = load_study(folder)
    n, h, w = study.hu.shape
    sec.params.update(study=f"{n} slices of {h}x{w} px", preprocess=cfg.to_dict(),
                      threads=ctx.threads)
    r = s.repeats

    def rate(what: str, t: Timing, detail: str) -> float:
        v = ratio(n, t.median)
        sec.add(what, v, "slices/s", f"{detail}; {1e3 * t.median / n:.2f} ms/slice", t)
        return v

    t = time_call(lambda: load_study(folder), repeats=r, warmup=1)
    rate("read (load_study: headers, pixels, HU, sort)", t,
         f"median of {t.n}, {h}x{w} px")
    stored, slope, intercept = _stored_and_rescale(study.hu)
    t = time_call(lambda: _to_hu(stored, slope, intercept), repeats=r, warmup=1)
    rate("HU (stored int16 * slope + intercept -> float32)", t, f"{h}x{w} px")
    t = time_call(lambda: crop_and_resize_hu(study.hu, cfg), repeats=r, warmup=1)
    rate("crop + resize", t, f"head box, antialiased bilinear to {cfg.size} px")
    small = crop_and_resize_hu(study.hu, cfg)
    centre, width = WINDOWS[cfg.window]
    t = time_call(lambda: window_hu(small, centre, width), repeats=r, warmup=1)
    rate("window", t, f"{cfg.window} window at {cfg.size} px")
    win = window_hu(small, centre, width)
    t = time_call(lambda: stack_neighbours(win), repeats=r, warmup=1)
    rate("stack (i-1, i, i+1)", t, f"at {cfg.size} px")
    t = time_call(lambda: make_input(study.hu, cfg), repeats=r, warmup=1)
    rate("make_input (all of the above after HU)", t, f"{cfg.mode} mode")

    root = ctx.scan_root
    n_files = len(list((root / "stage_2_train").glob("*.dcm")))
    t = time_call(lambda: build_index(root, workers=1, progress=False, use_cache=False),
                  repeats=max(1, r // 2), warmup=1)
    per_core = ratio(n_files, t.median)
    sec.add("RSNA header scan", per_core, "files/s per core",
            f"build_index(workers=1, no cache) over {n_files} files incl. labels; "
            f"median of {t.n}", t)
    sec.notes.append(
        "The header scan is timed with one worker: build_index reads fewer than 2,000 files "
        "in-process and hands larger folders to a process pool in chunks of 2,000, so on the "
        "RSNA folder (752,000 files) the total rate is about this figure times the workers."
    )
    return sec
