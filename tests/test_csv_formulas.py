"""Spreadsheet formulas never pass through a CSV the project writes (issue 12, point 7)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hohoho_core.__main__ import main
from hohoho_core.csvsafe import safe_cell, safe_frame
from hohoho_core.labels import CLASSES
from hohoho_core.predict import studies_path, write_predictions

FORMULA = '=HYPERLINK("http://x","y")'


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("text", [FORMULA, "+1", "-2+3", "@SUM(A1)", "\tx", "\r=1"])
def test_text_that_starts_a_formula_is_quoted(text: str) -> None:
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["1.2.840.1", "ID_=x", "", -1, -0.5, 3, None, "a=b"])
def test_other_cells_and_numbers_are_unchanged(value: object) -> None:
    assert safe_cell(value) == value


def test_safe_frame_quotes_text_and_keeps_numbers() -> None:
    frame = pd.DataFrame({"uid": [FORMULA, "1.2.3"], "score": [-0.5, 0.25], "n": [-3, 4]})
    out = safe_frame(frame)
    assert list(out["uid"]) == ["'" + FORMULA, "1.2.3"]
    assert out["score"].tolist() == [-0.5, 0.25] and out["n"].tolist() == [-3, 4]
    assert frame["uid"].iloc[0] == FORMULA  # the input is not changed


def _record(study_uid: str, series_uid: str) -> dict:
    prob = np.full((2, len(CLASSES)), 0.25)
    return {
        "classes": list(CLASSES),
        "prob": prob.tolist(),
        "image_ids": ["ID_aa", "ID_bb"],
        "study_uid": study_uid,
        "series_uid": series_uid,
        "summary": {
            "n_slices": 2,
            "max_prob": {c: 0.25 for c in CLASSES},
            "positive": {c: False for c in CLASSES},
        },
    }


def test_predict_studies_csv_neutralises_formula_uids(tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    write_predictions([_record(FORMULA, "@cmd"), _record("1.2.3", "-4")], out)
    rows = _rows(studies_path(out))
    assert rows[1][:3] == ["'" + FORMULA, "'@cmd", "2"]
    assert rows[2][:3] == ["1.2.3", "'-4", "2"]
    assert float(rows[1][3]) == 0.25  # numbers are still numbers
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)


def test_audit_csv_neutralises_formula_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hohoho_core.audit as audit

    flags = pd.DataFrame(
        {
            "image_id": ["ID_1", "ID_2"],
            "study_uid": [FORMULA, "1.2.3"],
            "series_uid": ["+SUM(1)", "1.2.4"],
            "score": [-0.5, 0.75],
            "slice_index": [0, -1],
        }
    )

    def fake_audit(*args: object, **kwargs: object) -> pd.DataFrame:
        return flags

    monkeypatch.setattr(audit, "audit_from_files", fake_audit)
    probs = tmp_path / "probs.csv"
    probs.write_text("ID,Label\n")
    out = tmp_path / "flags.csv"
    rc = main(["audit", "--data", str(tmp_path), "--probs", str(probs), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = _rows(out)
    assert rows[0] == list(flags.columns)
    assert rows[1] == ["ID_1", "'" + FORMULA, "'+SUM(1)", "-0.5", "0"]
    assert rows[2] == ["ID_2", "1.2.3", "1.2.4", "0.75", "-1"]  # negative numbers stay numbers
