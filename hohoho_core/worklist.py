"""A triage worklist: analyse every study of a source, most suspicious first.

A *source* is anything that yields `WorklistEntry` items (a key, a label and a loader):
the demo studies, an RSNA-layout folder, a server folder, or (added elsewhere) a PACS
query. `WorklistRun` analyses them one by one in a background thread, so a page can poll
its progress; `by_suspicion` orders what is done by the study-level "any" probability.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hohoho_core.labels import ANY_INDEX, CLASSES, SHORT_NAMES, SUBTYPES
from hohoho_core.predict import StudyPrediction, positive_runs
from hohoho_core.study import Study

__all__ = [
    "FolderSource",
    "IndexedSource",
    "PacsSource",
    "StudyResult",
    "StudySource",
    "WorklistEntry",
    "WorklistRun",
    "by_suspicion",
    "eta_seconds",
    "failed_result",
    "step_in_order",
    "summarise_prediction",
]


@dataclass(frozen=True)
class WorklistEntry:
    """One study of a source: ``key`` is unique within the source (e.g. ``"study|series"``),
    ``label`` is what the list shows (never a patient identifier), ``load`` reads it."""

    key: str
    label: str
    load: Callable[[], Study]
    #: How the viewer reopens it: ``("indexed", root, study_uid, series_uid)`` for a study
    #: of an RSNA-layout folder (with its labels), else ``("loader",)``: through ``load``.
    origin: tuple[str, ...] = ("loader",)


class StudySource(Protocol):
    """Where a worklist's studies come from.

    ``key`` names the source and changes when its content may have changed (results are
    cached under it); ``entries`` yields the studies in the source's own order.
    """

    key: str
    name: str

    def entries(self) -> Iterator[WorklistEntry]: ...


@dataclass(frozen=True)
class IndexedSource:
    """Every series of an RSNA-layout index table (`rsna.build_index` rows with absolute
    ``path``s), read with ``load_paths(paths)``; labelled "Study n · k slices"."""

    key: str
    name: str
    root: str
    table: Any  # pandas.DataFrame (not imported here: the type is only passed through)
    load_paths: Callable[[tuple[str, ...]], Study]

    def entries(self) -> Iterator[WorklistEntry]:
        groups = self.table.groupby(["study_uid", "series_uid"], sort=False)
        for n, ((study_uid, series_uid), rows) in enumerate(groups, start=1):
            paths = tuple(str(p) for p in rows["path"])
            yield WorklistEntry(
                key=f"{study_uid}|{series_uid}",
                label=f"Study {n} · {len(rows)} slices",
                load=lambda paths=paths: self.load_paths(paths),
                origin=("indexed", self.root, str(study_uid), str(series_uid)),
            )


@dataclass
class FolderSource:
    """Every axial series of an opened `dicom.SourceScan` (a server folder), in the
    scan's order; the scan must stay open while entries are loaded."""

    key: str
    name: str
    scan: Any  # hohoho_core.dicom.SourceScan
    folder: Path = field(default_factory=Path)

    def entries(self) -> Iterator[WorklistEntry]:
        for n, s in enumerate(self.scan.loadable_series(), start=1):
            desc = s.description or "series"
            yield WorklistEntry(
                key=f"{s.study_uid}|{s.series_uid}",
                label=f"Study {n} · {desc} · {s.n_slices} slices",
                load=lambda uid=s.series_uid: self.scan.load(uid),
            )


@dataclass(frozen=True)
class PacsSource:
    """The studies a PACS search found (`hohoho_core.pacs.search_studies` matches), each
    retrieved over WADO-RS when its turn comes (``load_study_uid(uid)``: retrieve, read like
    an upload, pick the series); labelled by date and description, never by patient."""

    key: str
    name: str
    matches: tuple[Any, ...]  # hohoho_core.pacs.StudyMatch
    load_study_uid: Callable[[str], Study]

    def entries(self) -> Iterator[WorklistEntry]:
        for n, m in enumerate(self.matches, start=1):
            parts = [f"Study {n}", m.study_date or "no date", m.description or "CT"]
            if m.n_instances:
                parts.append(f"{m.n_instances} instances")
            yield WorklistEntry(key=m.study_uid, label=" · ".join(parts),
                                load=lambda uid=m.study_uid: self.load_study_uid(uid))


@dataclass(frozen=True)
class StudyResult:
    """The worklist row of one study.

    ``any_max``: highest slice "any" probability (NaN when the study failed);
    ``subtypes``: short names of the subtypes with a slice at or above threshold, most
    probable first; ``subtype_max``: highest probability per subtype short name;
    ``any_runs``: 0-based inclusive runs of slices called "any"; ``seconds``: load plus
    analysis time; ``error``: why the study could not be analysed.
    """

    key: str
    label: str
    n_slices: int
    any_max: float
    positive: bool
    subtypes: tuple[str, ...]
    subtype_max: dict[str, float]
    any_runs: tuple[tuple[int, int], ...]
    seconds: float
    error: str | None = None
    notes: tuple[str, ...] = ()  # `StudyPrediction.notes` (e.g. a slice spacing not trained on)


def summarise_prediction(
    entry: WorklistEntry, pred: StudyPrediction, seconds: float
) -> StudyResult:
    """One `StudyResult` from a whole-study prediction."""
    prob = np.asarray(pred.prob, dtype=np.float64)
    calls = np.asarray(pred.labels, dtype=bool)
    sub_max = {SHORT_NAMES[c]: float(prob[:, CLASSES.index(c)].max()) for c in SUBTYPES}
    positive_subtypes = [
        SHORT_NAMES[c] for c in SUBTYPES if calls[:, CLASSES.index(c)].any()
    ]
    positive_subtypes.sort(key=lambda name: -sub_max[name])
    return StudyResult(
        key=entry.key,
        label=entry.label,
        n_slices=int(prob.shape[0]),
        any_max=float(prob[:, ANY_INDEX].max()),
        positive=bool(calls[:, ANY_INDEX].any()),
        subtypes=tuple(positive_subtypes),
        subtype_max=sub_max,
        any_runs=tuple(positive_runs(calls[:, ANY_INDEX])),
        seconds=float(seconds),
        notes=tuple(pred.notes),
    )


def failed_result(entry: WorklistEntry, error: str, seconds: float) -> StudyResult:
    """The row of a study that could not be read or analysed (listed last)."""
    return StudyResult(entry.key, entry.label, 0, math.nan, False, (), {}, (), seconds, error)


def by_suspicion(results: Iterable[StudyResult]) -> list[StudyResult]:
    """Highest "any" probability first; ties by key (stable across runs); failed last."""
    done = [r for r in results if r.error is None and np.isfinite(r.any_max)]
    failed = [r for r in results if r not in done]
    done.sort(key=lambda r: (-r.any_max, r.key))
    failed.sort(key=lambda r: r.key)
    return done + failed


def step_in_order(keys: Sequence[str], current: str | None, step: int) -> str | None:
    """The key ``step`` places after ``current`` in ``keys`` (no wrap), or None past the
    ends; from a ``current`` not in ``keys``, the first key (step > 0) or the last."""
    if not keys:
        return None
    if current not in keys:
        return keys[0] if step > 0 else keys[-1]
    j = list(keys).index(current) + step
    return keys[j] if 0 <= j < len(keys) else None


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Time left at the mean pace so far; None before the first study is done."""
    if done <= 0 or total <= 0:
        return None
    return max(0.0, elapsed / done * (total - done))


class WorklistRun:
    """Analyse ``entries`` with ``analyse(study) -> StudyPrediction`` in a daemon thread.

    Thread-safe snapshots (`results`, `progress`) for a page that polls; a study that
    fails is listed with its message and does not stop the rest. `cancel` stops after the
    study in progress.
    """

    def __init__(
        self,
        entries: Sequence[WorklistEntry],
        analyse: Callable[[Study], StudyPrediction],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entries = list(entries)
        self._analyse = analyse
        self._clock = clock
        self._lock = threading.Lock()
        self._results: list[StudyResult] = []
        self._cancel = threading.Event()
        self._started = clock()
        self._finished_at: float | None = None
        self._thread = threading.Thread(target=self._work, name="hohoho-worklist", daemon=True)

    def start(self) -> WorklistRun:
        self._started = self._clock()
        self._thread.start()
        return self

    def _work(self) -> None:
        for entry in self.entries:
            if self._cancel.is_set():
                break
            t0 = self._clock()
            try:
                study = entry.load()
                pred = self._analyse(study)
                result = summarise_prediction(entry, pred, self._clock() - t0)
            except Exception as err:  # one bad study must not stop the worklist
                result = failed_result(entry, f"{type(err).__name__}: {err}", self._clock() - t0)
            with self._lock:
                self._results.append(result)
        with self._lock:
            self._finished_at = self._clock()

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._finished_at is not None

    def results(self) -> list[StudyResult]:
        """What is done so far, most suspicious first."""
        with self._lock:
            return by_suspicion(list(self._results))

    def progress(self) -> tuple[int, int, float, float | None]:
        """``(done, total, elapsed seconds, seconds left or None)``."""
        with self._lock:
            done = len(self._results)
            end = self._finished_at if self._finished_at is not None else self._clock()
        elapsed = end - self._started
        left = 0.0 if self._finished_at is not None else eta_seconds(done, len(self.entries),
                                                                     elapsed)
        return done, len(self.entries), elapsed, left

    def entry(self, key: str) -> WorklistEntry | None:
        return next((e for e in self.entries if e.key == key), None)
