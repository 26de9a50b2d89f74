"""HOHOHO core: intracranial hemorrhage detection on head CT.

The public API is re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from hohoho_core.labels import ANY_INDEX, CLASSES, SHORT_NAMES, SUBTYPES
from hohoho_core.study import LoadReport, SkippedFile, SkipReason, SliceInfo, Study

__all__ = [
    "ANY_INDEX",
    "CLASSES",
    "SHORT_NAMES",
    "SUBTYPES",
    "LoadReport",
    "SkipReason",
    "SkippedFile",
    "SliceInfo",
    "Study",
]
