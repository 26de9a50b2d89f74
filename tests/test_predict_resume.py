"""A batch ``predict`` stopped by a real signal resumes to the uninterrupted run's bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hohoho_core.resultlog import ResultLog, rank_log_path
from tests.test_predict import make_weights

REPO = Path(__file__).resolve().parents[1]


N_STUDIES = 20

#: Polls a result log until two studies are on record, collecting the run's child processes
#: meanwhile, then sends the signal; argv: log path, pid, signal number, output JSON.
WATCHER = """
import json, os, sys, time
from pathlib import Path
log, pid, sig, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def kids():
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            pass
    return found
readers, lines, deadline = set(), 0, time.monotonic() + 240
while time.monotonic() < deadline:
    readers |= kids()
    try:
        lines = log.read_bytes().count(b"\\n")
    except OSError:
        pass
    if lines >= 2:
        break
    time.sleep(0.005)
readers |= kids()
try:
    os.kill(pid, sig)
    sent = True
except ProcessLookupError:
    sent = False
Path(out).write_text(json.dumps({"readers": sorted(readers), "lines": lines, "sent": sent,
                                 "sigint": str(__import__("signal").getsignal(2))}))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hohoho_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("resume")
    weights = make_weights(root / "weights")
    data = root / "rsna"
    # Enough work that a signal lands part-way: on a quiet machine a run of 6 studies
    # (190 slices at 180 slices/s) finished before the test's poll saw two of them done.
    generate_dataset(data, n_studies=N_STUDIES, seed=21, size=64, slices=(30, 34))
    return weights, data


@pytest.fixture(scope="module")
def reference(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted serial run's output, once for every test here (serial and pipelined
    runs write the same bytes: tests/test_batch.py)."""
    weights, data = setup
    full = tmp_path_factory.mktemp("reference") / "full.csv"
    res = subprocess.run(_cmd(weights, data, full, "--workers", "0"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not rank_log_path(full, 0, 1).exists()  # the log is gone once the file is written
    return full


def _cmd(weights: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hohoho_core", "predict", str(data), "--weights",
            str(weights), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_log_ignores_a_torn_last_line(tmp_path: Path) -> None:
    log = ResultLog(tmp_path / "x.jsonl")
    log.append({"study_uid": "1", "series_uid": "2", "p": 0.5})
    with log.path.open("ab") as fh:
        fh.write(b'{"study_uid": "3", "ser')  # killed mid-write
    assert log.done() == {"1/2"}
    log.repair()
    log.append({"study_uid": "3", "series_uid": "4"})
    assert [r["study_uid"] for r in log.records()] == ["1", "3"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_file(
    setup: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    weights, data = setup
    full = reference

    out = tmp_path / "cut.csv"
    log = ResultLog(rank_log_path(out, 0, 1))
    proc = subprocess.Popen(_cmd(weights, data, out), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    readers: set[int] = set()
    while time.monotonic() < deadline and len(log.done()) < 2 and proc.poll() is None:
        readers |= _children(proc.pid)
        time.sleep(0.02)
    readers |= _children(proc.pid)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: only the log survives
    proc.wait(timeout=30)
    # Its reader processes die with it (PR_SET_PDEATHSIG), none is left blocked on a pipe.
    time.sleep(1.0)
    assert not [p for p in readers if _alive(p)]
    n_done = len(log.done())
    assert 2 <= n_done < N_STUDIES, f"the run was not stopped part-way ({n_done} studies done)"
    assert not out.exists()
    # Without --resume the partial results are never thrown away silently.
    res = subprocess.run(_cmd(weights, data, out), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "--resume" in res.stderr
    res = subprocess.run(_cmd(weights, data, out, "--resume"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed: {n_done} studies were done, {N_STUDIES - n_done} predicted now" in res.stderr
    assert out.read_bytes() == full.read_bytes()
    studies = out.with_name(f"{out.stem}_studies.csv")
    assert studies.read_bytes() == full.with_name(f"{full.stem}_studies.csv").read_bytes()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopped_pipelined_run_resumes_to_the_same_file(
    setup: tuple[Path, Path], reference: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """A real signal to a pipelined run: it stops cleanly (exit 130, readers gone, the log
    whole) and ``--resume`` finishes it to the bytes of an uninterrupted serial run."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc to see the reader processes")
    weights, data = setup
    full = reference

    out = tmp_path / "cut.csv"
    log = ResultLog(rank_log_path(out, 0, 1))
    # Ctrl-C as in a terminal: a shell's background job (``make test &``) starts with SIGINT
    # ignored, which a child inherits, and the run would then never see the signal.
    proc = subprocess.Popen(_cmd(weights, data, out, "--workers", "2"), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    # The watching is done by a process of its own: in a long test session this process's
    # threads (left by earlier tests) can keep a polling loop here from running for seconds,
    # and the run then finished before any signal was sent.
    seen = tmp_path / "readers.json"
    watcher = subprocess.run([sys.executable, "-c", WATCHER, str(log.path), str(proc.pid),
                              str(int(sig)), str(seen)], timeout=300)
    assert watcher.returncode == 0
    watched = json.loads(seen.read_text())
    readers = set(watched["readers"])
    _, err = proc.communicate(timeout=60)
    n_done = len(log.done())
    assert 2 <= n_done < N_STUDIES, (f"the run was not stopped part-way ({n_done} studies done; "
                             f"exit {proc.returncode}; watcher {watched}): {err[-2000:]}")
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    assert len(readers) >= 2  # the two reader processes were seen...
    time.sleep(0.5)
    assert not [p for p in readers if _alive(p)]  # ...and none outlived the run
    assert not out.exists()
    res = subprocess.run(_cmd(weights, data, out, "--resume", "--workers", "2"), cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed: {n_done} studies were done, {N_STUDIES - n_done} predicted now" in res.stderr
    assert out.read_bytes() == full.read_bytes()
    studies = out.with_name(f"{out.stem}_studies.csv")
    assert studies.read_bytes() == full.with_name(f"{full.stem}_studies.csv").read_bytes()
