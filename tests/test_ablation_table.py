"""train.ablation_table: one row per make_demo_weights run, every number from its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from train.ablation_table import table


def _rep(cnn: float, lstm: float, tuned: float = 0.0) -> dict:
    def one(v: float) -> dict:
        return {"slice": {"macro": v}, "tuned": {"slice": {"macro": tuned}},
                "auc_macro": 0.9, "ece_macro": 0.25}
    return {"cnn": one(cnn), "cnn_lstm": one(lstm)}


def _run(root: Path, name: str, mode: str, randomise: bool, plain: dict | None) -> Path:
    run = root / name
    run.mkdir()
    info = {"mode": mode, "size": 128, "randomise": randomise,
            "metrics": {"val": _rep(0.41, 0.52)}, "shipped_test": _rep(0.3, 0.4),
            "plain_test": plain, "foreign": {"metrics": _rep(0.2, 0.25, tuned=0.33)},
            "times": {"stage 1 CNN": 600.0}}
    (run / "demo_result.json").write_text(json.dumps(info))
    return run


def test_rows_carry_each_runs_numbers_and_dash_for_missing_sets(tmp_path: Path) -> None:
    a = _run(tmp_path, "s128", "stacked", True, _rep(0.6, 0.7))
    b = _run(tmp_path, "p128", "windows", False, None)
    lines = table([a, b], []).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | input | val F2 CNN")
    row_a = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row_a[:4] == ["s128", "stacked, 128 px, randomised", "0.410", "0.520"]
    assert row_a[4:8] == ["0.300", "0.400", "0.600", "0.700"]
    assert row_a[8:] == ["0.200", "0.250", "0.330", "0.900", "0.250", "10.0"]
    row_b = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row_b[1] == "windows, 128 px, plain" and row_b[6:8] == ["-", "-"]
