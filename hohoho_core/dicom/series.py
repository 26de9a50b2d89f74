"""Which series of a study to score: a hospital export often holds several axial CTs.

A head CT exam is commonly reconstructed twice (thin 0.6-1.25 mm and thick 5 mm slices),
sometimes also with a bone kernel; scoring all of them triples the work and the calls. This
module picks, per study, by a description pattern and/or by slice thickness.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from hohoho_core.dicom.loader import SeriesSummary

__all__ = ["SERIES_RULES", "choose_series"]

SeriesRule = Literal["all", "thinnest", "thickest"]
SERIES_RULES: tuple[str, ...] = ("all", "thinnest", "thickest")


def choose_series(
    series: Sequence[SeriesSummary],
    *,
    description: str | None = None,
    rule: SeriesRule = "all",
) -> list[SeriesSummary]:
    """The axial (or unknown-orientation) series to score, by study then series UID.

    Args:
        series: candidates, e.g. `SourceScan.series`.
        description: a regular expression searched (case-insensitively) in each series'
            SeriesDescription; series that do not match are left out.
        rule: "all" keeps every remaining series; "thinnest" / "thickest" keep one per study,
            the one with the smallest / largest SliceThickness (a series without it counts
            as unknown and loses; ties go to the series with more slices).

    Raises:
        ValueError: an invalid pattern or rule.
    """
    if rule not in SERIES_RULES:
        raise ValueError(f"unknown series rule {rule!r}; allowed: {', '.join(SERIES_RULES)}")
    try:
        pattern = re.compile(description, re.IGNORECASE) if description else None
    except re.error as err:
        raise ValueError(f"invalid --series-description pattern: {err}") from None
    keep = [s for s in series if s.orientation in ("axial", "unknown")
            and (pattern is None or pattern.search(s.description or ""))]
    if rule != "all":
        sign = 1.0 if rule == "thinnest" else -1.0
        best: dict[str, SeriesSummary] = {}
        for s in keep:
            t = s.slice_thickness
            score = (sign * t if t is not None and math.isfinite(t) else math.inf, -s.n_slices)
            cur = best.get(s.study_uid)
            if cur is None:
                best[s.study_uid] = s
                continue
            ct = cur.slice_thickness
            cur_score = (sign * ct if ct is not None and math.isfinite(ct) else math.inf,
                         -cur.n_slices)
            if score < cur_score:
                best[s.study_uid] = s
        keep = list(best.values())
    return sorted(keep, key=lambda s: (s.study_uid, s.series_uid))
