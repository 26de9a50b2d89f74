"""The RSNA recipe in train/README.md parses with the real argument parsers (issue 15).

Every ``python -m train.X`` / ``torchrun ... -m train.X`` / ``python -m hohoho_core SUB``
command of the RSNA section, with its shell variables expanded, must be accepted by the
parser of the script it calls, so a renamed or removed flag breaks this test, not a
researcher's four-GPU run.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VARS = {"DATA": "/data/rsna", "CACHE": "/data/cache", "RUN": "runs/rsna"}


def _blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _commands(section: str) -> list[list[str]]:
    """Shell words of each command line (continuations joined, variables expanded)."""
    env = dict(VARS)
    out: list[list[str]] = []
    for block in _blocks(section):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r'([A-Z_]+)="(.*)"', line)
            if m:
                env[m.group(1)] = re.sub(r"\$(\w+)", lambda v: env.get(v.group(1), v.group(0)),
                                         m.group(2))
                continue
            line = re.sub(r"\$(\w+)", lambda v: env.get(v.group(1), v.group(0)), line)
            out.append(shlex.split(line))
    return out


def _section() -> str:
    text = (REPO / "train" / "README.md").read_text(encoding="utf-8")
    start = text.index("## Training on the RSNA 2019 data")
    end = text.index("### Small labelled data")
    return text[start:end]


def _parse(words: list[str]) -> str | None:
    """Parse one command with its script's parser; returns the module name or None."""
    if "-m" not in words:
        return None
    at = words.index("-m")
    module, rest = words[at + 1], words[at + 2 :]
    if module.startswith("train."):
        mod = importlib.import_module(module)
        mod.get_args_parser().parse_args(rest)
        return module
    if module == "hohoho_core":
        from hohoho_core.__main__ import get_args_parser

        get_args_parser().parse_args(rest)
        return f"hohoho_core {rest[0]}"
    return None


def test_every_recipe_command_parses() -> None:
    parsed = [p for p in (_parse(c) for c in _commands(_section())) if p]
    # The steps of the recipe, from prepare to submission, are all there.
    for step in ("train.train_cnn", "train.extract_embeddings", "train.train_lstm",
                 "hohoho_core evaluate", "hohoho_core predict"):
        assert step in parsed, f"{step} missing from the recipe"
    # One GPU and N GPUs use the same stage-1 flags.
    cnn = [c for c in _commands(_section()) if "train.train_cnn" in c and "--prepare-only" not in c]
    flags = [c[c.index("-m") + 2 :] for c in cnn]
    assert len(flags) >= 2 and flags[0] == flags[1]


def test_a_wrong_flag_would_be_caught() -> None:
    with pytest.raises(SystemExit):
        _parse(["python", "-m", "train.train_cnn", "--no-such-flag"])
