"""The `audit` command's flags file, read back for review (the app's audit page).

``python -m hohoho_core audit ... --out flags.csv`` writes `audit.rank_flags` rows, text cells
made spreadsheet-safe (`csvsafe`). A team that ranks once on a big machine reviews that
ranking in the app; this module reads it back, undoes the spreadsheet mark, and checks it
against the dataset it is reviewed on: every flagged image must be one of its labelled
slices, and the label the audit saw must still be the label on file (a flags file made
before a relabelling would send reviewers to cells that have changed).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from hohoho_core.csvsafe import FORMULA_STARTS
from hohoho_core.labels import CLASSES

__all__ = ["FLAG_COLUMNS", "csv_kind", "read_flags_csv"]

#: Columns a flags file must have (the rest of `rank_flags`' columns are kept when present).
FLAG_COLUMNS: tuple[str, ...] = ("image_id", "class", "label", "rank")
_TEXT = ("image_id", "study_uid", "class", "rules", "reason", "kind", "edge", "group",
         "cleanlab_issue")


def csv_kind(header: str) -> str:
    """``"probabilities"`` (``ID,Label``), ``"flags"`` (the audit's columns) or ``"unknown"``,
    from a CSV's first line."""
    cols = [c.strip().strip('"') for c in header.strip().split(",")]
    if cols[:2] == ["ID", "Label"]:
        return "probabilities"
    if set(FLAG_COLUMNS) <= set(cols):
        return "flags"
    return "unknown"


def _unmark(value: object) -> object:
    """Undo `csvsafe.safe_cell`: ``'=...`` back to ``=...``."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and \
            value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def read_flags_csv(src: str | Path | bytes, table: pd.DataFrame) -> pd.DataFrame:
    """Flags of the `audit` command, checked against ``table`` and sorted by rank.

    Args:
        src: the file's path, or its bytes (an upload).
        table: the dataset's labelled slices, one row per image, with ``image_id``,
            ``study_uid``, ``slice_index`` and the six ``CLASSES`` label columns.

    Returns:
        One row per flagged cell with the file's columns; ``study_uid``, ``slice_index``
        and ``label`` come from ``table`` (the dataset is the authority on where a slice
        is), sorted by ``rank``.

    Raises:
        ValueError: not a flags file, a malformed row, a cell listed twice, images the
            dataset does not hold, or labels that changed since the audit ran; the message
            says which and how many.
    """
    raw = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        frame = pd.read_csv(raw, dtype={c: str for c in _TEXT}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"not a readable flags CSV ({type(err).__name__})") from None
    missing = [c for c in FLAG_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"not a flags file of the audit command: no column {', '.join(missing)}")
    for col in _TEXT:
        if col in frame.columns:
            frame[col] = frame[col].map(_unmark)
    bad_class = ~frame["class"].isin(CLASSES)
    if bad_class.any():
        raise ValueError(f"{int(bad_class.sum())} rows name an unknown class "
                         f"(first: {frame.loc[bad_class, 'class'].iloc[0]!r})")
    rank = pd.to_numeric(frame["rank"], errors="coerce")
    label = pd.to_numeric(frame["label"], errors="coerce")
    if rank.isna().any() or (rank < 1).any() or label.isna().any() or \
            not label.isin([0, 1]).all():
        raise ValueError("rank must be a positive integer and label 0 or 1 in every row")
    frame["rank"], frame["label"] = rank.astype(np.int64), label.astype(np.int64)
    dup = frame.duplicated(["image_id", "class"])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} cells are listed more than once")

    slices = table.drop_duplicates("image_id").set_index("image_id")
    unknown = ~frame["image_id"].isin(slices.index)
    if unknown.any():
        raise ValueError(f"{int(unknown.sum())} flagged cells name images this dataset has no "
                         f"labelled slice for: was the flags file made for another folder?")
    here = slices.loc[frame["image_id"]]
    now = np.array([here[c].iloc[i] for i, c in enumerate(frame["class"])], dtype=np.int64) \
        if len(frame) else np.zeros(0, np.int64)
    changed = now != frame["label"].to_numpy()
    if changed.any():
        raise ValueError(f"{int(changed.sum())} flagged cells have another label on file now "
                         f"than when the audit ran: run the audit again on the current labels")
    frame["study_uid"] = here["study_uid"].to_numpy()
    frame["slice_index"] = here["slice_index"].to_numpy()
    return frame.sort_values("rank", kind="stable").reset_index(drop=True)
