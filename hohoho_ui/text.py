"""Strings from files and people, made safe to put into Streamlit markdown or plotly text.

Image ids (SOPInstanceUIDs), series descriptions, file names, the reader's skip reasons,
reviewer names and comments are data, never markup. Every ``st.markdown``, ``st.caption``,
``st.info``/``warning``/``error``/``success``/``toast``, widget label, help text, expander
title and image caption the app writes with such a string passes it through `md_literal`;
plotly hover text passes it through `plotly_literal`. Tables (``st.dataframe``) are not
markdown and take the strings as they are.
"""

from __future__ import annotations

import html
import re

__all__ = ["WORD_JOINER", "md_literal", "plotly_literal"]

# Every ASCII punctuation character may be backslash-escaped in CommonMark, and an escaped
# one is always literal text. Escaping all of them (not a hand-picked list) also defeats
# what Streamlit adds on top of GFM before parsing: ``:material/icon:`` and ``:emoji:``
# shortcodes, ``:red[colour]`` directives and ``$math$`` (its detector skips ``\$``).
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GFM's bare-URL autolinks are found in the parsed text, after escapes are resolved
# (mdast-util-gfm-autolink-literal): ``http://x``, ``www.x`` and ``a@b.c`` become links even
# when escaped. An invisible WORD JOINER after the scheme or ``www`` and before ``@`` keeps
# them from matching, and the text reads the same.
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=:)|(?<=http)(?=:)|(?<=www)(?=\.)|(?=@)")
WORD_JOINER = "\u2060"
# Line and paragraph breaks (a new line could start a heading, a list or a code block).
_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
# Other C0/C1 controls (NUL, ESC, ...) and bidi overrides that reorder what is shown.
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069]")


def _plain_line(value: object) -> str:
    text = _BREAKS.sub(" ", str(value)).replace("\t", " ")
    return _CONTROLS.sub("", text)


def md_literal(value: object) -> str:
    """``value`` as text that Streamlit markdown shows exactly, on one line.

    Newlines and tabs become spaces, control characters are dropped, every ASCII
    punctuation character is backslash-escaped and a `WORD_JOINER` (invisible) breaks bare
    URLs and e-mail addresses, so no link, autolink, image, emphasis, heading, list, HTML
    tag, entity, code span, math, colour directive, icon or emoji shortcode can form.
    ``md_literal("![x](http://h/x.png)")`` shows as ``![x](http://h/x.png)``.
    """
    unlinked = _AUTOLINK.sub(WORD_JOINER, _plain_line(value))
    return _PUNCTUATION.sub(r"\\\1", unlinked)


def plotly_literal(value: object) -> str:
    """``value`` as plotly hover or label text shown exactly (plotly reads a few HTML tags,
    ``<a href>`` among them, and entities; escaped, none can form)."""
    return html.escape(_plain_line(value), quote=True)
