"""Reviewer decisions on flagged labels: an append-only SQLite history.

One SQLite file holds every decision ever made (table ``decisions``, never updated or
deleted: triggers refuse both) and a view ``current_decisions`` with the latest decision
per (image_id, subtype). Corrected labels are exported in the RSNA CSV format.

Durability choices:

* ``journal_mode=WAL``: readers (the app's pages) never block the writer and a commit is
  one append to the ``-wal`` file; a process killed mid-transaction leaves a WAL frame
  without a commit marker, which the next reader ignores. So a killed writer loses at
  most the decision in flight.
* ``synchronous=FULL``: the WAL is fsynced at every commit, so an acknowledged decision
  also survives a power cut or OS crash, not only a killed process (NORMAL would suffice
  for the latter). Decisions are made at human speed; one fsync each costs nothing.
* every write is one short ``BEGIN IMMEDIATE`` transaction with a ``busy_timeout``, so
  two writers queue instead of failing with "database is locked".
* the file carries ``PRAGMA application_id`` and a schema version in ``user_version``; a
  file that is not SQLite, is corrupt, or belongs to something else raises
  ``StoreError`` and is opened read-only for the check, so its bytes are never changed.

Connections are opened per call, so one ``DecisionStore`` is safe to share between
threads (Streamlit runs each session's script in its own thread) and processes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from hohoho_core.labels import ANY_INDEX, CLASSES
from hohoho_core.rsna_csv import read_rsna_csv, write_rsna_csv

__all__ = [
    "APPLICATION_ID",
    "DECISIONS",
    "SCHEMA_VERSION",
    "DecisionStore",
    "ExportSummary",
    "StoreError",
]

#: "HOHO" in ASCII: marks the file as a HOHOHO decisions store.
APPLICATION_ID: int = 0x484F484F
SCHEMA_VERSION: int = 1
#: Allowed decisions: keep the label, set it to 0 or 1, or leave it for a second look.
DECISIONS: tuple[str, ...] = ("keep", "relabel_0", "relabel_1", "unsure")
_RELABEL = {"relabel_0": 0, "relabel_1": 1}
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_MS = 30_000

_HISTORY_COLUMNS = [
    "id",
    "image_id",
    "subtype",
    "original_label",
    "decision",
    "reviewer",
    "comment",
    "created_at",
]

_SCHEMA = f"""
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL CHECK (length(image_id) > 0),
    subtype TEXT NOT NULL CHECK (subtype IN ({", ".join(f"'{c}'" for c in CLASSES)})),
    original_label INTEGER NOT NULL CHECK (original_label IN (0, 1)),
    decision TEXT NOT NULL CHECK (decision IN ({", ".join(f"'{d}'" for d in DECISIONS)})),
    reviewer TEXT NOT NULL CHECK (length(reviewer) > 0),
    comment TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX decisions_by_key ON decisions (image_id, subtype, id);
CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only: DELETE is not allowed'); END;
CREATE VIEW current_decisions AS
SELECT d.* FROM decisions AS d
JOIN (SELECT MAX(id) AS id FROM decisions GROUP BY image_id, subtype) AS latest
  ON d.id = latest.id;
"""


class StoreError(RuntimeError):
    """The file cannot be used as a decisions store (and was left untouched)."""


@dataclass(frozen=True)
class ExportSummary:
    """What ``DecisionStore.export_labels`` wrote."""

    images: int  # images written (six rows each)
    relabelled: int  # labels changed by a relabel decision
    unmatched: int  # current relabel decisions for images not in the labels
    any_inconsistent: int  # images whose "any" disagrees with their subtypes afterwards


class DecisionStore:
    """Append-only reviewer decisions in one SQLite file.

    Args:
        path: the store file. A missing or empty file is created and initialised; an
            existing one must be a HOHOHO store of this schema version.

    Raises:
        StoreError: the path is a directory, not SQLite, corrupt or truncated, another
            application's database, or a different schema version. The file is left
            byte-for-byte untouched.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._check_or_create()

    # ----------------------------------------------------------------- opening

    def _fail(self, why: str) -> StoreError:
        return StoreError(
            f"{self.path} {why}; it was left untouched. "
            "Point the app at a new file, or restore a backup of the decisions store."
        )

    def _check_or_create(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise self._fail("is not a regular file")
        if not self.path.parent.is_dir():
            raise StoreError(f"folder {self.path.parent} does not exist")
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                head = fh.read(100)
            if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
                raise self._fail("is not an SQLite database (not a decisions store)")
            # The header's application_id (offset 68, big-endian) settles most foreign files
            # before SQLite opens them at all.
            header_app_id = int.from_bytes(head[68:72], "big")
            if header_app_id not in (0, APPLICATION_ID):
                raise self._fail(
                    f"is another application's SQLite database (application_id {header_app_id})"
                )
            if not self._inspect_read_only():
                return
        self._initialise()

    def _inspect_read_only(self) -> bool:
        """Check an existing SQLite file without writing to it; True if it needs a schema.

        The connection is read-only, so the file's bytes never change. For a WAL-mode file
        SQLite may create empty ``-wal``/``-shm`` side files next to it (it needs them to
        read); they are left alone, because another process may be using them.
        """
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as con:
                con.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
                n_objects = con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
                check = [row[0] for row in con.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            raise self._fail(f"is corrupt or truncated ({exc})") from None
        if check != ["ok"]:
            raise self._fail(f"is corrupt (integrity check: {check[0][:200]})")
        if app_id == 0 and version == 0 and n_objects == 0:
            return True  # an empty SQLite file: nothing to lose, initialise it
        if app_id != APPLICATION_ID:
            raise self._fail(f"is another application's SQLite database (application_id {app_id})")
        if version != SCHEMA_VERSION:
            raise self._fail(
                f"has decisions-store schema version {version}, this code reads "
                f"{SCHEMA_VERSION}; it is not migrated automatically"
            )
        return False

    def _initialise(self) -> None:
        """Create the schema once, even when several processes start together."""
        with self._connect() as con:
            self._enable_wal(con)
            con.execute("BEGIN IMMEDIATE")
            try:
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                n_objects = con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
                if app_id == 0 and n_objects == 0:
                    for statement in _SCHEMA.split(";\n"):
                        if statement.strip():
                            con.execute(statement)
                    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    con.execute("COMMIT")
                else:
                    # Another process created it between our check and our lock.
                    con.execute("ROLLBACK")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        self._inspect_read_only()

    def _enable_wal(self, con: sqlite3.Connection) -> None:
        """Switch the file to WAL, waiting for other processes that hold it.

        Changing the journal mode answers "database is locked" at once, without SQLite's
        busy handler, while another process (say, one creating the store at the same
        moment) holds the file; so retry with a short backoff up to the busy timeout.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        delay = 0.005
        while True:
            try:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            if time.monotonic() > deadline:
                raise StoreError(f"{self.path.name}: could not switch to WAL mode, the file "
                                 "stayed locked by another process")
            time.sleep(delay)
            delay = min(2 * delay, 0.2)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Autocommit mode (isolation_level=None): transactions are explicit below.
        con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA synchronous = FULL")
            # INSERT OR REPLACE deletes rows without DELETE triggers unless this is on.
            con.execute("PRAGMA recursive_triggers = ON")
            yield con
        finally:
            con.close()

    # ----------------------------------------------------------------- writing

    def record(
        self,
        image_id: str,
        subtype: str,
        original_label: int,
        decision: str,
        reviewer: str,
        comment: str = "",
    ) -> int:
        """Append one decision; returns its id once it is committed to disk.

        Args:
            image_id: the slice, e.g. ``"ID_0a1b2c3d4"``.
            subtype: one of ``CLASSES`` (including "any").
            original_label: the label under review, 0 or 1.
            decision: one of ``DECISIONS``.
            reviewer: who decided (non-empty).
            comment: free text.
        """
        if not isinstance(image_id, str) or not image_id.strip():
            raise ValueError("image_id must be a non-empty string")
        if subtype not in CLASSES:
            raise ValueError(f"subtype must be one of {CLASSES}, got {subtype!r}")
        if original_label not in (0, 1):
            raise ValueError(f"original_label must be 0 or 1, got {original_label!r}")
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ValueError("reviewer must be a non-empty string")
        if not isinstance(comment, str):
            raise ValueError("comment must be a string")
        created = datetime.now(UTC).isoformat(timespec="microseconds")
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                cur = con.execute(
                    "INSERT INTO decisions (image_id, subtype, original_label, decision, "
                    "reviewer, comment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        image_id,
                        subtype,
                        int(original_label),
                        decision,
                        reviewer.strip(),
                        comment,
                        created,
                    ),
                )
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            return int(cur.lastrowid)

    # ----------------------------------------------------------------- reading

    def _frame(self, sql: str, params: tuple = ()) -> pd.DataFrame:
        with self._connect() as con:
            rows = con.execute(sql, params).fetchall()
        frame = pd.DataFrame(rows, columns=_HISTORY_COLUMNS)
        return frame.astype({"id": np.int64, "original_label": np.int64})

    def history(self, image_id: str | None = None) -> pd.DataFrame:
        """Every decision (of one image, if given), oldest first; columns as the table."""
        cols = ", ".join(_HISTORY_COLUMNS)
        if image_id is None:
            return self._frame(f"SELECT {cols} FROM decisions ORDER BY id")
        return self._frame(
            f"SELECT {cols} FROM decisions WHERE image_id = ? ORDER BY id", (image_id,)
        )

    def current(self) -> pd.DataFrame:
        """The latest decision per (image_id, subtype), ordered by image_id, subtype."""
        cols = ", ".join(_HISTORY_COLUMNS)
        return self._frame(f"SELECT {cols} FROM current_decisions ORDER BY image_id, subtype")

    def progress(
        self, queue_keys: Iterable[tuple[str, str]], *, count_unsure: bool = True
    ) -> tuple[int, int]:
        """How much of a review queue has a decision.

        Args:
            queue_keys: (image_id, subtype) pairs in the queue; duplicates count once.
            count_unsure: whether an "unsure" decision counts as reviewed.

        Returns:
            ``(reviewed, total)``.
        """
        keys = set(queue_keys)
        cur = self.current()
        if not count_unsure:
            cur = cur[cur["decision"] != "unsure"]
        done = set(zip(cur["image_id"], cur["subtype"], strict=True))
        return len(keys & done), len(keys)

    # ----------------------------------------------------------------- export

    def export_labels(
        self, labels: pd.DataFrame | Path | str, out_csv: Path | str
    ) -> ExportSummary:
        """Write corrected labels in the RSNA CSV format.

        Args:
            labels: the original labels: an RSNA CSV path (``ID,Label``, rows
                ``ID_<hex>_<class>``), or a DataFrame with the six ``CLASSES`` columns and
                the image id either as index or as an ``image_id`` column.
            out_csv: destination; written to a temporary file first and renamed, so a
                crash never leaves half a file.

        Returns:
            An ``ExportSummary``. The current decision per (image, class) applies:
            ``relabel_0``/``relabel_1`` set the label, ``keep``/``unsure`` leave it.
            Images keep their input order; classes follow ``CLASSES``.
        """
        table = _labels_frame(labels)
        cur = self.current()
        cur = cur[cur["decision"].isin(list(_RELABEL))]
        rows = table.index.get_indexer(cur["image_id"])
        known = rows >= 0
        cols = np.array([CLASSES.index(s) for s in cur["subtype"]], dtype=np.int64)
        values = table.to_numpy(dtype=np.int64, copy=True)
        new = cur["decision"].map(_RELABEL).to_numpy(dtype=np.int64)
        before = values[rows[known], cols[known]]
        values[rows[known], cols[known]] = new[known]
        relabelled = int((before != new[known]).sum())
        inconsistent = int((values[:, :ANY_INDEX].max(axis=1) != values[:, ANY_INDEX]).sum())

        write_rsna_csv(out_csv, table.index.to_numpy(dtype=object), values, kind="labels")
        return ExportSummary(
            images=len(table),
            relabelled=relabelled,
            unmatched=int((~known).sum()),
            any_inconsistent=inconsistent,
        )


def _labels_frame(labels: pd.DataFrame | Path | str) -> pd.DataFrame:
    """Original labels as a frame indexed by image_id with the six int columns."""
    if isinstance(labels, pd.DataFrame):
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
        frame.index = frame.index.astype(object)
        return frame
    return _read_rsna_csv(Path(labels))


def _read_rsna_csv(path: Path) -> pd.DataFrame:
    """An RSNA ``ID,Label`` CSV as int64 labels in the file's image order.

    Identical duplicate rows (the real file has some) are fine; anything the export could
    only guess at (a malformed row, conflicting duplicates, a missing label) is refused.
    """
    frame = read_rsna_csv(
        path,
        kind="labels",
        on_invalid="error",
        on_duplicate="drop",
        on_conflict="error",
        on_missing="error",
    ).astype(np.int64)
    frame.index = pd.Index(frame.index.to_numpy(dtype=object), dtype=object, name="image_id")
    return frame
