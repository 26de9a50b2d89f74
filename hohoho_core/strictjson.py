"""Strict JSON: every file the project writes must parse in any JSON reader (no NaN)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["finite_json"]


def finite_json(obj: Any) -> Any:
    """A copy whose NaN and infinite floats are None (NumPy values as plain Python)."""
    if isinstance(obj, Mapping):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str):
        return finite_json(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
