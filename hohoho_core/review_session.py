"""One reviewer's session over the review queue: mode, filters and where to go next.

Pure functions on `hohoho_core.review` items and `DecisionStore.current()` frames; the
label-audit page calls them from its callbacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from hohoho_core.review import (
    ReviewItem,
    cell_keys,
    disagreements,
    items_for_cells,
    resolve,
)

__all__ = [
    "ITEM_FILTERS",
    "MODES",
    "SessionView",
    "after_decision",
    "decided_keys",
    "filter_items",
    "first_open",
    "item_status",
    "session_view",
]

# --------------------------------------------------------------------------- sessions

#: Review modes: one reader sees every decision; a blind (second) reader only their own;
#: an adjudicator the cells where readers disagree.
MODES: tuple[str, ...] = ("single", "blind", "adjudicate")


@dataclass(frozen=True)
class SessionView:
    """What one reviewer's session works on, in one mode.

    ``items``: the queue; ``decided``/``unsure``: the cells counted as decided / unsure in
    this mode (a blind reader's own, an adjudicator's, or anyone's); ``disagreeing``: cells
    whose readers disagree and wait for an adjudicator (empty for a blind reader, who must
    not learn of them); ``visible``: the decisions this session may show; ``resolved``:
    `resolve` of every decision (for the export, which is not blind).
    """

    mode: str
    role: str
    items: list[ReviewItem]
    decided: set[tuple[str, str]]
    unsure: set[tuple[str, str]]
    disagreeing: set[tuple[str, str]]
    visible: pd.DataFrame
    resolved: pd.DataFrame


def session_view(
    mode: str,
    reviewer: str,
    current: pd.DataFrame,
    flagged: list[ReviewItem],
    table: pd.DataFrame,
) -> SessionView:
    """Build a `SessionView`.

    Args:
        mode: one of `MODES`.
        reviewer: the session's reviewer ("" when unknown: a blind session then has no
            decisions of its own).
        current: `DecisionStore.current()`.
        flagged: `group_items` of the ranked flags (the readers' queue).
        table: one row per slice with ``image_id``, ``study_uid``, ``slice_index`` (to place
            the adjudication queue's cells).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    resolved = resolve(current)
    disagreeing = cell_keys(disagreements(resolved))
    if mode == "adjudicate":
        items = items_for_cells(disagreements(resolved, include_adjudicated=True), table)
        decided, unsure = decided_keys(current, role="adjudicator")
        return SessionView(
            mode, "adjudicator", items, decided, unsure, disagreeing, current, resolved
        )
    if mode == "blind":
        mine = current[(current["reviewer"] == reviewer) & (current["role"] == "reader")]
        decided, unsure = decided_keys(mine)
        return SessionView(mode, "reader", flagged, decided, unsure, set(), mine, resolved)
    decided, _ = decided_keys(current)
    unsure = cell_keys(resolved[resolved["status"] == "unsure"])
    return SessionView(mode, "reader", flagged, decided, unsure, disagreeing, current, resolved)


# --------------------------------------------------------------------------- navigation


def item_status(
    item: ReviewItem, decided: set[tuple[str, str]], unsure: set[tuple[str, str]]
) -> str:
    """``"unsure"`` if a cell of ``item`` is in ``unsure`` (the queue to revisit), else
    ``"open"`` while a cell has no decision in ``decided``, else ``"done"``."""
    keys = item.keys
    if any(k in unsure for k in keys):
        return "unsure"
    return "open" if any(k not in decided for k in keys) else "done"


def decided_keys(
    current: pd.DataFrame, *, reviewer: str | None = None, role: str = "reader"
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """``(decided, unsure)``: the cells with a live decision of ``role`` (by ``reviewer``
    only, if given), and those of them whose latest such decision is ``unsure``."""
    cur = current[current["role"] == role] if "role" in current.columns else current
    if reviewer is not None:
        cur = cur[cur["reviewer"] == reviewer]
    cur = cur.sort_values("id", kind="stable").drop_duplicates(["image_id", "subtype"], keep="last")
    keys = list(zip(cur["image_id"], cur["subtype"], strict=True))
    unsure = {k for k, d in zip(keys, cur["decision"], strict=True) if d == "unsure"}
    return set(keys), unsure


#: Values of `filter_items`' ``status``.
ITEM_FILTERS: tuple[str, ...] = ("all", "open", "unsure", "done", "disagreement")


def filter_items(
    items: Sequence[ReviewItem],
    decided: set[tuple[str, str]],
    unsure: set[tuple[str, str]],
    *,
    classes: Sequence[str] = (),
    study: str | None = None,
    status: str = "all",
    disagreeing: set[tuple[str, str]] | None = None,
    by_reviewer: set[tuple[str, str]] | None = None,
) -> list[int]:
    """Positions of the items that pass every filter given.

    Args:
        items: the queue.
        decided, unsure: `decided_keys` for the session's view (`item_status`).
        classes: keep items with a cell of one of these classes (all when empty).
        study: keep items of this study UID (all when None).
        status: one of `ITEM_FILTERS`: ``open``/``unsure``/``done`` by `item_status`;
            ``disagreement`` keeps items with a cell in ``disagreeing``.
        disagreeing: cells whose readers disagree (needed for ``status="disagreement"``).
        by_reviewer: keep items with a cell in this set (a reviewer's decided cells).
    """
    if status not in ITEM_FILTERS:
        raise ValueError(f"status must be one of {ITEM_FILTERS}, got {status!r}")
    wanted = set(classes)
    keep = []
    for pos, item in enumerate(items):
        if wanted and not wanted & set(item.classes):
            continue
        if study is not None and item.study_uid != study:
            continue
        if status == "disagreement":
            if not any(k in (disagreeing or set()) for k in item.keys):
                continue
        elif status != "all" and item_status(item, decided, unsure) != status:
            continue
        if by_reviewer is not None and not any(k in by_reviewer for k in item.keys):
            continue
        keep.append(pos)
    return keep


def first_open(
    items: Sequence[ReviewItem], decided: set[tuple[str, str]], after: int = -1
) -> int | None:
    """Position of the first item after ``after`` (wrapping round) with a cell not in
    ``decided``; None when every item is decided."""
    n = len(items)
    for step in range(1, n + 1):
        j = (after + step) % n
        if any(k not in decided for k in items[j].keys):
            return j
    return None


def after_decision(
    items: Sequence[ReviewItem],
    pos: int,
    key: tuple[str, str],
    decided_before: set[tuple[str, str]],
) -> tuple[int, tuple[str, str]]:
    """Where the reviewer goes after deciding the cell ``key`` on ``items[pos]``.

    Args:
        items: the queue as shown (filters applied).
        pos: the item on screen.
        key: the cell just decided.
        decided_before: the cells decided before this decision (`decided_keys`).

    Returns:
        ``(position, cell)``: a cell outside the item (a neighbour) or a change of an earlier
        decision with nothing left open in the item stays where it is (a change made while
        going back never jumps forward); else the item's next open cell; else the first open
        cell of the next item with one (wrapping round); else the same cell.
    """
    item = items[pos]
    now = decided_before | {key}
    rest = [c.key for c in item.cells if c.key not in now]
    if key not in item.keys or (key in decided_before and not rest):
        return pos, key
    if rest:
        return pos, rest[0]
    nxt = first_open(items, now, after=pos)
    if nxt is None:
        return pos, key
    return nxt, next(c.key for c in items[nxt].cells if c.key not in now)
