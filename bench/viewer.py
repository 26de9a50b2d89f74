"""6. The app: time from choosing a demo study to the viewer holding it, and the server run
that follows when the browser reports its slice, through streamlit's AppTest.

Scrolling itself happens in the browser (`hohoho_ui.viewer_component`); its latency under
load is section 8 (`bench.viewer_load`).

AppTest runs ``app.py`` in this process the way the server does for one browser session
(widgets, callbacks, ``st.cache_*``), without the browser: the figures are the server's
script time, which is what a user waits for before the page can redraw.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bench.common import Section
from bench.context import REPO_ROOT, BenchContext

__all__ = ["GOAL_SCROLL_S", "run"]

GOAL_SCROLL_S = 0.2
DEMO_KEY = "_w_demo_choice"  # widgets.kept's key of the demo study selectbox
VIEWER_KEY = "browser_viewer"  # widgets.browser_viewer_ui's component key


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _viewer_args(at: Any) -> dict[str, Any] | None:
    import json

    found = [e for e in at.get("component_instance")
             if e.proto.component_name.endswith("hohoho_viewer")]
    return json.loads(found[0].proto.json_args) if found else None


def _heading(at: Any) -> str | None:
    """The heading the browser viewer draws first: "### Slice k / n"."""
    args = _viewer_args(at)
    if args is None:
        return None
    return f"### Slice {args['start']['slice'] + 1} / {args['meta']['shape'][0]}"


def _problems(at: Any) -> list[str]:
    """Exceptions and errors on the page, and a viewer without a study or probabilities."""
    out = [f"exception: {str(e.value)[:200]}" for e in at.exception]
    out += [f"error: {str(e.value)[:200]}" for e in at.error]
    args = _viewer_args(at)
    if args is None:
        out.append("no viewer")
    elif args["meta"]["cnn"] is None:
        out.append("no probabilities")
    return out


def _demo_keys(ctx: BenchContext) -> list[str]:
    """The demo selectbox's option values: ``study_uid|series_uid`` in index order."""
    from hohoho_core.rsna import build_index

    table = build_index(ctx.demo_root, workers=1, progress=False).table
    groups = table.groupby(["study_uid", "series_uid"], sort=False)
    return [f"{study}|{series}" for (study, series), _ in groups]


def run(ctx: BenchContext) -> Section:
    from streamlit.testing.v1 import AppTest

    sec = Section("app", "6. The app (AppTest, server side)")
    s = ctx.sizes
    bundle = ctx.model
    demo = ctx.demo_root
    env = {
        "HOHOHO_DEMO_DIR": str(demo),
        "HOHOHO_WEIGHTS": str(bundle.folder),
        "HOHOHO_DATA_ROOT": str(ctx.work),
        "HOHOHO_STORE": str(ctx.work / "decisions.sqlite"),
    }
    sec.params.update(model=bundle.source, demo=str(demo.relative_to(REPO_ROOT)
                                                      if demo.is_relative_to(REPO_ROOT)
                                                      else demo.name),
                      threads=ctx.threads)
    with _env(env):
        at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=600)
        t0 = time.perf_counter()
        at.run()
        cold = time.perf_counter() - t0
        problems = _problems(at)
        if problems:
            raise RuntimeError("the viewer did not show study 1: " + "; ".join(problems))
        sec.add("first page load (cold)", cold, "s",
                "imports, model load, demo index, study 1 read and analysed", [cold])
        keys = _demo_keys(ctx)
        if at.selectbox(key=DEMO_KEY).value != keys[0]:
            raise RuntimeError("the demo selectbox does not list the indexed series in order")
        opens = []
        for k in range(1, min(len(keys), s.app_studies)):
            t0 = time.perf_counter()
            # set_value with the raw option: AppTest's select_index trips over format_func.
            at.selectbox(key=DEMO_KEY).set_value(keys[k]).run()
            opens.append(time.perf_counter() - t0)
            problems = _problems(at)
            if problems or _heading(at) is None or not _heading(at).startswith("### Slice 1 /"):
                raise RuntimeError(f"demo study {k + 1} did not open: {problems}")
        if opens:
            sec.add("choose a demo study -> viewer holds it", float(np.median(opens)), "s",
                    f"read + analyse + browser payload, new study each time; median of "
                    f"{len(opens)}", opens)
        steps = []
        n = _viewer_args(at)["meta"]["shape"][0]
        for k in range(s.app_scroll_steps):
            t0 = time.perf_counter()
            # What the browser sends once scrolling pauses: the slice and window on screen.
            at.session_state[VIEWER_KEY] = {"kind": "sync", "seq": time.time() + k,
                                            "slice": (k + 1) % n, "window": "brain",
                                            "centre": 40, "width": 80}
            at.run()
            steps.append(time.perf_counter() - t0)
            if at.session_state["slice"] != (k + 1) % n or _problems(at):
                raise RuntimeError(f"slice report {k + 1} was not applied: {_problems(at)}")
        scroll = float(np.median(steps))
        sec.add("server run per slice report (scrolling is in the browser)", scroll, "s",
                f"analysed study; median of {len(steps)}, max {max(steps):.3f} s", steps)
    sec.goal("server run per slice report", scroll, "<=", GOAL_SCROLL_S, "s",
             cause="the whole viewer script reruns per report")
    return sec
