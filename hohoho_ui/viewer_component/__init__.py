"""The study viewer that scrolls in the browser: a Streamlit custom component.

The server sends a study once (`payload.viewer_payload`: raw HU, deflated, plus the
per-slice probabilities); scrolling, cine, window presets, invert, zoom, pan and the
chart cursor then run in the browser (``frontend/main.js``, plain JavaScript, no build
step, no downloaded library). The component talks back only for what the server must
know: a study change (Page Up / Page Down) and, once scrolling pauses, the slice and
window on screen (so the other pages follow).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit.components.v1 as components

from hohoho_ui.viewer_component.payload import ViewerPayload, viewer_payload

__all__ = ["FRONTEND", "ViewerEvent", "ViewerPayload", "parse_event", "viewer", "viewer_payload"]

#: The static folder served to the browser (index.html + main.js).
FRONTEND = Path(__file__).parent / "frontend"

_component = components.declare_component("hohoho_viewer", path=str(FRONTEND))


@dataclass(frozen=True)
class ViewerEvent:
    """What the browser reported.

    ``kind``: "sync" (slice and window on screen after scrolling paused) or "study"
    (``step`` -1/+1: Page Up / Page Down); ``seq`` increases with every event, so an
    event is handled once although the component keeps returning its last value.
    """

    kind: str
    seq: float
    slice: int | None = None
    step: int = 0
    window: str | None = None
    centre: float | None = None
    width: float | None = None


def parse_event(value: Any) -> ViewerEvent | None:
    """The component's value -> `ViewerEvent`, or None for anything malformed."""
    if not isinstance(value, dict) or value.get("kind") not in ("sync", "study"):
        return None
    try:
        seq = float(value["seq"])
        event = ViewerEvent(
            kind=str(value["kind"]),
            seq=seq,
            slice=None if value.get("slice") is None else int(value["slice"]),
            step=int(value.get("step") or 0),
            window=None if value.get("window") is None else str(value["window"]),
            centre=None if value.get("centre") is None else float(value["centre"]),
            width=None if value.get("width") is None else float(value["width"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if event.kind == "study" and event.step not in (-1, 1):
        return None
    return event


def viewer(
    payload: ViewerPayload,
    start: dict[str, Any],
    key: str = "viewer",
) -> ViewerEvent | None:
    """Draw the browser viewer for ``payload``; returns the browser's last event.

    ``start``: ``{"token", "slice", "window", "centre", "width"}``: the browser jumps to
    this slice and window when ``token`` changes (a study opened, a slice chosen on
    another page), and otherwise keeps its own. Keep ``start`` unchanged between reruns:
    unchanged arguments are not sent again (Streamlit's message cache).
    """
    value = _component(meta=payload.meta, volume=payload.volume, start=start, key=key,
                       default=None)
    return parse_event(value)
