"""Strings from files and people are shown as text, never as markup (issue 12, point 2),
and the app listens on loopback by default (point 3).

`md_literal` is checked against the rules of CommonMark/GFM and what Streamlit adds to them;
the app pages through AppTest (the markdown source they send); the real browser in
``tests/test_browser.py``.
"""

from __future__ import annotations

import html
import re
import tomllib
import warnings
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from streamlit.testing.v1 import AppTest

from hohoho_ui.settings import REPO_ROOT
from hohoho_ui.text import md_literal, plotly_literal
from tests.conftest import phantom_volume
from tests.test_app import (
    APP,
    TIMEOUT,
    AppData,
    build_app_data,
    point_env,
    run_app,
    shown,
    texts,
    viewer_args,
)

HOSTILE = "![x](http://127.0.0.1:9/x.png) [click](http://evil)"

# One line each, so `shown(md_literal(s)) == s` holds exactly.
HOSTILE_LINES = [
    HOSTILE,
    '<img src="http://127.0.0.1:9/y.png" onerror="alert(1)"> <a href="http://evil">a</a>',
    "**bold** __bold__ *it* _it_ `code` ~~strike~~ ``two``",
    "# heading",
    "1. ordered",
    "- bullet + plus * star",
    "> quote",
    "| a | b |",
    "[ref]: http://evil.example",
    "<http://evil.example> http://evil.example www.evil.example mail@evil.example",
    "&lt;b&gt; &amp; &#60;script&#62; &#x3C;",
    ":material/home: :red[colour] :smile: :streamlit:",
    "$x^2$ and $$\\int$$",
    "C:\\temp\\new\\file.dcm ends in \\",
    "ID_4f2c_a1b2 (series 1.2.840.10008)",
]
_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# Streamlit's own pre-parse detectors (frontend StreamlitMarkdown): an emoji shortcode and
# a math span are looked for in the raw source, before markdown escapes are applied.
_ST_EMOJI = re.compile(r":(?!material/|streamlit:)[\w+-][\w_+-]*:")
# GFM's autolink literals, found in the parsed text after escapes are resolved
# (mdast-util-gfm-autolink-literal; JavaScript's \w is ASCII).
_GFM_URL = re.compile(r"(?i)(https?://|www(?=\.))[-.a-z0-9_]+")
_GFM_EMAIL = re.compile(r"[-.a-z0-9_+]+@[-a-z0-9_]+(\.[-a-z0-9_]+)+", re.IGNORECASE)


def unescaped_punctuation(md: str) -> list[str]:
    """Punctuation characters of ``md`` that markdown would read as syntax (not escaped)."""
    bare, i = [], 0
    while i < len(md):
        if md[i] == "\\" and i + 1 < len(md) and md[i + 1] in _PUNCTUATION:
            i += 2
            continue
        if md[i] in _PUNCTUATION:
            bare.append(md[i])
        i += 1
    return bare


# --------------------------------------------------------------------------- the helper


@pytest.mark.parametrize("text", HOSTILE_LINES)
def test_md_literal_shows_the_text_and_leaves_no_syntax(text: str) -> None:
    md = md_literal(text)
    assert shown(md) == text  # what CommonMark shows for an escaped character is the character
    assert unescaped_punctuation(md) == []
    assert ":material/" not in md and not _ST_EMOJI.search(md)
    assert re.search(r"(?<!\\)\$", md) is None
    parsed = re.sub(r"\\(.)", r"\1", md)  # the text node markdown makes (escapes resolved)
    assert not _GFM_URL.search(parsed) and not _GFM_EMAIL.search(parsed)


def test_md_literal_by_hand() -> None:
    assert md_literal("ID_ab*c") == "ID\\_ab\\*c"
    assert md_literal("[x](y)") == "\\[x\\]\\(y\\)"
    assert md_literal("a\\b") == "a\\\\b"
    assert md_literal("plain text 123") == "plain text 123"
    assert md_literal(Path("/data/x_y")) == "\\/data\\/x\\_y"


@pytest.mark.parametrize(
    "text", ["a\n# b", "a\r\n- b", "a\n\n    code", "a\u2028b\u2029c", "a\x0bb\x0cc\x85d"]
)
def test_md_literal_is_one_line(text: str) -> None:
    md = md_literal(text)
    assert not re.search(r"[\r\n\v\f\x85\u2028\u2029]", md)
    assert unescaped_punctuation(md) == []


def test_md_literal_drops_controls_and_bidi_overrides() -> None:
    assert md_literal("a\x00b\x1bc\u202ed\u2066e\tf") == "abcde f"


@pytest.mark.parametrize("text", HOSTILE_LINES)
def test_plotly_literal_leaves_no_tag(text: str) -> None:
    out = plotly_literal(text)
    assert "<" not in out and ">" not in out
    assert html.unescape(out) == text


# --------------------------------------------------------------------------- the app


def _write_crafted_series(folder: Path, n: int = 3) -> list[Path]:
    """A small CT series whose SOPInstanceUIDs (hence image ids) carry markdown."""
    from hohoho_core.synthetic.writer import ct_dataset, write_dataset

    vol = phantom_volume(n, 64)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: not a valid UI value
        for k in range(n):
            ds = ct_dataset(
                vol[k],
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=f"{HOSTILE} {k}",
                position=(-16.0, -16.0, 5.0 * k),
                instance_number=k + 1,
            )
            path = folder / f"IM{k}.dcm"
            write_dataset(ds, path)
            paths.append(path)
    return paths


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> AppData:
    data = build_app_data(tmp_path_factory)
    point_env(monkeypatch, data, tmp_path / "decisions.sqlite")
    return data


def _sources(at: AppTest) -> list[str]:
    """The markdown source of everything the page wrote as markdown."""
    kinds = ("markdown", "caption", "subheader", "info", "warning", "error", "success", "toast")
    out = [e.value for kind in kinds for e in at.get(kind)]
    return out + [c for img in at.image for c in img.captions]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_crafted_image_id_is_shown_literally_in_the_viewer(
    app_env: AppData, tmp_path: Path
) -> None:
    paths = _write_crafted_series(tmp_path / "crafted")
    at = run_app()
    at.radio(key="_w_source_kind").set_value("Upload").run()
    at.file_uploader(key="uploads").set_value(
        [(p.name, p.read_bytes(), "application/dicom") for p in paths]
    ).run()
    at.button(key="open_uploads").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert at.session_state["open_study"].study.image_ids[0] == f"{HOSTILE} 0"
    # The browser viewer gets the id as data (its script sets it with textContent only)
    assert viewer_args(at)["meta"]["image_ids"][0] == f"{HOSTILE} 0"
    assert not any(HOSTILE in s for s in _sources(at))  # nowhere as live markdown


def test_crafted_reviewer_and_comment_are_shown_literally(app_env: AppData) -> None:
    name = f"dr {HOSTILE}"
    comment = f"see <img src=http://127.0.0.1:9/z.png> **now**\n# {HOSTILE}"
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("pages/3_Label_audit.py").run()
    assert not at.exception
    at.text_input(key="_w_reviewer").input(name).run()
    at.text_input(key="audit_comment").input(comment).run()
    at.button(key="audit_keep").click().run()
    assert not at.exception and not at.error, texts(at.error)

    # Another reviewer's session (a fresh one on the same store) shows the decision.
    other = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    other.switch_page("pages/3_Label_audit.py").run()
    record = [s.value for s in other.success if "Decision on record" in s.value]
    assert len(record) == 1, texts(other.success)
    assert f"by {md_literal(name)} — “{md_literal(comment)}”" in record[0]
    assert "\n" not in record[0]
    assert shown(record[0]).startswith(f"Decision on record: **keep** by {name} — “see <img")
    for source in _sources(other):
        assert HOSTILE not in source and not re.search(r"(?<!\\)<img", source), source


# --------------------------------------------------------------------------- loopback


def test_streamlit_config_listens_on_loopback_only() -> None:
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    # The Makefile passes the same address (a flag would override the file).
    make_app = (REPO_ROOT / "Makefile").read_text().split("\napp:", 1)[1].split("\n\n", 1)[0]
    assert "--server.address 127.0.0.1" in make_app
