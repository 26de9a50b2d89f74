"""Batch prediction as a pipeline: studies decoded and preprocessed in worker processes while
the CNN runs in the main process.

`prepared_studies` hands out the series of a `dicom.SourceScan` as `PreparedStudy` items
(model input plus what the log and the report need, never the HU volume), in the order of
the jobs given. With ``workers > 0`` a ``torch.utils.data.DataLoader`` runs an
`IterableDataset` in forked processes: job ``j`` goes to worker ``j % workers`` and the loader
collects round-robin, so the order is the jobs' order with no reorder buffer; each worker
is at most ``prefetch`` items ahead, so memory stays flat whatever the folder's size
(about ``workers * prefetch`` studies' model inputs). ``workers == 0`` runs the same code
in the calling process (the serial path). Forked workers share the scan (headers read once)
copy-on-write.

`Progress` prints slices per second, studies done and time left; `SkipTally` counts what
was not used by reason (file names only, never patient identifiers).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from hohoho_core.dicom import StudyLoadError
from hohoho_core.dicom.loader import SourceScan
from hohoho_core.preprocess import PreprocessConfig, make_input
from hohoho_core.resultlog import study_key
from hohoho_core.spacing import measured_spacing, slab_ids

__all__ = [
    "CnnSeconds",
    "PreparedStudy",
    "Progress",
    "SkipTally",
    "default_lanes",
    "default_workers",
    "prepared_studies",
]

#: Reason counted for a series of which no slice could be used.
UNLOADABLE_SERIES = "series with no usable slice"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: Added to the reader processes' niceness (lower CPU priority than the CNN's threads).
READER_NICENESS = 10


@dataclass
class PreparedStudy:
    """One job's outcome: the model input of a loaded series, or ``x is None`` (no usable slice).

    Attributes:
        index: position in the jobs given to `prepared_studies`.
        x: float32 ``[S, C, size, size]`` model input, or None.
        skipped: ``(file name, reason)`` of files this series did not use, beyond the
            scan's own report.
    """

    index: int
    study_uid: str
    series_uid: str
    image_ids: list[str]
    x: np.ndarray | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    slice_spacing: float | None = None  # mm, for `Predictor.input_notes`
    #: Read as slabs (`Predictor.slabs_for`): slab index per slice, and the slices' own ids
    #: (``image_ids`` and ``x`` are then the slabs'); None for a series read slice by slice.
    groups: np.ndarray | None = None
    slice_ids: list[str] | None = None

    @property
    def key(self) -> str:
        return study_key(self.study_uid, self.series_uid)


def default_lanes(cores: int, device_type: str = "cpu") -> int:
    """CNN lanes (`predict.Predictor` ``lanes``) for ``cores`` usable cores: 2 on a CPU
    with at least two cores, else 1; each lane gets ``cores // lanes`` threads.

    Two lanes of one thread run the CNN at 1.03-1.17x one lane of two threads on a 2-core
    Zen 5 EPYC (no barrier between the cores), and while both run, the main thread reads
    the next studies on whatever CPU they leave: what the CNN's parallel sections could
    not give it. A GPU runs one batch at a time.
    """
    return 2 if device_type == "cpu" and cores >= 2 else 1


def default_workers(cores: int) -> int:
    """Worker processes for ``cores`` usable cores.

    On two cores or fewer none: a reader process there takes its CPU from the CNN's
    threads, and the CNN's parallel sections wait for the thread that lost its core, so
    overlapping costs more than it saves (bench/results.md section 9 measures both in each
    run: on a 2-core EPYC, 200 studies, one reader ran at 0.89-0.98x the in-process rate in
    five of six runs, and 1.21x in one, so the evidence leans to none, not by much).
    Beyond that, reading and preprocessing cost about a fifth of the CNN's time per slice,
    so one worker keeps up with the CNN on up to about four cores, then one more per four
    cores, at most 8.
    """
    if cores <= 2:
        return 0
    return max(1, min(8, cores // 4))


def _identity(item: PreparedStudy) -> PreparedStudy:
    return item


def _worker_init(parent: int, _: int) -> None:
    # The parent may turn SIGTERM into an exception to stop cleanly; a worker just ends
    # (the parent shuts the pool down and keeps the results log valid).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A parent killed outright (SIGKILL, OOM killer) cannot join its workers, and one
    # blocked on a full pipe would wait forever: have Linux kill it with the parent.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)
    # Readers yield the cores to the CNN: on a machine with as many CNN threads as cores, a
    # reader at the same priority stalls one CNN thread and the others wait for it at every
    # layer; at a lower priority it runs when a core would idle, and still at full speed
    # when the CNN waits for it (its queue empty).
    with contextlib.suppress(OSError):
        os.nice(READER_NICENESS)


class _PreparedStudies(IterableDataset[PreparedStudy]):
    """The jobs of one worker (``j % n_workers == worker id``), in job order."""

    def __init__(self, scan: SourceScan, jobs: Sequence[tuple[str, str]],
                 prepare: Callable[[np.ndarray], np.ndarray],
                 volume: Callable[[np.ndarray, float | None],
                                  tuple[np.ndarray, np.ndarray | None]] | None = None
                 ) -> None:
        self.scan = scan
        self.jobs = list(jobs)
        self.prepare = prepare
        self.volume = volume

    def __iter__(self) -> Iterator[PreparedStudy]:
        info = get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        mine = {study_key(*job): j for j, job in enumerate(self.jobs) if j % n == wid}
        if not mine:
            return
        shared = {(s.source, s.reason.value) for s in self.scan.report.skipped}
        pending: list[str] = []  # handed to the reader, not yet returned by it

        def skip(study_uid: str, series_uid: str) -> bool:
            key = study_key(study_uid, series_uid)
            if key not in mine:
                return True
            pending.append(key)
            return False

        def failed(key: str) -> PreparedStudy:
            study_uid, _, series_uid = key.partition("/")
            return PreparedStudy(mine[key], study_uid, series_uid, [], None)

        try:
            for study in self.scan.iter_studies(skip=skip, workers=1):
                key = study_key(study.study_uid, study.series_uid)
                # iter_studies passes over a series with no usable slice silently: every key
                # handed out before this one is such a series.
                while pending and pending[0] != key:
                    yield failed(pending.pop(0))
                if pending:
                    pending.pop(0)
                extra = [(s.source, s.reason.value) for s in study.report.skipped]
                spacing = measured_spacing(study)
                ids = list(study.image_ids)
                hu, groups = ((study.hu, None) if self.volume is None
                              else self.volume(study.hu, spacing))
                yield PreparedStudy(
                    index=mine[key],
                    study_uid=study.study_uid,
                    series_uid=study.series_uid,
                    image_ids=ids if groups is None else slab_ids(ids, groups),
                    x=self.prepare(hu),
                    skipped=[s for s in extra if s not in shared],
                    slice_spacing=spacing,
                    groups=groups,
                    slice_ids=None if groups is None else ids,
                )
        except StudyLoadError:
            pass  # raised only when none of this worker's series loaded: all reported below
        while pending:
            yield failed(pending.pop(0))


def prepared_studies(
    scan: SourceScan,
    jobs: Sequence[tuple[str, str]],
    cfg: PreprocessConfig,
    *,
    workers: int = 0,
    prefetch: int = 2,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    volume: Callable[[np.ndarray, float | None],
                     tuple[np.ndarray, np.ndarray | None]] | None = None,
) -> Iterator[PreparedStudy]:
    """`PreparedStudy` for each ``(study_uid, series_uid)`` job, in job order.

    Args:
        scan: an open scan; the jobs are some of its ``loadable_series()``, in that order
            (ValueError otherwise).
        cfg: the weights' preprocessing (`predict.Predictor.preprocess_config`).
        workers: processes decoding and preprocessing; 0 does it here, one study at a
            time. Needs the ``fork`` start method (Linux); elsewhere runs serially.
        prefetch: items each worker may have ready ahead of the consumer (the bound).
        prepare: HU ``[S, H, W]`` -> model input; default ``make_input(hu, cfg)``.
        volume: (HU volume, measured spacing) -> (what the model reads, slab index per
            slice or None) (`Predictor.model_volume`): a thin series is prepared as its
            slabs or its sliding reformat, as the predictor reads it.

    Closing the iterator (or an exception in the consumer) stops and joins the workers.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    position = {(s.study_uid, s.series_uid): i for i, s in enumerate(scan.loadable_series())}
    where = [position.get(tuple(job), -1) for job in jobs]
    if -1 in where or where != sorted(where):
        # Each worker reads its share in the scan's order; round-robin collection then
        # restores the jobs' order only if that is the scan's order too.
        raise ValueError("jobs must be loadable series of the scan, in loadable_series() order")
    fn = prepare if prepare is not None else _MakeInput(cfg)
    dataset = _PreparedStudies(scan, jobs, fn, volume)
    workers = min(workers, len(dataset.jobs))
    if workers == 0 or "fork" not in multiprocessing.get_all_start_methods():
        yield from dataset
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch,
        collate_fn=_identity,
        worker_init_fn=functools.partial(_worker_init, os.getpid()),
        # Forked workers inherit the scan (headers read once) instead of unpickling it.
        multiprocessing_context="fork",
    )
    it = iter(loader)
    try:
        expected = 0
        for item in it:
            if item.index != expected:  # the round-robin contract, checked cheaply
                raise RuntimeError(f"pipeline order broken: got job {item.index}, "
                                   f"expected {expected}")
            expected += 1
            yield item
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # join now, not whenever the iterator is collected
        del it


@dataclass(frozen=True)
class _MakeInput:
    cfg: PreprocessConfig

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        return make_input(hu, self.cfg)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class CnnSeconds(Protocol):
    """What `Progress` reads of a run's CNN timing (`predict.CnnTiming` has it)."""

    seconds: float

    @property
    def rate(self) -> float: ...


class Progress:
    """One line of progress on ``stream`` at most every ``interval`` seconds, and at the end.

    ``predict: 37/200 studies, 1,110 slices, 48.1 slices/s, about 3m12s left``: the rate
    counts this run's slices over the time since the first studies were found; time left
    assumes the remaining studies take as long as this run's did on average. With ``cnn``
    (a `predict.CnnTiming` the run fills) the line ends with the share of that time spent
    in the CNN and the CNN's own rate (``CNN 92.4% of the time, 52.1 slices/s``): how
    close the pipeline runs to its model, measured over the same seconds.
    """

    def __init__(self, total: int, *, done_before: int = 0, stream: IO[str] | None = None,
                 interval: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True, cnn: CnnSeconds | None = None) -> None:
        self.total = total
        self.done_before = done_before
        self.studies = 0
        self.slices = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.enabled = enabled
        self.cnn = cnn
        self.start = clock()
        self._last = self.start

    def add_total(self, n: int) -> None:
        """``n`` more studies to do; before the first is done this restarts the clock, so
        the rate counts the pipeline, not the header scan that found the studies."""
        self.total += n
        if self.studies == 0:
            self.start = self._last = self.clock()

    def update(self, n_slices: int) -> None:
        """One study done with ``n_slices`` slices (0 for a series that could not load)."""
        self.studies += 1
        self.slices += n_slices
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        done = self.done_before + self.studies
        parts = [f"predict: {done}/{self.total} studies", f"{self.slices:,} slices",
                 f"{self.slices / elapsed:.1f} slices/s"]
        left = self.total - done
        if self.studies and left > 0:
            parts.append(f"about {_duration(left * elapsed / self.studies)} left")
        elif left <= 0:
            parts.append(f"done in {_duration(elapsed)}")
        if self.cnn is not None and self.cnn.seconds > 0:
            parts.append(f"CNN {100 * self.cnn.seconds / elapsed:.1f}% of the time, "
                         f"{self.cnn.rate:.1f} slices/s")
        return ", ".join(parts)

    def finish(self) -> None:
        """The last line (none when this run predicted nothing)."""
        if self.studies:
            self._emit()

    def _emit(self) -> None:
        if self.enabled:
            print(self.line(), file=self.stream, flush=True)


class SkipTally:
    """Files not used, by reason, and series that could not load (no identifiers)."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}  # file name -> first reason seen
        self.series = 0

    def add(self, source: str, reason: str) -> None:
        self.files.setdefault(source, reason)

    def update(self, other: dict[str, Any]) -> None:
        """Merge another tally's `to_dict` (a torchrun rank's)."""
        for k, v in other.get("files", {}).items():
            self.add(str(k), str(v))
        self.series += int(other.get("series", 0))

    def to_dict(self) -> dict[str, Any]:
        return {"files": dict(self.files), "series": self.series}

    def summary(self) -> str:
        """``skipped: 3 files (2 not DICOM, 1 unreadable); 1 series with no usable slice``."""
        counts = Counter(self.files.values())
        parts = []
        if counts:
            by = ", ".join(f"{n} {reason}" for reason, n in
                           sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            parts.append(f"{len(self.files)} files ({by})")
        if self.series:
            parts.append(f"{self.series} {UNLOADABLE_SERIES}")
        return "skipped: " + ("; ".join(parts) if parts else "nothing")
