"""Resumable header scans: the headers of each finished chunk of files, kept on disk.

Indexing the RSNA training set reads 752,000 headers (hours on a few cores). Without a
journal an interrupted scan starts over; with one, `rsna.build_index` writes every chunk's
headers as it finishes (one JSON file per chunk, written atomically) and a rerun reads the
finished chunks back instead of opening their files again. The journal is keyed by the
folder listing, so added, removed or renamed files start a fresh one, and it is removed once
the index itself is cached.

Only what ordering and the usability checks need is kept: patient identifiers and the
free-text metadata of a header are never written here.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from hohoho_core.atomic import atomic_write_text
from hohoho_core.dicom.headers import HeaderRecord
from hohoho_core.study import SkippedFile, SkipReason

__all__ = ["HeaderJournal", "record_from_json", "record_to_json"]

logger = logging.getLogger(__name__)

#: Fields never written to disk (identifiers) or not needed to order slices.
_DROPPED = {"identifiers", "metadata"}
_TUPLES = {"position", "orientation", "pixel_spacing"}
_NESTED = {"frame_positions", "frame_rescale"}
_VERSION = 1


def record_to_json(rec: HeaderRecord) -> dict[str, Any]:
    """A header record as plain JSON values (identifiers and metadata left out)."""
    out: dict[str, Any] = {}
    for f in fields(HeaderRecord):
        if f.name in _DROPPED:
            continue
        value = getattr(rec, f.name)
        if f.name == "path":
            value = None if value is None else str(value)
        elif f.name in _TUPLES and value is not None:
            value = list(value)
        elif f.name in _NESTED and value is not None:
            value = [list(v) for v in value]
        out[f.name] = value
    return out


def record_from_json(d: dict[str, Any]) -> HeaderRecord:
    """The inverse of `record_to_json` (identifiers and metadata come back empty)."""
    kw: dict[str, Any] = {}
    for f in fields(HeaderRecord):
        if f.name in _DROPPED or f.name not in d:
            continue
        value = d[f.name]
        if f.name == "path":
            value = None if value is None else Path(value)
        elif f.name in _TUPLES and value is not None:
            value = tuple(float(v) for v in value)
        elif f.name in _NESTED and value is not None:
            value = tuple(tuple(float(x) for x in v) for v in value)
        kw[f.name] = value
    return HeaderRecord(**kw)


def _encode(item: Any) -> dict[str, Any] | None:
    """One scan result: a record, a (record, skip reason) pair, or None (unreadable)."""
    if item is None:
        return None
    if isinstance(item, HeaderRecord):
        return {"rec": record_to_json(item)}
    rec, why = item.rec, item.why  # the scanner's (record, reason) of a skipped file
    return {"rec": record_to_json(rec), "reason": why.reason.value, "detail": why.detail}


def _decode(d: dict[str, Any] | None, make_skipped: Callable[[HeaderRecord, SkippedFile], Any]
            ) -> Any:
    if d is None:
        return None
    rec = record_from_json(d["rec"])
    if "reason" not in d:
        return rec
    return make_skipped(rec, SkippedFile(rec.source, SkipReason(d["reason"]),
                                         d.get("detail", "")))


class HeaderJournal:
    """Finished chunks of one header scan, in ``folder`` (one ``chunk_<start>.json`` each).

    A chunk file holds the chunk's paths, so a chunk is only reused for the same files in
    the same place; a damaged or foreign chunk file is ignored and read again.
    ``make_skipped(record, reason)`` rebuilds the scanner's object for a skipped file (it
    has ``.rec`` and ``.why``).
    """

    def __init__(self, folder: str | Path,
                 make_skipped: Callable[[HeaderRecord, SkippedFile], Any]) -> None:
        self.folder = Path(folder)
        self._make_skipped = make_skipped

    def _path(self, start: int) -> Path:
        return self.folder / f"chunk_{start:09d}.json"

    def get(self, start: int, paths: list[str]) -> list[Any] | None:
        """The chunk's results when a finished one for exactly ``paths`` is on record."""
        path = self._path(start)
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("version") != _VERSION or d.get("paths") != list(paths):
                return None
            items = [_decode(x, self._make_skipped) for x in d["items"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring a damaged header-journal chunk (%s)", type(exc).__name__)
            return None
        return items if len(items) == len(paths) else None

    def put(self, start: int, paths: list[str], items: list[Any]) -> None:
        """Record a finished chunk (atomic: a crash leaves the old state or the new one)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self._path(start), json.dumps(
                {"version": _VERSION, "paths": list(paths),
                 "items": [_encode(x) for x in items]}))
        except OSError as exc:  # a journal is a convenience: the scan goes on without it
            logger.warning("could not write the header journal (%s)", type(exc).__name__)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
