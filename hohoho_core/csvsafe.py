"""Spreadsheet-safe CSV cells: text that would start a formula is written as text.

A spreadsheet opening a CSV evaluates a cell that starts with ``=``, ``+``, ``-`` or ``@``
(and some also after a leading tab or carriage return), so a UID read from a file, such as
``=HYPERLINK("http://x","y")``, would become a live formula (OWASP "CSV injection"). Every
CSV the project writes passes its text cells through `safe_cell` (or `safe_frame`), which
prefixes such a cell with a single quote, the spreadsheets' own "this is text" mark.

Only text is touched: numbers (negative ones included) stay numbers, and the RSNA
``ID,Label`` rows, whose ids always start with ``ID_``, never need it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

__all__ = ["FORMULA_STARTS", "safe_cell", "safe_frame", "safe_row"]

#: First characters that make a spreadsheet read a text cell as a formula.
FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text starting with `FORMULA_STARTS`; any
    other value (numbers, None, text that starts otherwise) is returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    """One CSV row with each text cell passed through `safe_cell`."""
    return [safe_cell(v) for v in values]


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and text column names) went through
    `safe_cell`; numeric columns are left as they are."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            out[col] = out[col].map(safe_cell)
    out.columns = [safe_cell(c) for c in out.columns]
    return out
