"""8. The browser viewer under load: N users scrolling one study at the same time.

The real app (``streamlit run``) on a free loopback port and headless Chromium (Debian's
``/usr/bin/chromium``) on the same machine, one browser process per user, as each user has
a browser of their own (each its own Streamlit session). All users in one browser, one
context each, is run once more for comparison: there every page's frames go through that
browser's single compositor thread, which no deployment shares between users (on the
2-core Xeon, 2026-12-01, alternating: one browser's worst p90 about twice the per-user
one at the same steps per second; the section's comparison row gives its run's). Every
user opens the same demo study, then presses Down / Up through it as fast as the viewer
follows (the next key once the slice is drawn). Measured:

* step latency per user, in the page: from the key event's timestamp to the first frame
  after the new slice is drawn (``main.js`` records it in ``window.__hohoho.latencies``);
* the server's CPU seconds during the scroll (``/proc/<pid>/stat`` of the streamlit
  process, every thread), divided by the steps of all users, and the messages it sent (page runs);
* the bytes the study costs on the wire once (the component's arguments).

Run alone with ``python -m bench.viewer_load`` (writes the section into bench/results.*).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Section,
    cpu_snapshot,
    machine_info,
    machine_line,
    other_load,
    stop_process_group,
)
from bench.context import FULL, REPO_ROOT, BenchContext, generate_once

__all__ = ["GOAL_STEP_S", "run"]

GOAL_STEP_S = 0.05  # issue 17: 20 steps per second for every user
USERS = 8
PASSES = 3  # down, up, down: ends on another slice than it started, so each user reports it
#: Whole load tests per run: on this shared 2-core machine one test's worst p90 moved between
#: 49 and 73 ms within an hour, so the goal is judged on the median test, all listed.
REPEATS = 3
STUDY_SLICES = 40
STUDY_PX = 512
REPORT_WAIT_S = 6.0  # after the scroll: time for each user's one slice report
WORKLIST_STUDIES = 4  # the worklist's throughput; the viewer scrolls the first
CHROMIUM = Path("/usr/bin/chromium")
FRAME = 'iframe[title*="hohoho_viewer"]'
#: Measured by the issue's author (headless Chromium, 2 cores, Next button, old viewer).
OLD_PATH = "old server-side viewer (issue 17's figures): 1 user 0.40 s, 4 users 1.4 s " \
           "(p90 3.1 s), 8 users 3.6 s (p90 7.5 s, max 12.7 s) per step"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: How a process's command line names its part in the load test (first match wins).
_PARTS = (("--type=renderer", "browser page renderers"),
          ("--type=gpu-process", "browser compositors (one GPU process per browser)"),
          ("chromium", "browser main and helper processes"),
          ("playwright", "test driver (Playwright's node)"),
          ("streamlit", "app server"))


def _cpu_by_part(own_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process, summed by its part of the test (Linux /proc)."""
    parts: dict[str, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cpu = _proc_cpu_s(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
        if int(d.name) == own_pid:
            name = "test driver (this Python process)"
        else:
            name = next((n for key, n in _PARTS if key in cmd), "other processes")
        parts[name] = parts.get(name, 0.0) + cpu
    return parts


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _server(demo: Path, weights: Path, work: Path):  # noqa: ANN202 (yields url, pid)
    port = _free_port()
    env = dict(os.environ)
    env.update(HOHOHO_DEMO_DIR=str(demo), HOHOHO_WEIGHTS=str(weights),
               HOHOHO_DATA_ROOT=str(work), HOHOHO_STORE=str(work / "viewer_load.sqlite"))
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false"]
    log = (work / "viewer_load_server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError("streamlit did not start in 120 s")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        stop_process_group(proc)
        log.close()


#: An object whose ``p`` settles on the viewer's next "hohoho:drawn" event (main.js); wrapped
#: so that arming it does not wait for it.
_ARM = """() => ({p: new Promise((resolve) => window.addEventListener(
    "hohoho:drawn", () => resolve(), {once: true}))})"""
_WAIT_AND_ARM = "async (armed) => { await armed.p; return (" + _ARM + ")(); }"


async def _open(context: Any, url: str) -> tuple[Any, Any, float, list[float]]:
    """(page, viewer frame, seconds to the first slice drawn, server messages received).

    The server's websocket messages are counted as the sign that it ran the page: the
    script-state attribute misses fast runs (React can apply "running" and "not running"
    in one render, and the DOM never shows the first)."""
    page = await context.new_page()
    page.set_default_timeout(600_000)
    frames: list[float] = []
    page.on("websocket", lambda ws: ws.on("framereceived",
                                          lambda _: frames.append(time.monotonic())))
    t0 = time.perf_counter()
    await page.goto(url)
    frame = page.frame_locator(FRAME)
    await frame.locator('body[data-ready="1"]').wait_for()
    ready = time.perf_counter() - t0
    handle = await (await page.wait_for_selector(FRAME)).content_frame()
    await page.evaluate("() => document.activeElement && document.activeElement.blur()")
    return page, handle, ready, frames


async def _scroll(page: Any, frame: Any, n: int, passes: int) -> int:
    """Down through the study, up again, ``passes`` times; the next key once drawn."""
    await frame.evaluate("() => { window.__hohoho.latencies = []; }")
    steps = 0
    # The wait for a frame is armed before its key goes, so the frame's event cannot be
    # missed, and one call waits for this step's frame and arms the next: waiting on the
    # viewer's event instead of polling (8 pages polling every 5 ms loaded the renderers
    # being measured) and one round trip per step besides the key's own.
    armed = await frame.evaluate_handle(_ARM)
    used = []
    for p in range(passes):
        key = "ArrowDown" if p % 2 == 0 else "ArrowUp"
        for _ in range(n - 1):
            # Held down, as a reader scrolls: the key repeats (keydown events, one keyup).
            await page.keyboard.down(key)
            used.append(armed)
            armed = await frame.evaluate_handle(_WAIT_AND_ARM, armed)
            steps += 1
        await page.keyboard.up(key)
    await asyncio.gather(*(h.dispose() for h in [*used, armed]))
    return steps


async def _load_test(url: str, pid: int, users: int, n: int, passes: int,
                     shared: bool = False) -> dict[str, Any]:
    """One load test. Each user has a browser of their own, as users do; ``shared`` puts
    every user in one browser instead (one context each), where all pages' frames go
    through that browser's one compositor thread (shown for comparison)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browsers = []
        try:
            for _ in range(1 if shared else users):
                browsers.append(await pw.chromium.launch(
                    executable_path=str(CHROMIUM),
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run"]))
            contexts = [await browsers[0 if shared else u].new_context(
                viewport={"width": 1400, "height": 1300}) for u in range(users)]
            opened = [await _open(c, url) for c in contexts]  # one after the other: warm
            await asyncio.sleep(2.0)  # the last page's own runs are over
            sent0 = [len(m) for *_, m in opened]
            parts0 = _cpu_by_part(os.getpid())
            cpu0, rss0, t0 = _proc_cpu_s(pid), _rss_mb(pid), time.perf_counter()
            steps = await asyncio.gather(*(_scroll(p, f, n, passes) for p, f, *_ in opened))
            wall = time.perf_counter() - t0
            cpu_scroll = _proc_cpu_s(pid) - cpu0
            parts1 = _cpu_by_part(os.getpid())
            parts = {k: v - parts0.get(k, 0.0) for k, v in parts1.items()}
            msgs_during = [len(m) - k for (*_, m), k in zip(opened, sent0, strict=True)]
            lat = [await f.evaluate("() => window.__hohoho.latencies") for _, f, *_ in opened]
            await asyncio.sleep(REPORT_WAIT_S)  # each user reports its slice once it stops
            cpu_tail = _proc_cpu_s(pid) - cpu0
            msgs_after = [len(m) - k for (*_, m), k in zip(opened, sent0, strict=True)]
            return {"steps": steps, "wall": wall, "cpu_scroll": cpu_scroll,
                    "cpu_with_reports": cpu_tail, "latencies_ms": lat, "cpu_parts": parts,
                    "ready_s": [r for _, _, r, _ in opened], "msgs_during": msgs_during,
                    "msgs_after": msgs_after, "rss0": rss0, "rss1": _rss_mb(pid)}
        finally:
            for browser in browsers:
                await browser.close()


def _payload_bytes(demo: Path) -> tuple[int, int, int]:
    """(volume bytes, JSON bytes, raw int16 bytes) of the first demo study's payload."""
    from hohoho_core.dicom import load_study
    from hohoho_core.rsna import build_index
    from hohoho_ui.viewer_component.payload import viewer_payload

    table = build_index(demo, workers=1, progress=False).table
    first = table.groupby(["study_uid", "series_uid"], sort=False).ngroup() == 0
    study = load_study([demo / p for p in table.loc[first, "path"]])
    rng = np.random.default_rng(0)
    prob = rng.random((study.n_slices, 6))
    p = viewer_payload(study, "k", "Study 1", prob, prob, np.full(6, 0.5),
                       np.zeros((study.n_slices, 6), int))
    return len(p.volume), len(json.dumps(p.meta)), int(study.hu.size * 2)


def _worklist_rate(demo: Path, weights: Path) -> tuple[int, float]:
    """(studies, seconds) for `WorklistRun` over every study of ``demo`` (read + model)."""
    from hohoho_core.dicom import load_study
    from hohoho_core.predict import Predictor
    from hohoho_core.rsna import build_index
    from hohoho_core.worklist import IndexedSource, WorklistRun

    table = build_index(demo, workers=1, progress=False).table.copy()
    table["path"] = [str(demo / p) for p in table["path"]]
    source = IndexedSource("bench", "bench", str(demo), table,
                           lambda paths: load_study(list(paths)))
    predictor = Predictor.from_folder(weights, device="cpu")
    run = WorklistRun(list(source.entries()), predictor.predict)
    t0 = time.perf_counter()
    run.start().join()
    seconds = time.perf_counter() - t0
    failed = [r for r in run.results() if r.error]
    if failed:
        raise RuntimeError(f"worklist: {failed[0].label}: {failed[0].error}")
    return len(run.entries), seconds


def _worst_p90(res: dict[str, Any]) -> float:
    return max(float(np.percentile(np.asarray(x) / 1000.0, 90)) for x in res["latencies_ms"])


def run(ctx: BenchContext, users: int = USERS, passes: int = PASSES,
        repeats: int = REPEATS) -> Section:
    sec = Section("viewer_load", f"8. Browser viewer under load ({users} users, Chromium)")
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make browser` first")
    demo = generate_once(ctx.work / f"worklist_{WORKLIST_STUDIES}x{STUDY_PX}", WORKLIST_STUDIES,
                         ctx.sizes.seed, STUDY_PX, (STUDY_SLICES, STUDY_SLICES))
    bundle = ctx.model
    n_studies, seconds = _worklist_rate(demo, bundle.folder)
    sec.add("worklist throughput", n_studies / seconds * 60, "studies/min",
            f"{n_studies} studies of {STUDY_SLICES} x {STUDY_PX} px read and analysed in "
            f"{seconds:.1f} s (WorklistRun: one background thread, torch on every core)")
    vol_b, json_b, raw_b = _payload_bytes(demo)
    # Run on its own, this section may come from another machine than the file's header.
    sec.params.update(machine=machine_line(machine_info()), model=bundle.source, study=f"1 synthetic study, {STUDY_SLICES} slices of "
                      f"{STUDY_PX} px", users=users, browser="headless Chromium, one browser process per user (each "
                      "user has a browser of their own), all on this machine",
                      steps=f"{passes} passes through the study (Down, Up, ...)")
    sec.add("study payload, sent once", (vol_b + json_b) / 1e6, "MB",
            f"deflated int16 HU {vol_b / 1e6:.2f} MB (raw {raw_b / 1e6:.1f} MB) + JSON "
            f"{json_b / 1e3:.0f} kB (ids, z, probabilities, labels)")
    before = cpu_snapshot()
    with _server(demo, bundle.folder, ctx.work) as (url, pid):
        tests = [asyncio.run(_load_test(url, pid, users, STUDY_SLICES, passes))
                 for _ in range(max(1, repeats))]
        one_browser = asyncio.run(_load_test(url, pid, users, STUDY_SLICES, passes,
                                             shared=True))
    others = other_load(before, cpu_snapshot())
    # The rows below describe the median test (by worst p90); every test's worst p90 is listed.
    worst = [_worst_p90(r) for r in tests]
    res = tests[int(np.argsort(worst)[len(worst) // 2])]
    lat = [np.asarray(x, dtype=np.float64) / 1000.0 for x in res["latencies_ms"]]
    medians = [float(np.median(x)) for x in lat]
    p90s = [float(np.percentile(x, 90)) for x in lat]
    total = int(sum(res["steps"]))
    sec.add("open the study (page load to first slice drawn)", float(np.median(res["ready_s"])),
            "s", f"median of {users} users opened one after the other (in the first test the first user runs the model)",
            res["ready_s"])
    for u, (m, p) in enumerate(zip(medians, p90s, strict=True), start=1):
        sec.add(f"user {u}: step latency median / p90", f"{m * 1000:.1f} / {p * 1000:.1f}", "ms",
                f"{len(lat[u - 1])} steps, key event to the next frame after the draw")
    sec.add("worst user: step latency median", max(medians), "s", "", medians)
    sec.add("worst user: step latency p90", max(p90s), "s",
            f"the median of {len(tests)} load tests one after the other", p90s)
    if len(tests) > 1:
        sec.add("worst user's p90, each load test", " / ".join(f"{w * 1000:.1f}" for w in worst),
                "ms", f"{len(tests)} tests of {users} users, {passes} passes each; the rows "
                "above and below are the median test's", worst)
    lat1 = [np.asarray(x, dtype=np.float64) for x in one_browser["latencies_ms"]]
    total1 = int(sum(one_browser["steps"]))
    sec.add("for comparison, all users in one browser: worst median / p90",
            f"{max(float(np.median(x)) for x in lat1):.1f} / "
            f"{max(float(np.percentile(x, 90)) for x in lat1):.1f}", "ms",
            f"one load test after the others, {users} contexts of one Chromium: every page's "
            f"frames wait for that browser's one compositor thread; "
            f"{total1 / one_browser['wall']:.1f} steps/s for all users together")
    sec.add("steps per second, all users together", total / res["wall"], "steps/s",
            f"{total} steps in {res['wall']:.1f} s (next key once the slice is drawn)")
    sec.add("server CPU per step while scrolling", res["cpu_scroll"] / total * 1000, "ms",
            f"{res['cpu_scroll']:.2f} CPU s of the streamlit process over {total} steps")
    sec.add("server CPU per step, with the slice reports", res["cpu_with_reports"] / total * 1000,
            "ms", f"plus {REPORT_WAIT_S:.0f} s after the scroll, when each user reports its slice "
            "and window once")
    sec.add("server messages during the scroll", int(sum(res["msgs_during"])), "messages",
            f"websocket messages to all users (a page run sends several); "
            f"{int(sum(res['msgs_after']))} by the end of the {REPORT_WAIT_S:.0f} s pause after "
            f"it, from {sum(1 for m in res['msgs_after'] if m)} of {users} users' slice reports")
    parts = {k: v for k, v in res["cpu_parts"].items() if v > 0}
    for name, cpu in sorted(parts.items(), key=lambda kv: -kv[1]):
        sec.add(f"CPU per step: {name}", cpu / total * 1000, "ms",
                f"{cpu:.2f} CPU s during the scroll / {total} steps")
    per_step = sum(parts.values()) / total
    sec.add("CPU per step, every process together", per_step * 1000, "ms",
            f"this machine's {ctx.threads} cores can run at most {ctx.threads / per_step:.0f} "
            "such steps per second, for all users together")
    sec.add("server memory (RSS) before / after the scroll",
            f"{res['rss0']:.0f} / {res['rss1']:.0f}", "MB", "")
    sec.notes.append(f"For comparison, {OLD_PATH}, measured by the issue's author; that path "
                     "is gone (the viewer no longer reruns the page per step).")
    sec.notes.append(f"Processes other than the benchmark's own kept {others:.2f} cores busy "
                     "during the section: the 8 browsers, the app server and Playwright, all "
                     "on this machine.")
    sec.notes.append("Each user has a browser process of their own, as users do; with every "
                     "user in one browser (row above, for comparison) all pages' frames wait "
                     "for that browser's one compositor thread, which sets its p90.")
    sec.notes.append("Each user holds the arrow key down and the next key event goes as soon "
                     "as the previous slice is drawn: a closed loop at the machine's limit, "
                     "so the latency is measured with every core saturated.")
    cause = (f"the {users} browsers run on the server's {ctx.threads} cores: a step costs "
             f"{per_step * 1000:.0f} ms of CPU in all (the app server's share "
             f"{res['cpu_scroll'] / total * 1000:.1f} ms), so the machine runs at most "
             f"{ctx.threads / per_step:.0f} steps per second for all users together and "
             "every user's step waits behind the others'")
    sec.goal("step latency, worst user's p90", max(p90s), "<=", GOAL_STEP_S, "s", cause=cause)
    sec.goal("step latency, worst user's median", max(medians), "<=", GOAL_STEP_S, "s",
             cause=cause)
    return sec


def main(argv: list[str] | None = None) -> int:
    from bench.report import write_results

    p = argparse.ArgumentParser(description="8. The browser viewer under load")
    p.add_argument("--users", type=int, default=USERS)
    p.add_argument("--passes", type=int, default=PASSES)
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--work", type=Path, default=REPO_ROOT / "data" / "bench")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench")
    args = p.parse_args(argv)
    ctx = BenchContext(FULL, args.work, os.cpu_count() or 1)
    t0 = time.perf_counter()
    sec = run(ctx, args.users, args.passes, args.repeats)
    sec.seconds = time.perf_counter() - t0
    command = "python -m bench.viewer_load " + shlex.join(argv if argv is not None
                                                          else sys.argv[1:])
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    d = sec.to_dict()
    d.update(created=created, command=command.strip())
    stored = args.out / "results.json"
    # The other sections' run stays the header; this one carries its own command and time.
    results = (json.loads(stored.read_text(encoding="utf-8")) if stored.is_file() else
               {"command": command.strip(), "created": created, "machine": machine_info(),
                "threads": ctx.threads})
    results["sections"] = {sec.name: d}
    write_results(results, args.out, merge_existing=True)
    for row in sec.rows:
        print(f"{row.what}: {row.value} {row.unit}  {row.detail}")
    for g in sec.goals:
        print(f"goal {g.what} {g.op} {g.limit}: {g.measured:.4f} met={g.met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
