"""The RSNA 2019 layout: the label CSV and a header index of ``stage_2_train/``.

``read_labels`` turns ``ID,Label`` rows (``ID_<hex>_<subtype>``, six per image) into one
row per image. ``build_index`` reads only the few header tags needed to group files into
series and order them along the slice normal (about 750,000 files: a process pool,
chunked), joins the labels and caches the table on disk, keyed by the folder listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import types
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from hohoho_core.labels import CLASSES
from hohoho_core.study import Study

__all__ = [
    "INDEX_COLUMNS",
    "UNLABELLED",
    "RsnaIndex",
    "build_index",
    "iter_labelled_studies",
    "read_labels",
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
UNLABELLED = -1
_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
]
_CACHE_VERSION = 1
_CHUNK = 2000
_ID_COLUMN = re.compile(r"^(ID_[0-9a-fA-F]+)_([a-z]+)$")


@dataclass
class RsnaIndex:
    """One row per slice file: where it is, its series, its place in it, its labels.

    ``table`` columns: `INDEX_COLUMNS`; label columns are int8 with -1 where unlabelled;
    ``z`` is the position along the slice normal (NaN where the series lacks positions
    and was ordered by InstanceNumber). ``path`` is relative to ``root``.
    """

    root: Path
    table: pd.DataFrame
    #: Image IDs in the label CSV without a file.
    missing_files: list[str] = field(default_factory=list)
    #: Image IDs with a file but no label row.
    missing_labels: list[str] = field(default_factory=list)
    #: Files (relative paths) whose header could not be read.
    unreadable: list[str] = field(default_factory=list)

    @property
    def n_studies(self) -> int:
        return int(self.table["study_uid"].nunique())


# --------------------------------------------------------------------------- labels


def read_labels(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse ``stage_2_train.csv`` into a ``(n_images, 6)`` int8 frame.

    Rows look like ``ID_<hex>_<subtype>,<0|1>``. Exact duplicate rows are dropped;
    duplicates that disagree take the maximum (a positive wins) with a warning. A class
    missing for an image is -1.

    Returns:
        Index ``image_id``; columns `CLASSES` in order; dtype int8.
    """
    raw = pd.read_csv(csv_path, dtype={"ID": str}, usecols=["ID", "Label"])
    parts = raw["ID"].str.extract(_ID_COLUMN)
    bad = parts[0].isna() | ~parts[1].isin(CLASSES)
    labels = pd.to_numeric(raw["Label"], errors="coerce")
    bad |= ~labels.isin([0, 1])
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} label rows have an unknown ID, class or value and were ignored",
            stacklevel=2,
        )
    long = pd.DataFrame(
        {"image_id": parts[0][~bad], "cls": parts[1][~bad], "label": labels[~bad].astype(np.int8)}
    )
    dup = long.duplicated(["image_id", "cls"], keep=False)
    if dup.any():
        spread = long[dup].groupby(["image_id", "cls"])["label"].agg(["min", "max"])
        conflicts = spread[spread["min"] != spread["max"]]
        if len(conflicts):
            warnings.warn(
                f"{len(conflicts)} (image, class) pairs have conflicting duplicate labels; "
                "the maximum was kept",
                stacklevel=2,
            )
        long = long.groupby(["image_id", "cls"], as_index=False, sort=False)["label"].max()
    wide = long.pivot(index="image_id", columns="cls", values="label")
    wide = wide.reindex(columns=list(CLASSES)).fillna(UNLABELLED).astype(np.int8)
    wide.columns.name = None
    wide.index.name = "image_id"
    return wide.sort_index()


# --------------------------------------------------------------------------- headers


def _read_index_header(
    path: str,
) -> tuple[str, str, tuple[float, ...] | None, tuple[float, ...] | None, int | None]:
    """(study_uid, series_uid, position (3,), orientation (6,), instance_number) of one file.

    Only the five tags are parsed (``specific_tags``); pixel data is never read.
    Raises on an unreadable file.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    study = ds.get("StudyInstanceUID")
    series = ds.get("SeriesInstanceUID")
    if not study or not series:
        raise ValueError("StudyInstanceUID or SeriesInstanceUID missing")
    return (
        str(study),
        str(series),
        _floats(ds.get("ImagePositionPatient"), 3),
        _floats(ds.get("ImageOrientationPatient"), 6),
        _int(ds.get("InstanceNumber")),
    )


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _read_chunk(paths: Sequence[str]) -> list[tuple | None]:
    """Headers of many files (one pool task); None for a file that cannot be read."""
    out: list[tuple | None] = []
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
    paths: Sequence[str], workers: int, progress: bool, chunk: int = _CHUNK
) -> list[tuple | None]:
    """Headers of ``paths`` in order, with a process pool when it pays off."""
    from tqdm.auto import tqdm

    results: list[tuple | None] = [None] * len(paths)
    bar = tqdm(total=len(paths), desc="DICOM headers", unit="file", disable=not progress)
    try:
        if workers <= 1 or len(paths) <= chunk:
            for start, part in _chunks(paths, chunk):
                results[start : start + len(part)] = _read_chunk(part)
                bar.update(len(part))
            return results
        # spawn: the parent may hold threads (torch, tqdm); fork would copy their locks.
        ctx = multiprocessing.get_context("spawn")
        with _plain_main(), ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(_read_chunk, part): (start, len(part))
                for start, part in _chunks(paths, chunk)
            }
            for fut in as_completed(futures):
                start, n = futures[fut]
                results[start : start + n] = fut.result()
                bar.update(n)
        return results
    finally:
        bar.close()


# --------------------------------------------------------------------------- index


def _dicom_folder(root: Path) -> Path:
    train = root / "stage_2_train"
    return train if train.is_dir() else root


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
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = table_path.with_name(table_path.name + ".tmp")
        if table_path.suffix == ".parquet":
            index.table.to_parquet(tmp, index=False)
        else:
            index.table.to_csv(tmp, index=False, compression="gzip")
        meta = {
            "version": _CACHE_VERSION,
            "missing_files": index.missing_files,
            "missing_labels": index.missing_labels,
            "unreadable": index.unreadable,
        }
        meta_path.write_text(json.dumps(meta))
        os.replace(tmp, table_path)  # the table appears last, complete
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


def _order_series(
    headers: pd.DataFrame, positions: np.ndarray, orientations: np.ndarray
) -> pd.DataFrame:
    """Add ``z``, ``slice_index`` and ``n_slices``; rows sorted by series then slice.

    ``z`` = position . (row cosines x column cosines): correct with gantry tilt. A series
    with any slice lacking position or orientation is ordered by InstanceNumber instead
    (its ``z`` is NaN).
    """
    normal = np.cross(orientations[:, :3], orientations[:, 3:])
    norm = np.linalg.norm(normal, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normal = normal / norm
    z = np.einsum("ij,ij->i", normal, positions)
    headers = headers.assign(z=z)
    series = ["study_uid", "series_uid"]
    lacking = headers["z"].isna().groupby([headers[c] for c in series], sort=False).transform("any")
    complete = ~lacking.to_numpy(dtype=bool)
    headers.loc[~complete, "z"] = np.nan
    inst = headers["instance_number"].astype("float64").fillna(np.inf)
    headers = headers.assign(_key=np.where(complete, headers["z"], inst), _inst=inst)
    headers = headers.sort_values([*series, "_key", "_inst", "image_id"], kind="mergesort")
    headers["slice_index"] = headers.groupby(series, sort=False).cumcount().astype(np.int32)
    headers["n_slices"] = (
        headers.groupby(series, sort=False)["image_id"].transform("size").astype(np.int32)
    )
    return headers.drop(columns=["_key", "_inst"])


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
        root: the dataset folder (holding ``stage_2_train/``), or any folder of
            ``ID_<hex>.dcm`` files.
        labels_csv: the label file; default ``root/stage_2_train.csv`` when it exists.
        cache_dir: where the table is cached; default ``$XDG_CACHE_HOME/hohoho/rsna``
            (``~/.cache``). The cache key is the folder listing (file count, names,
            folder mtime) and the label file's size and mtime.
        workers: processes reading headers (default: all CPUs; 1 reads in-process).
        progress: show a tqdm progress bar.
        use_cache: read and write the cache.
    """
    root = Path(root)
    folder = _dicom_folder(root)
    if labels_csv is None and (root / "stage_2_train.csv").is_file():
        labels_csv = root / "stage_2_train.csv"
    labels_path = Path(labels_csv) if labels_csv is not None else None
    names = _listing(folder)
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    key = _cache_key(root, folder, names, labels_path)
    if use_cache:
        cached = _load_cache(root, cache, key)
        if cached is not None:
            logger.info("RSNA index loaded from cache (%d slices)", len(cached.table))
            return cached

    paths = [str(folder / n) for n in names]
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    headers = _scan_headers(paths, n_workers, progress)
    rel_folder = folder.relative_to(root) if folder != root else Path()
    rows, unreadable = [], []
    pos = np.full((len(names), 3), np.nan)
    ori = np.full((len(names), 6), np.nan)
    for name, head in zip(names, headers, strict=True):
        rel = (rel_folder / name).as_posix()
        if head is None:
            unreadable.append(rel)
            continue
        study, series, position, orientation, instance = head
        i = len(rows)
        if position is not None:
            pos[i] = position
        if orientation is not None:
            ori[i] = orientation
        rows.append((Path(name).stem, study, series, instance, rel))
    pos, ori = pos[: len(rows)], ori[: len(rows)]
    table = pd.DataFrame(
        rows, columns=["image_id", "study_uid", "series_uid", "instance_number", "path"]
    )
    table["instance_number"] = table["instance_number"].astype("Int64")
    table = _order_series(table, pos, ori)

    missing_files: list[str] = []
    if labels_path is not None:
        labels = read_labels(labels_path)
        table = table.join(labels, on="image_id")
        missing_files = sorted(set(labels.index) - set(table["image_id"]))
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
    )
    if unreadable:
        logger.warning("%d files could not be read", len(unreadable))
    if use_cache:
        _save_cache(index, cache, key)
    return index


def _default_cache_dir() -> Path:
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
    from hohoho_core.dicom import load_study  # lazy: indexing alone never needs the reader

    root = Path(root)
    for (study_uid, series_uid), rows in table.groupby(["study_uid", "series_uid"], sort=False):
        study = load_study([root / p for p in rows["path"]])
        labels = rows.set_index("image_id").loc[study.image_ids, list(CLASSES)].to_numpy()
        yield f"{study_uid}|{series_uid}", study, labels
