"""In headless Chromium: the viewer's "PACS (DICOMweb)" source searches the test Orthanc
and opens a study. With ``HOHOHO_SCREENSHOTS=1`` the search is saved as
``docs/screenshots/pacs.png`` (else in the test's tmp folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hohoho_ui.settings import SHIPPED_WEIGHTS
from tests.test_app import APP
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    STEP_MS,
    VIEWER_FRAME,
    free_port,
    no_exception,
    settle,
    stop_process_group,
    wait_healthy,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def pacs_app(tmp_path_factory: pytest.TempPathFactory, orthanc) -> Iterator[str]:
    root = tmp_path_factory.mktemp("browser_pacs")
    log = root / "streamlit.log"
    port = free_port()
    env = dict(os.environ)
    env.update(
        HOHOHO_DEMO_DIR=str(root / "no_demo"),
        HOHOHO_WEIGHTS=str(SHIPPED_WEIGHTS),
        HOHOHO_DATA_ROOT=str(root),
        HOHOHO_STORE=str(root / "decisions.sqlite"),
        XDG_CACHE_HOME=str(root / "cache"),
        HOHOHO_DICOMWEB_URL=orthanc.dicomweb_url,
    )
    for name in ("HOHOHO_DICOMWEB_USER", "HOHOHO_DICOMWEB_PASSWORD", "HOHOHO_DICOMWEB_TOKEN",
                 "HOHOHO_MAX_UPLOAD_MB"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=APP.parent, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop_process_group(proc)


def test_search_the_pacs_and_open_a_study(pacs_app: str, pacs_studies, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (Debian's chromium) first.")
    from playwright.sync_api import expect, sync_playwright

    shots = SCREENSHOTS if os.environ.get("HOHOHO_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1750})
            page.set_default_timeout(STEP_MS)
            expect.set_options(timeout=STEP_MS)
            page.goto(pacs_app)
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text("PACS (DICOMweb)").click()
            settle(page)
            sidebar.get_by_role("button", name="Search").click()
            settle(page)
            table = sidebar.locator('[data-testid="stDataFrame"]')
            expect(table).to_be_visible()
            expect(sidebar.get_by_text(f"{len(pacs_studies)} studies")).to_be_visible()
            no_exception(page)
            # Patient names and IDs are not on the page unless asked for.
            assert "DOE" not in page.content() and "PAT00" not in page.content()
            # The sidebar and the start of the page: the rest of the page is empty here.
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            page.mouse.move(1, 1)
            page.screenshot(path=str(shots / "pacs.png"),
                            clip={"x": 0, "y": 0, "width": 900, "height": 1380})
            sidebar.get_by_role("button", name="Open study").click()
            settle(page)
            # the study opens in the browser-side viewer (a component frame)
            heading = page.frame_locator(VIEWER_FRAME).locator("#heading")
            expect(heading).to_have_text(re.compile(r"Slice 1 / \d+"), timeout=90_000)
            no_exception(page)
        finally:
            browser.close()
