"""A preprocessed, memory-mapped study cache so a training epoch never decodes DICOM.

Layout under ``root`` (one pair of files per study, ``key`` a safe file stem)::

    <key>.npy    int16 [S, size, size] HU, already cropped and resized
                 (``preprocess.crop_and_resize_hu``), rounded to whole HU
    <key>.json   sidecar: image_ids, labels (S, 6) with -1 = unknown, study_uid,
                 series_uid, size, crop, extra meta

Writes go through ``hohoho_core.atomic`` (a dot-prefixed temporary file moved into place
with ``os.replace``); the sidecar is written last, so a study counts as cached only once both
files are complete. A killed build leaves at most temporary files, which are never
listed and are overwritten on the next build.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hohoho_core.atomic import atomic_open, atomic_write_bytes
from hohoho_core.labels import CLASSES
from hohoho_core.preprocess import PreprocessConfig, crop_and_resize_hu
from hohoho_core.study import Study

__all__ = [
    "CachedStudy",
    "StudyCache",
    "StudyItem",
    "build_cache",
    "build_cache_from_index",
    "index_jobs",
    "study_key",
]

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
_SIDECAR_VERSION = 1
_INT16_MIN, _INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def study_key(study_uid: str, series_uid: str) -> str:
    """Cache key for one series: ``<study_uid>_<series_uid>``, unsafe characters -> ``_``."""
    key = re.sub(r"[^A-Za-z0-9._-]", "_", f"{study_uid}_{series_uid}")
    return key.lstrip(".")[:200] or "_"


def _check_key(key: str) -> str:
    # Keys become file names: no separators, no leading dot (dot files are temporaries).
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(
            "cache key must be 1-200 characters of letters, digits, '.', '_' or '-', "
            "not starting with '.'"
        )
    return key


@dataclass(frozen=True)
class CachedStudy:
    """One cached study. ``hu`` is a read-only int16 memmap ``[S, size, size]``."""

    key: str
    hu: np.ndarray
    labels: np.ndarray  # int8 (S, 6), columns labels.CLASSES; -1 = unknown
    image_ids: list[str]
    study_uid: str
    series_uid: str
    size: int
    crop: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])


@dataclass
class StudyItem:
    """What a ``build_cache`` loader returns: a full-resolution study and its labels.

    ``hu`` float32 ``[S, H, W]`` in study order; ``labels`` ``(S, 6)`` or None (unknown).
    """

    hu: np.ndarray
    image_ids: list[str]
    labels: np.ndarray | None = None
    study_uid: str = ""
    series_uid: str = ""


class StudyCache:
    """Folder of cropped+resized int16 HU studies with label sidecars (see module doc)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        #: Keys that failed to load during the last ``build_cache`` into this object.
        self.build_failures: list[str] = []

    def _npy(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def _json(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def put(
        self,
        key: str,
        hu_small: np.ndarray,
        labels: np.ndarray | None,
        image_ids: Sequence[str],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one study atomically (replacing any previous version of ``key``).

        ``hu_small``: HU ``[S, size, size]`` (rounded to int16); ``labels``: ``(S, 6)`` in
        {-1, 0, 1} or None (all unknown); ``image_ids``: S strings in study order.
        ``meta`` may hold ``study_uid``, ``series_uid``, ``crop`` (bool; the crop setting
        the study was built with, default True) and any other JSON-serialisable values.
        """
        _check_key(key)
        hu_small = np.asarray(hu_small)
        if hu_small.ndim != 3 or hu_small.shape[0] == 0 or hu_small.shape[1] != hu_small.shape[2]:
            raise ValueError(f"hu_small must be non-empty [S, size, size], got {hu_small.shape}")
        s = hu_small.shape[0]
        image_ids = [str(i) for i in image_ids]
        if len(image_ids) != s:
            raise ValueError(f"{len(image_ids)} image ids for {s} slices")
        if labels is None:
            lab = np.full((s, len(CLASSES)), -1, dtype=np.int8)
        else:
            lab_in = np.asarray(labels)
            if lab_in.shape != (s, len(CLASSES)):
                raise ValueError(f"labels must have shape {(s, len(CLASSES))}, got {lab_in.shape}")
            if not np.isin(lab_in, (-1, 0, 1)).all():
                raise ValueError("labels must be -1 (unknown), 0 or 1")
            lab = lab_in.astype(np.int8)
        meta = dict(meta or {})
        meta.pop("size", None)  # the array shape is the truth for size
        hu16 = np.clip(np.rint(hu_small), _INT16_MIN, _INT16_MAX).astype(np.int16)
        sidecar = {
            "version": _SIDECAR_VERSION,
            "key": key,
            "n_slices": s,
            "size": int(hu_small.shape[1]),
            "crop": bool(meta.pop("crop", True)),
            "study_uid": str(meta.pop("study_uid", "")),
            "series_uid": str(meta.pop("series_uid", "")),
            "image_ids": image_ids,
            "classes": list(CLASSES),
            "labels": lab.tolist(),
            "meta": meta,
        }
        text = json.dumps(sidecar).encode("utf-8")
        # Array first, sidecar last: the sidecar is the "study complete" marker.
        self._json(key).unlink(missing_ok=True)
        with atomic_open(self._npy(key), "wb") as f:
            np.save(f, hu16, allow_pickle=False)
        atomic_write_bytes(self._json(key), text)

    def _sidecar(self, key: str) -> dict[str, Any]:
        with open(self._json(key), encoding="utf-8") as f:
            return json.load(f)

    def get(self, key: str) -> CachedStudy:
        """Load one study; ``hu`` is memory-mapped read-only (no pickle)."""
        _check_key(key)
        if key not in self:
            raise KeyError("study not in cache")
        side = self._sidecar(key)
        hu = np.load(self._npy(key), mmap_mode="r", allow_pickle=False)
        labels = np.asarray(side["labels"], dtype=np.int8).reshape(-1, len(CLASSES))
        if hu.ndim != 3 or hu.shape[0] != side["n_slices"] or labels.shape[0] != hu.shape[0]:
            raise ValueError("cache entry is inconsistent (array and sidecar disagree)")
        return CachedStudy(
            key=key,
            hu=hu,
            labels=labels,
            image_ids=list(side["image_ids"]),
            study_uid=side["study_uid"],
            series_uid=side["series_uid"],
            size=int(side["size"]),
            crop=bool(side["crop"]),
            meta=dict(side.get("meta", {})),
        )

    def settings(self, key: str) -> tuple[int, bool]:
        """``(size, crop)`` a cached study was built with (reads only the sidecar)."""
        side = self._sidecar(_check_key(key))
        return int(side["size"]), bool(side["crop"])

    def keys(self) -> list[str]:
        """Sorted keys of complete studies (temporary files are never listed)."""
        out = []
        for p in self.root.glob("*.json"):
            key = p.stem
            if _KEY_RE.match(key) and self._npy(key).is_file():
                out.append(key)
        return sorted(out)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            return False
        return self._json(key).is_file() and self._npy(key).is_file()

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


# --- building -----------------------------------------------------------------------


def _as_item(loaded: StudyItem | Study) -> StudyItem:
    if isinstance(loaded, StudyItem):
        return loaded
    if isinstance(loaded, Study):
        return StudyItem(
            hu=loaded.hu,
            image_ids=loaded.image_ids,
            labels=None,
            study_uid=loaded.study_uid,
            series_uid=loaded.series_uid,
        )
    raise TypeError(f"loader must return StudyItem or Study, got {type(loaded).__name__}")


def _put_item(cache: StudyCache, key: str, item: StudyItem, cfg: PreprocessConfig) -> None:
    hu_small = crop_and_resize_hu(np.asarray(item.hu, dtype=np.float32), cfg)
    meta = {
        "study_uid": item.study_uid,
        "series_uid": item.series_uid,
        "crop": cfg.crop,
        "preprocess": cfg.to_dict(),
    }
    cache.put(key, hu_small, item.labels, item.image_ids, meta)


def _build_one(root: str, key: str, load: Callable[[], StudyItem | Study], cfg_d: dict) -> str:
    """Worker: load, crop+resize and store one study. Runs in the parent or a pool."""
    cfg = PreprocessConfig.from_dict(cfg_d)
    _put_item(StudyCache(root), key, _as_item(load()), cfg)
    return key


def _worker_init() -> None:
    # Each worker does one study at a time; let the pool, not torch, use the cores.
    import torch

    torch.set_num_threads(1)


def _check_settings(cache: StudyCache, key: str, cfg: PreprocessConfig) -> None:
    size, crop = cache.settings(key)
    if (size, crop) != (cfg.size, cfg.crop):
        raise ValueError(
            f"cache at {cache.root} holds studies built with size={size}, crop={crop}; "
            f"requested size={cfg.size}, crop={cfg.crop}: use another cache folder"
        )


def build_cache(
    studies: Iterable[tuple[str, Callable[[], StudyItem | Study]]] | Any,
    root: str | os.PathLike[str],
    cfg: PreprocessConfig,
    workers: int = 1,
    progress: bool = True,
    *,
    data_root: str | os.PathLike[str] | None = None,
    loader: Callable[[list[Path]], Study] | None = None,
) -> StudyCache:
    """Fill the cache at ``root``; studies already there are skipped (idempotent).

    ``studies`` is either an iterable of ``(key, load)`` where ``load()`` returns a
    ``StudyItem`` (or a ``Study``, whose labels are then unknown), or an RSNA index table
    (``pandas.DataFrame``), which is passed on to ``build_cache_from_index`` with
    ``data_root`` and ``loader``. With ``workers > 1`` studies are built in a process
    pool (then ``load`` must be picklable: a module-level function or a
    ``functools.partial`` of one). A study whose loader raises is skipped with a warning
    (key and exception type only) and listed in ``cache.build_failures``. A cached study
    built with another size/crop raises ``ValueError``.
    """
    import pandas as pd

    if isinstance(studies, pd.DataFrame):
        if data_root is None:
            raise ValueError("building from an index table needs data_root")
        return build_cache_from_index(
            studies, data_root, root, cfg, workers=workers, progress=progress, loader=loader
        )
    cache = StudyCache(root)
    todo: list[tuple[str, Callable[[], StudyItem | Study]]] = []
    seen: set[str] = set()
    for key, load in studies:
        _check_key(key)
        if key in seen:
            raise ValueError("duplicate cache key in studies")
        seen.add(key)
        if key in cache:
            _check_settings(cache, key, cfg)
        else:
            todo.append((key, load))
    cache.build_failures = _run_jobs(cache, todo, cfg, workers, progress)
    return cache


def _run_jobs(
    cache: StudyCache,
    todo: list[tuple[str, Callable[[], StudyItem | Study]]],
    cfg: PreprocessConfig,
    workers: int,
    progress: bool,
) -> list[str]:
    from tqdm.auto import tqdm

    failures: list[str] = []
    cfg_d = cfg.to_dict()
    root = str(cache.root)
    bar = tqdm(total=len(todo), desc="cache", unit="study", disable=not progress)

    def failed(key: str, exc: BaseException) -> None:
        # Exception text from a loader could carry anything; log only its type.
        log.warning("cache: study %s skipped (%s)", key, type(exc).__name__)
        failures.append(key)

    try:
        if workers <= 1 or len(todo) <= 1:
            for key, load in todo:
                try:
                    _build_one(root, key, load, cfg_d)
                except Exception as exc:  # one bad study must not stop a long build
                    failed(key, exc)
                bar.update(1)
        else:
            for _key, load in todo:
                try:
                    pickle.dumps(load)
                except Exception as exc:
                    raise TypeError(
                        "with workers > 1 each loader must be picklable (a module-level "
                        "function or a functools.partial of one)"
                    ) from exc
            with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
                futures = {
                    pool.submit(_build_one, root, key, load, cfg_d): key for key, load in todo
                }
                for fut in as_completed(futures):
                    exc = fut.exception()
                    if isinstance(exc, BrokenProcessPool):
                        raise exc  # a dead worker (e.g. out of memory) is not one bad study
                    if exc is not None:
                        failed(futures[fut], exc)
                    bar.update(1)
    finally:
        bar.close()
    return sorted(failures)


@dataclass(frozen=True)
class _IndexStudyLoader:
    """Picklable ``load()`` for one index group: read files, align labels by image_id."""

    paths: tuple[str, ...]
    labels_by_id: Mapping[str, tuple[int, ...]]
    study_uid: str
    series_uid: str
    loader: Callable[[list[Path]], Study] | None = None
    #: Decoding threads for the default reader (1 inside a process pool: no oversubscription).
    threads: int | None = None

    def __call__(self) -> StudyItem:
        paths = [Path(p) for p in self.paths]
        if self.loader is None:
            # Imported lazily: dicom.py is optional for users of a ready cache.
            from hohoho_core.dicom import load_study

            study = load_study(paths, workers=self.threads)
        else:
            study = self.loader(paths)
        unknown = (-1,) * len(CLASSES)
        labels = np.array(
            [self.labels_by_id.get(i, unknown) for i in study.image_ids], dtype=np.int8
        ).reshape(-1, len(CLASSES))
        return StudyItem(
            hu=study.hu,
            image_ids=study.image_ids,
            labels=labels,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
        )


def _labels_by_id(group: Any) -> dict[str, tuple[int, ...]]:
    """image_id -> 6 labels (-1 where the column is absent or the value missing)."""
    cols = []
    for c in CLASSES:
        if c in group.columns:
            v = group[c].to_numpy(dtype=np.float64, na_value=np.nan)
            cols.append(np.where(np.isnan(v), -1, v).astype(np.int8))
        else:
            cols.append(np.full(len(group), -1, dtype=np.int8))
    mat = np.stack(cols, axis=1)
    ids = group["image_id"].astype(str).tolist()
    return {i: tuple(int(x) for x in row) for i, row in zip(ids, mat, strict=True)}


def index_jobs(
    index_table: Any,
    data_root: str | os.PathLike[str],
    loader: Callable[[list[Path]], Study] | None = None,
    threads: int | None = None,
) -> list[tuple[str, Callable[[], StudyItem]]]:
    """One ``(key, load)`` job per (study_uid, series_uid) group of an RSNA index table.

    The table needs columns image_id, study_uid, series_uid, path (relative to
    ``data_root``) and, ideally, the six ``labels.CLASSES`` columns. ``threads`` is passed
    to ``dicom.load_study(workers=...)`` when ``loader`` is None.
    """
    missing = {"image_id", "study_uid", "series_uid", "path"} - set(index_table.columns)
    if missing:
        raise ValueError(f"index table lacks columns {sorted(missing)}")
    root = Path(data_root)
    jobs: list[tuple[str, Callable[[], StudyItem]]] = []
    for (study_uid, series_uid), group in index_table.groupby(
        ["study_uid", "series_uid"], sort=True
    ):
        paths = tuple(str(root / p) for p in group["path"].astype(str))
        jobs.append(
            (
                study_key(str(study_uid), str(series_uid)),
                _IndexStudyLoader(
                    paths,
                    _labels_by_id(group),
                    str(study_uid),
                    str(series_uid),
                    loader,
                    threads,
                ),
            )
        )
    return jobs


def build_cache_from_index(
    index_table: Any,
    data_root: str | os.PathLike[str],
    cache_root: str | os.PathLike[str],
    cfg: PreprocessConfig,
    workers: int = 1,
    progress: bool = True,
    loader: Callable[[list[Path]], Study] | None = None,
) -> StudyCache:
    """Cache every series of an RSNA index table (``rsna.RsnaIndex.table``).

    Rows are grouped by (study_uid, series_uid) into key ``study_key(...)``; each group's
    files are read with ``loader`` (default ``dicom.load_study``), whose sorted
    ``image_ids`` decide the slice order; labels are aligned to it by image_id (-1 where
    an image has no label). Idempotent and parallel like ``build_cache``.
    """
    threads = 1 if workers > 1 else None
    jobs = index_jobs(index_table, data_root, loader, threads)
    return build_cache(jobs, cache_root, cfg, workers, progress)
