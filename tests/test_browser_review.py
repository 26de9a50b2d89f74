"""A review session in headless Chromium: two blind readers, an adjudicator, the keyboard,
a reload and the downloads, on the real app (the server fixture of ``test_browser.py``).

Each reader is a separate browser context (its own cookies and Streamlit session) whose
URL carries the name and the mode, as a bookmarked session would.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from hohoho_core.store import DecisionStore
from tests import test_browser as tb

pytestmark = pytest.mark.browser

server = tb.server  # the module-scoped app server (its own store for this module)
ITEM = re.compile(r"^Item (\d+) of (\d+)")
ON_RECORD = re.compile(r"^Decision on record: ")
PRESSES: list[str] = []  # every key press, repeats included (printed at the end)


def _open(browser, url: str, **params: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1500, "height": 1900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(tb.STEP_MS)
    page.goto(f"{url}/Label_audit?{urllib.parse.urlencode(params)}")
    _ready(page)
    return page


def _ready(page) -> None:  # type: ignore[no-untyped-def]
    """Wait for a freshly loaded page to take keys. For a moment after its first run the
    page drops key presses (Streamlit registers button shortcuts with hotkeys-js as the
    buttons mount; a key pressed before is lost), so a reader's first key right after a
    reload may need pressing again; here, the test waits that moment out."""
    page.get_by_text(ITEM).first.wait_for()
    tb.settle(page)
    page.wait_for_timeout(2000)


def _item(page) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    """(item number, image id, class) on screen."""
    caption = page.get_by_text(ITEM).first.inner_text().strip()
    head = page.locator('[data-testid="stMain"] h3', has_text=" labelled ").inner_text().strip()
    parts = head.split(" · ")
    return int(ITEM.match(caption).group(1)), parts[1], parts[-1].split(" labelled ")[0]


def _key(page, key: str, changed: Callable[[], bool] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Press a shortcut after a click on the page's text (as a reader clicks beside the
    image: the page has the focus, no field has it) and wait until ``changed()`` (by
    default: the cell on screen is another one).

    A key dropped all the same (see `_ready`) is pressed again once ``changed`` has stayed
    false for 6 s, longer than a rerun takes here.
    """
    tb.settle(page)
    before = _item(page)
    if changed is None:

        def changed() -> bool:
            try:
                return _item(page) != before
            except Exception:  # noqa: BLE001 (the page is redrawing: look again)
                return False

    for _attempt in range(3):
        PRESSES.append(key)
        page.get_by_text(ITEM).first.click()
        page.keyboard.press(key)
        for _ in range(60):
            page.wait_for_timeout(100)
            if changed():
                tb.settle(page)
                return
    text = page.locator('[data-testid="stMain"]').inner_text()[:3000]
    raise AssertionError(f"{key!r} changed nothing from {before}:\n{text}")


def _download(page, label: str) -> str:  # type: ignore[no-untyped-def]
    """Click a download once the page's script run is over, and read the file.

    The file is built at click time from a handle of the current script run; a click that
    lands while a rerun replaces the button gets no file (seen once in a full run with
    other test processes on the 2 cores: no download in 90 s). Then the click is made once
    more on the settled page: a person clicks again too, and the content is still checked.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in (1, 2):
        tb.settle(page)
        try:
            with page.expect_download(timeout=45_000) as info:
                page.get_by_role("button", name=label).click()
            return Path(info.value.path()).read_text()
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def test_two_readers_adjudication_keyboard_reload_download(
    server: tuple[str, Path, object], tmp_path: Path
) -> None:
    if not tb.CHROMIUM.exists():
        pytest.fail(f"{tb.CHROMIUM} is missing: run `make browser` (Debian's chromium) first.")
    from playwright.sync_api import expect, sync_playwright

    url, store_path, _ = server
    expect.set_options(timeout=tb.STEP_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(tb.CHROMIUM), args=tb.CHROMIUM_ARGS)
        try:
            # --- two blind readers decide the same first cell, differently, by key
            ann = _open(browser, url, reviewer="ann", audit_mode="blind")
            bob = _open(browser, url, reviewer="bob", audit_mode="blind")
            first = _item(ann)
            assert _item(bob) == first
            _key(ann, "1")  # keep
            expect(bob.get_by_text(ON_RECORD)).to_have_count(0)
            bob.reload()  # bob sees nothing of ann's decision, even after a reload
            _ready(bob)
            assert _item(bob) == first
            expect(bob.get_by_text(ON_RECORD)).to_have_count(0)
            _key(bob, "2")  # relabel
            cur = DecisionStore(store_path).current()
            assert sorted(zip(cur["reviewer"], cur["decision"], strict=True)) == [
                ("ann", "keep"),
                ("bob", f"relabel_{1 - int(cur['original_label'].iloc[0])}"),
            ]

            # --- a keyboard-only pass: decide, previous, next, undo
            while _item(ann)[0] == 1:  # the first item's other cells
                _key(ann, "1")
            _key(ann, "d")
            assert _item(ann)[0] == 1
            _key(ann, "f")
            assert _item(ann)[0] == 2
            n_live = len(DecisionStore(store_path).current())
            _key(ann, "Control+z")  # undo ann's last decision: back where it was made
            assert _item(ann)[0] == 1
            store = DecisionStore(store_path)
            assert len(store.current()) == n_live - 1
            assert store.history()["retracted_at"].astype(bool).sum() == 1
            _key(ann, "1")  # decide it again: the first item is done
            assert _item(ann)[0] == 2
            progress = ann.get_by_text(re.compile(r"^\d+ of \d+ reviewed$"))
            done = progress.inner_text()
            assert done.startswith("1 of ")

            # --- a reload loses nothing and resumes at the first undecided item
            ann.reload()
            _ready(ann)
            expect(progress).to_have_text(done)
            assert _item(ann)[0] == 2
            expect(ann.get_by_label("Your name (saved with each decision)")).to_have_value("ann")

            # --- adjudication: the disagreement is queued; the adjudicator settles it
            cat = _open(browser, url, reviewer="cat", audit_mode="adjudicate")
            assert _item(cat)[1:] == first[1:]
            expect(cat.get_by_text(ON_RECORD)).to_have_count(2)
            n_all = len(DecisionStore(store_path).history())
            # Relabel, as bob said; the only item, so the page stays on it.
            _key(cat, "2", lambda: len(DecisionStore(store_path).history()) > n_all)
            expect(cat.get_by_text(re.compile(r"^1 of 1 reviewed$"))).to_be_visible()
            original = int(cur["original_label"].iloc[0])
            text = _download(cat, "Download stage_2_train_corrected.csv")
            assert f"{first[1]}_{first[2]},{1 - original}\n" in text
            who = _download(cat, "Download who decided what (CSV)")
            assert any(
                line.startswith(f"{first[1]}_{first[2]},") and ",adjudicated,cat," in line
                for line in who.splitlines()
            )

            # --- a download after a new decision holds it (no "Prepare" in between)
            cat.get_by_role("radio", name="One reader").check(force=True)
            cat.get_by_text(re.compile(r"^\d+ of (?!1 reviewed)\d+ reviewed$")).wait_for()
            tb.settle(cat)
            assert "audit_mode" not in cat.url  # the default mode leaves the URL
            _, image_id, cls = _item(cat)
            label = int(
                cat.locator('[data-testid="stMain"] h3', has_text=" labelled ")
                .inner_text()
                .rsplit(" ", 1)[1]
            )
            _key(cat, "2")
            again = _download(cat, "Download stage_2_train_corrected.csv")
            assert f"{image_id}_{cls},{1 - label}\n" in again
            assert again != text

            # --- a click on a queue row opens that item
            grid = cat.locator(".st-key-audit_table")
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            assert box is not None
            cat.mouse.click(box["x"] + 18, box["y"] + 35 * 4 + 17)  # row 4's selection cell
            tb.settle(cat)
            expect(cat.get_by_text(ITEM).first).to_have_text(re.compile(r"^Item 4 of "))
            tb.no_exception(cat)
            tb.no_exception(ann)
            shots = tb.SCREENSHOTS if os.environ.get("HOHOHO_SCREENSHOTS") == "1" else tmp_path
            shots.mkdir(parents=True, exist_ok=True)
            cat.evaluate("() => window.scrollTo(0, 0)")
            tb.shoot(cat, shots / "review.png")
            print(f"{len(PRESSES)} key presses: {' '.join(PRESSES)}")
        finally:
            browser.close()
