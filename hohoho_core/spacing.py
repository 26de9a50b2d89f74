"""Is a study's slice spacing one the model was trained on?

The sequence model reads a study's slices as steps of the spacing it was trained on, and the
CNN learned the partial volume of slices that thick. A thin-slice series (0.6-1.25 mm, what
most modern scanners reconstruct first) puts 4-8 times as many slices across the same bleed;
a thick one skips what lies between. Nothing here resamples along z: the note says so, so a
reader can pick a thicker series of the study (`predict --series thickest`) or a reformat.

A weights folder states the range in ``config.json``, ``data.slice_spacing_mm`` (``[low,
high]`` in mm); a folder without it gets no note.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: How far outside the trained range a spacing may fall (times or divided by this) before
#: a note: 2.5 mm against 3-6 mm is a neighbour of what was seen, 1.25 mm is not.
TOLERANCE = 1.5

#: The key in a weights config's ``data`` object.
CONFIG_KEY = "slice_spacing_mm"


def trained_spacing(data: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(low, high)`` mm from a config's ``data`` object, or None if absent or malformed."""
    value = data.get(CONFIG_KEY)
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    try:
        low, high = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        return None
    return low, high


def spacing_note(spacing: float, trained: tuple[float, float] | None,
                 tolerance: float = TOLERANCE) -> str | None:
    """A one-line note when ``spacing`` (mm between slices) is outside ``trained`` by more
    than ``tolerance``; None when it is inside, unknown (a single slice) or no range is known."""
    if trained is None or not math.isfinite(spacing) or spacing <= 0:
        return None
    low, high = trained
    if low / tolerance <= spacing <= high * tolerance:
        return None
    side = "thinner" if spacing < low else "thicker"
    hint = "; a thicker series of the study, or a reformat, fits it better" if side == "thinner" else ""
    return (f"slices {spacing:.2g} mm apart, {side} than the {low:g}-{high:g} mm the model was "
            "trained on: nothing is resampled along z, so its calls on this series are less "
            f"certain than its measured figures{hint}")
