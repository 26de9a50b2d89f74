"""A batch run's results on disk, study by study, so an interrupted run loses nothing.

``predict`` appends one JSON line per finished study (one ``write`` of the whole line, then
flush and fsync), so a crash or a kill leaves every finished study on disk and at most one
torn last line, which reading ignores. ``--resume`` reads the log, skips the studies in it
and appends the rest; the final file is written from the log alone, so a resumed run and an
uninterrupted one produce the same bytes.

Under ``torchrun`` each rank writes its own log (`rank_log_path`) and rank 0 merges them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ResultLog", "rank_log_path", "study_key"]


def study_key(study_uid: str, series_uid: str) -> str:
    """The key a result is stored under: one series of one study."""
    return f"{study_uid}/{series_uid}"


def rank_log_path(out: Path, rank: int, world_size: int) -> Path:
    """``.<out name>.partial.jsonl`` beside the output (``.rank<r>`` added under torchrun)."""
    part = "" if world_size == 1 else f".rank{rank}"
    return out.with_name(f".{out.name}{part}.partial.jsonl")


class ResultLog:
    """Append-only JSON-lines log of study records (each with ``study_uid``/``series_uid``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, in the order written; a torn last line is ignored."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # the line being written when the run stopped
                try:
                    rec = json.loads(raw)
                except ValueError:
                    break
                if isinstance(rec, dict) and "study_uid" in rec and "series_uid" in rec:
                    yield rec

    def done(self) -> set[str]:
        """Keys (`study_key`) of the studies already in the log."""
        return {study_key(r["study_uid"], r["series_uid"]) for r in self.records()}

    def repair(self) -> None:
        """Cut a torn last line off, so appended records start on a line of their own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(keep)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, durably (flush and fsync) before returning."""
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
