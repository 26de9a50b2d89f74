"""`hohoho_core.rsna_csv`: the one ``ID,Label`` reader and writer, and its policies."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hohoho_core.labels import CLASSES
from hohoho_core.rsna import read_labels
from hohoho_core.rsna_csv import (
    UNKNOWN_LABEL,
    RsnaCsvError,
    read_rsna_csv,
    row_id,
    write_rsna_csv,
)


def _rows(image_id: str, values: list[float]) -> list[str]:
    return [f"{image_id}_{c},{v}" for c, v in zip(CLASSES, values, strict=True)]


def _csv(*blocks: list[str]) -> bytes:
    return ("\n".join(["ID,Label", *[r for b in blocks for r in b]]) + "\n").encode()


A = [0, 0, 0, 1, 0, 1]
B = [0, 0, 0, 0, 1, 1]


# --------------------------------------------------------------------------- duplicates


def test_identical_duplicates_are_kept_once_or_refused() -> None:
    data = _csv(_rows("ID_aa", A), _rows("ID_bb", B), ["ID_aa_any,1", "ID_aa_any,1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an identical repeat is not worth a warning
        got = read_rsna_csv(data, kind="labels")
    assert got.loc["ID_aa"].tolist() == A and got.loc["ID_bb"].tolist() == B
    assert len(got) == 2
    with pytest.raises(RsnaCsvError, match=r"2 repeated rows, e\.g\. ID_aa_any"):
        read_rsna_csv(data, kind="labels", on_duplicate="error")


@pytest.mark.parametrize(
    ("policy", "expected"), [("first", 0.2), ("last", 0.7), ("max", 0.9)]
)
def test_conflicting_duplicates_follow_on_conflict(policy: str, expected: float) -> None:
    # ID_aa subdural appears three times: 0.2 (in its block), then 0.9, then 0.7.
    data = _csv(
        _rows("ID_aa", [0.1, 0.1, 0.1, 0.1, 0.2, 0.3]),
        ["ID_aa_subdural,0.9", "ID_aa_subdural,0.7"],
    )
    with pytest.warns(UserWarning, match="1 .*conflicting duplicate probabilities"):
        got = read_rsna_csv(data, kind="probabilities", on_conflict=policy)
    assert got.at["ID_aa", "subdural"] == pytest.approx(expected)
    assert got.at["ID_aa", "any"] == pytest.approx(0.3)  # other cells untouched


def test_conflicting_duplicates_error_names_the_id() -> None:
    data = _csv(_rows("ID_aa", A), _rows("ID_bb", B), ["ID_bb_epidural,1"])
    with pytest.raises(RsnaCsvError, match=r"conflicting .* 1 image/class .*ID_bb_epidural"):
        read_rsna_csv(data, kind="labels", on_conflict="error")


def test_max_conflict_for_labels_keeps_the_positive() -> None:
    data = _csv(["ID_aa_any,1"], _rows("ID_aa", [0] * 6))
    with pytest.warns(UserWarning, match="maximum"):
        got = read_rsna_csv(data, kind="labels", on_conflict="max")
    assert got.loc["ID_aa"].tolist() == [0, 0, 0, 0, 0, 1]
    with pytest.warns(UserWarning, match="first"):
        first = read_rsna_csv(data, kind="labels", on_conflict="first")
    assert first.at["ID_aa", "any"] == 1
    with pytest.warns(UserWarning, match="last"):
        last = read_rsna_csv(data, kind="labels", on_conflict="last")
    assert last.at["ID_aa", "any"] == 0


# --------------------------------------------------------------------------- missing rows


def test_missing_rows_follow_on_missing() -> None:
    data = _csv(_rows("ID_aa", A), ["ID_cc_any,1", "ID_cc_epidural,0"], _rows("ID_bb", B))
    with pytest.raises(RsnaCsvError, match=r"no label for 4 image/class pairs \(1 images.*ID_cc"):
        read_rsna_csv(data, kind="labels", on_missing="error")

    unknown = read_rsna_csv(data, kind="labels", on_missing="unknown")
    assert list(unknown.index) == ["ID_aa", "ID_cc", "ID_bb"]  # file order
    assert unknown.loc["ID_cc"].tolist() == [0, UNKNOWN_LABEL, UNKNOWN_LABEL, UNKNOWN_LABEL,
                                             UNKNOWN_LABEL, 1]
    assert (unknown.dtypes == np.int8).all()

    dropped = read_rsna_csv(data, kind="labels", on_missing="drop")
    assert list(dropped.index) == ["ID_aa", "ID_bb"]

    probs = read_rsna_csv(data, kind="probabilities", on_missing="unknown")
    assert probs.loc["ID_cc"].isna().tolist() == [False, True, True, True, True, False]
    assert (probs.dtypes == np.float64).all()


def test_image_ids_select_order_and_count_absent_images_as_missing() -> None:
    data = _csv(_rows("ID_aa", A), _rows("ID_bb", B), ["ID_cc_any,1"])
    got = read_rsna_csv(data, kind="labels", image_ids=["ID_bb", "ID_aa"])
    assert list(got.index) == ["ID_bb", "ID_aa"]  # ID_cc is incomplete but not wanted
    assert got.to_numpy().tolist() == [B, A]
    with pytest.raises(RsnaCsvError, match=r"no probability for 6 .*ID_zz"):
        read_rsna_csv(data, kind="probabilities", image_ids=["ID_aa", "ID_zz"])
    holes = read_rsna_csv(data, kind="labels", image_ids=["ID_zz", "ID_aa"], on_missing="unknown")
    assert holes.loc["ID_zz"].tolist() == [UNKNOWN_LABEL] * 6
    assert list(
        read_rsna_csv(data, kind="labels", image_ids=["ID_zz", "ID_aa"], on_missing="drop").index
    ) == ["ID_aa"]


# --------------------------------------------------------------------------- invalid rows


@pytest.mark.parametrize(
    ("row", "kind", "message"),
    [
        ("nonsense,0", "labels", "malformed ID 'nonsense'"),
        ("aa01_any,0", "labels", "malformed ID 'aa01_any'"),
        ("ID__any,0", "labels", "malformed ID 'ID__any'"),
        (",1", "labels", "malformed ID ''"),
        ("ID_aa_bleed,0", "labels", "unknown class 'bleed'"),
        ("ID_aa_Any,0", "labels", "unknown class 'Any'"),
        ("ID_aa_any,7", "labels", "Label '7' of ID_aa_any is not a label 0 or 1"),
        ("ID_aa_any,0.5", "labels", "not a label 0 or 1"),
        ("ID_aa_any,", "labels", "not a label 0 or 1"),
        ("ID_aa_any,True", "labels", "not a label 0 or 1"),
        ("ID_aa_any,1.5", "probabilities", r"not a probability in \[0, 1\]"),
        ("ID_aa_any,NaN", "probabilities", r"not a probability in \[0, 1\]"),
        ("ID_aa_any,-0.1", "probabilities", r"not a probability in \[0, 1\]"),
    ],
)
def test_invalid_rows_are_refused_with_their_line_or_dropped(
    row: str, kind: str, message: str
) -> None:
    data = _csv(_rows("ID_bb", B), [row])
    expected = rf"<stream>: 1 invalid rows; line 8: (Label .* of ID_aa_any is )?{message}"
    with pytest.raises(RsnaCsvError, match=expected):
        read_rsna_csv(data, kind=kind, on_invalid="error", on_missing="unknown")
    with pytest.warns(UserWarning, match="1 .* rows have an unknown ID, class or value"):
        got = read_rsna_csv(data, kind=kind, on_invalid="drop", on_missing="unknown")
    assert list(got.index) == ["ID_bb"]
    assert got.loc["ID_bb"].tolist() == B


def test_non_hex_image_ids_are_read() -> None:
    # Predictions for non-RSNA DICOM files carry SOP instance UIDs, with dots and digits.
    got = read_rsna_csv(_csv(_rows("ID_1.2.840.99", A)), kind="labels")
    assert list(got.index) == ["ID_1.2.840.99"]


def test_columns_and_empty_files() -> None:
    extra = b"Extra,ID,Label\nx,ID_aa_any,1\n"
    got = read_rsna_csv(extra, kind="labels", on_missing="unknown")
    assert got.at["ID_aa", "any"] == 1
    with pytest.raises(RsnaCsvError, match="expected columns ID,Label"):
        read_rsna_csv(b"image,prob\nID_aa_any,1\n", kind="labels")
    with pytest.raises(RsnaCsvError, match="empty file"):
        read_rsna_csv(b"", kind="labels", name="labels.csv")
    empty = read_rsna_csv(b"ID,Label\n", kind="probabilities")
    assert empty.shape == (0, 6) and list(empty.columns) == list(CLASSES)


def test_policy_values_are_checked() -> None:
    with pytest.raises(ValueError, match="on_conflict must be one of"):
        read_rsna_csv(b"ID,Label\n", kind="labels", on_conflict="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be one of"):
        read_rsna_csv(b"ID,Label\n", kind="label")  # type: ignore[arg-type]


def test_sources_path_bytes_and_files_read_the_same(tmp_path: Path) -> None:
    data = _csv(_rows("ID_aa", A), _rows("ID_bb", B))
    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    expected = read_rsna_csv(path, kind="labels")
    for source in (data, io.BytesIO(data), io.StringIO(data.decode()), str(path)):
        pd.testing.assert_frame_equal(read_rsna_csv(source, kind="labels"), expected)
    with pytest.raises(RsnaCsvError, match=r"^labels\.csv: "):
        read_rsna_csv(path, kind="labels", on_duplicate="error", image_ids=["ID_zz"])


# --------------------------------------------------------------------------- writing


def test_writer_layout_is_image_by_image_in_classes_order(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    assert write_rsna_csv(path, ["ID_bb", "aa"], np.array([B, A]), kind="labels") == path
    expected = ["ID,Label", *_rows("ID_bb", B), *_rows("ID_aa", A)]
    assert path.read_bytes() == ("\n".join(expected) + "\n").encode()  # "\n", no quoting
    assert not [p for p in tmp_path.iterdir() if p.name != "out.csv"]  # no temp file left

    probs = np.array([[0.5, 1.0, 0.0, 0.123456789, 1.23456789e-05, 0.999999949]])
    buffer = io.StringIO()
    assert write_rsna_csv(buffer, ["ID_cc"], probs, kind="probabilities") is None
    assert buffer.getvalue().splitlines()[1:] == [
        "ID_cc_epidural,0.5",
        "ID_cc_intraparenchymal,1",
        "ID_cc_intraventricular,0",
        "ID_cc_subarachnoid,0.123457",
        "ID_cc_subdural,1.23457e-05",
        "ID_cc_any,1",
    ]
    assert row_id("ID_cc", "any") == "ID_cc_any" and row_id("1.2.3", "any") == "ID_1.2.3_any"


@pytest.mark.parametrize(
    ("ids", "values", "kind", "message"),
    [
        (["ID_a"], np.zeros((2, 6)), "labels", "shape"),
        (["ID_a"], np.zeros((1, 5)), "labels", "shape"),
        (["ID_a"], np.full((1, 6), 0.5), "labels", "labels 0 or 1"),
        (["ID_a"], np.full((1, 6), UNKNOWN_LABEL), "labels", "labels 0 or 1"),
        (["ID_a"], np.full((1, 6), np.nan), "probabilities", r"\[0, 1\]"),
        (["ID_a"], np.full((1, 6), 1.01), "probabilities", r"\[0, 1\]"),
        ([""], np.zeros((1, 6)), "labels", "non-empty"),
    ],
)
def test_writer_refuses_what_the_reader_would_refuse(
    tmp_path: Path, ids: list[str], values: np.ndarray, kind: str, message: str
) -> None:
    path = tmp_path / "out.csv"
    path.write_text("old\n")
    with pytest.raises(RsnaCsvError, match=message):
        write_rsna_csv(path, ids, values, kind=kind)
    assert path.read_text() == "old\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_labels_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"ID_{v:08x}" for v in rng.choice(2**32, size=50, replace=False)]
    labels = (rng.random((50, 6)) < 0.3).astype(np.int8)
    path = write_rsna_csv(tmp_path / "l.csv", ids, labels, kind="labels")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_rsna_csv(path, kind="labels")
    assert list(back.index) == ids
    np.testing.assert_array_equal(back.to_numpy(), labels)
    sorted_back = read_labels(path)
    assert list(sorted_back.index) == sorted(ids)
    np.testing.assert_array_equal(sorted_back.loc[ids].to_numpy(), labels)


def test_probabilities_round_trip_to_six_significant_digits(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = [f"ID_{k:04x}" for k in range(40)]
    prob = rng.random((40, 6)) ** 4  # plenty of small values, where formats differ
    prob[0] = [0.0, 1.0, 0.5, 1e-9, 0.1, 0.25]
    path = write_rsna_csv(tmp_path / "p.csv", ids, prob, kind="probabilities")
    back = read_rsna_csv(path, kind="probabilities", image_ids=ids[::-1])
    np.testing.assert_allclose(back.to_numpy(), prob[::-1], rtol=5e-6, atol=0)
    np.testing.assert_array_equal(back.loc["ID_0000"].to_numpy(), prob[0])  # exact ones stay


# --------------------------------------------------------------------------- the callers


def test_predict_output_reads_back(tmp_path: Path) -> None:
    from hohoho_core.predict import write_predictions

    rng = np.random.default_rng(2)
    records = []
    for uid, ids in (("1.2.3", ["1.2.3.1", "1.2.3.2"]), ("1.2.4", ["ID_0a", "ID_0b", "ID_0c"])):
        prob = rng.random((len(ids), 6))
        records.append(
            {
                "study_uid": uid,
                "series_uid": uid + ".9",
                "classes": list(CLASSES),
                "image_ids": ids,
                "prob": prob.tolist(),
                "summary": {
                    "n_slices": len(ids),
                    "max_prob": dict(zip(CLASSES, prob.max(0), strict=True)),
                    "positive": dict.fromkeys(CLASSES, False),
                },
            }
        )
    out = write_predictions(records, tmp_path / "preds.csv")[0]
    back = read_rsna_csv(out, kind="probabilities")
    assert list(back.index) == ["ID_1.2.3.1", "ID_1.2.3.2", "ID_0a", "ID_0b", "ID_0c"]
    expected = np.concatenate([np.asarray(r["prob"]) for r in records])
    np.testing.assert_allclose(back.to_numpy(), expected, rtol=5e-6)


def test_oof_output_reads_back(tmp_path: Path) -> None:
    from train.oof_predict import write_probs_csv

    ids = ["ID_0c", "ID_0a", "ID_0b"]
    prob = np.random.default_rng(3).random((3, 6))
    path = write_probs_csv(tmp_path / "oof.csv", ids, prob)
    back = read_rsna_csv(path, kind="probabilities")
    assert list(back.index) == sorted(ids)  # oof sorts its images
    np.testing.assert_allclose(back.loc[ids].to_numpy(), prob, rtol=5e-6)
