"""Review sessions over the audit queue: items, readers' decisions, agreement, export.

Pure functions on the frames that `hohoho_core.audit.rank_flags` and
`hohoho_core.store.DecisionStore.current` return; nothing here reads or writes the store.

* `group_items`: the flagged cells of one slice, and those of one class on adjacent slices
  of a study (a run's edge: its last positive and the first negative slice beside it),
  form one review item, so a slice comes back once with one decision per class.
* `resolve`: each cell's readers' decisions settled into one label: one reader's decision,
  two readers who agree, or an adjudicator's decision; readers who disagree leave the label
  as it was until an adjudicator decides (`disagreements` is that queue).
* `agreement`: Cohen's kappa per class between two readers over the cells both decided
  (Cohen 1960, "A coefficient of agreement for nominal scales").
* `corrected_labels` / `export_corrected`: the labels with the settled decisions applied,
  in the input file's row order, plus a "who decided what" table.

Sessions (modes, filters, where to go next) are in `hohoho_core.review_session`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hohoho_core.atomic import atomic_write_text
from hohoho_core.csvsafe import safe_frame
from hohoho_core.labels import ANY_INDEX, CLASSES
from hohoho_core.rsna_csv import read_rsna_csv, row_id, write_rsna_csv

__all__ = [
    "STATUSES",
    "UNSURE",
    "Cell",
    "CorrectedLabels",
    "ExportSummary",
    "LabelSource",
    "ReviewItem",
    "agreement",
    "cell_keys",
    "cohen_kappa",
    "corrected_labels",
    "disagreements",
    "export_corrected",
    "group_items",
    "items_for_cells",
    "load_labels",
    "outcome",
    "readers",
    "resolve",
]

#: The outcome of an "unsure" decision (no label).
UNSURE: int = -1
#: A cell's state once its decisions are resolved.
STATUSES: tuple[str, ...] = ("single", "agreed", "adjudicated", "disagreement", "unsure")
_SETTLED = ("single", "agreed", "adjudicated")


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Cell:
    """One (slice, class) label under review."""

    image_id: str
    cls: str
    label: int  # the label under review, 0 or 1
    slice_index: int
    rank: int  # rank_flags' rank; 0 for a neighbour cell that was not flagged
    reason: str = ""
    rules: str = ""
    prob: float = float("nan")

    @property
    def key(self) -> tuple[str, str]:
        return self.image_id, self.cls


@dataclass(frozen=True)
class ReviewItem:
    """Cells decided together: one slice's flags, plus same-class flags next to it."""

    anchor: str  # image_id shown in the centre (that of the best-ranked cell)
    study_uid: str
    slice_index: int  # the anchor's
    rank: int  # best rank among the cells
    cells: tuple[Cell, ...] = field(default_factory=tuple)

    @property
    def keys(self) -> list[tuple[str, str]]:
        return [c.key for c in self.cells]

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(c.cls for c in self.cells))

    @property
    def slices(self) -> list[int]:
        return sorted({c.slice_index for c in self.cells})


def group_items(flags: pd.DataFrame) -> list[ReviewItem]:
    """Group ranked flags into review items, best first.

    Args:
        flags: rows of `rank_flags` (any subset, e.g. its top N), with at least the columns
            ``image_id, study_uid, slice_index, class, label, rank``; ``reason``,
            ``rules`` and ``prob`` are used when present. Other columns are ignored.

    Returns:
        Items ordered by their best rank. Cells on the same slice share an item; so do
        the two cells of a run edge: the same class on adjacent slices (``slice_index`` 1
        apart) of one study, one labelled 1 and the other 0. An item never spans more than
        two slices (so a long alternating pattern does not become one item); edges are
        joined best rank first. Within an item cells keep rank order.
    """
    if flags.empty:
        return []
    f = flags.sort_values("rank", kind="stable").reset_index(drop=True)
    n = len(f)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the better-ranked root wins

    ids = f["image_id"].astype(str).to_numpy()
    for rows in pd.Series(np.arange(n)).groupby(ids, sort=False).groups.values():
        rows = list(rows)
        for r in rows[1:]:
            union(rows[0], r)
    # Slices (study, slice_index) each root's item covers, to keep items to two slices.
    where = list(zip(f["study_uid"].astype(str), f["slice_index"].astype(int), strict=True))
    covers: dict[int, set[tuple[str, int]]] = {}
    for i in range(n):
        covers.setdefault(find(i), set()).add(where[i])
    labels = f["label"].to_numpy()
    by_cell = {
        (s, str(c), k): i for i, ((s, k), c) in enumerate(zip(where, f["class"], strict=True))
    }
    for i in range(n):  # rank order: the best-ranked edges are joined first
        (study, k), cls = where[i], str(f.at[i, "class"])
        for j in (by_cell.get((study, cls, k - 1)), by_cell.get((study, cls, k + 1))):
            if j is None or labels[i] == labels[j]:
                continue
            a, b = find(i), find(j)
            if a != b and len(covers[a] | covers[b]) <= 2:
                union(a, b)
                covers[find(a)] = covers.pop(a, set()) | covers.pop(b, set())

    get = {
        col: f[col].to_numpy() if col in f.columns else None for col in ("reason", "rules", "prob")
    }
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    items = []
    for root in sorted(members):
        cells = tuple(
            Cell(
                image_id=str(ids[i]),
                cls=str(f.at[i, "class"]),
                label=int(f.at[i, "label"]),
                slice_index=int(f.at[i, "slice_index"]),
                rank=int(f.at[i, "rank"]),
                reason=str(get["reason"][i]) if get["reason"] is not None else "",
                rules=str(get["rules"][i]) if get["rules"] is not None else "",
                prob=float(get["prob"][i]) if get["prob"] is not None else float("nan"),
            )
            for i in members[root]
        )
        items.append(
            ReviewItem(
                anchor=cells[0].image_id,
                study_uid=str(f.at[root, "study_uid"]),
                slice_index=cells[0].slice_index,
                rank=cells[0].rank,
                cells=cells,
            )
        )
    return items


# --------------------------------------------------------------------------- resolution


def outcome(original_label: int, decision: str) -> int:
    """The label a decision asks for: ``keep`` the original, ``relabel_0``/``relabel_1``
    0 or 1, ``unsure`` `UNSURE`."""
    if decision == "keep":
        return int(original_label)
    if decision in ("relabel_0", "relabel_1"):
        return int(decision[-1])
    if decision == "unsure":
        return UNSURE
    raise ValueError(f"unknown decision {decision!r}")


def _outcomes(current: pd.DataFrame) -> np.ndarray:
    decision = current["decision"].to_numpy(dtype=object)
    known = np.isin(decision, ["keep", "relabel_0", "relabel_1", "unsure"])
    if not known.all():
        raise ValueError(f"unknown decision {decision[~known][0]!r}")
    original = current["original_label"].to_numpy(dtype=np.int64)
    return np.select(
        [decision == "keep", decision == "relabel_0", decision == "relabel_1"],
        [original, 0, 1],
        UNSURE,
    ).astype(np.int64)


def _name(value: int) -> str:
    return "unsure" if value == UNSURE else str(value)


_RESOLVED_COLUMNS = [
    "image_id",
    "subtype",
    "original_label",
    "status",
    "label",
    "decided_by",
    "readers",
    "adjudicator",
    "comments",
    "readers_disagree",
]


def resolve(current: pd.DataFrame) -> pd.DataFrame:
    """Settle each decided cell.

    Args:
        current: `DecisionStore.current()`: the live decision per (image_id, subtype,
            reviewer, role). A frame without a ``role`` column (a version-1 reader)
            counts every row as a reader's.

    Returns:
        One row per (image_id, subtype) with any decision, sorted by both, with columns
        ``image_id, subtype, original_label, status`` (one of `STATUSES`), ``label``
        (the settled label 0/1, or `UNSURE` when the cell is unsure or in disagreement:
        its label is left as it was), ``decided_by`` (who settled it, "" if nobody),
        ``readers`` ("name: outcome; ..." in decision order), ``adjudicator`` and
        ``comments`` ("name: text; ...", empty comments left out) and
        ``readers_disagree`` (the readers' outcomes differ, adjudicated or not).

        The latest adjudicator decision settles the cell whatever the readers said; else
        one reader's decision, or the readers' common outcome, settles it; readers whose
        outcomes differ (``unsure`` counts as an outcome) leave it in ``disagreement``.
    """
    if current.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _RESOLVED_COLUMNS}).astype(
            {"original_label": np.int64, "label": np.int64, "readers_disagree": bool}
        )
    keys = ["image_id", "subtype"]
    cur = current.sort_values("id", kind="stable").reset_index(drop=True)
    role = cur["role"] if "role" in cur.columns else pd.Series("reader", index=cur.index)
    cur = cur.assign(_out=_outcomes(cur), _role=role.to_numpy())
    out = cur.groupby(keys, sort=True).agg(original_label=("original_label", "last"))

    def joined(frame: pd.DataFrame, text: pd.Series) -> pd.Series:
        """ "; "-joined ``text`` per cell, in decision order; "" for cells without any."""
        if frame.empty:
            return pd.Series("", index=out.index)
        parts = frame[keys].assign(_t=text.to_numpy()).groupby(keys, sort=True)["_t"]
        return parts.agg("; ".join).reindex(out.index, fill_value="")

    rd = cur[cur["_role"] == "reader"]
    by_reader = rd.groupby(keys, sort=True)["_out"]
    n = by_reader.size().reindex(out.index, fill_value=0).to_numpy()
    lo = by_reader.min().reindex(out.index).to_numpy()
    hi = by_reader.max().reindex(out.index).to_numpy()
    names = joined(rd, rd["reviewer"]).to_numpy()
    out["readers"] = joined(rd, rd["reviewer"] + ": " + rd["_out"].map(_name))
    said = cur[cur["comment"] != ""]
    comments = joined(said, said["reviewer"] + ": " + said["comment"])
    adj = cur[cur["_role"] == "adjudicator"].groupby(keys, sort=True)[["reviewer", "_out"]].last()
    adj = adj.reindex(out.index)
    has_adj = adj["reviewer"].notna().to_numpy()
    adj_out = adj["_out"].fillna(UNSURE).to_numpy(dtype=np.int64)

    agree = (n > 0) & (lo == hi)
    value = np.where(has_adj, adj_out, np.where(agree, np.nan_to_num(lo, nan=UNSURE), UNSURE))
    value = value.astype(np.int64)
    status = np.where(
        has_adj,
        np.where(adj_out != UNSURE, "adjudicated", "unsure"),
        np.where(
            agree,
            np.where(value == UNSURE, "unsure", np.where(n == 1, "single", "agreed")),
            "disagreement",
        ),
    )
    settled = np.isin(status, _SETTLED)
    out["status"] = status
    out["label"] = np.where(settled, value, UNSURE)
    out["decided_by"] = np.where(
        settled, np.where(has_adj, adj["reviewer"].fillna("").to_numpy(), names), ""
    )
    out["adjudicator"] = adj["reviewer"].fillna("").to_numpy()
    out["comments"] = comments
    out["readers_disagree"] = (n > 0) & (lo != hi)
    out = out.reset_index()[_RESOLVED_COLUMNS]
    return out.astype({"original_label": np.int64, "label": np.int64, "readers_disagree": bool})


def cell_keys(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """The ``(image_id, subtype)`` pairs of a decisions or `resolve` frame."""
    return set(zip(frame["image_id"], frame["subtype"], strict=True))


def disagreements(resolved: pd.DataFrame, *, include_adjudicated: bool = False) -> pd.DataFrame:
    """The adjudication queue: cells whose readers disagree and no adjudicator decided
    (with ``include_adjudicated``, also those an adjudicator has settled)."""
    if include_adjudicated:
        return resolved[resolved["readers_disagree"]].reset_index(drop=True)
    return resolved[resolved["status"] == "disagreement"].reset_index(drop=True)


def items_for_cells(cells: pd.DataFrame, table: pd.DataFrame) -> list[ReviewItem]:
    """Review items for arbitrary cells (e.g. `disagreements`), in the cells' order.

    Args:
        cells: columns ``image_id``, ``subtype`` and ``original_label``; ``readers`` is
            used as the reason when present.
        table: one row per slice with ``image_id``, ``study_uid`` and ``slice_index``;
            cells of images not in it are left out.
    """
    where = table.drop_duplicates("image_id").set_index("image_id")
    known = cells[cells["image_id"].isin(where.index)]
    if known.empty:
        return []
    ids = known["image_id"].to_numpy()
    flags = pd.DataFrame(
        {
            "image_id": ids,
            "study_uid": where.loc[ids, "study_uid"].to_numpy(),
            "slice_index": where.loc[ids, "slice_index"].to_numpy(),
            "class": known["subtype"].to_numpy(),
            "label": known["original_label"].to_numpy(),
            "rank": np.arange(1, len(known) + 1),
            "reason": ("readers disagree: " + known["readers"]).to_numpy()
            if "readers" in known
            else "",
        }
    )
    return group_items(flags)


def readers(current: pd.DataFrame) -> list[str]:
    """Reader names, most decisions first (ties by name)."""
    cur = current[current["role"] == "reader"] if "role" in current.columns else current
    counts = cur["reviewer"].value_counts()
    return sorted(counts.index, key=lambda name: (-int(counts[name]), str(name)))


# --------------------------------------------------------------------------- agreement


def cohen_kappa(a: Sequence[object], b: Sequence[object]) -> float:
    """Cohen's kappa of two raters' nominal ratings ``a`` and ``b`` (same length).

    ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e`` the
    agreement expected from each rater's marginal frequencies (Cohen 1960). NaN for no
    ratings, or when ``p_e`` is 1 (both raters used a single, common category): kappa is
    undefined there, as in scikit-learn.
    """
    x, y = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"ratings must be two 1-D sequences of one length, got {x.shape}, {y.shape}"
        )
    if x.size == 0:
        return float("nan")
    cats = list(dict.fromkeys([*x.tolist(), *y.tolist()]))
    px = np.array([np.mean(x == c) for c in cats])
    py = np.array([np.mean(y == c) for c in cats])
    p_o = float(np.mean(x == y))
    p_e = float(np.sum(px * py))
    if np.isclose(p_e, 1.0):
        return float("nan")
    return (p_o - p_e) / (1.0 - p_e)


def agreement(current: pd.DataFrame, reader_a: str, reader_b: str) -> pd.DataFrame:
    """Agreement per class between two readers over the cells both decided.

    Outcomes compared are 0, 1 and unsure (`outcome`). Returns one row per class of
    `CLASSES` with columns ``class, cells`` (decided by both), ``agreed`` (same outcome),
    ``kappa`` (`cohen_kappa`; NaN without cells or when undefined).
    """
    cur = current[current["role"] == "reader"] if "role" in current.columns else current
    outs = pd.Series(_outcomes(cur), index=cur.index)
    pair = []
    for name in (reader_a, reader_b):
        mine = cur[cur["reviewer"] == name]
        pair.append(
            pd.Series(
                outs.loc[mine.index].to_numpy(),
                index=pd.MultiIndex.from_frame(mine[["image_id", "subtype"]]),
            )
        )
    both = pd.concat(pair, axis=1, join="inner", keys=["a", "b"])
    rows = []
    for cls in CLASSES:
        sel = both[both.index.get_level_values("subtype") == cls]
        rows.append(
            (
                cls,
                len(sel),
                int((sel["a"] == sel["b"]).sum()),
                cohen_kappa(sel["a"].tolist(), sel["b"].tolist()),
            )
        )
    return pd.DataFrame(rows, columns=["class", "cells", "agreed", "kappa"])


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    images: int  # images written (six labels each)
    relabelled: int  # labels changed by a settled decision
    unmatched: int  # settled cells whose image is not in the labels
    any_inconsistent: int  # images whose "any" disagrees with their subtypes afterwards
    inconsistent_ids: tuple[str, ...] = ()  # those images, in input order
    unresolved: int = 0  # cells left as they were: readers disagree, not adjudicated
    any_fixed: int = 0  # images whose "any" was set from the subtypes (fix_any)


@dataclass(frozen=True)
class LabelSource:
    """Original labels and the row order to write them back in.

    ``labels``: int64 ``(n_images, 6)`` frame indexed by image id, columns `CLASSES`.
    ``rows``: ``(image_id, class)`` pairs in the input file's row order (duplicates kept),
    or None to write images in ``labels`` order with classes in `CLASSES` order.
    """

    labels: pd.DataFrame
    rows: tuple[np.ndarray, np.ndarray] | None = None


def load_labels(labels: pd.DataFrame | Path | str) -> LabelSource:
    """Original labels from an RSNA ``ID,Label`` CSV (its row order kept) or a frame with
    the six `CLASSES` columns and the image id as index or ``image_id`` column.

    A CSV is read by the one codec with strict policies: identical duplicate rows are
    fine; a malformed row, conflicting duplicates or a missing label are refused
    (``ValueError``), since an export could only guess at them.
    """
    if isinstance(labels, pd.DataFrame):
        return LabelSource(_labels_frame(labels))
    path = Path(labels)
    frame = read_rsna_csv(
        path,
        kind="labels",
        on_invalid="error",
        on_duplicate="drop",
        on_conflict="error",
        on_missing="error",
    ).astype(np.int64)
    frame.index = pd.Index(frame.index.to_numpy(dtype=object), dtype=object, name="image_id")
    # The row order only: every row was checked by the codec above.
    ids = pd.read_csv(path, usecols=[0], dtype=str, keep_default_na=False).iloc[:, 0]
    parts = ids.str.strip().str.rsplit("_", n=1, expand=True)
    image = parts[0].to_numpy(dtype=object)
    return LabelSource(frame, (image, parts[1].to_numpy(dtype=object)))


def _labels_frame(labels: pd.DataFrame) -> pd.DataFrame:
    frame = labels.set_index("image_id") if "image_id" in labels.columns else labels
    missing = [c for c in CLASSES if c not in frame.columns]
    if missing:
        raise ValueError(f"labels are missing columns {missing}")
    frame = frame[list(CLASSES)]
    if frame.isna().to_numpy().any() or not frame.isin([0, 1]).to_numpy().all():
        raise ValueError("labels must be 0 or 1 with no missing values")
    if frame.index.duplicated().any():
        raise ValueError("labels have duplicate image ids")
    frame = frame.astype(np.int64)
    frame.index = pd.Index(frame.index.to_numpy(dtype=object), dtype=object, name="image_id")
    return frame


@dataclass(frozen=True)
class CorrectedLabels:
    """Labels after review: ``values`` ``(n_images, 6)`` aligned with ``source.labels``,
    the ``provenance`` ("who decided what") and the ``summary``."""

    source: LabelSource
    values: np.ndarray
    provenance: pd.DataFrame
    summary: ExportSummary

    def csv_text(self) -> str:
        """The RSNA ``ID,Label`` text, rows in the input's order."""
        index = self.source.labels.index
        if self.source.rows is None:
            buf = io.StringIO(newline="")
            write_rsna_csv(buf, index.to_numpy(dtype=object), self.values, kind="labels")
            return buf.getvalue()
        image, cls = self.source.rows
        r = index.get_indexer(image)
        k = np.array([CLASSES.index(c) for c in cls], dtype=np.int64)
        vals = self.values[r, k]
        lines = [
            "ID,Label",
            *(f"{row_id(i, c)},{v}" for i, c, v in zip(image, cls, vals, strict=True)),
        ]
        return "\n".join(lines) + "\n"

    def provenance_text(self) -> str:
        """The provenance as CSV text, spreadsheet-safe (names and comments are typed)."""
        return safe_frame(self.provenance).to_csv(index=False)


def corrected_labels(
    source: LabelSource, resolved: pd.DataFrame, *, fix_any: bool = False
) -> CorrectedLabels:
    """Apply settled decisions (`resolve`) to the original labels.

    Args:
        source: `load_labels`.
        resolved: `resolve` of the store's current decisions.
        fix_any: set "any" to the maximum of the subtypes on images where it disagrees,
            unless "any" itself was settled by a decision (a person's decision is never
            overruled by the rule; such images stay listed as inconsistent).

    Returns:
        `CorrectedLabels`; its provenance has one row per decided cell (and per "any" the
        rule fixed) with ``ID, image_id, class, original_label, exported_label, status,
        decided_by, readers, adjudicator, comments``.
    """
    labels = source.labels
    values = labels.to_numpy(dtype=np.int64, copy=True)
    rows = labels.index.get_indexer(resolved["image_id"])
    known = rows >= 0
    cols = np.array([CLASSES.index(s) for s in resolved["subtype"]], dtype=np.int64)
    settled = resolved["label"].to_numpy(dtype=np.int64) != UNSURE
    apply = known & settled
    before = values[rows[apply], cols[apply]]
    new = resolved["label"].to_numpy(dtype=np.int64)[apply]
    values[rows[apply], cols[apply]] = new
    relabelled = int((before != new).sum())

    mismatch = values[:, :ANY_INDEX].max(axis=1) != values[:, ANY_INDEX]
    fixed = np.zeros(len(values), dtype=bool)
    if fix_any:
        any_decided = np.zeros(len(values), dtype=bool)
        any_decided[rows[apply & (cols == ANY_INDEX)]] = True
        fixed = mismatch & ~any_decided
        values[fixed, ANY_INDEX] = values[fixed, :ANY_INDEX].max(axis=1)
        mismatch = mismatch & ~fixed

    prov = resolved[known].copy()
    prov["exported_label"] = values[rows[known], cols[known]]
    prov["original_label"] = labels.to_numpy(dtype=np.int64)[rows[known], cols[known]]
    fix_rows = np.flatnonzero(fixed)
    fix_frame = pd.DataFrame(
        {
            "image_id": labels.index.to_numpy(dtype=object)[fix_rows],
            "subtype": "any",
            "original_label": labels.to_numpy(dtype=np.int64)[fix_rows, ANY_INDEX],
            "exported_label": values[fix_rows, ANY_INDEX],
            "status": "any_fixed",
            "decided_by": "rule: any = max(subtypes)",
            "readers": "",
            "adjudicator": "",
            "comments": "",
        }
    )
    prov = pd.concat([prov, fix_frame], ignore_index=True)
    prov.insert(
        0,
        "ID",
        [row_id(str(i), str(c)) for i, c in zip(prov["image_id"], prov["subtype"], strict=True)],
    )
    prov = prov.rename(columns={"subtype": "class"})[
        [
            "ID",
            "image_id",
            "class",
            "original_label",
            "exported_label",
            "status",
            "decided_by",
            "readers",
            "adjudicator",
            "comments",
        ]
    ]
    summary = ExportSummary(
        images=len(labels),
        relabelled=relabelled,
        unmatched=int((~known & settled).sum()),
        any_inconsistent=int(mismatch.sum()),
        inconsistent_ids=tuple(str(i) for i in labels.index[mismatch]),
        unresolved=int((resolved["status"] == "disagreement").sum()),
        any_fixed=int(fixed.sum()),
    )
    return CorrectedLabels(source, values, prov, summary)


def export_corrected(
    current: pd.DataFrame,
    labels: pd.DataFrame | Path | str | LabelSource,
    out_csv: Path | str,
    *,
    provenance_csv: Path | str | None = None,
    fix_any: bool = False,
) -> ExportSummary:
    """Write corrected labels (RSNA ``ID,Label``, input row order) and, if asked, the
    "who decided what" CSV; both atomically. See `corrected_labels`."""
    source = labels if isinstance(labels, LabelSource) else load_labels(labels)
    result = corrected_labels(source, resolve(current), fix_any=fix_any)
    atomic_write_text(Path(out_csv), result.csv_text())
    if provenance_csv is not None:
        atomic_write_text(Path(provenance_csv), result.provenance_text())
    return result.summary
