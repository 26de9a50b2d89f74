"""What the browser viewer receives once per study: the HU volume and the predictions.

Pure functions (no streamlit), so the encoding is tested without a browser. The volume
travels as raw HU, not as windowed images: one int16 copy, deflated, serves every window
preset, a custom window and invert, which the browser applies with a lookup table. Four
windowed PNG stacks would cost about four times as much and fix the windows in advance.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from hohoho_core.labels import CLASSES, SHORT_NAMES
from hohoho_core.preprocess import WINDOWS
from hohoho_core.study import Study
from hohoho_ui.views import CLASS_COLOURS

__all__ = ["HU_MAX", "HU_MIN", "PRESET_KEYS", "ViewerPayload", "decode_volume", "encode_volume",
           "viewer_payload"]

#: The HU range the browser can show (CT's 12-bit range); values outside are clipped.
HU_MIN, HU_MAX = -1024, 3071
#: Keyboard key of each window preset (as the server-side buttons had).
PRESET_KEYS: dict[str, str] = {"brain": "1", "subdural": "2", "bone": "3", "stroke": "4"}


def encode_volume(hu: np.ndarray, level: int = 6) -> bytes:
    """HU ``[S, H, W]`` -> zlib-deflated little-endian int16, rounded and clipped to
    ``HU_MIN..HU_MAX`` (the browser inflates it with ``DecompressionStream("deflate")``)."""
    arr = np.clip(np.rint(np.asarray(hu, dtype=np.float32)), HU_MIN, HU_MAX).astype("<i2")
    return zlib.compress(np.ascontiguousarray(arr).tobytes(), level)


def decode_volume(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `encode_volume`: int16 ``[S, H, W]``."""
    return np.frombuffer(zlib.decompress(data), dtype="<i2").reshape(shape)


def _rounded(prob: np.ndarray | None) -> list[list[float]] | None:
    # Three decimals are what the table shows; they keep the JSON small.
    return None if prob is None else np.round(np.asarray(prob, np.float64), 3).tolist()


@dataclass(frozen=True)
class ViewerPayload:
    """One study for the browser viewer.

    ``volume``: `encode_volume` bytes; ``meta``: JSON-able dict (shape, spacing, per-slice
    ids and z, probabilities ``(S, 6)``, thresholds, labels, window presets); ``key``: the
    study fingerprint plus the weights key, so the browser decodes a study only once.
    """

    key: str
    volume: bytes
    meta: dict[str, Any]

    @property
    def n_bytes(self) -> int:
        """Bytes on the wire before the websocket's own framing (volume + rough JSON)."""
        import json

        return len(self.volume) + len(json.dumps(self.meta))


def viewer_payload(
    study: Study,
    key: str,
    name: str,
    cnn_prob: np.ndarray | None = None,
    lstm_prob: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> ViewerPayload:
    """Build the payload of ``study``; probabilities ``(S, 6)``, thresholds ``(6,)`` and
    labels ``(S, 6)`` (-1 where unknown) are optional (no model: the image only).

    Raises:
        ValueError: an array whose first axis is not the study's slice count.
    """
    s, h, w = study.hu.shape
    for what, arr in (("cnn_prob", cnn_prob), ("lstm_prob", lstm_prob), ("labels", labels)):
        if arr is not None and np.asarray(arr).shape != (s, len(CLASSES)):
            raise ValueError(f"{what} has shape {np.asarray(arr).shape}, expected ({s}, 6)")
    final = lstm_prob if lstm_prob is not None else cnn_prob
    positive = None
    if final is not None and thresholds is not None:
        positive = (np.asarray(final) >= np.asarray(thresholds)[None, :]).any(axis=1).tolist()
    meta: dict[str, Any] = {
        "key": key,
        "name": name,
        "shape": [s, h, w],
        "spacing": [float(study.pixel_spacing[0]), float(study.pixel_spacing[1])],
        "slice_spacing": float(study.slice_spacing),
        "image_ids": list(study.image_ids),
        "z": [round(float(sl.z), 2) for sl in study.slices],
        "classes": [SHORT_NAMES[c] for c in CLASSES],
        "colours": [CLASS_COLOURS[c] for c in CLASSES],
        "cnn": _rounded(cnn_prob),
        "lstm": _rounded(lstm_prob),
        "thresholds": None if thresholds is None else _rounded(np.asarray(thresholds)[None])[0],
        "labels": None if labels is None else np.asarray(labels, np.int64).tolist(),
        "positive": positive,
        "windows": {n: [float(c), float(wd)] for n, (c, wd) in WINDOWS.items()},
        "preset_keys": dict(PRESET_KEYS),
        "hu_min": HU_MIN,
    }
    return ViewerPayload(key=key, volume=encode_volume(study.hu), meta=meta)
