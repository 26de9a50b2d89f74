"""Every training script's --help shows its defaults (issue 15: the recipe is readable)."""

from __future__ import annotations

import importlib

import pytest

SCRIPTS = ("train_cnn", "extract_embeddings", "train_lstm", "oof_predict", "pretrain_simclr",
           "make_demo_weights", "ablate", "ablation_table")


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_defaults(name: str) -> None:
    text = importlib.import_module(f"train.{name}").get_args_parser().format_help()
    assert "(default:" in text
