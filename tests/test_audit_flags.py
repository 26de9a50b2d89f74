"""The audit command's flags file, read back for review (`hohoho_core.audit_flags`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hohoho_core.__main__ import main
from hohoho_core.audit_flags import csv_kind, read_flags_csv
from hohoho_core.rsna import build_index
from hohoho_core.rsna_csv import write_rsna_csv


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two synthetic studies, random probabilities, the CLI's flags file."""
    from hohoho_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("flags")
    data = root / "data"
    generate_dataset(data, 2, seed=5, size=48, slices=(8, 9))
    index = build_index(data, workers=1, progress=False, use_cache=False)
    table = index.table
    rng = np.random.default_rng(0)
    probs = root / "probs.csv"
    write_rsna_csv(probs, table["image_id"].to_numpy(), rng.random((len(table), 6)),
                   kind="probabilities")
    flags = root / "flags.csv"
    assert main(["audit", "--data", str(data), "--probs", str(probs), "--out", str(flags),
                 "--top", "40"]) == 0
    return {"data": data, "table": table, "probs": probs, "flags": flags}


def test_the_cli_ranking_comes_back_as_written(audited: dict) -> None:
    flags = read_flags_csv(audited["flags"], audited["table"])
    written = pd.read_csv(audited["flags"], dtype={"image_id": str, "class": str})
    assert len(flags) == 40
    assert flags["rank"].tolist() == sorted(written["rank"].tolist())
    assert flags[["image_id", "class"]].values.tolist() == \
        written.sort_values("rank")[["image_id", "class"]].values.tolist()
    # the same queue from bytes (an upload)
    again = read_flags_csv(audited["flags"].read_bytes(), audited["table"])
    pd.testing.assert_frame_equal(flags, again)


def test_kind_of_csv_is_told_from_its_header(audited: dict) -> None:
    assert csv_kind(audited["flags"].read_text().splitlines()[0]) == "flags"
    assert csv_kind(audited["probs"].read_text().splitlines()[0]) == "probabilities"
    assert csv_kind("a,b,c") == "unknown"


def test_spreadsheet_marks_are_undone(audited: dict, tmp_path: Path) -> None:
    frame = pd.read_csv(audited["flags"], dtype=str, keep_default_na=False)
    frame.loc[0, "reason"] = "'=HYPERLINK(\"x\")"  # how csvsafe writes a formula-like cell
    path = tmp_path / "marked.csv"
    frame.to_csv(path, index=False)
    got = read_flags_csv(path, audited["table"])
    row = got[got["rank"] == int(frame.loc[0, "rank"])]
    assert row["reason"].iloc[0] == "=HYPERLINK(\"x\")"


def test_a_relabelled_cell_makes_the_flags_stale(audited: dict, tmp_path: Path) -> None:
    frame = pd.read_csv(audited["flags"], dtype=str, keep_default_na=False)
    table = audited["table"].copy()
    first = frame.iloc[0]
    at = table.index[table["image_id"] == first["image_id"]][0]
    table.loc[at, first["class"]] = 1 - int(first["label"])  # a reviewer fixed it since
    with pytest.raises(ValueError, match="1 flagged cells have another label"):
        read_flags_csv(audited["flags"], table)


def test_flags_of_another_dataset_are_refused(audited: dict, tmp_path: Path) -> None:
    frame = pd.read_csv(audited["flags"], dtype=str, keep_default_na=False)
    frame.loc[:2, "image_id"] = ["ID_00000001", "ID_00000002", "ID_00000003"]
    path = tmp_path / "other.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="3 flagged cells name images"):
        read_flags_csv(path, audited["table"])
    with pytest.raises(ValueError, match="no column"):
        read_flags_csv(audited["probs"], audited["table"])
    dup = pd.concat([frame.iloc[3:5], frame.iloc[3:4]])
    dup.to_csv(path, index=False)
    with pytest.raises(ValueError, match="1 cells are listed more than once"):
        read_flags_csv(path, audited["table"])
