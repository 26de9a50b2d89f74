"""The RSNA ``ID,Label`` CSV: one reader and one writer for labels and probabilities.

The format (``stage_2_train.csv``, the Kaggle submission, out-of-fold probabilities) has a
header ``ID,Label`` and one row per (image, class): ``ID_<image>_<class>,<value>``, with
``<class>`` one of `labels.CLASSES`. In memory it is a frame with one row per image and the
six ``CLASSES`` columns, or an ``(N, 6)`` array.

Real files are not clean (the RSNA training CSV repeats some rows), and each caller needs a
different answer to "what if a row is repeated, contradicted or missing", so the reader takes
each rule as an explicit argument instead of one caller's habit being baked in:

- ``on_invalid``: a malformed ID, an unknown class or a value that is not a label (0/1) or
  a probability in [0, 1]: ``"error"`` or ``"drop"`` (the rows are ignored, with a warning).
- ``on_duplicate``: a row repeated with the same value: ``"drop"`` (kept once) or ``"error"``.
- ``on_conflict``: one (image, class) given different values: ``"error"``, or keep the
  ``"first"``, the ``"last"`` or the ``"max"`` (a positive wins) value, with a warning.
- ``on_missing``: an image without all six classes (or, with ``image_ids``, an image not in
  the file at all): ``"error"``, ``"unknown"`` (the hole is `UNKNOWN_LABEL` / NaN) or
  ``"drop"`` (the image is left out).

Image ids are ``ID_`` followed by anything (RSNA's are hex, but predictions for other DICOM
files carry SOP instance UIDs such as ``ID_1.2.840.99``); the class is what follows the last
underscore. Messages name the source, the line and the ID, never file contents beyond that.

The writer has one layout: images in the order given, each as six rows in ``CLASSES`` order
(as the RSNA submission), labels as integers and probabilities as ``%.6g``, ``\\n`` line
ends; given a path it writes atomically.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from hohoho_core.atomic import atomic_open
from hohoho_core.labels import CLASSES

__all__ = [
    "PROBABILITY_FORMAT",
    "UNKNOWN_LABEL",
    "RsnaCsvError",
    "Source",
    "read_rsna_csv",
    "row_id",
    "write_rsna_csv",
]

Kind = Literal["labels", "probabilities"]
OnInvalid = Literal["error", "drop"]
OnDuplicate = Literal["drop", "error"]
OnConflict = Literal["error", "first", "last", "max"]
OnMissing = Literal["error", "unknown", "drop"]
Source = str | os.PathLike[str] | bytes | IO[bytes] | IO[str]

#: A label cell with no row in the file (``rsna.UNLABELLED`` is the same value).
UNKNOWN_LABEL = -1
#: How probabilities are written: six significant digits, as the predict CLI always did.
PROBABILITY_FORMAT = "%.6g"
_HEADER = ("ID", "Label")
_PREFIX = "ID_"
_N = len(CLASSES)
_EXAMPLES = 3  # ids quoted in a message: enough to find them, short enough to read


class RsnaCsvError(ValueError):
    """An ``ID,Label`` file (or array to write) that breaks the rules asked for."""


# --------------------------------------------------------------------------- reading


def read_rsna_csv(
    source: Source,
    *,
    kind: Kind,
    image_ids: Sequence[str] | np.ndarray | pd.Index | pd.Series | None = None,
    on_invalid: OnInvalid = "error",
    on_duplicate: OnDuplicate = "drop",
    on_conflict: OnConflict = "error",
    on_missing: OnMissing = "error",
    name: str | None = None,
) -> pd.DataFrame:
    """Read an ``ID,Label`` CSV into one row per image.

    Args:
        source: a path, the file's bytes, or an open file (binary or text).
        kind: ``"labels"`` (values 0/1) or ``"probabilities"`` (values in [0, 1]).
        image_ids: the images wanted, in the order wanted (``ID_<image>``); rows of other
            images are still checked but left out, and a wanted image absent from the file
            counts as six missing rows. None: every image of the file, in file order.
        on_invalid, on_duplicate, on_conflict, on_missing: the policies in the module
            docstring.
        name: what messages call the source (default: the file name, or ``<stream>``).

    Returns:
        Index ``image_id``; columns `CLASSES` in order. Labels: int8 with `UNKNOWN_LABEL`
        for a missing cell; probabilities: float64 with NaN for a missing cell.

    Raises:
        RsnaCsvError: no ``ID`` and ``Label`` columns, an unreadable file, or a row that
            breaks a policy set to ``"error"``.
    """
    _check_policy("kind", kind, ("labels", "probabilities"))
    _check_policy("on_invalid", on_invalid, ("error", "drop"))
    _check_policy("on_duplicate", on_duplicate, ("drop", "error"))
    _check_policy("on_conflict", on_conflict, ("error", "first", "last", "max"))
    _check_policy("on_missing", on_missing, ("error", "unknown", "drop"))
    label = name if name is not None else _source_name(source)
    noun = "label" if kind == "labels" else "probability"

    raw = _read_table(source, label)
    ids = raw["ID"].fillna("").astype(str)
    values = _numeric(raw["Label"])
    cls, cut = _split_class(ids)
    valid = (cls >= 0) & ids.str.startswith(_PREFIX).to_numpy(dtype=bool)
    valid &= ids.str.len().to_numpy(dtype=np.int64) - cut > len(_PREFIX)
    valid &= _valid_values(values, kind)
    if not valid.all():
        bad = np.flatnonzero(~valid)
        if on_invalid == "error":
            raise RsnaCsvError(
                f"{label}: {len(bad)} invalid rows; line {bad[0] + 2}: "
                + _why_invalid(str(ids.iloc[bad[0]]), str(raw["Label"].iloc[bad[0]]), kind)
            )
        warnings.warn(
            f"{label}: {len(bad)} {noun} rows have an unknown ID, class or value and were "
            "ignored",
            stacklevel=2,
        )
    rows = np.flatnonzero(valid)
    codes, images = _image_codes(ids, cls, rows)
    cls, values = cls[rows], values[rows]

    key = codes * _N + cls
    table = _resolve_duplicates(key, values, images, on_duplicate, on_conflict, label, kind)
    if kind == "labels":
        wide = np.full((len(images), _N), UNKNOWN_LABEL, dtype=np.int8)
    else:
        wide = np.full((len(images), _N), np.nan, dtype=np.float64)
    for k, v in table:
        wide[k // _N, k % _N] = v

    index = pd.Index(images, name="image_id")
    if image_ids is not None:
        index = pd.Index(np.asarray(image_ids, dtype=object), name="image_id")
        at = pd.Index(images).get_indexer(index)
        found = at >= 0
        wanted = np.full((len(index), _N), _hole(kind), dtype=wide.dtype)
        wanted[found] = wide[at[found]]
        wide = wanted
    holes = wide == UNKNOWN_LABEL if kind == "labels" else np.isnan(wide)
    if holes.any():
        incomplete = holes.any(axis=1)
        if on_missing == "error":
            example = list(map(str, index[incomplete][:_EXAMPLES]))
            raise RsnaCsvError(
                f"{label}: no {noun} for {int(holes.sum())} image/class pairs "
                f"({int(incomplete.sum())} images, e.g. {example})"
            )
        if on_missing == "drop":
            wide, index = wide[~incomplete], index[~incomplete]
    return pd.DataFrame(wide, index=index, columns=list(CLASSES))


def _check_policy(arg: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")


def _source_name(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return Path(source).name
    return Path(str(getattr(source, "name", "") or "<stream>")).name


def _read_table(source: Source, label: str) -> pd.DataFrame:
    """``ID`` (str) and ``Label`` columns of the CSV; other columns are ignored."""
    if isinstance(source, bytes):
        data: str | os.PathLike[str] | bytes = source
    elif isinstance(source, str | os.PathLike):
        data = source
    else:  # an open file: read once, so it can be parsed twice (below)
        text = source.read()
        data = text.encode("utf-8") if isinstance(text, str) else text
    raw = _parse(data, label, {"ID": str})
    if pd.api.types.is_bool_dtype(raw["Label"]):
        # The parser took 0/1/True/False for booleans; re-read the text so that a "True"
        # is reported as the invalid value it is, and not read as 1.
        raw = _parse(data, label, {"ID": str, "Label": str})
    return raw


def _parse(
    data: str | os.PathLike[str] | bytes, label: str, dtype: dict[str, Any]
) -> pd.DataFrame:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    options: dict[str, Any] = {"dtype": dtype, "keep_default_na": False}
    try:
        try:
            # pyarrow parses the 4.5M-row RSNA file several times faster than the C engine.
            raw = pd.read_csv(source, engine="pyarrow", **options)
        except ImportError:
            raw = pd.read_csv(source, engine="c", **options)
    except pd.errors.EmptyDataError:
        raise RsnaCsvError(f"{label}: empty file, expected the header ID,Label") from None
    except ValueError as exc:  # parser errors, pyarrow's ArrowInvalid
        raise RsnaCsvError(f"{label}: not a readable ID,Label CSV ({exc})") from None
    if not set(_HEADER) <= set(raw.columns):
        raise RsnaCsvError(f"{label}: expected columns ID,Label, got {list(raw.columns)[:8]}")
    return raw[list(_HEADER)]


def _numeric(column: pd.Series) -> np.ndarray:
    """Label values as float64, NaN where not a number."""
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64)
    text = column.astype(str).str.strip()
    return pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)


def _split_class(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the class index (-1 when no known ``_<class>`` ends the ID) and the length
    of that suffix. ``endswith`` per class stays in pyarrow; a general split does not."""
    cls = np.full(len(ids), -1, dtype=np.int64)
    cut = np.zeros(len(ids), dtype=np.int64)
    for k, c in enumerate(CLASSES):
        hit = ids.str.endswith(f"_{c}").to_numpy(dtype=bool)
        cls[hit] = k
        cut[hit] = len(c) + 1
    return cls, cut


def _valid_values(values: np.ndarray, kind: Kind) -> np.ndarray:
    if kind == "labels":
        return (values == 0) | (values == 1)
    return np.isfinite(values) & (values >= 0) & (values <= 1)


def _why_invalid(row_id: str, value: str, kind: Kind) -> str:
    shown = row_id if len(row_id) <= 80 else row_id[:77] + "..."
    head, sep, tail = row_id.rpartition("_")
    if not row_id.startswith(_PREFIX) or not sep or len(head) <= len(_PREFIX):
        return f"malformed ID {shown!r} (expected ID_<image>_<class>)"
    if tail not in CLASSES:
        return f"unknown class {tail[:40]!r} in ID {shown!r}"
    if kind == "labels":
        return f"Label {value[:20]!r} of {shown} is not a label 0 or 1"
    return f"Label {value[:20]!r} of {shown} is not a probability in [0, 1]"


def _image_codes(
    ids: pd.Series, cls: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Integer image code per row of ``rows`` and the image ids, in order of first appearance.

    The image part is sliced per class (six fixed suffix lengths) so it stays vectorised,
    then the six pieces are factorised together and the codes renumbered in file order.
    """
    parts, where = [], []
    for k, c in enumerate(CLASSES):
        sel = rows[cls[rows] == k]
        parts.append(ids.iloc[sel].str.slice(0, -(len(c) + 1)))
        where.append(sel)
    order = np.concatenate(where)
    joined = pd.concat(parts, ignore_index=True)
    grouped_codes, uniques = pd.factorize(joined, sort=False)
    codes_by_row = np.empty(len(ids), dtype=np.int64)
    codes_by_row[order] = grouped_codes
    codes = codes_by_row[rows]
    first_seen = pd.unique(codes)  # int hashing: cheap, and gives file order
    renumber = np.empty(len(uniques), dtype=np.int64)
    renumber[first_seen] = np.arange(len(first_seen))
    images = np.asarray(uniques, dtype=object)[first_seen]
    return renumber[codes], images


def _resolve_duplicates(
    key: np.ndarray,
    values: np.ndarray,
    images: np.ndarray,
    on_duplicate: OnDuplicate,
    on_conflict: OnConflict,
    label: str,
    kind: Kind,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(cell keys, values) to assign, in order, one value per cell after the policies."""
    keys = pd.Series(key)
    repeated = keys.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return [(key, values)]
    rep = pd.DataFrame({"key": key[repeated], "value": values[repeated]})
    if on_duplicate == "error":
        same = rep.duplicated(["key", "value"], keep="first").to_numpy()
        if same.any():
            example = _cell_name(rep["key"].to_numpy()[same][0], images)
            raise RsnaCsvError(f"{label}: {int(same.sum())} repeated rows, e.g. {example}")
    spread = rep.groupby("key", sort=False)["value"].agg(["min", "max"])
    conflicts = spread.index[spread["min"] != spread["max"]].to_numpy()
    if len(conflicts) and on_conflict == "error":
        example = [_cell_name(k, images) for k in conflicts[:_EXAMPLES]]
        raise RsnaCsvError(
            f"{label}: conflicting duplicate rows for {len(conflicts)} image/class pairs, "
            f"e.g. {example}"
        )
    if len(conflicts):
        kept = {"first": "the first", "last": "the last", "max": "the maximum"}[on_conflict]
        warnings.warn(
            f"{label}: {len(conflicts)} (image, class) pairs have conflicting duplicate "
            f"{kind}; {kept} was kept",
            stacklevel=3,
        )
    once = ~keys.duplicated(keep="last" if on_conflict == "last" else "first").to_numpy()
    out = [(key[once], values[once])]
    if on_conflict == "max" and len(conflicts):
        out.append((conflicts, spread.loc[conflicts, "max"].to_numpy()))
    return out


def _cell_name(key: int, images: np.ndarray) -> str:
    return f"{images[int(key) // _N]}_{CLASSES[int(key) % _N]}"


def _hole(kind: Kind) -> float:
    return UNKNOWN_LABEL if kind == "labels" else np.nan


# --------------------------------------------------------------------------- writing


def row_id(image_id: str, cls: str) -> str:
    """The row id ``ID_<image>_<class>``; an ``ID_`` prefix already there is not doubled."""
    base = image_id if image_id.startswith(_PREFIX) else f"{_PREFIX}{image_id}"
    return f"{base}_{cls}"


def write_rsna_csv(
    dest: str | os.PathLike[str] | IO[str],
    image_ids: Sequence[str] | np.ndarray | pd.Index,
    values: np.ndarray,
    *,
    kind: Kind,
) -> Path | None:
    """Write ``(N, 6)`` labels or probabilities as ``ID,Label`` rows.

    Args:
        dest: a path (written atomically: readers never see half a file) or an open text
            file (opened with ``newline=""``).
        image_ids: ``(N,)`` image ids; ``ID_`` is prefixed where missing (`row_id`).
        values: ``(N, 6)``, columns `CLASSES`. Labels must be 0 or 1 (an unknown label
            has no row in this format: drop or fill it first); probabilities finite in [0, 1].
        kind: ``"labels"`` (written as integers) or ``"probabilities"`` (`PROBABILITY_FORMAT`).

    Returns:
        The path written, or None for an open file.

    Raises:
        RsnaCsvError: a shape mismatch, an empty image id or a value outside its range.
    """
    _check_policy("kind", kind, ("labels", "probabilities"))
    ids = np.asarray(image_ids, dtype=object).reshape(-1)
    values = np.asarray(values)
    if values.shape != (len(ids), _N):
        raise RsnaCsvError(f"values must have shape ({len(ids)}, {_N}), got {values.shape}")
    if any(not isinstance(i, str) or not i or i == _PREFIX for i in ids):
        raise RsnaCsvError("image ids must be non-empty strings")
    checked = values.astype(np.float64)
    if not _valid_values(checked, kind).all():
        what = "labels 0 or 1" if kind == "labels" else "probabilities in [0, 1]"
        raise RsnaCsvError(f"values must be {what}")
    names = np.array([row_id(str(i), "") for i in ids], dtype=object)
    frame = pd.DataFrame(
        {
            "ID": np.repeat(names, _N) + np.tile(np.array(CLASSES, dtype=object), len(ids)),
            "Label": values.astype(np.int64).reshape(-1)
            if kind == "labels"
            else checked.reshape(-1),
        }
    )
    options: dict[str, Any] = {"index": False, "lineterminator": "\n"}
    if kind == "probabilities":
        options["float_format"] = PROBABILITY_FORMAT
    if isinstance(dest, str | os.PathLike):
        path = Path(dest)
        with atomic_open(path, "w", newline="") as fh:
            frame.to_csv(fh, **options)
        return path
    frame.to_csv(dest, **options)
    return None
