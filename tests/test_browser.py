"""End to end in headless Chromium: the real app on a free localhost port, driven by Playwright.

Debian's ``/usr/bin/chromium`` is used (``make browser`` installs it); no browser is ever
downloaded. The app is started with ``streamlit run`` on the session's small demo set;
the test opens a demo study, moves through slices (buttons, the keyboard and a click on
the chart), opens the saliency and embeddings pages, records an audit decision, reloads
and finds it again. With ``HOHOHO_SCREENSHOTS=1`` the screenshots go to
``docs/screenshots/`` (else to the test's tmp folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import stop_process_group
from hohoho_core.labels import CLASSES
from hohoho_core.rsna import build_index
from hohoho_core.store import DecisionStore
from hohoho_ui.settings import SHIPPED_WEIGHTS
from hohoho_ui.views import DEMO_WARNING
from tests.test_app import APP, AppData, build_app_data

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = APP.parent / "docs" / "screenshots"
#: The browser viewer's iframe (hohoho_ui.viewer_component).
VIEWER_FRAME = 'iframe[title*="hohoho_viewer"]'
STEP_MS = 90_000  # the first page runs the model on a cold server


def weights_for(data: AppData) -> Path:
    """The shipped demo weights when they exist (nicer screenshots), else the random ones."""
    return SHIPPED_WEIGHTS if (SHIPPED_WEIGHTS / "model.safetensors").is_file() else data.weights


def input_size(weights: Path) -> int:
    return int(json.loads((weights / "config.json").read_text())["preprocess"]["size"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    pytest.fail(
        f"streamlit did not answer /_stcore/health in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, AppData]]:
    data = build_app_data(tmp_path_factory)
    store = tmp_path_factory.mktemp("browser") / "decisions.sqlite"
    log = store.with_name("streamlit.log")
    port = free_port()
    env = dict(os.environ)
    env.update(
        HOHOHO_DEMO_DIR=str(data.demo),
        HOHOHO_WEIGHTS=str(weights_for(data)),
        HOHOHO_DATA_ROOT=str(data.root),
        HOHOHO_STORE=str(store),
        XDG_CACHE_HOME=str(data.cache),
    )
    env.pop("HOHOHO_MAX_UPLOAD_MB", None)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=APP.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url, store, data
    finally:
        stop_process_group(proc)


def settle(page) -> None:  # type: ignore[no-untyped-def]
    """Wait until the script run the last action started is over."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.getAttribute('data-test-script-state') === 'notRunning';
        }""",
        timeout=STEP_MS,
    )


def count_server_frames(page) -> list[float]:  # type: ignore[no-untyped-def]
    """A list that grows by one for every websocket message the page receives from then on
    (register before ``page.goto``)."""
    frames: list[float] = []
    page.on("websocket", lambda ws: ws.on("framereceived",
                                          lambda _: frames.append(time.monotonic())))
    return frames


def wait_until(page, ready, what: str, timeout_s: float = STEP_MS / 1000) -> None:  # type: ignore[no-untyped-def]
    """Poll ``ready()`` while Playwright delivers the page's events; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        page.wait_for_timeout(50)


def count_script_runs(page) -> str:  # type: ignore[no-untyped-def]
    """Start counting the page's script runs; returns the counter's name."""
    page.evaluate(
        """() => {
            window.__runs = 0;
            const app = document.querySelector('[data-testid="stApp"]');
            new MutationObserver(() => {
                if (app.getAttribute('data-test-script-state') === 'running') window.__runs++;
            }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
        }"""
    )
    return "__runs"


def script_runs(page, name: str) -> int:  # type: ignore[no-untyped-def]
    return int(page.evaluate(f"() => window.{name}"))


def click_point(page, box: dict) -> None:  # type: ignore[no-untyped-def]
    """Click a plotly point: hover first, since plotly picks the point from its hover data."""
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_timeout(400)
    page.mouse.click(x, y)


def shoot(page, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Screenshot without a focus ring or a hover label in the way."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.mouse.move(1, 1)
    page.screenshot(path=str(path))


def no_exception(page) -> None:  # type: ignore[no-untyped-def]
    assert page.locator('[data-testid="stException"]').count() == 0


def test_end_to_end_in_chromium(server: tuple[str, Path, AppData], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (Debian's chromium) first.")
    from playwright.sync_api import expect, sync_playwright

    url, store_path, data = server
    shots = SCREENSHOTS if os.environ.get("HOHOHO_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1700})
            page.set_default_timeout(STEP_MS)
            expect.set_options(timeout=STEP_MS)
            viewer = page.frame_locator(VIEWER_FRAME)
            heading = viewer.locator("#heading")
            # Messages from the server, counted: the sign that it ran the page. (The
            # script-state attribute can miss a run: on a loaded machine React may apply
            # "running" and "not running" in one render, and the DOM never shows the first.)
            frames = count_server_frames(page)

            # --- the viewer: open a demo study and move through it (in the browser)
            page.goto(url)
            expect(heading).to_have_text(re.compile(r"Slice 1 / \d+"))
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.locator('[data-testid="stSelectbox"]').click()
            option = page.get_by_role("option", name=re.compile(r"^Study 2 "))
            # the slice count from the option ("Study 2 · N slices · ..."), not from the
            # viewer, which may still show study 1 when the caption below is already drawn
            n2 = int(re.search(r"· (\d+) slices", option.inner_text()).group(1))
            option.click()
            settle(page)
            expect(
                page.locator('[data-testid="stMain"] strong', has_text="Study 2 · ")
            ).to_be_visible()
            expect(heading).to_have_text(f"Slice 1 / {n2}")
            runs = count_script_runs(page)
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            for k in (2, 3, 4):
                page.keyboard.press("ArrowDown")  # keys pressed on the page reach the viewer
                expect(heading).to_have_text(f"Slice {k} / {n2}")
            page.keyboard.press("End")
            expect(heading).to_have_text(f"Slice {n2} / {n2}")
            page.keyboard.press("Home")
            expect(heading).to_have_text(f"Slice 1 / {n2}")
            page.keyboard.press("ArrowDown")
            expect(heading).to_have_text(f"Slice 2 / {n2}")
            viewer.locator("#slice").hover()
            page.mouse.wheel(0, 120)  # the wheel over the image scrolls too
            expect(heading).to_have_text(f"Slice 3 / {n2}")

            # Window presets, invert and zoom are drawn in the browser as well: a window
            # change must redraw, and coming back must give the first pixels again.
            body = viewer.locator("body")
            # The windowed slice at its own resolution (main.js draws it scaled from there),
            # read through the viewer's page.
            row = """() => { const c = window.__hohoho.img; return Array.from(c.getContext('2d')
                .getImageData(0, c.height >> 1, c.width, 1).data.filter((_, k) => k % 4 === 0)); }"""
            # What the canvas must show: the current slice of the current study's volume
            # through the current window, computed here from the viewer's own data.
            expected = """() => { const S = window.__hohoho, y = S.h >> 1, out = [];
                for (let x = 0; x < S.w; x++) {
                    const hu = S.vol[S.slice * S.w * S.h + y * S.w + x];
                    let v = Math.round((hu - (S.centre - S.width / 2)) / S.width * 255);
                    v = v < 0 ? 0 : v > 255 ? 255 : v;
                    out.push(S.invert ? 255 - v : v);
                }
                return out; }"""
            brain = body.evaluate(row)
            assert body.evaluate("() => [window.__hohoho.img.width, window.__hohoho.img.height]"
                                   ) == body.evaluate("() => [window.__hohoho.w, window.__hohoho.h]")
            assert brain == body.evaluate(expected) and len(set(brain)) > 2
            page.keyboard.press("3")
            expect(body).to_have_attribute("data-window", "bone")
            bone = body.evaluate(row)
            assert bone != brain and bone == body.evaluate(expected)
            page.keyboard.press("i")
            expect(body).to_have_attribute("data-invert", "1")
            assert body.evaluate(row) == [255 - v for v in bone] == body.evaluate(expected)
            page.keyboard.press("i")
            page.keyboard.press("1")
            expect(body).to_have_attribute("data-window", "brain")
            assert body.evaluate(row) == brain
            page.keyboard.press("+")
            expect(body).to_have_attribute("data-zoom", "1.250")
            page.keyboard.press("r")  # also Streamlit's "rerun" key: the viewer keeps it
            expect(body).to_have_attribute("data-zoom", "1.000")
            # Nothing above ran the page again: scrolling stays in the browser.
            assert script_runs(page, runs) == 0

            # A click on the chart moves to that slice.
            chart = viewer.locator("#chart")
            chart.scroll_into_view_if_needed()
            box = chart.bounding_box()
            assert box is not None
            # main.js's chart geometry: 44 px left margin, 10 px right margin
            x = box["x"] + 44 + (box["width"] - 54) * 4 / (n2 - 1)
            settle(page)
            before = len(frames)
            page.mouse.click(x, box["y"] + box["height"] / 2)
            expect(heading).to_have_text(f"Slice 5 / {n2}")
            # Once scrolling pauses the slice is reported to the server (one page run).
            expect(viewer.locator("body")).to_have_attribute("data-reported", "4")
            wait_until(page, lambda: len(frames) > before, "the server's answer to the report")
            settle(page)
            no_exception(page)
            if weights_for(data) == SHIPPED_WEIGHTS:
                expect(page.get_by_text(DEMO_WARNING)).to_be_visible()
            page.evaluate("() => window.scrollTo(0, 0)")
            shoot(page, shots / "viewer.png")

            # --- saliency for the current slice (the page switch keeps the session)
            sidebar.locator('[data-testid="stSidebarNav"] a', has_text="Saliency").click()
            expect(page.locator('[data-testid="stMain"] h1')).to_have_text("Saliency")
            images = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
            expect(images).to_have_count(2)
            expect(page.get_by_text(f"Model input · slice 5 / {n2}")).to_be_visible()
            overlay = images.nth(1).element_handle()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay)
            size = input_size(weights_for(data))
            assert overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [size, size]
            page.locator(".st-key-sal_sanity button").click()
            expect(page.get_by_text("Spearman ρ")).to_be_visible()
            expect(page.get_by_text("Trained model")).to_be_visible()
            settle(page)
            no_exception(page)
            shoot(page, shots / "saliency.png")

            # --- embeddings: the study, then the whole dataset; a click shows the slice
            sidebar.locator('[data-testid="stSidebarNav"] a', has_text="Embeddings").click()
            expect(page.get_by_text(f"{n2} points · hover")).to_be_visible()
            page.locator('[data-testid="stMain"] label', has_text="Whole dataset").click()
            total = len(
                build_index(data.demo, cache_dir=data.cache, workers=1, progress=False).table
            )
            expect(page.get_by_text(f"{total} points · hover")).to_be_visible()
            main = page.locator('[data-testid="stMain"]')
            main.locator('[data-testid="stSelectbox"]').click()
            page.get_by_role("option", name="Subtype").click()
            settle(page)
            tsne = page.locator(".st-key-tsne_chart")
            tsne.locator(".main-svg").first.wait_for()
            shown = main.locator('[data-testid="stImage"]', has_text="ID_")
            dots = tsne.locator("g.scatterlayer g.trace path.point")
            # A dot may lie under another one or under a hover label: try a few.
            for k in range(min(5, dots.count())):
                box = dots.nth(k).bounding_box()
                if box is None:  # redrawn under us: take the next one
                    continue
                click_point(page, box)
                with contextlib.suppress(AssertionError):
                    expect(shown).to_be_visible(timeout=10_000)
                    break
            expect(shown).to_be_visible()
            settle(page)
            no_exception(page)
            shoot(page, shots / "embeddings.png")

            # --- label audit: record a decision, reload, find it again
            sidebar.locator('[data-testid="stSidebarNav"] a', has_text="Label audit").click()
            item = page.locator('[data-testid="stMain"] h3', has_text=" labelled ")
            expect(item).to_be_visible()
            head = item.inner_text().strip()
            image_id, rest = head.split(" · ")[1], head.split(" · ")[-1]
            cls = rest.split(" labelled ")[0]
            progress = page.get_by_text(re.compile(r"^\d+ of \d+ reviewed$"))
            expect(progress).to_have_text(re.compile(r"^0 of \d+ reviewed$"))
            # No name, no decision: the buttons wait for one.
            expect(page.locator(".st-key-audit_keep button")).to_be_disabled()
            name = page.get_by_label("Your name (saved with each decision)")
            name.fill("dr_lee")
            name.press("Enter")
            settle(page)
            # Typing characters that are also shortcuts (1, 2, 3, D, F, N) must only type.
            comment = page.get_by_label("Comment (optional)")
            comment.press_sequentially("lukewarm 123 dfn")
            comment.press("Enter")
            settle(page)
            expect(progress).to_have_text(re.compile(r"^0 of \d+ reviewed$"))
            expect(page.locator('[data-testid="stMain"] h3', has_text=image_id)).to_be_visible()
            page.locator(".st-key-audit_keep button").click()
            expect(
                page.get_by_text(re.compile(r"^Decision on record: keep by dr_lee"))
            ).to_be_visible()
            settle(page)
            no_exception(page)
            shoot(page, shots / "audit.png")

            page.reload()  # the name stays (it is in the URL); the decision too
            expect(page.get_by_label("Your name (saved with each decision)")).to_have_value(
                "dr_lee"
            )
            expect(page.locator('[data-testid="stMain"] h3', has_text=image_id)).to_be_visible()
            expect(
                page.get_by_text(re.compile(r"^Decision on record: keep by dr_lee"))
            ).to_be_visible()
            no_exception(page)
        finally:
            browser.close()

    current = DecisionStore(store_path).current()
    cols = ("image_id", "subtype", "decision", "comment")
    rows = zip(*(current[c] for c in cols), strict=True)
    assert list(rows) == [(image_id, cls, "keep", "lukewarm 123 dfn")]
    for name in ("viewer", "saliency", "embeddings", "audit"):
        assert (shots / f"{name}.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- hostile strings


class _Listener:
    """A tiny HTTP server on loopback that records every request it gets."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.paths: list[str] = []
        seen = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                seen.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hostile_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, _Listener, Path]]:
    """The app as a bare ``streamlit run app.py`` (no address flag: the config's) on a study
    whose image ids carry markdown and a store whose every decision has a markdown comment,
    both pointing at a listener on a local port."""
    import warnings

    from hohoho_core.synthetic.writer import ct_dataset, write_dataset
    from tests.conftest import phantom_volume

    data = build_app_data(tmp_path_factory)
    listener = _Listener()
    base = f"http://127.0.0.1:{listener.port}"
    hostile = f"![x]({base}/img.png) [click]({base}/click) <img src={base}/raw.png>"

    crafted = data.root / "crafted"
    crafted.mkdir(exist_ok=True)
    vol = phantom_volume(3, 64)
    study_uid, series_uid = "1.2.3.4", "1.2.3.4.5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: not a valid UI value
        for k in range(3):
            ds = ct_dataset(
                vol[k],
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=f"{hostile} {k}",
                position=(-16.0, -16.0, 5.0 * k),
                instance_number=k + 1,
            )
            write_dataset(ds, crafted / f"IM{k}.dcm")

    store_path = tmp_path_factory.mktemp("hostile") / "decisions.sqlite"
    store = DecisionStore(store_path)
    table = build_index(data.demo, cache_dir=data.cache, workers=1, progress=False).table
    for image_id, labels in zip(table["image_id"], table[list(CLASSES)].to_numpy(), strict=True):
        for cls, label in zip(CLASSES, labels, strict=True):
            if label in (0, 1):
                store.record(image_id, cls, int(label), "keep", f"dr {hostile}", hostile)

    log = store_path.with_name("streamlit.log")
    port = free_port()
    env = dict(os.environ)
    env.update(
        HOHOHO_DEMO_DIR=str(data.demo),
        HOHOHO_WEIGHTS=str(data.weights),
        HOHOHO_DATA_ROOT=str(data.root),
        HOHOHO_STORE=str(store_path),
        XDG_CACHE_HOME=str(data.cache),
    )
    env.pop("HOHOHO_MAX_UPLOAD_MB", None)
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=APP.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url, hostile, listener, log
    finally:
        listener.close()
        stop_process_group(proc)


def test_strings_from_files_and_reviewers_stay_text_in_chromium(
    hostile_server: tuple[str, str, _Listener, Path],
) -> None:
    """Issue 12, points 2 and 3: an image id and a reviewer's name and comment carrying
    markdown and HTML make no request, no link and no image; they show literally. The
    server started without an address flag listens on loopback only."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (Debian's chromium) first.")
    from playwright.sync_api import expect, sync_playwright

    url, hostile, listener, log = hostile_server
    target = f"127.0.0.1:{listener.port}"
    requested: list[str] = []

    def expect_shown(page, text: str) -> None:  # type: ignore[no-untyped-def]
        """``text`` appears in the page as text (invisible word joiners aside)."""
        page.wait_for_function(
            "t => document.body.innerText.replaceAll('\\u2060', '').includes(t)", arg=text
        )

    def check_page(page) -> None:  # type: ignore[no-untyped-def]
        settle(page)
        no_exception(page)
        for frame in page.frames:  # the page and the viewer's iframe
            for tag, attr in (("a", "href"), ("img", "src")):
                found = frame.locator(f'{tag}[{attr}*="{target}"]')
                assert found.count() == 0, [
                    found.nth(i).evaluate("e => e.parentElement.outerHTML")
                    for i in range(found.count())
                ]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(STEP_MS)
            expect.set_options(timeout=STEP_MS)
            page.on("request", lambda r: requested.append(r.url) if target in r.url else None)

            # --- the viewer: the crafted series from a server folder
            page.goto(url)
            sidebar = page.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text("Server folder")).to_be_visible()
            sidebar.get_by_text("Server folder").click()
            settle(page)
            folder = sidebar.locator(".st-key-_w_folder_rel input")
            folder.fill("crafted")
            folder.press("Enter")
            settle(page)
            page.locator(".st-key-open_folder button").click()
            where = page.frame_locator(VIEWER_FRAME).locator("#where")
            expect(where).to_have_text(re.compile(r"^Image .* 0 · z = "))
            assert where.inner_text().startswith(f"Image {hostile} 0 · z = ")
            check_page(page)

            # --- the audit page: another reviewer's name and comment
            sidebar.locator('[data-testid="stSidebarNav"] a', has_text="Label audit").click()
            expect(page.locator('[data-testid="stMain"] h3', has_text=" labelled ")).to_be_visible()
            expect_shown(page, f"Decision on record: keep by dr {hostile} — “{hostile}”")
            check_page(page)
        finally:
            browser.close()

    assert requested == [] and listener.paths == [], (requested, listener.paths)
    text = log.read_text()
    assert f"http://127.0.0.1:{url.rsplit(':', 1)[1]}" in text, text
    assert "Network URL" not in text and "External URL" not in text, text
