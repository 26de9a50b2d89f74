"""6. The app: time from choosing a demo study to its first slice and chart, and per-step
scrolling once the study is analysed, through streamlit's AppTest.

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
NEXT_KEY = "viewer_next"  # slice_nav_ui(prefix="viewer")'s next button


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


def _heading(at: Any) -> str | None:
    heads = [m.value for m in at.markdown if str(m.value).startswith("### Slice ")]
    return heads[0] if heads else None


def _problems(at: Any) -> list[str]:
    """Exceptions and errors on the page, and a missing slice image or chart."""
    out = [f"exception: {str(e.value)[:200]}" for e in at.exception]
    out += [f"error: {str(e.value)[:200]}" for e in at.error]
    if not len(at.image):
        out.append("no slice image")
    if not len(at.get("plotly_chart")):
        out.append("no probability chart")
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
            sec.add("choose a demo study -> first slice + chart", float(np.median(opens)), "s",
                    f"read + analyse + draw, new study each time; median of {len(opens)}",
                    opens)
        steps = []
        for k in range(s.app_scroll_steps):
            before = _heading(at)
            t0 = time.perf_counter()
            at.button(key=NEXT_KEY).click().run()
            steps.append(time.perf_counter() - t0)
            after = _heading(at)
            if after == before or _problems(at):
                raise RuntimeError(f"next-slice step {k + 1} did not move: {before} -> {after}")
        scroll = float(np.median(steps))
        sec.add("scroll one slice (next button)", scroll, "s",
                f"analysed study; median of {len(steps)}, max {max(steps):.3f} s", steps)
    sec.goal("scroll step once analysed", scroll, "<=", GOAL_SCROLL_S, "s",
             cause="the whole viewer script reruns per click (image, table, chart redrawn)")
    return sec
