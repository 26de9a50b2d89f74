"""DecisionStore: append-only history, concurrency, kills, corrupt files, export."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from hohoho_core.labels import CLASSES
from hohoho_core.store import (
    APPLICATION_ID,
    DECISIONS,
    DecisionStore,
    ExportSummary,
    StoreError,
)

ROOT = Path(__file__).resolve().parents[1]

# A writer process: waits for a "go" file so that several start writing together, then
# records N decisions and prints each id after record() returns (i.e. after COMMIT).
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hohoho_core.store import DecisionStore
    db, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    store = DecisionStore(db)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    for i in range(n):
        rid = store.record(f"ID_{tag}{i:06d}", "subdural", 0, "relabel_1", tag, "c" * 50)
        print(rid, flush=True)
    """
)

# A writer that kills itself (SIGKILL) inside record(), after the INSERT and just before
# COMMIT: the decision in flight.
KILL_IN_FLIGHT = textwrap.dedent(
    """
    import contextlib, os, signal, sys
    from hohoho_core.store import DecisionStore

    class Dying:
        def __init__(self, con):
            self.con = con
        def execute(self, sql, *args):
            if sql == "COMMIT":
                print("in flight", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return self.con.execute(sql, *args)
        def __getattr__(self, name):
            return getattr(self.con, name)

    store = DecisionStore(sys.argv[1])
    for i in range(5):
        print(store.record(f"ID_ok{i}", "any", 1, "keep", "r"), flush=True)
    plain = store._connect
    @contextlib.contextmanager
    def dying_connect():
        with plain() as con:
            yield Dying(con)
    store._connect = dying_connect
    store.record("ID_inflight", "any", 1, "relabel_0", "r")
    print("not reached", flush=True)
    """
)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _assert_healthy(path: Path) -> None:
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


# ----------------------------------------------------------------- basics


def test_record_history_current(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "d.db")
    a = store.record("ID_a", "epidural", 0, "relabel_1", "ann", "clear EDH")
    b = store.record("ID_b", "any", 1, "keep", "ann")
    c = store.record("ID_a", "epidural", 0, "unsure", "bob", "second look")
    assert (a, b, c) == (1, 2, 3)
    hist = store.history()
    assert list(hist["id"]) == [1, 2, 3]
    assert list(hist["decision"]) == ["relabel_1", "keep", "unsure"]
    assert list(store.history("ID_a")["id"]) == [1, 3]
    assert store.history("ID_none").empty
    stamp = pd.Timestamp(hist["created_at"][0])
    assert stamp.tzinfo is not None and stamp.utcoffset() == pd.Timedelta(0)
    cur = store.current()
    # A second reviewer of a cell adds a decision; it does not replace the first one's.
    assert list(
        zip(cur["image_id"], cur["subtype"], cur["reviewer"], cur["decision"], strict=True)
    ) == [
        ("ID_a", "epidural", "ann", "relabel_1"),
        ("ID_a", "epidural", "bob", "unsure"),
        ("ID_b", "any", "ann", "keep"),
    ]
    assert list(cur.loc[cur["image_id"] == "ID_a", "comment"]) == ["clear EDH", "second look"]
    # One reviewer changing their mind: their latest decision is current.
    store.record("ID_b", "any", 1, "relabel_0", "ann")
    cur = store.current()
    assert cur.loc[cur["image_id"] == "ID_b", "decision"].tolist() == ["relabel_0"]
    _assert_healthy(tmp_path / "d.db")


def test_reopen_keeps_decisions(tmp_path: Path) -> None:
    DecisionStore(tmp_path / "d.db").record("ID_a", "any", 0, "relabel_1", "ann")
    again = DecisionStore(tmp_path / "d.db")
    assert list(again.history()["image_id"]) == ["ID_a"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_id": ""},
        {"subtype": "hemorrhage"},
        {"original_label": 2},
        {"decision": "delete"},
        {"reviewer": "  "},
        {"comment": None},
    ],
)
def test_record_rejects_bad_input(tmp_path: Path, kwargs: dict) -> None:
    store = DecisionStore(tmp_path / "d.db")
    args = {
        "image_id": "ID_a",
        "subtype": "any",
        "original_label": 0,
        "decision": "keep",
        "reviewer": "ann",
        "comment": "",
    }
    with pytest.raises(ValueError):
        store.record(**{**args, **kwargs})
    assert store.history().empty


def test_update_and_delete_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = DecisionStore(path)
    store.record("ID_a", "any", 0, "relabel_1", "ann")
    with sqlite3.connect(path) as con:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE decisions SET decision = 'keep'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("DELETE FROM decisions")
        con.execute("PRAGMA recursive_triggers = ON")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(
                "INSERT OR REPLACE INTO decisions "
                "VALUES (1, 'ID_a', 'any', 0, 'keep', 'x', '', 't', 'reader')"
            )
    con.close()
    assert list(store.history()["decision"]) == ["relabel_1"]


# ----------------------------------------------------------------- undo, roles, version 1


def test_undo_appends_a_retraction_and_restores_the_previous_decision(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = DecisionStore(path)
    first = store.record("ID_a", "subdural", 0, "keep", "ann")
    second = store.record("ID_a", "subdural", 0, "relabel_1", "ann")
    bob = store.record("ID_a", "subdural", 0, "unsure", "bob")
    before = store.last_change()
    assert store.undo_last("ann") == second  # ann's latest, not bob's later one
    assert store.last_change() != before
    cur = store.current()
    assert sorted(zip(cur["reviewer"], cur["decision"], strict=True)) == [
        ("ann", "keep"),
        ("bob", "unsure"),
    ]
    assert store.undo_last("ann") == first
    assert store.undo_last("ann") is None  # nothing left to undo
    assert list(store.current()["id"]) == [bob]
    # Nothing was erased: every decision is in the history, the undone ones stamped.
    hist = store.history()
    assert list(hist["id"]) == [first, second, bob]
    assert [bool(t) for t in hist["retracted_at"]] == [True, True, False]
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT decision_id FROM retractions ORDER BY id").fetchall() == [
            (second,),
            (first,),
        ]
        for sql in ("UPDATE retractions SET reviewer = 'x'", "DELETE FROM retractions"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                con.execute(sql)
    con.close()
    with pytest.raises(ValueError, match="reviewer"):
        store.undo_last(" ")


def test_roles(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "d.db")
    store.record("ID_a", "any", 0, "keep", "ann")
    store.record("ID_a", "any", 0, "relabel_1", "ann", role="adjudicator")
    cur = store.current()
    assert sorted(zip(cur["role"], cur["decision"], strict=True)) == [
        ("adjudicator", "relabel_1"),
        ("reader", "keep"),
    ]
    with pytest.raises(ValueError, match="role"):
        store.record("ID_a", "any", 0, "keep", "ann", role="boss")


def _version_1_store(path: Path) -> None:
    """A store as the schema-1 code wrote it (its DDL, ids and pragmas)."""
    from hohoho_core import store as store_module

    with sqlite3.connect(path) as con:
        con.execute("PRAGMA journal_mode = WAL")
        for statement in store_module._SCHEMA_V1.split(";\n"):
            if statement.strip():
                con.execute(statement)
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        con.execute("PRAGMA user_version = 1")
        con.executemany(
            "INSERT INTO decisions (image_id, subtype, original_label, decision, reviewer, "
            "comment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                ("ID_a", "any", 0, "relabel_1", "ann", "old", "2026-11-01T00:00:00+00:00"),
                ("ID_b", "subdural", 1, "keep", "ann", "", "2026-11-01T00:00:01+00:00"),
            ],
        )
    con.close()


def test_version_1_store_is_read_and_upgraded_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    _version_1_store(path)
    store = DecisionStore(path)
    hist = store.history()
    assert list(
        zip(
            hist["id"],
            hist["image_id"],
            hist["decision"],
            hist["comment"],
            hist["role"],
            strict=True,
        )
    ) == [
        (1, "ID_a", "relabel_1", "old", "reader"),
        (2, "ID_b", "keep", "", "reader"),
    ]
    assert len(store.current()) == 2
    assert store.undo_last("ann") == 2 and store.record("ID_c", "any", 0, "keep", "bob") == 3
    _assert_healthy(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    con.close()
    backup = tmp_path / "d.db.v1-backup"
    with sqlite3.connect(backup) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 1
        assert con.execute("SELECT id, decision FROM decisions").fetchall() == [
            (1, "relabel_1"),
            (2, "keep"),
        ]
    con.close()
    # A second opening finds version 2: no second upgrade, the backup left as it was.
    stamp = backup.stat().st_mtime_ns
    assert len(DecisionStore(path).history()) == 3
    assert backup.stat().st_mtime_ns == stamp


def test_progress(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "d.db")
    store.record("ID_a", "any", 0, "keep", "ann")
    store.record("ID_b", "subdural", 1, "unsure", "ann")
    store.record("ID_z", "any", 1, "keep", "ann")  # not in the queue
    queue = [("ID_a", "any"), ("ID_b", "subdural"), ("ID_c", "any"), ("ID_a", "any")]
    assert store.progress(queue) == (2, 3)
    assert store.progress(queue, count_unsure=False) == (1, 3)
    assert store.progress([]) == (0, 0)


def test_threads_share_one_store(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "d.db")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                store.record(f"ID_t{t}_{i}", "any", 0, "keep", f"thread{t}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    hist = store.history()
    assert len(hist) == 100 and hist["image_id"].nunique() == 100
    assert list(hist["id"]) == list(range(1, 101))


def test_creation_waits_for_a_process_holding_the_new_file(tmp_path: Path) -> None:
    # A store created while another connection holds the new file waits for it.
    path = tmp_path / "d.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.4)
        holder.execute("COMMIT")
        released.set()

    threading.Thread(target=release, daemon=True).start()
    t0 = time.perf_counter()
    store = DecisionStore(path)
    assert released.is_set() and time.perf_counter() - t0 >= 0.3
    holder.close()
    store.record("ID_1", "epidural", 1, DECISIONS[0], "t")
    assert len(store.history()) == 1


def test_wal_switch_retries_while_the_file_is_locked(tmp_path: Path) -> None:
    # SQLite can answer "database is locked" to the journal-mode change at once, without its
    # busy handler (seen once in CI when two processes created the store together).
    store = DecisionStore(tmp_path / "d.db")
    calls = []

    class Locked:
        def execute(self, sql: str):
            calls.append(sql)
            if len(calls) < 3:
                raise sqlite3.OperationalError("database is locked")
            return sqlite3.connect(":memory:").execute("SELECT 'wal'")

    store._enable_wal(Locked())
    assert calls == ["PRAGMA journal_mode = WAL"] * 3

    class Broken:
        def execute(self, sql: str):
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store._enable_wal(Broken())


# ----------------------------------------------------------------- processes


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path, go = tmp_path / "d.db", tmp_path / "go"
    procs = [_spawn(WRITER, str(path), tag, "200", str(go)) for tag in ("a", "b")]
    for proc in procs:  # both have opened the store (racing on its creation too)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    go.touch()
    acked: dict[str, list[int]] = {}
    for tag, proc in zip(("a", "b"), procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        acked[tag] = [int(x) for x in out.split()]
    hist = DecisionStore(path).history()
    assert len(hist) == 400
    assert sorted(hist["id"]) == list(range(1, 401))
    assert sorted(acked["a"] + acked["b"]) == list(range(1, 401))
    for tag in ("a", "b"):
        mine = hist[hist["reviewer"] == tag]
        assert sorted(mine["image_id"]) == [f"ID_{tag}{i:06d}" for i in range(200)]
        assert sorted(mine["id"]) == sorted(acked[tag])
    # The writes really interleaved (otherwise this test would prove nothing).
    order = list(hist.sort_values("id")["reviewer"])
    switches = sum(x != y for x, y in zip(order, order[1:], strict=False))
    assert switches > 1
    _assert_healthy(path)


def test_writer_killed_in_a_stream_loses_only_the_decision_in_flight(tmp_path: Path) -> None:
    path, go = tmp_path / "d.db", tmp_path / "go"
    go.touch()
    proc = _spawn(WRITER, str(path), "k", "100000", str(go))
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    acked: list[int] = []
    while len(acked) < 40:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        acked.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    acked += [int(x) for x in rest.split()]

    store = DecisionStore(path)  # opens cleanly
    ids = list(store.history()["id"])
    assert set(acked) <= set(ids)
    assert ids == list(range(1, len(ids) + 1))
    # At most one decision committed but not yet acknowledged when the kill landed.
    assert len(ids) - len(acked) in (0, 1)
    assert store.record("ID_after", "any", 0, "keep", "r") == len(ids) + 1
    _assert_healthy(path)


def test_writer_killed_before_commit_loses_only_that_decision(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    proc = _spawn(KILL_IN_FLIGHT, str(path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    lines = out.split("\n")
    assert lines[:6] == ["1", "2", "3", "4", "5", "in flight"]
    assert "not reached" not in out
    store = DecisionStore(path)
    hist = store.history()
    assert list(hist["image_id"]) == [f"ID_ok{i}" for i in range(5)]
    # The killed writer held the write lock; it must be free again.
    assert store.record("ID_next", "any", 0, "keep", "r") == 6
    _assert_healthy(path)


# ----------------------------------------------------------------- refusing files


def _real_store(path: Path, n: int = 300) -> bytes:
    store = DecisionStore(path)
    for i in range(3):
        store.record(f"ID_{i:06d}", CLASSES[i % 6], i % 2, "keep", "ann", "x" * 200)
    # Bulk rows in one transaction (one fsync, not n) so that the file spans many pages.
    with sqlite3.connect(path) as con:
        con.executemany(
            "INSERT INTO decisions (image_id, subtype, original_label, decision, reviewer, "
            "comment, created_at) VALUES (?, ?, ?, 'keep', 'ann', ?, 't')",
            [(f"ID_{i:06d}", CLASSES[i % 6], i % 2, "x" * 200) for i in range(3, n)],
        )
    con.close()
    # All connections are closed: the WAL is checkpointed into the main file.
    assert not Path(f"{path}-wal").exists()
    return path.read_bytes()


def _refused(path: Path, match: str) -> None:
    before = path.read_bytes()
    with pytest.raises(StoreError, match=match) as info:
        DecisionStore(path)
    assert str(path) in str(info.value) and "left untouched" in str(info.value)
    assert path.read_bytes() == before


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.db"
    path.write_bytes(os.urandom(8192))
    _refused(path, "not an SQLite database")


def test_sqlite_header_over_random_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(52) + bytes(4) + os.urandom(4096))
    _refused(path, "corrupt")


def test_truncated_copy_of_a_real_store_is_refused(tmp_path: Path) -> None:
    full = _real_store(tmp_path / "full.db")
    assert len(full) > 16 * 4096
    path = tmp_path / "cut.db"
    path.write_bytes(full[: len(full) // 2])
    _refused(path, "corrupt or truncated")


def test_damaged_pages_of_a_real_store_are_refused(tmp_path: Path) -> None:
    full = bytearray(_real_store(tmp_path / "full.db"))
    full[5 * 4096 : 7 * 4096] = os.urandom(2 * 4096)
    path = tmp_path / "damaged.db"
    path.write_bytes(bytes(full))
    _refused(path, "corrupt")


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE patients (name TEXT)")
        con.execute("INSERT INTO patients VALUES ('x')")
    con.close()
    _refused(path, "another application")


def test_sqlite_database_with_foreign_application_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA application_id = 1234")
        con.execute("CREATE TABLE t (x)")
    con.close()
    _refused(path, "application_id 1234")


def test_other_schema_version_is_not_migrated(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    _real_store(path, n=3)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA user_version = 99")
    con.close()
    _refused(path, "schema version 99")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a regular file"):
        DecisionStore(tmp_path)


def test_empty_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    path.touch()
    DecisionStore(path).record("ID_a", "any", 0, "keep", "ann")
    _assert_healthy(path)


# ----------------------------------------------------------------- export


def _write_rsna(path: Path, rows: dict[str, list[int]]) -> None:
    lines = ["ID,Label"]
    for image_id, values in rows.items():
        lines += [f"{image_id}_{c},{v}" for c, v in zip(CLASSES, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def test_export_applies_current_relabels(tmp_path: Path) -> None:
    labels_csv = tmp_path / "stage_2_train.csv"
    original = {
        "ID_c": [0, 0, 0, 0, 0, 0],
        "ID_a": [0, 0, 0, 1, 0, 1],
        "ID_b": [0, 0, 0, 0, 1, 1],
    }
    _write_rsna(labels_csv, original)
    # The real file has duplicate rows: tolerated.
    with labels_csv.open("a") as fh:
        fh.write("ID_a_any,1\n")
    store = DecisionStore(tmp_path / "d.db")
    store.record("ID_c", "epidural", 0, "relabel_1", "ann")  # 0 -> 1
    store.record("ID_c", "any", 0, "relabel_1", "ann")  # 0 -> 1
    store.record("ID_a", "subarachnoid", 1, "relabel_0", "ann")
    store.record("ID_a", "subarachnoid", 1, "unsure", "bob")  # latest: leave the 1
    store.record("ID_b", "subdural", 1, "relabel_0", "ann")
    store.record("ID_b", "subdural", 1, "relabel_1", "bob")  # latest: 1, no change
    store.record("ID_b", "any", 1, "keep", "ann")
    store.record("ID_gone", "any", 0, "relabel_1", "ann")  # not in the labels
    out = tmp_path / "corrected.csv"
    summary = store.export_labels(labels_csv, out)
    # ID_a subarachnoid: ann relabel_0 vs bob unsure, a disagreement: left as it was.
    # ID_b subdural: ann relabel_0 vs bob relabel_1, a disagreement: left as it was.
    assert summary == ExportSummary(
        images=3, relabelled=2, unmatched=1, any_inconsistent=0, unresolved=2
    )
    text = out.read_text().splitlines()
    assert text[0] == "ID,Label"
    expected = {**original, "ID_c": [1, 0, 0, 0, 0, 1]}
    # The input's row order, its duplicate row included, so a diff shows only changes.
    assert text[1:] == [
        f"{i}_{c},{v}" for i, vals in expected.items() for c, v in zip(CLASSES, vals, strict=True)
    ] + ["ID_a_any,1"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_from_dataframe_counts_any_inconsistency(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        [["ID_a", 0, 0, 0, 0, 1, 1], ["ID_b", 0, 0, 0, 0, 0, 0]],
        columns=["image_id", *CLASSES],
    )
    store = DecisionStore(tmp_path / "d.db")
    store.record("ID_a", "subdural", 1, "relabel_0", "ann")  # leaves any = 1 alone
    summary = store.export_labels(frame, tmp_path / "out.csv")
    assert summary == ExportSummary(
        images=2, relabelled=1, unmatched=0, any_inconsistent=1, inconsistent_ids=("ID_a",)
    )
    back = pd.read_csv(tmp_path / "out.csv")
    assert back.loc[back["ID"] == "ID_a_subdural", "Label"].item() == 0
    assert back.loc[back["ID"] == "ID_a_any", "Label"].item() == 1
    assert len(back) == 12


def test_export_refuses_conflicting_duplicates(tmp_path: Path) -> None:
    labels_csv = tmp_path / "labels.csv"
    _write_rsna(labels_csv, {"ID_a": [0, 0, 0, 0, 0, 0]})
    with labels_csv.open("a") as fh:
        fh.write("ID_a_any,1\n")
    store = DecisionStore(tmp_path / "d.db")
    with pytest.raises(ValueError, match="conflicting"):
        store.export_labels(labels_csv, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_opening_is_quick_for_a_few_thousand_decisions(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    DecisionStore(path)
    with sqlite3.connect(path) as con:  # bulk insert; the store API is one commit each
        con.executemany(
            "INSERT INTO decisions (image_id, subtype, original_label, decision, reviewer, "
            "comment, created_at) VALUES (?, 'any', 0, 'keep', 'ann', '', 't')",
            [(f"ID_{i}",) for i in range(5000)],
        )
    con.close()
    start = time.perf_counter()
    again = DecisionStore(path)
    assert len(again.current()) == 5000
    assert time.perf_counter() - start < 5.0


def test_a_store_created_by_another_process_mid_check_is_not_called_foreign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two annotators opening a new store at once: the first creates its tables while the
    second is checking the file. The check reads one snapshot, so it sees the empty file or
    the finished store, never application_id 0 beside tables (which it once refused as
    another application's database: a flaky two-process test found it)."""
    path = tmp_path / "d.db"
    with contextlib.closing(sqlite3.connect(path)) as con:  # as the first process leaves it
        con.execute("PRAGMA journal_mode = WAL")  # after switching to WAL: empty, app id 0
    original = sqlite3.connect
    raced: list[bool] = []

    class Racing(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            cur = super().execute(sql, *args)
            if sql == "PRAGMA application_id" and not raced:
                raced.append(True)  # the other process creates the store right now
                DecisionStore(path)
            return cur

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        if raced or "mode=ro" not in str(args[0]):
            return original(*args, **kwargs)  # type: ignore[arg-type]
        return original(*args, factory=Racing, **kwargs)  # type: ignore[arg-type,misc]

    monkeypatch.setattr(sqlite3, "connect", connect)
    store = DecisionStore(path)
    assert raced and len(store.history()) == 0
