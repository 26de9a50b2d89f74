"""The worklist and the browser viewer in headless Chromium (issue 17).

The worklist over the demo studies lists them by suspicion (checked against the
probabilities computed here, independently of the app); a click opens the study in the
viewer; cine advances the slices while playing and stops on pause; Page Down / Page Up
walk the worklist order. With ``HOHOHO_SCREENSHOTS=1`` the worklist screenshot goes to
``docs/screenshots/`` (else to the test's tmp folder).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from hohoho_core.dicom import load_study
from hohoho_core.labels import ANY_INDEX
from hohoho_core.predict import Predictor
from hohoho_core.rsna import build_index
from tests.test_app import AppData
from tests.test_browser import (  # noqa: F401 (the module's server fixture)
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    STEP_MS,
    VIEWER_FRAME,
    no_exception,
    server,
    settle,
    shoot,
    weights_for,
)

pytestmark = pytest.mark.browser

WORKLIST_MS = 300_000  # every demo study through the model on a loaded 2-core machine


def expected_order(data: AppData) -> list[tuple[str, float]]:
    """(label, highest "any") of every demo series, most suspicious first, computed here."""
    table = build_index(data.demo, cache_dir=data.cache, workers=1, progress=False).table
    predictor = Predictor.from_folder(weights_for(data), device="cpu")
    rows = []
    groups = table.groupby(["study_uid", "series_uid"], sort=False)
    for n, (_, part) in enumerate(groups, start=1):
        study = load_study([data.demo / p for p in part["path"]])
        any_max = float(predictor.predict(study).prob[:, ANY_INDEX].max())
        rows.append((f"Study {n} · {len(part)} slices", any_max))
    return sorted(rows, key=lambda r: -r[1])


def rows_when_drawn(labels, n: int, timeout_s: float = STEP_MS / 1000) -> list[str]:  # type: ignore[no-untyped-def]
    """The labels' texts once ``n`` of them are on the page and stay for half a second."""
    deadline = time.monotonic() + timeout_s
    last: list[str] = []
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        shown = [t.replace("\u2060", "").strip() for t in labels.all_inner_texts()]
        if shown != last:
            last, steady_since = shown, time.monotonic()
        elif len(shown) == n and time.monotonic() - steady_since >= 0.5:
            return shown
        time.sleep(0.1)
    return last


def study_header(page) -> str:  # type: ignore[no-untyped-def]
    text = page.locator('[data-testid="stMain"] strong').first.inner_text()
    return text.replace("\u2060", "")


def test_worklist_orders_opens_and_walks_studies(
    server: tuple[str, Path, AppData],  # noqa: F811
    tmp_path: Path,
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (Debian's chromium) first.")
    from playwright.sync_api import expect, sync_playwright

    url, _, data = server
    shots = SCREENSHOTS if os.environ.get("HOHOHO_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    order = expected_order(data)
    # The order must not hinge on a rounding tie.
    gaps = [a[1] - b[1] for a, b in zip(order, order[1:], strict=False)]
    assert min(gaps) > 1e-4, order

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.set_default_timeout(STEP_MS)
            expect.set_options(timeout=STEP_MS)

            # --- the worklist, analysed in the background, most suspicious first
            page.goto(f"{url}/Worklist")
            expect(page.get_by_text(re.compile(r"studies analysed in"))).to_be_visible(
                timeout=WORKLIST_MS
            )
            settle(page)
            labels = page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"]',
                                  has_text=re.compile(r"^Study \d+ · \d+ slices$"))
            # The finished run's caption can show while the full rerun it triggers is still
            # drawing the rows: wait for the rows, then compare.
            shown = rows_when_drawn(labels, len(order))
            assert shown == [label for label, _ in order]
            badges = page.locator('[data-testid="stMain"]').get_by_text(re.compile(r"^any \d"))
            values = [float(t.split()[1]) for t in badges.all_inner_texts()]
            assert values == pytest.approx([p for _, p in order], abs=0.006)
            no_exception(page)
            shoot(page, shots / "worklist.png")

            # --- a click opens the study in the viewer
            page.locator('[class*="st-key-wl_open_"] button').first.click()
            viewer = page.frame_locator(VIEWER_FRAME)
            body = viewer.locator("body")
            expect(body).to_have_attribute("data-ready", "1")
            first_label = order[0][0]
            expect(page.locator('[data-testid="stMain"] strong').first).to_contain_text(
                first_label.split(" · ")[0] + " · "
            )
            n_first = int(first_label.split(" · ")[1].split()[0])
            expect(viewer.locator("#heading")).to_have_text(f"Slice 1 / {n_first}")
            settle(page)
            page.evaluate("() => document.activeElement && document.activeElement.blur()")

            # --- cine: slices advance while playing, stop on pause
            viewer.locator("#fps").select_option("10")
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            page.keyboard.press("c")
            expect(body).to_have_attribute("data-playing", "1")
            seen = set()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                seen.add(body.get_attribute("data-slice"))
                time.sleep(0.05)
            assert len(seen) >= 5, seen  # 10 fps for 3 s, even with a slow frame or two
            page.keyboard.press("c")
            expect(body).to_have_attribute("data-playing", "0")
            # "c" is Streamlit's clear-cache key too: the viewer keeps it to itself.
            assert page.locator('[role="dialog"]').count() == 0
            stopped = body.get_attribute("data-slice")
            time.sleep(0.8)
            assert body.get_attribute("data-slice") == stopped

            # --- Page Down: the next study of the worklist; Page Up: back
            study_key = body.get_attribute("data-study")
            page.keyboard.press("PageDown")
            second = order[1][0]
            expect(page.locator('[data-testid="stMain"] strong').first).to_have_text(
                re.compile("^" + re.escape(second.split(" · ")[0] + " · "))
            )
            expect(body).not_to_have_attribute("data-study", study_key or "")
            n_second = int(second.split(" · ")[1].split()[0])
            expect(viewer.locator("#heading")).to_have_text(f"Slice 1 / {n_second}")
            settle(page)
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            page.keyboard.press("PageUp")
            expect(page.locator('[data-testid="stMain"] strong').first).to_have_text(
                re.compile("^" + re.escape(first_label.split(" · ")[0] + " · "))
            )
            settle(page)
            no_exception(page)
        finally:
            browser.close()
    assert (shots / "worklist.png").stat().st_size > 10_000
