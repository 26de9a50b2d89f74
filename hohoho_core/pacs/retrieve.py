"""WADO-RS: a study's instances, bounded, as `Upload` objects for the ordinary reader.

Retrieved instances become in-memory uploads, so they go through the same header
checks, bounds, slice order and load report as files a user uploads
(`hohoho_core.dicom.scan_source`). Two bounds are checked while retrieving, before the
reader sees anything: the number of instances (first from the study's QIDO-RS count,
then while they arrive, since a server may miscount) and their total bytes.
"""

from __future__ import annotations

import io
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pydicom

from hohoho_core.dicom import ReadBounds, SourceScan, Upload, scan_source
from hohoho_core.dicom.bounds import DEFAULT_MAX_SLICES
from hohoho_core.dicom.series import SeriesRule, choose_series
from hohoho_core.dicom.sources import DEFAULT_MAX_TOTAL_UPLOAD_BYTES
from hohoho_core.pacs._http import calling, make_client
from hohoho_core.pacs.search import StudyQuery, search_studies
from hohoho_core.pacs.server import DicomwebServer, PacsError
from hohoho_core.study import Study

__all__ = [
    "DEFAULT_MAX_INSTANCES",
    "DEFAULT_MAX_STUDY_BYTES",
    "RetrieveLimits",
    "retrieve_ahead",
    "retrieve_study",
    "scan_pacs_study",
]

#: Instances one study may have: the reader's slice bound (SR, SC and other objects count).
DEFAULT_MAX_INSTANCES = DEFAULT_MAX_SLICES
#: Bytes one retrieved study may take, the bound on all uploads together.
DEFAULT_MAX_STUDY_BYTES = DEFAULT_MAX_TOTAL_UPLOAD_BYTES
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class RetrieveLimits:
    """What one retrieval may bring: instances and total bytes."""

    max_instances: int = DEFAULT_MAX_INSTANCES
    max_bytes: int = DEFAULT_MAX_STUDY_BYTES

    def __post_init__(self) -> None:
        if self.max_instances < 1 or self.max_bytes < 1:
            raise ValueError("retrieve limits must be positive")


def _part10(ds: pydicom.Dataset) -> bytes:
    """The instance as a Part-10 file, as an upload would hold it."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _upload_name(ds: pydicom.Dataset, k: int) -> str:
    # The SOP Instance UID names the file in the load report (it identifies no patient);
    # it is also the slice's image id, so the structured report can reference it.
    sop = str(ds.get("SOPInstanceUID", "") or "")
    return f"{sop}.dcm" if _UID.fullmatch(sop) and len(sop) <= 64 else f"instance_{k:05d}.dcm"


def retrieve_study(
    server: DicomwebServer, study_uid: str, limits: RetrieveLimits | None = None
) -> list[Upload]:
    """Every instance of one study, as uploads in the order the server sent them.

    Raises:
        PacsError: no such study, more instances or bytes than ``limits``, or the server
            failed (down, refused, timed out, sent something that is not DICOM).
    """
    limits = limits or RetrieveLimits()
    if not _UID.fullmatch(study_uid) or len(study_uid) > 64:
        raise PacsError("the study UID must be digits and dots, at most 64 characters")
    found = search_studies(
        server, StudyQuery(study_uid=study_uid, modality=None, limit=2)
    )
    where = f"DICOMweb server {server.display_url}"
    if not found:
        raise PacsError(f"{where} has no study {study_uid}")
    declared = found[0].n_instances
    if declared is not None and declared > limits.max_instances:
        raise PacsError(
            f"study {study_uid} on {where} has {declared} instances; the limit is "
            f"{limits.max_instances} per study"
        )
    client = make_client(server)
    uploads: list[Upload] = []
    total = 0
    with calling(server, "the study retrieval"):
        for k, ds in enumerate(client.iter_study(study_uid)):
            if len(uploads) >= limits.max_instances:
                raise PacsError(
                    f"{where} sent more than {limits.max_instances} instances for study "
                    f"{study_uid}; the limit is {limits.max_instances} per study"
                )
            data = _part10(ds)
            total += len(data)
            if total > limits.max_bytes:
                raise PacsError(
                    f"study {study_uid} on {where} exceeds {limits.max_bytes} bytes; "
                    "the limit is the upload bound (HOHOHO_MAX_UPLOAD_MB in the app)"
                )
            uploads.append(Upload(_upload_name(ds, k), data))
    if not uploads:
        raise PacsError(f"{where} sent no instance for study {study_uid}")
    return uploads


class _Closed(Exception):
    """Put on the queue by a worker that was stopped."""


_CLOSED = _Closed()


class RetrievalAhead:
    """The iterator `retrieve_ahead` returns: ``(uid, uploads or PacsError)`` per study."""

    def __init__(self, server: DicomwebServer, study_uids: Sequence[str],
                 limits: RetrieveLimits | None) -> None:
        self._uids = list(study_uids)
        self._arrived: queue.Queue[tuple[str, list[Upload] | BaseException]] = queue.Queue()
        # One permit per study the caller has asked for, plus the first: the thread
        # retrieves study k + 1 once the caller has taken study k, and waits there.
        self._permits = threading.Semaphore(1)
        self._stop = threading.Event()
        self._taken = 0
        self._closed = False
        if self._uids:
            # Started here, not at the first next(): the first study's transfer overlaps
            # whatever the caller does before it asks (building the model, for one).
            threading.Thread(target=self._work, args=(server, limits), name="hohoho-retrieve",
                             daemon=True).start()

    def _work(self, server: DicomwebServer, limits: RetrieveLimits | None) -> None:
        for uid in self._uids:
            self._permits.acquire()
            if self._stop.is_set():
                # a caller blocked in __next__ (closed from another thread) wakes and stops
                self._arrived.put(("", _CLOSED))
                return
            try:
                self._arrived.put((uid, retrieve_study(server, uid, limits)))
            except BaseException as err:  # handed to the caller's thread
                self._arrived.put((uid, err))
                if not isinstance(err, PacsError):
                    return

    def __iter__(self) -> Iterator[tuple[str, list[Upload] | PacsError]]:
        return self

    def __next__(self) -> tuple[str, list[Upload] | PacsError]:
        if self._closed or self._taken >= len(self._uids):
            raise StopIteration
        self._taken += 1
        self._permits.release()
        uid, got = self._arrived.get()
        if isinstance(got, _Closed):
            raise StopIteration
        if isinstance(got, BaseException) and not isinstance(got, PacsError):
            self.close()
            raise got
        return uid, got

    def close(self) -> None:
        """Retrieve nothing more; a retrieval in flight ends on its own (daemon thread)."""
        if not getattr(self, "_closed", True):  # (a half-built one has nothing to stop)
            self._closed = True
            self._stop.set()
            self._permits.release()  # wakes the thread if it waits for a permit: it ends

    def __enter__(self) -> RetrievalAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a caller that dropped it without closing
        self.close()


def retrieve_ahead(
    server: DicomwebServer, study_uids: Sequence[str], limits: RetrieveLimits | None = None
) -> RetrievalAhead:
    """``(uid, its uploads or the PacsError that retrieving it raised)`` for each study,
    in order, while the next study is retrieved in a background thread.

    The first study's retrieval starts at this call, so it overlaps what the caller does
    before it asks for it. A batch over many studies then waits on the network only for
    the first one: the transfer of study k + 1 overlaps the caller's work on study k
    (reading, the CNN, storing reports). One study ahead at most, so at most two studies'
    bytes are held (`RetrieveLimits` bounds each). Errors other than `PacsError` are raised
    here. ``close()`` (the caller's ``finally``) retrieves nothing more; a retrieval in
    flight then ends on its own in a daemon thread, so it never holds up the exit.
    """
    return RetrievalAhead(server, study_uids, limits)


def scan_pacs_study(
    server: DicomwebServer,
    study_uid: str,
    limits: RetrieveLimits | None = None,
    bounds: ReadBounds | None = None,
) -> SourceScan:
    """Retrieve one study and scan it like an upload (`hohoho_core.dicom.scan_source`).

    The caller closes the scan (``with scan_pacs_study(...) as scan:``).
    """
    limits = limits or RetrieveLimits()
    uploads = retrieve_study(server, study_uid, limits)
    kwargs = {"bounds": bounds} if bounds is not None else {}
    return scan_source(
        uploads,
        max_upload_bytes=limits.max_bytes,
        max_total_upload_bytes=limits.max_bytes,
        **kwargs,
    )


def load_pacs_study(
    server: DicomwebServer,
    study_uid: str,
    limits: RetrieveLimits | None = None,
    *,
    series_rule: SeriesRule = "thickest",
) -> Study:
    """One study of the PACS as a `Study`: retrieved, read like an upload, and one axial
    series chosen by ``series_rule`` (`dicom.series.choose_series`; "thickest" by default,
    the RSNA data's 5 mm series when a study also has a thin one), for a worklist.

    Raises:
        PacsError: the server failed or sent nothing usable; StudyLoadError: no axial
            series could be read.
    """
    with scan_pacs_study(server, study_uid, limits) as scan:
        chosen = choose_series(scan.loadable_series(), rule=series_rule)
        if not chosen:
            raise PacsError(f"study {study_uid} has no axial CT series to analyse")
        return scan.load(chosen[0].series_uid)
