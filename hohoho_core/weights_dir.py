"""Where the weights folder is when none is given: no torch here, so a command can name
(and check) the folder before it pays seconds for importing the model code."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["WEIGHTS_ENV", "default_weights_dir", "shipped_weights_dir"]

#: Environment variable naming the default weights folder.
WEIGHTS_ENV = "HOHOHO_WEIGHTS"


def default_weights_dir() -> Path:
    """The weights folder used when none is given (CLI, app, bench).

    ``$HOHOHO_WEIGHTS`` when set; else the repository's ``weights/`` beside the package when
    it exists (a source checkout or an editable install); else ``./weights``. A package
    installed into site-packages has no repository beside it, hence the last fallback.
    """
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else shipped_weights_dir()


def shipped_weights_dir() -> Path:
    """The shipped demo weights: the repository's ``weights/`` beside the package when it
    exists (a source checkout or an editable install), else ``./weights``."""
    beside = Path(__file__).resolve().parent.parent / "weights"
    return beside if beside.is_dir() else Path("weights")
