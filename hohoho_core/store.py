"""Reviewer decisions on flagged labels: an append-only SQLite history.

One SQLite file holds every decision ever made (table ``decisions``) and every undo
(table ``retractions``: one row naming the decision it withdraws). Neither table is ever
updated or deleted from (triggers refuse both), so an undo is itself a record and the
history can always be replayed. The view ``current_decisions`` holds the latest decision
that was not withdrawn per (image_id, subtype, reviewer, role): two readers of one cell
each keep their own decision, and an ``adjudicator`` decision settles a disagreement
(`hohoho_core.review` resolves them into labels). Corrected labels are exported in the
RSNA CSV format by `hohoho_core.review.export_corrected`.

Schema versions: 1 (decisions only; the latest decision per cell won, whoever made it)
and 2 (adds ``decisions.role`` and ``retractions``). A version-1 file is upgraded in place
by one transaction that only adds (a column with a default, a table, triggers, views);
no row is changed, and a copy of the version-1 file is kept beside it first
(``<name>.v1-backup``).

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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from hohoho_core.labels import CLASSES
from hohoho_core.review import ExportSummary, export_corrected

__all__ = [
    "APPLICATION_ID",
    "DECISIONS",
    "ROLES",
    "SCHEMA_VERSION",
    "DecisionStore",
    "ExportSummary",
    "StoreError",
]

#: "HOHO" in ASCII: marks the file as a HOHOHO decisions store.
APPLICATION_ID: int = 0x484F484F
SCHEMA_VERSION: int = 2
#: Allowed decisions: keep the label, set it to 0 or 1, or leave it for a second look.
DECISIONS: tuple[str, ...] = ("keep", "relabel_0", "relabel_1", "unsure")
#: Who a decision speaks for: one of the readers, or the adjudicator of a disagreement.
ROLES: tuple[str, ...] = ("reader", "adjudicator")
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
    "role",
]
#: Extra column of `DecisionStore.history`: when the decision was withdrawn ("" if live).
_RETRACTED = "retracted_at"

_CHECK_ROLE = "CHECK (role IN ({}))".format(", ".join(f"'{r}'" for r in ROLES))

# Version 2 on top of version 1: only additions, so a version-1 file can be upgraded.
_SCHEMA_V2 = f"""
ALTER TABLE decisions ADD COLUMN role TEXT NOT NULL DEFAULT 'reader' {_CHECK_ROLE};
CREATE TABLE retractions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id INTEGER NOT NULL UNIQUE REFERENCES decisions (id),
    reviewer TEXT NOT NULL CHECK (length(reviewer) > 0),
    created_at TEXT NOT NULL
) STRICT;
CREATE TRIGGER retractions_no_update BEFORE UPDATE ON retractions
BEGIN SELECT RAISE(ABORT, 'retractions are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER retractions_no_delete BEFORE DELETE ON retractions
BEGIN SELECT RAISE(ABORT, 'retractions are append-only: DELETE is not allowed'); END;
DROP VIEW current_decisions;
CREATE VIEW current_decisions AS
SELECT d.* FROM decisions AS d
JOIN (
    SELECT MAX(id) AS id FROM decisions
    WHERE id NOT IN (SELECT decision_id FROM retractions)
    GROUP BY image_id, subtype, reviewer, role
) AS latest ON d.id = latest.id;
"""

# Version 1 exactly as it was written (the first step of a new file, then `_SCHEMA_V2`).
_SCHEMA_V1 = f"""
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


class DecisionStore:
    """Append-only reviewer decisions in one SQLite file.

    Args:
        path: the store file. A missing or empty file is created and initialised; an
            existing one must be a HOHOHO store of schema version 2, or of version 1 (then
            upgraded in place, after a copy to ``<name>.v1-backup``).

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
            if self._inspect_read_only() is None:
                return
        self._initialise()

    def _inspect_read_only(self) -> str | None:
        """Check an existing SQLite file without writing to it.

        Returns:
            ``"create"`` for an empty SQLite file, ``"upgrade"`` for a version-1 store,
            None for a store of this version.

        The connection is read-only, so the file's bytes never change. For a WAL-mode file
        SQLite may create empty ``-wal``/``-shm`` side files next to it (it needs them to
        read); they are left alone, because another process may be using them.
        """
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as con:
                con.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                # One read transaction, so every answer comes from the same snapshot: read
                # statement by statement, a store another process created in between looked
                # like application_id 0 with tables, "another application's database".
                con.execute("BEGIN")
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
                n_objects = con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
                check = [row[0] for row in con.execute("PRAGMA quick_check")]
                con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._fail(f"is corrupt or truncated ({exc})") from None
        if check != ["ok"]:
            raise self._fail(f"is corrupt (integrity check: {check[0][:200]})")
        if app_id == 0 and version == 0 and n_objects == 0:
            return "create"  # an empty SQLite file: nothing to lose, initialise it
        if app_id != APPLICATION_ID:
            raise self._fail(f"is another application's SQLite database (application_id {app_id})")
        if version == 1:
            return "upgrade"
        if version != SCHEMA_VERSION:
            raise self._fail(
                f"has decisions-store schema version {version}, this code reads "
                f"1 and {SCHEMA_VERSION}; it is not migrated automatically"
            )
        return None

    @staticmethod
    def _run_script(con: sqlite3.Connection, script: str) -> None:
        for statement in script.split(";\n"):
            if statement.strip():
                con.execute(statement)

    def _backup_v1(self) -> None:
        """Copy a version-1 store to ``<name>.v1-backup`` (once) before upgrading it."""
        backup = self.path.with_name(self.path.name + ".v1-backup")
        if backup.exists():
            return
        tmp = backup.with_name(backup.name + ".tmp")
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as src:
            with contextlib.closing(sqlite3.connect(tmp)) as dst:
                src.backup(dst)
        tmp.replace(backup)

    def _initialise(self) -> None:
        """Create the schema, or upgrade a version-1 file, once, even when several
        processes start together."""
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and self._inspect_read_only() == "upgrade":
            self._backup_v1()
        with self._connect() as con:
            self._enable_wal(con)
            con.execute("BEGIN IMMEDIATE")
            try:
                app_id = con.execute("PRAGMA application_id").fetchone()[0]
                version = con.execute("PRAGMA user_version").fetchone()[0]
                n_objects = con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
                if app_id == 0 and n_objects == 0:
                    self._run_script(con, _SCHEMA_V1)
                    self._run_script(con, _SCHEMA_V2)
                    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    con.execute("COMMIT")
                elif app_id == APPLICATION_ID and version == 1:
                    self._run_script(con, _SCHEMA_V2)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    con.execute("COMMIT")
                else:
                    # Another process created or upgraded it between our check and our lock.
                    con.execute("ROLLBACK")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        if self._inspect_read_only() is not None:
            raise self._fail("could not be initialised")

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
        *,
        role: str = "reader",
    ) -> int:
        """Append one decision; returns its id once it is committed to disk.

        Args:
            image_id: the slice, e.g. ``"ID_0a1b2c3d4"``.
            subtype: one of ``CLASSES`` (including "any").
            original_label: the label under review, 0 or 1.
            decision: one of ``DECISIONS``.
            reviewer: who decided (non-empty).
            comment: free text.
            role: one of ``ROLES``: ``"reader"`` (default) or ``"adjudicator"`` (settles
                a disagreement between readers).
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
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        row = (
            image_id,
            subtype,
            int(original_label),
            decision,
            reviewer.strip(),
            comment,
            _now(),
            role,
        )
        with self._transaction() as con:
            cur = con.execute(
                "INSERT INTO decisions (image_id, subtype, original_label, decision, "
                "reviewer, comment, created_at, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return int(cur.lastrowid)

    def undo_last(self, reviewer: str) -> int | None:
        """Withdraw ``reviewer``'s latest decision that is still live (an undo).

        Nothing is erased: a row appended to ``retractions`` names the decision, and the
        reviewer's previous decision on that cell (if any) becomes current again. Calling it
        again withdraws the one before, and so on.

        Returns:
            The id of the decision withdrawn, or None if ``reviewer`` has none left.
        """
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ValueError("reviewer must be a non-empty string")
        name = reviewer.strip()
        with self._transaction() as con:
            found = con.execute(
                "SELECT MAX(id) FROM decisions WHERE reviewer = ? "
                "AND id NOT IN (SELECT decision_id FROM retractions)",
                (name,),
            ).fetchone()[0]
            if found is None:
                return None
            con.execute(
                "INSERT INTO retractions (decision_id, reviewer, created_at) VALUES (?, ?, ?)",
                (int(found), name, _now()),
            )
            return int(found)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction: committed on leaving, rolled back on an error."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    # ----------------------------------------------------------------- reading

    def _frame(self, sql: str, params: tuple = (), extra: tuple[str, ...] = ()) -> pd.DataFrame:
        with self._connect() as con:
            rows = con.execute(sql, params).fetchall()
        frame = pd.DataFrame(rows, columns=[*_HISTORY_COLUMNS, *extra])
        return frame.astype({"id": np.int64, "original_label": np.int64})

    def history(self, image_id: str | None = None) -> pd.DataFrame:
        """Every decision (of one image, if given), oldest first, withdrawn ones included.

        Columns: those of the table (``id, image_id, subtype, original_label, decision,
        reviewer, comment, created_at, role``) and ``retracted_at`` (when an undo withdrew
        the decision; "" while it is live).
        """
        cols = ", ".join(f"d.{c}" for c in _HISTORY_COLUMNS)
        sql = (
            f"SELECT {cols}, COALESCE(r.created_at, '') FROM decisions AS d "
            "LEFT JOIN retractions AS r ON r.decision_id = d.id"
        )
        if image_id is None:
            return self._frame(f"{sql} ORDER BY d.id", extra=(_RETRACTED,))
        return self._frame(f"{sql} WHERE d.image_id = ? ORDER BY d.id", (image_id,), (_RETRACTED,))

    def current(self) -> pd.DataFrame:
        """The latest live decision per (image_id, subtype, reviewer, role), ordered by
        image_id, subtype, id. Two reviewers of one cell give two rows: neither replaces
        the other (`hohoho_core.review.resolve` settles them)."""
        cols = ", ".join(_HISTORY_COLUMNS)
        return self._frame(f"SELECT {cols} FROM current_decisions ORDER BY image_id, subtype, id")

    def last_change(self) -> tuple[int, int]:
        """``(last decision id, last retraction id)``: changes whenever anything is
        recorded, so it keys caches of views of the decisions."""
        with self._connect() as con:
            d = con.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0]
            r = con.execute("SELECT COALESCE(MAX(id), 0) FROM retractions").fetchone()[0]
        return int(d), int(r)

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
        self,
        labels: pd.DataFrame | Path | str,
        out_csv: Path | str,
        *,
        provenance_csv: Path | str | None = None,
        fix_any: bool = False,
    ) -> ExportSummary:
        """Write corrected labels in the RSNA CSV format from the decisions on record now.

        Args:
            labels: the original labels: an RSNA CSV path (``ID,Label``, rows
                ``ID_<hex>_<class>``; its row order is kept), or a DataFrame with the six
                ``CLASSES`` columns and the image id either as index or as an
                ``image_id`` column.
            out_csv: destination; written to a temporary file first and renamed, so a
                crash never leaves half a file.
            provenance_csv: where to write "who decided what" (optional).
            fix_any: set "any" from the subtypes where they disagree (`review.corrected_labels`).

        Returns:
            An ``ExportSummary``. Each cell's decisions are settled by `review.resolve`:
            one reader's decision, readers who agree, or an adjudicator; ``relabel_0`` /
            ``relabel_1`` set the label, ``keep``/``unsure`` and unresolved disagreements
            leave it.
        """
        return export_corrected(
            self.current(), labels, out_csv, provenance_csv=provenance_csv, fix_any=fix_any
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
