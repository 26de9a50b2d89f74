"""App settings from environment variables, read in this one place.

| variable | meaning | default |
| --- | --- | --- |
| ``HOHOHO_DEMO_DIR`` | RSNA-layout demo folder (``make demo``) | ``data/demo`` |
| ``HOHOHO_WEIGHTS`` | weights folder loaded at start | the repo's ``weights/`` |
| ``HOHOHO_DATA_ROOT`` | server folders may be opened only under it | ``data/`` |
| ``HOHOHO_STORE`` | reviewer decisions (SQLite) | ``data/decisions.sqlite`` |
| ``HOHOHO_MAX_UPLOAD_MB`` | bound on one upload and on what a zip may extract | 512 |

Relative values are taken relative to the working directory (``make app`` runs from the
repository root); the defaults are relative to the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hohoho_core.weights_dir import WEIGHTS_ENV, shipped_weights_dir

__all__ = ["REPO_ROOT", "SHIPPED_WEIGHTS", "Settings", "get_settings"]

#: The repository root (the folder holding ``app.py``).
REPO_ROOT: Path = Path(__file__).resolve().parent.parent
#: The shipped demo weights (trained on synthetic phantoms).
SHIPPED_WEIGHTS: Path = shipped_weights_dir()

DEMO_ENV = "HOHOHO_DEMO_DIR"
DATA_ROOT_ENV = "HOHOHO_DATA_ROOT"
STORE_ENV = "HOHOHO_STORE"
MAX_UPLOAD_ENV = "HOHOHO_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 512


@dataclass(frozen=True)
class Settings:
    """Resolved, absolute settings for one script run."""

    demo_dir: Path
    weights_dir: Path
    data_root: Path
    store_path: Path
    max_upload_mb: int
    shipped_weights: Path = SHIPPED_WEIGHTS

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * (1 << 20)


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = env.get(name, "").strip()
    if not value:
        return default.resolve()
    return Path(value).expanduser().resolve()


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of megabytes, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {number}")
    return number


def get_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``env`` (default ``os.environ``).

    Raises:
        ValueError: ``HOHOHO_MAX_UPLOAD_MB`` is not a positive integer.
    """
    env = os.environ if env is None else env
    return Settings(
        demo_dir=_path(env, DEMO_ENV, REPO_ROOT / "data" / "demo"),
        weights_dir=_path(env, WEIGHTS_ENV, SHIPPED_WEIGHTS),
        data_root=_path(env, DATA_ROOT_ENV, REPO_ROOT / "data"),
        store_path=_path(env, STORE_ENV, REPO_ROOT / "data" / "decisions.sqlite"),
        max_upload_mb=_positive_int(env, MAX_UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB),
    )
