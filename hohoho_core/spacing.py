"""Is a study's slice spacing one the model was trained on?

The sequence model reads a study's slices as steps of the spacing it was trained on, and the
CNN learned the partial volume of slices that thick. A thin-slice series (0.6-1.25 mm, what
most modern scanners reconstruct first) puts 4-8 times as many slices across the same bleed;
a thick one skips what lies between. By default nothing resamples along z: the note says
so, so a reader can pick a thicker series of the study (`predict --series thickest`) or a
reformat; `Predictor.thin_slabs` (`predict --thin-slabs MODE`) reads a thin series as
slabs instead (``blocks``: `slab_groups`, `average_slabs`, each slice given its slab's
calls) or as a thick reformat centred on each slice with the sequence model over phases
(``sliding``: `sliding_reformat`, `phase_stride`); neither beat slice by slice on
slice-level calls on synthetic exams (docs/ablation.md), so both are options.

A weights folder states the range in ``config.json``, ``data.slice_spacing_mm`` (``[low,
high]`` in mm); a folder without it gets no note.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hohoho_core.study import Study

#: How far outside the trained range a spacing may fall (times or divided by this) before
#: a note: 2.5 mm against 3-6 mm is a neighbour of what was seen, 1.25 mm is not.
TOLERANCE = 1.5

#: The key in a weights config's ``data`` object.
CONFIG_KEY = "slice_spacing_mm"

#: How a thin series may be read (`predict.Predictor.thin_slabs`): "off", slice by slice;
#: "blocks", slabs (`slab_groups`), each slice given its slab's calls; "sliding", a thick
#: reformat centred on every slice (`sliding_reformat`), the sequence model over phases.
THIN_MODES = ("off", "blocks", "sliding")


def trained_spacing(data: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(low, high)`` mm from a config's ``data`` object, or None where it states none.

    Raises:
        ValueError: the key is there but not two finite numbers ``0 < low <= high`` (a
            typo must not switch the check off without a word; `weights.ModelConfig`
            refuses such a folder when it is loaded).
    """
    value = data.get(CONFIG_KEY)
    if value is None:
        return None
    bad = ValueError(f"data.{CONFIG_KEY} must be [low, high] in mm with 0 < low <= high, "
                     f"got {value!r}")
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise bad
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise bad
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise bad
    return low, high


def measured_spacing(study: Study) -> float | None:
    """The study's slice spacing when the slices' positions measured it, else None.

    A single slice has no spacing (the loader falls back to its SliceThickness), and a
    series sorted by InstanceNumber or file name (no usable ImagePositionPatient) has the
    spacing of a tag or of a 1 mm guess: neither may call a series thin.
    """
    if len(study.slices) < 2 or study.report.sort_method != "normal":
        return None
    return float(study.slice_spacing)


def spacing_note(spacing: float, trained: tuple[float, float] | None,
                 tolerance: float = TOLERANCE) -> str | None:
    """A one-line note when ``spacing`` (mm between slices) is outside ``trained`` by more
    than ``tolerance``; None when it is inside, unknown (not finite or not positive) or no
    range is known."""
    if trained is None or not math.isfinite(spacing) or spacing <= 0:
        return None
    low, high = trained
    if low / tolerance <= spacing <= high * tolerance:
        return None
    side = "closer together" if spacing < low else "further apart"
    hint = ("; a thicker series of the study (--series thickest) or a 5 mm reformat is "
            "closer to what it was trained on" if spacing < low else "")
    return (f"slices {spacing:.3g} mm apart, {side} than the {low:g}-{high:g} mm the model "
            "was trained on: nothing is resampled along z, so its measured figures may not "
            f"hold for this series{hint}")


def notes_line(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The one stderr line of a run for its prediction records' notes, or None."""
    noted = [r for r in records if r.get("notes")]
    if not noted:
        return None
    more = " (the first; each series' note is in the output)" if len(noted) > 1 else ""
    return f"hohoho: note: {len(noted)} of {len(records)} series: {noted[0]['notes'][0]}{more}"


def slab_groups(n_slices: int, spacing: float, slab_mm: float) -> np.ndarray:
    """Slab index of each of ``n_slices`` slices: runs of ``round(slab_mm / spacing)``
    consecutive slices (the last run may be shorter)."""
    k = max(1, round(slab_mm / spacing))
    return np.arange(n_slices) // k


def average_slabs(hu: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean HU of each slab, ``[G, H, W]`` float32: the thick reformat a reader would make."""
    n_groups = int(groups.max()) + 1
    out = np.empty((n_groups, *hu.shape[1:]), dtype=np.float32)
    for j in range(n_groups):
        out[j] = hu[groups == j].mean(axis=0, dtype=np.float64)
    return out


def slab_ids(image_ids: Sequence[str], groups: np.ndarray) -> list[str]:
    """One id per slab: its first slice's."""
    first = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return [image_ids[i] for i in first]


def slab_note(spacing: float, trained: tuple[float, float], groups: np.ndarray) -> str:
    """The note of a series that was read as slabs (`slab_groups`)."""
    k = int(np.bincount(groups).max())
    low, high = trained
    return (f"slices {spacing:.3g} mm apart, closer together than the {low:g}-{high:g} mm the "
            f"model was trained on: read as slabs of {k} slices (about {k * spacing:.3g} mm, "
            "a thick reformat), each slice given its slab's probabilities and calls")


def sliding_weights(n_slices: int, spacing: float, slab_mm: float) -> np.ndarray:
    """``(N, N)`` weights of a centred thick reformat at every slice position.

    Row ``i`` averages the slices whose own thickness (``spacing``) falls inside a box of
    ``slab_mm`` centred on slice ``i``, each weighted by the share of it inside the box (a
    4.5 mm box at 1.25 mm: 0.3, 1, 1, 1, 0.3); at the series' ends the box is cut and the
    row renormalised. Unlike `slab_groups`, every slice keeps its own output.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if not spacing > 0 or not slab_mm > 0:
        raise ValueError(f"spacing and slab_mm must be > 0, got {spacing}, {slab_mm}")
    half = slab_mm / 2.0
    reach = math.ceil(half / spacing + 0.5)
    offsets = np.arange(-reach, reach + 1)
    centre = offsets * spacing
    # Overlap of each neighbour's [d - s/2, d + s/2] with the box [-half, half], in slices.
    share = np.clip(np.minimum(half, centre + spacing / 2)
                    - np.maximum(-half, centre - spacing / 2), 0.0, spacing) / spacing
    w = np.zeros((n_slices, n_slices), dtype=np.float64)
    for off, a in zip(offsets, share, strict=True):
        if a <= 0:
            continue
        i = np.arange(max(0, -off), min(n_slices, n_slices - off))
        w[i, i + off] = a
    return w / w.sum(axis=1, keepdims=True)


def sliding_reformat(hu: np.ndarray, spacing: float, slab_mm: float) -> np.ndarray:
    """``[N, H, W]`` float32: each slice replaced by its centred thick reformat
    (`sliding_weights`), the same number of slices as ``hu``."""
    vol = np.asarray(hu, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"hu must be [S, H, W], got {vol.shape}")
    w = sliding_weights(vol.shape[0], spacing, slab_mm).astype(np.float32)
    # float32 and one output volume: a 400-slice series at 512 px is 0.4 GB as it is
    out = np.zeros(vol.shape, dtype=np.float32)
    for i, row in enumerate(w):
        for j in np.flatnonzero(row):
            out[i] += row[j] * vol[j]
    return out


def phase_stride(spacing: float, slab_mm: float) -> int:
    """How many phases a thin series is split into for the sequence model: every
    ``k``-th slice, ``k = round(slab_mm / spacing)``, so each phase steps about
    ``slab_mm`` (5 mm at 1.25 mm for 4.5 mm), a spacing the sequence model was trained on."""
    return max(1, round(slab_mm / spacing))


def sliding_note(spacing: float, trained: tuple[float, float], slab_mm: float,
                 sequence_model: bool = True) -> str:
    """The note of a series read as sliding slabs (`sliding_reformat`, `phase_stride`;
    the phases only where the weights have a sequence model)."""
    low, high = trained
    k = phase_stride(spacing, slab_mm)
    phases = (f", the sequence model run on {k} interleaved phases of {k * spacing:.3g} mm "
              "steps" if sequence_model else "")
    return (f"slices {spacing:.3g} mm apart, closer together than the {low:g}-{high:g} mm the "
            f"model was trained on: each slice read as a {slab_mm:.3g} mm thick reformat "
            f"centred on it{phases}")

