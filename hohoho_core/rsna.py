"""The RSNA 2019 layout: the label CSV and a header index of ``stage_2_train/``.

``read_labels`` turns ``ID,Label`` rows (``ID_<hex>_<subtype>``, six per image) into one
row per image. ``build_index`` reads only the few header tags needed to group files into
series and order them with `dicom.order_slices`, the rule `load_study` uses (about
750,000 files: a process pool, chunked), joins the labels and caches the table on disk, keyed by the folder listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import types
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hohoho_core.atomic import atomic_path, atomic_write_text
from hohoho_core.dicom import (
    HeaderRecord,
    UnreadableFileError,
    classify,
    order_slices,
    read_header,
)
from hohoho_core.header_journal import HeaderJournal
from hohoho_core.labels import CLASSES
from hohoho_core.rsna_csv import UNKNOWN_LABEL, read_rsna_csv
from hohoho_core.study import LoadReport, SkippedFile, Study
from hohoho_core.system import available_cores

__all__ = [
    "DICOM_DIR",
    "INDEX_COLUMNS",
    "LABELS_FILE",
    "LAYOUTS",
    "SKIPPED_COLUMNS",
    "UNLABELLED",
    "RsnaIndex",
    "build_index",
    "default_index_cache_dir",
    "default_labels_csv",
    "dicom_folder",
    "image_series",
    "is_dataset_folder",
    "iter_labelled_studies",
    "read_labels",
    "series_rows",
]

logger = logging.getLogger(__name__)

#: Columns of `RsnaIndex.table`, in order (the six label columns follow ``CLASSES``).
INDEX_COLUMNS: tuple[str, ...] = (
    "image_id",
    "study_uid",
    "series_uid",
    "slice_index",
    "n_slices",
    "z",
    "path",
    *CLASSES,
)
#: -1 in a label column: the image has no label for that class.
UNLABELLED = UNKNOWN_LABEL
#: Columns of `RsnaIndex.skipped`: files `dicom.order_slices` or the usability checks drop.
SKIPPED_COLUMNS: tuple[str, ...] = (
    "image_id",
    "study_uid",
    "series_uid",
    "path",
    "reason",
    "detail",
)
# 2: slices ordered by `dicom.order_slices` (ties, duplicates and odd sizes as load_study).
_CACHE_VERSION = 2
_CHUNK = 2000


@dataclass
class RsnaIndex:
    """One row per slice file: where it is, its series, its place in it, its labels.

    ``table`` columns: `INDEX_COLUMNS`; label columns are int8 with -1 where unlabelled;
    ``slice_index`` is the slice's index in the `Study` that `load_study` returns for
    its series (one rule: `dicom.order_slices`); ``z`` is the position along the slice
    normal (NaN where the series lacks positions and was ordered by InstanceNumber or
    file name). ``path`` is relative to ``root``. Files that rule drops are in
    ``skipped``, not in ``table``.
    """

    root: Path
    table: pd.DataFrame
    #: Image IDs in the label CSV without a file.
    missing_files: list[str] = field(default_factory=list)
    #: Image IDs with a file but no label row.
    missing_labels: list[str] = field(default_factory=list)
    #: Files (relative paths) whose header could not be read.
    unreadable: list[str] = field(default_factory=list)
    #: Readable files that `load_study` would not use either, so they are not in
    #: ``table`` (whose ``slice_index`` must match the `Study`): columns
    #: `SKIPPED_COLUMNS`, ``reason`` a `SkipReason` value (duplicate position, size
    #: mismatch, not CT...). Their labels still count as present (not ``missing_files``).
    skipped: pd.DataFrame = field(default_factory=lambda: _empty_skipped())

    @property
    def n_studies(self) -> int:
        return int(self.table["study_uid"].nunique())


# --------------------------------------------------------------------------- labels


def read_labels(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse ``stage_2_train.csv`` into a ``(n_images, 6)`` int8 frame.

    The RSNA file as it is: rows with an unknown ID, class or value are ignored with a
    warning; exact duplicate rows are dropped; duplicates that disagree take the maximum (a
    positive wins) with a warning; a class missing for an image is `UNLABELLED`. The rules
    are `rsna_csv.read_rsna_csv`'s policies, spelled out here.

    Returns:
        Index ``image_id``, sorted; columns `CLASSES` in order; dtype int8.
    """
    return read_rsna_csv(
        csv_path,
        kind="labels",
        on_invalid="drop",
        on_duplicate="drop",
        on_conflict="max",
        on_missing="unknown",
    ).sort_index()


# --------------------------------------------------------------------------- headers


def _read_index_header(path: str) -> HeaderRecord | _SkippedHeader | None:
    """One file's ordering header (`dicom.read_header` fast mode: pixel data never read).

    Returns the record of a usable slice, the record and reason of a readable file that
    `load_study` would skip too (not CT, no pixels...), or None when the header cannot
    be read or lacks its study or series UID.
    """
    try:
        rec = read_header(path, fast=True)
    except UnreadableFileError:
        return None
    if not rec.study_uid or not rec.series_uid:
        return None
    why = classify(rec)
    return rec if why is None else _SkippedHeader(rec, why)


@dataclass(frozen=True)
class _SkippedHeader:
    """A readable header that `classify` rejects: kept for `RsnaIndex.skipped`."""

    rec: HeaderRecord
    why: SkippedFile


def _read_chunk(paths: Sequence[str]) -> list[HeaderRecord | _SkippedHeader | None]:
    """Headers of many files (one pool task); None for a file that cannot be read."""
    out: list[HeaderRecord | _SkippedHeader | None] = []
    for p in paths:
        try:
            out.append(_read_index_header(p))
        except Exception:  # any parse failure: listed as unreadable, never fatal
            out.append(None)
    return out


def _chunks(items: Sequence[str], size: int) -> Iterator[tuple[int, Sequence[str]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """Hide a script-runner's fake ``__main__`` from spawned workers while the pool lives.

    Streamlit (and its AppTest) installs the page script as ``sys.modules["__main__"]``
    and leaves it there; spawn children re-run ``__main__.__file__``, which would execute
    the whole app in every worker. The workers only need this module's functions.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield  # a real ``python -m`` entry point: spawn imports it by name, safely
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _scan_headers(
    paths: Sequence[str], workers: int, progress: bool, chunk: int = _CHUNK,
    journal: HeaderJournal | None = None,
) -> list[HeaderRecord | _SkippedHeader | None]:
    """Headers of ``paths`` in order, with a process pool when it pays off.

    With a ``journal`` every finished chunk is recorded as it completes and chunks already
    on record are read back instead of scanned: an interrupted scan resumes.
    """
    from tqdm.auto import tqdm

    results: list[HeaderRecord | _SkippedHeader | None] = [None] * len(paths)
    todo: list[tuple[int, Sequence[str]]] = []
    for start, part in _chunks(paths, chunk):
        done = journal.get(start, list(part)) if journal is not None else None
        if done is None:
            todo.append((start, part))
        else:
            results[start : start + len(part)] = done
    resumed = len(paths) - sum(len(p) for _, p in todo)
    if resumed:
        logger.info("header scan: %d of %d files read back from the journal", resumed,
                    len(paths))
    bar = tqdm(total=len(paths), initial=resumed, desc="DICOM headers", unit="file",
               disable=not progress)

    def finish(start: int, part: Sequence[str], got: list[Any]) -> None:
        results[start : start + len(part)] = got
        if journal is not None:
            journal.put(start, list(part), got)
        bar.update(len(part))

    try:
        if workers <= 1 or len(todo) <= 1:
            for start, part in todo:
                finish(start, part, _read_chunk(part))
            return results
        # spawn: the parent may hold threads (torch, tqdm); fork would copy their locks.
        ctx = multiprocessing.get_context("spawn")
        with _plain_main(), ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_read_chunk, part): (start, part) for start, part in todo}
            for fut in as_completed(futures):
                start, part = futures[fut]
                finish(start, part, fut.result())
        return results
    finally:
        bar.close()


# --------------------------------------------------------------------------- index


#: The RSNA 2019 layout: DICOM files in this sub-folder, labels in this CSV beside it.
DICOM_DIR: str = "stage_2_train"
LABELS_FILE: str = "stage_2_train.csv"
#: Kaggle's two layouts, ``(DICOM sub-folder, label CSV beside it)``, in the order searched:
#: stage 2 (``stage_2_train/``) and stage 1 (``stage_1_train_images/``).
LAYOUTS: tuple[tuple[str, str], ...] = (
    (DICOM_DIR, LABELS_FILE),
    ("stage_1_train_images", "stage_1_train.csv"),
)


def _has_dcm(folder: Path) -> bool:
    """Whether ``folder`` directly holds a ``.dcm`` file (stops at the first one)."""
    try:
        with os.scandir(folder) as it:
            return any(e.name.lower().endswith(".dcm") and e.is_file() for e in it)
    except OSError:
        return False


def _dcm_subfolders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` (not links) that directly hold ``.dcm`` files, sorted."""
    try:
        with os.scandir(root) as it:
            subs = sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    return [s for s in subs if _has_dcm(s)]


def dicom_folder(root: str | os.PathLike[str]) -> Path:
    """Where a dataset's DICOM files are, the one rule for every caller.

    In order: the first `LAYOUTS` folder (``stage_2_train/``, ``stage_1_train_images/``)
    holding ``.dcm`` files; ``root`` itself when it holds them (a flat folder is indexed as
    it is); the only sub-folder of ``root`` holding them (a renamed folder). Failing all
    three: an existing `LAYOUTS` folder (empty), else ``root``; `build_index` then reports
    the folders it searched.
    """
    root = Path(root)
    known = [root / name for name, _ in LAYOUTS if (root / name).is_dir()]
    for folder in known:
        if _has_dcm(folder):
            return folder
    if _has_dcm(root):
        return root
    found = _dcm_subfolders(root)
    if len(found) == 1:
        return found[0]
    return known[0] if known else root


def default_labels_csv(root: str | os.PathLike[str]) -> Path:
    """Where a dataset's label CSV is: the CSV paired with its `dicom_folder` in `LAYOUTS`
    (``stage_1_train.csv`` beside ``stage_1_train_images/``) when it exists, else the first
    `LAYOUTS` CSV that exists in ``root``, else ``root/stage_2_train.csv`` (which may not
    exist)."""
    root = Path(root)
    folder = dicom_folder(root)
    paired = [csv for name, csv in LAYOUTS if folder == root / name]
    names = paired + [csv for _, csv in LAYOUTS if csv not in paired]
    for name in names:
        if (root / name).is_file():
            return root / name
    return root / names[0]


def is_dataset_folder(root: str | os.PathLike[str]) -> bool:
    """Whether ``build_index`` has something to index: a folder whose `dicom_folder` holds
    ``.dcm`` files (either Kaggle layout, a flat folder, or one renamed sub-folder)."""
    root = Path(root)
    return root.is_dir() and _has_dcm(dicom_folder(root))


def _nothing_to_index(root: Path) -> str:
    """The message of `build_index` for a folder without DICOM files: where it looked."""
    looked = [
        f"{root / name}" + ("" if (root / name).is_dir() else " (absent)") for name, _ in LAYOUTS
    ]
    looked.append(f"{root} itself")
    found = _dcm_subfolders(root)
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
        subs = f"its sub-folders: {len(found)} hold .dcm files ({names}), pass one of them"
    else:
        subs = "its sub-folders (none holds .dcm files)"
    return f"no .dcm files to index; looked in {', '.join(looked)} and {subs}"


def series_rows(table: pd.DataFrame, study_uid: str, series_uid: str) -> pd.DataFrame:
    """The rows of one series of an index ``table`` (`RsnaIndex.table` or a subset with its
    columns), in ``slice_index`` order."""
    rows = table[(table["study_uid"] == study_uid) & (table["series_uid"] == series_uid)]
    return rows.sort_values("slice_index")


def image_series(table: pd.DataFrame, image_id: str) -> pd.DataFrame:
    """The rows of the series holding ``image_id`` (its first row when listed twice), in
    ``slice_index`` order. Raises ``KeyError`` when the table has no such image."""
    hits = table.loc[table["image_id"] == image_id]
    if hits.empty:
        raise KeyError(f"image {image_id} is not in the index")
    rec = hits.iloc[0]
    return series_rows(table, rec["study_uid"], rec["series_uid"])


def _listing(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.lower().endswith(".dcm") and e.is_file())


def _cache_key(root: Path, folder: Path, names: Sequence[str], labels_csv: Path | None) -> str:
    """Changes when files are added, removed or renamed, or the label CSV changes."""
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}\n{root.resolve()}\n{folder.resolve()}\n{len(names)}\n".encode())
    h.update(str(folder.stat().st_mtime_ns).encode())
    for name in names:
        h.update(name.encode())
        h.update(b"\n")
    if labels_csv is not None:
        st = labels_csv.stat()
        h.update(f"{labels_csv.resolve()}\n{st.st_size}\n{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _has_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    suffix = "parquet" if _has_parquet() else "csv.gz"
    return cache_dir / f"rsna_index_{key}.{suffix}", cache_dir / f"rsna_index_{key}.json"


def _save_cache(index: RsnaIndex, cache_dir: Path, key: str) -> None:
    table_path, meta_path = _cache_paths(cache_dir, key)
    try:
        # the table is renamed into place last (on leaving the block), after its sidecar
        with atomic_path(table_path) as tmp:
            if table_path.suffix == ".parquet":
                index.table.to_parquet(tmp, index=False)
            else:
                index.table.to_csv(tmp, index=False, compression="gzip")
            meta = {
                "version": _CACHE_VERSION,
                "missing_files": index.missing_files,
                "missing_labels": index.missing_labels,
                "unreadable": index.unreadable,
                "skipped": index.skipped.to_dict(orient="records"),
            }
            atomic_write_text(meta_path, json.dumps(meta))
    except OSError as exc:
        logger.warning("could not write the index cache (%s)", type(exc).__name__)


def _load_cache(root: Path, cache_dir: Path, key: str) -> RsnaIndex | None:
    table_path, meta_path = _cache_paths(cache_dir, key)
    if not (table_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != _CACHE_VERSION:
            return None
        if table_path.suffix == ".parquet":
            table = pd.read_parquet(table_path)
        else:
            table = pd.read_csv(table_path, dtype={"study_uid": str, "series_uid": str})
        table = _typed(table)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring an unreadable index cache (%s)", type(exc).__name__)
        return None
    return RsnaIndex(
        root=root,
        table=table,
        missing_files=list(meta["missing_files"]),
        missing_labels=list(meta["missing_labels"]),
        unreadable=list(meta["unreadable"]),
        skipped=pd.DataFrame(meta["skipped"], columns=list(SKIPPED_COLUMNS)).astype(str),
    )


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    table = table.loc[:, list(INDEX_COLUMNS)].copy()
    for col in ("image_id", "study_uid", "series_uid", "path"):
        table[col] = table[col].astype(str)
    table["slice_index"] = table["slice_index"].astype(np.int32)
    table["n_slices"] = table["n_slices"].astype(np.int32)
    table["z"] = table["z"].astype(np.float64)
    for cls in CLASSES:
        table[cls] = table[cls].astype(np.int8)
    return table.reset_index(drop=True)


def _empty_skipped() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in SKIPPED_COLUMNS})


def _order_series(
    records: Sequence[HeaderRecord], paths: dict[int, str]
) -> tuple[list[tuple], list[tuple]]:
    """Rows of the kept slices and of the dropped files, series by series.

    Each series is ordered by `dicom.order_slices`, the rule `load_study` uses, so a
    row's ``slice_index`` is its place in the `Study`. ``z`` is the position along the
    slice normal, NaN where the series lacks positions or orientation (ordered by
    InstanceNumber or file name). ``paths`` maps ``id(record)`` to its relative path.

    Returns:
        ``(image_id, study_uid, series_uid, slice_index, n_slices, z, path)`` rows sorted
        by series then slice, and `SKIPPED_COLUMNS` rows.
    """
    groups: dict[tuple[str, str], list[HeaderRecord]] = {}
    for rec in records:
        groups.setdefault((rec.study_uid, rec.series_uid), []).append(rec)
    kept: list[tuple] = []
    dropped: list[tuple] = []
    for (study, series), recs in sorted(groups.items(), key=lambda kv: kv[0]):
        report = LoadReport()
        # A multi-frame file (not in the RSNA layout) is one row, at its first frame.
        slices = [c for c in order_slices(recs, report) if not c.frame]
        by_source = {r.source: r for r in recs}
        for i, c in enumerate(slices):
            z = c.z if report.sort_method == "normal" else np.nan
            path = paths[id(c.rec)]
            kept.append((Path(path).stem, study, series, i, len(slices), z, path))
        for skip in report.skipped:
            rec = by_source.get(skip.source)
            if rec is not None:  # frame-level drops of multi-frame files have no row
                path = paths[id(rec)]
                dropped.append(
                    (Path(path).stem, study, series, path, skip.reason.value, skip.detail)
                )
    return kept, dropped


def build_index(
    root: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    *,
    use_cache: bool = True,
) -> RsnaIndex:
    """Index an RSNA-style folder: one row per ``*.dcm`` file, ordered within its series.

    Args:
        root: the dataset folder (holding ``stage_2_train/`` or ``stage_1_train_images/``,
            or one sub-folder of ``.dcm`` files), or any folder of ``ID_<hex>.dcm`` files
            (`dicom_folder`).
        labels_csv: the label file; default `default_labels_csv` when it exists
            (``stage_2_train.csv`` or ``stage_1_train.csv``).
        cache_dir: where the table is cached; default ``$XDG_CACHE_HOME/hohoho/rsna``
            (``~/.cache``). The cache key is the folder listing (file count, names,
            folder mtime) and the label file's size and mtime.
        workers: processes reading headers (default: every core this process may use;
            1 reads in-process).
        progress: show a tqdm progress bar.
        use_cache: read and write the cache.

    Raises:
        FileNotFoundError: no ``.dcm`` file where `dicom_folder` looks; the message names
            the folders searched.
    """
    root = Path(root)
    folder = dicom_folder(root)
    if labels_csv is None and default_labels_csv(root).is_file():
        labels_csv = default_labels_csv(root)
    labels_path = Path(labels_csv) if labels_csv is not None else None
    names = _listing(folder)
    if not names:
        raise FileNotFoundError(_nothing_to_index(root))
    cache = Path(cache_dir) if cache_dir is not None else default_index_cache_dir()
    key = _cache_key(root, folder, names, labels_path)
    if use_cache:
        cached = _load_cache(root, cache, key)
        if cached is not None:
            logger.info("RSNA index loaded from cache (%d slices)", len(cached.table))
            return cached

    paths = [str(folder / n) for n in names]
    n_workers = workers if workers is not None else available_cores()
    # keyed by the listing alone: relabelling does not change what the headers say
    journal = (HeaderJournal(cache / f"rsna_headers_{_cache_key(root, folder, names, None)}",
                             _SkippedHeader) if use_cache else None)
    headers = _scan_headers(paths, n_workers, progress, chunk=_CHUNK, journal=journal)
    rel_folder = folder.relative_to(root) if folder != root else Path()
    records: list[HeaderRecord] = []
    rel_paths: dict[int, str] = {}
    unreadable: list[str] = []
    dropped: list[tuple] = []
    for name, head in zip(names, headers, strict=True):
        rel = (rel_folder / name).as_posix()
        if head is None:
            unreadable.append(rel)
        elif isinstance(head, _SkippedHeader):
            r, why = head.rec, head.why
            dropped.append(
                (Path(name).stem, r.study_uid, r.series_uid, rel, why.reason.value, why.detail)
            )
        else:
            records.append(head)
            rel_paths[id(head)] = rel
    rows, order_dropped = _order_series(records, rel_paths)
    table = pd.DataFrame(rows, columns=list(INDEX_COLUMNS[:7]))
    skipped = pd.DataFrame(dropped + order_dropped, columns=list(SKIPPED_COLUMNS))
    skipped = skipped.sort_values("path", kind="mergesort").reset_index(drop=True)

    missing_files: list[str] = []
    if labels_path is not None:
        labels = read_labels(labels_path)
        table = table.join(labels, on="image_id")
        present = set(table["image_id"]) | set(skipped["image_id"])
        missing_files = sorted(set(labels.index) - present)
    else:
        for cls in CLASSES:
            table[cls] = np.nan
    unlabelled = table[list(CLASSES)].isna().all(axis=1)
    missing_labels = sorted(table.loc[unlabelled, "image_id"])
    table[list(CLASSES)] = table[list(CLASSES)].fillna(UNLABELLED)
    index = RsnaIndex(
        root=root,
        table=_typed(table),
        missing_files=missing_files,
        missing_labels=missing_labels,
        unreadable=unreadable,
        skipped=skipped.astype(str) if len(skipped) else _empty_skipped(),
    )
    if unreadable:
        logger.warning("%d files could not be read", len(unreadable))
    if use_cache:
        _save_cache(index, cache, key)
        if journal is not None:
            journal.clear()
    return index


def default_index_cache_dir() -> Path:
    """Where `build_index` caches header tables unless given ``cache_dir``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hohoho" / "rsna"


def iter_labelled_studies(
    root: str | os.PathLike[str], table: pd.DataFrame
) -> Iterator[tuple[str, Study, np.ndarray]]:
    """Each series of an index ``table`` (from `build_index` on ``root``), read from DICOM.

    Yields ``(key, study, labels)``: ``key`` is ``"<study_uid>|<series_uid>"``, ``study``
    the `Study` as `load_study` sorts it, and ``labels`` its ``(S, 6)``
    labels in that slice order (-1 where the CSV has none). Evaluations read the split the
    way users' studies are read, so their numbers are the ones users get.
    """
    from hohoho_core.dicom import load_study  # looked up per call: tests replace it

    root = Path(root)
    for (study_uid, series_uid), rows in table.groupby(["study_uid", "series_uid"], sort=False):
        study = load_study([root / p for p in rows["path"]])
        labels = rows.set_index("image_id").loc[study.image_ids, list(CLASSES)].to_numpy()
        yield f"{study_uid}|{series_uid}", study, labels
