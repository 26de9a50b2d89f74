"""Label audit: sequence rules, cleanlab scores, the combined ranking, probability CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cleanlab.multilabel_classification import filter as cl_filter
from cleanlab.multilabel_classification import rank as cl_rank

from hohoho_core.audit import (
    AuditWeights,
    model_flags,
    rank_flags,
    read_probs_csv,
    sequence_flags,
)
from hohoho_core.labels import ANY_INDEX, CLASSES

SDH = CLASSES.index("subdural")
EDH = CLASSES.index("epidural")


def _labels(column: list[int], k: int = SDH, any_follows: bool = True) -> np.ndarray:
    """(S, 6) labels with ``column`` in class k and "any" = max of the subtypes."""
    lab = np.zeros((len(column), 6), dtype=int)
    lab[:, k] = column
    if any_follows:
        lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    return lab


def _flags(lab: np.ndarray, study=None, order=None) -> set[tuple]:
    n = len(lab)
    study = np.zeros(n, dtype=int) if study is None else np.asarray(study)
    order = np.arange(n) if order is None else np.asarray(order)
    out = sequence_flags(lab, study, order)
    return {
        (int(r), c, rule, float(s), int(p))
        for r, c, rule, s, p in zip(
            out["row"], out["class"], out["rule"], out["score"], out["proposed_label"], strict=True
        )
    }


# ----------------------------------------------------------------- sequence rules


def test_isolated_positive_between_negatives() -> None:
    lab = _labels([0, 0, 1, 0, 0])
    assert _flags(lab) == {
        (2, "subdural", "isolated_positive", 1.0, 0),
        (2, "any", "isolated_positive", 1.0, 0),
    }


@pytest.mark.parametrize(
    ("column", "expected_row"),
    [([1, 0, 0, 0], 0), ([0, 0, 0, 1], 3)],
)
def test_isolated_positive_on_an_edge_scores_half(column: list[int], expected_row: int) -> None:
    flags = _flags(_labels(column, any_follows=False))
    assert flags == {(expected_row, "subdural", "isolated_positive", 0.5, 0)} | {
        (expected_row, "subdural", "any_inconsistent", 0.5, 0),
        (expected_row, "any", "any_inconsistent", 1.0, 1),
    }


@pytest.mark.parametrize("column", [[1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0]])
def test_no_isolated_positive_without_the_pattern(column: list[int]) -> None:
    assert _flags(_labels(column)) == set()


def test_gap_in_run() -> None:
    assert _flags(_labels([0, 1, 1, 0, 1, 1])) == {
        (3, "subdural", "gap_in_run", 1.0, 1),
        (3, "any", "gap_in_run", 1.0, 1),
    }


@pytest.mark.parametrize("column", [[1, 0, 0, 1], [0, 1, 1], [1, 1, 0]])
def test_no_gap_for_two_slice_gaps_or_run_ends(column: list[int]) -> None:
    assert not {f for f in _flags(_labels(column)) if f[2] == "gap_in_run"}


def test_any_inconsistent_both_ways() -> None:
    lab = np.zeros((3, 6), dtype=int)
    lab[0, [EDH, SDH]] = 1  # two subtypes, any = 0
    lab[1, ANY_INDEX] = 1  # any without a subtype
    lab[2, [SDH, ANY_INDEX]] = 1  # consistent
    flags = {f for f in _flags(lab, study=[0, 1, 2]) if f[2] == "any_inconsistent"}
    assert flags == {
        (0, "any", "any_inconsistent", 1.0, 1),
        (0, "epidural", "any_inconsistent", 0.5, 0),
        (0, "subdural", "any_inconsistent", 0.5, 0),
        (1, "any", "any_inconsistent", 1.0, 0),
    }


def test_neighbours_follow_slice_index_and_stay_inside_a_series() -> None:
    # Two studies, rows shuffled. Sorted by slice_index, study "a" is rows 3, 5, 1 with
    # labels 0 0 1; study "b" is rows 2, 6, 4, 0 with labels 1 1 0 1.
    study = np.array(["b", "a", "b", "a", "b", "a", "b"])
    order = np.array([3, 2, 0, 0, 2, 1, 1])
    column = np.array([1, 1, 1, 0, 0, 0, 1])
    flags = _flags(_labels(list(column)), study=study, order=order)
    # a: row 1 is the last slice, positive, its one neighbour negative (edge, 0.5).
    # b: row 4 is a gap; row 0 is the last slice, positive after a negative (edge, 0.5).
    # Row 2 (b, first slice) is never compared with row 1 (a, last slice).
    assert flags == {
        (1, "subdural", "isolated_positive", 0.5, 0),
        (1, "any", "isolated_positive", 0.5, 0),
        (4, "subdural", "gap_in_run", 1.0, 1),
        (4, "any", "gap_in_run", 1.0, 1),
        (0, "subdural", "isolated_positive", 0.5, 0),
        (0, "any", "isolated_positive", 0.5, 0),
    }


def test_gaps_in_slice_index_still_make_neighbours() -> None:
    # Missing slices: neighbours are the previous and next slices present.
    flags = _flags(_labels([0, 1, 0]), order=[10, 20, 40])
    assert (1, "subdural", "isolated_positive", 1.0, 0) in flags


@pytest.mark.parametrize(
    ("labels", "study", "order", "match"),
    [
        (np.zeros((3, 5)), [0, 0, 0], [0, 1, 2], "shape"),
        (np.full((3, 6), 2), [0, 0, 0], [0, 1, 2], "0 or 1"),
        (np.zeros((3, 6)), [0, 0], [0, 1, 2], "shape"),
        (np.zeros((3, 6)), [0, 0, 1], [0, 0, 0], "duplicates"),
    ],
)
def test_sequence_flags_rejects_bad_input(labels, study, order, match) -> None:
    with pytest.raises(ValueError, match=match):
        sequence_flags(labels, np.asarray(study), np.asarray(order))


def test_sequence_flags_empty_result_has_columns() -> None:
    out = sequence_flags(np.zeros((4, 6), dtype=int), np.zeros(4), np.arange(4))
    assert out.empty
    assert list(out.columns) == [
        "row",
        "class",
        "class_index",
        "rule",
        "score",
        "proposed_label",
        "detail",
    ]


# ----------------------------------------------------------------- model (cleanlab)


def _toy_dataset(seed: int = 0, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = (rng.random((n, 6)) < 0.3).astype(int)
    lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    prob = np.clip(0.05 + 0.85 * lab + rng.normal(0, 0.04, lab.shape), 0.001, 0.999)
    return lab, prob


def test_model_flags_match_hand_values_and_cleanlab() -> None:
    lab, prob = _toy_dataset()
    lab[7, SDH] = 1 - lab[7, SDH]  # one wrong label the model contradicts
    out = model_flags(lab, prob)
    assert len(out) == lab.size
    assert list(out["row"][:7]) == [0, 0, 0, 0, 0, 0, 1]
    assert list(out["class"][:6]) == list(CLASSES)
    # model_score is the probability of the flipped label, |label - prob|.
    np.testing.assert_allclose(out["model_score"], np.abs(lab - prob).reshape(-1), atol=1e-12)
    as_lists = [list(np.flatnonzero(r)) for r in lab]
    np.testing.assert_allclose(
        out["cleanlab_slice_quality"].to_numpy()[::6],
        cl_rank.get_label_quality_scores(as_lists, prob),
    )
    issues = cl_filter.find_multilabel_issues_per_class(as_lists, prob, n_jobs=1)
    np.testing.assert_array_equal(out["cleanlab_issue"].to_numpy(), issues.reshape(-1))
    flagged = out[out["cleanlab_issue"]]
    assert (7, "subdural") in set(zip(flagged["row"], flagged["class"], strict=True))
    worst = out.sort_values("cleanlab_score", ascending=False).iloc[0]
    assert (worst["row"], worst["class"]) == (7, "subdural")
    assert out["cleanlab_score"].between(0, 1).all()


def test_model_flags_without_any_positive_label() -> None:
    lab = np.zeros((4, 6), dtype=int)
    prob = np.full((4, 6), 0.1)
    prob[2, 3] = 0.8
    out = model_flags(lab, prob)
    np.testing.assert_allclose(out["model_score"], prob.reshape(-1))
    assert not out["cleanlab_issue"].any()


@pytest.mark.parametrize(
    ("prob", "match"),
    [
        (np.full((3, 6), 1.5), r"\[0, 1\]"),
        (np.full((3, 6), np.nan), "finite"),
        (np.zeros((2, 6)), "shape"),
    ],
)
def test_model_flags_rejects_bad_probabilities(prob: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model_flags(np.zeros((3, 6), dtype=int), prob)


# ----------------------------------------------------------------- combined ranking


def _table(columns: dict[str, list[int]], study: str = "s1", n: int = 5) -> pd.DataFrame:
    n = len(next(iter(columns.values()))) if columns else n
    frame = pd.DataFrame(
        {
            "image_id": [f"ID_{study}{i:02d}" for i in range(n)],
            "study_uid": study,
            "slice_index": np.arange(n),
        }
    )
    for c in CLASSES:
        frame[c] = columns.get(c, [0] * n)
    return frame


def _constructed() -> tuple[pd.DataFrame, np.ndarray]:
    """Four studies, each with one kind of suspicious (image, class) cell.

    A: gap in a subdural run; the model says subdural (agrees with the rule).
    B: gap in a subdural run; the model says no subdural (a real gap, e.g. a skipped level).
    C: no pattern; the model strongly disagrees with a subarachnoid 0 (boundary slice).
    D: nothing suspicious anywhere.
    """
    run = [1, 1, 0, 1, 1]
    a = _table({"subdural": run, "any": run}, "a")
    b = _table({"subdural": run, "any": run}, "b")
    c = _table({"subarachnoid": [1, 1, 1, 0, 0], "any": [1, 1, 1, 0, 0]}, "c")
    d = _table({}, "d")
    table = pd.concat([d, b, c, a], ignore_index=True)  # A last: order must not matter
    lab = table[list(CLASSES)].to_numpy()
    prob = np.where(lab == 1, 0.9, 0.05)
    rows = {s: table.index[table["study_uid"] == s].to_numpy() for s in "abcd"}
    prob[rows["a"][2], [SDH, ANY_INDEX]] = 0.8  # model backs filling the gap
    prob[rows["b"][2], [SDH, ANY_INDEX]] = 0.05  # model says the gap is real
    sah = CLASSES.index("subarachnoid")
    prob[rows["c"][3], [sah, ANY_INDEX]] = 0.85  # model alone: a missed boundary slice
    return table, prob


def test_rank_flags_combined_beats_each_signal_on_a_constructed_example() -> None:
    table, prob = _constructed()
    ranked = rank_flags(table, prob, ranker=None)  # the hand-weighted score
    assert len(ranked) == len(table) * 6
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    assert ranked["score"].is_monotonic_decreasing
    key = list(zip(ranked["image_id"], ranked["class"], strict=True))
    pos = {k: i for i, k in enumerate(key)}
    gap_backed = pos[("ID_a02", "subdural")]
    gap_contradicted = pos[("ID_b02", "subdural")]
    model_only = pos[("ID_c03", "subarachnoid")]
    # The rule the model agrees with comes first (subdural and its "any" twin).
    assert {key[0], key[1]} == {("ID_a02", "subdural"), ("ID_a02", "any")}
    assert gap_backed < model_only < gap_contradicted
    top = ranked.iloc[gap_backed]
    assert top["rules"] == "gap_in_run" and top["label"] == 0
    assert top["sequence_score"] == 1.0 and top["model_score"] == pytest.approx(0.8)
    assert top["score"] > max(
        ranked.iloc[model_only]["score"], ranked.iloc[gap_contradicted]["score"]
    )
    assert "negative slice inside a positive run" in top["reason"]
    assert "0.80" in top["reason"] and "backs a relabel to 1" in top["reason"]
    assert "supports the label" in ranked.iloc[gap_contradicted]["reason"]
    assert ranked.iloc[model_only]["rules"] == ""
    # Nothing in study D is suspicious: all its cells sit at the bottom.
    d_ranks = ranked.loc[ranked["study_uid"] == "d", "rank"]
    assert d_ranks.min() > ranked.loc[ranked["score"] > 0.2, "rank"].max()


def test_rank_flags_single_signals() -> None:
    table, prob = _constructed()
    by_model = rank_flags(table, prob, signal_only="model")
    top2 = set(zip(by_model["image_id"][:4], by_model["class"][:4], strict=True))
    assert top2 == {
        ("ID_c03", "subarachnoid"),
        ("ID_c03", "any"),
        ("ID_a02", "subdural"),
        ("ID_a02", "any"),
    }
    np.testing.assert_allclose(by_model["score"], by_model["model_score"])
    by_rule = rank_flags(table, prob, signal_only="sequence")
    flagged = by_rule[by_rule["score"] > 0]
    assert set(zip(flagged["image_id"], flagged["class"], strict=True)) == {
        ("ID_a02", "subdural"),
        ("ID_a02", "any"),
        ("ID_b02", "subdural"),
        ("ID_b02", "any"),
    }
    # Ties keep table order (study b rows come before study a rows in the table).
    assert list(flagged["image_id"]) == ["ID_b02", "ID_b02", "ID_a02", "ID_a02"]
    by_cl = rank_flags(table, prob, signal_only="cleanlab")
    np.testing.assert_allclose(by_cl["score"], by_cl["cleanlab_score"])
    with pytest.raises(ValueError, match="signal_only"):
        rank_flags(table, prob, signal_only="magic")  # type: ignore[arg-type]


def test_rank_flags_noisy_or_of_rules_and_top() -> None:
    # A subdural positive only on the first slice with "any" 0: edge isolated (0.5) and
    # "subtype vs any" (0.5) both fire: 1 - 0.5 * 0.5 = 0.75.
    table = _table({"subdural": [1, 0, 0, 0]})
    prob = np.full((4, 6), 0.5)
    out = rank_flags(table, prob, top=3, ranker=None)
    assert len(out) == 3
    cell = out[(out["image_id"] == "ID_s100") & (out["class"] == "subdural")].iloc[0]
    assert cell["sequence_score"] == pytest.approx(0.75)
    assert cell["rules"] == "isolated_positive;any_inconsistent"
    any_cell = out[(out["image_id"] == "ID_s100") & (out["class"] == "any")].iloc[0]
    assert any_cell["sequence_score"] == pytest.approx(1.0)
    assert any_cell["rank"] == 1  # same model doubt (0.5), stronger rule


def test_rank_flags_uses_series_uid_when_present() -> None:
    table = _table({"subdural": [0, 1, 1], "any": [0, 1, 1]})
    table["series_uid"] = ["x", "x", "y"]  # slice 2 starts another series
    out = rank_flags(table, np.full((3, 6), 0.5), signal_only="sequence")
    hits = out[out["score"] > 0]
    assert set(zip(hits["image_id"], hits["rules"], strict=True)) == {
        ("ID_s101", "isolated_positive"),
    }


def test_combined_score_properties() -> None:
    w = AuditWeights()
    m = np.array([0.9, 0.9, 0.1, 0.5, 0.001])
    r = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    s = w.combine(m, r, np.zeros(5))
    assert s[0] > s[1] > s[2]  # rule + model > model alone > rule the model doubts
    assert s[3] == pytest.approx(0.5)  # no evidence either way
    assert s[4] == pytest.approx(w.combine(np.array([0.01]), np.array([1.0]), np.zeros(1))[0])
    assert np.all((s > 0) & (s < 1))
    with pytest.raises(ValueError):
        AuditWeights(sequence=-1)


def test_rank_flags_rejects_missing_columns_and_labels() -> None:
    table = _table({})
    with pytest.raises(ValueError, match="missing columns"):
        rank_flags(table.drop(columns="slice_index"), np.zeros((5, 6)))
    table.loc[1, "any"] = np.nan
    with pytest.raises(ValueError, match="without labels"):
        rank_flags(table, np.zeros((5, 6)))


def test_combined_recall_beats_each_signal_on_simulated_noise() -> None:
    """Three error kinds that each signal alone partly misses; the combination sees all.

    1. a subdural 0 -> 1 on one slice of a negative study (isolated positive); the model,
       a weak one here, gives only 0.35 for "no subdural" there;
    2. a subdural 1 -> 0 at the end of a run (no pattern); the model says 0.8;
    3. decoys: true single-slice epidurals (a rule fires, the model confidently agrees
       with the label) and model noise on correct labels (0.6 on a few random cells).
    """
    rng = np.random.default_rng(7)
    frames, probs, errors = [], [], []
    for s in range(30):
        n = 24
        lab = np.zeros((n, 6), dtype=int)
        prob = np.clip(rng.normal(0.05, 0.03, (n, 6)), 0.001, 0.999)
        kind = s % 3
        if kind == 0:  # isolated false positive, weak model
            i = int(rng.integers(2, n - 2))
            lab[i, SDH] = 1
            prob[i, SDH] = 0.65
            errors.append((f"ID_{s:02d}{i:02d}", "subdural"))
        elif kind == 1:  # truncated run, confident model, no sequence pattern
            a = int(rng.integers(3, 12))
            lab[a : a + 6, SDH] = 1
            prob[a : a + 7, SDH] = 0.9
            lab[a + 6, SDH] = 0
            prob[a + 6, SDH] = 0.8
            errors.append((f"ID_{s:02d}{a + 6:02d}", "subdural"))
        else:  # decoy: real one-slice epidural the model sees
            i = int(rng.integers(2, n - 2))
            lab[i, EDH] = 1
            prob[i, EDH] = 0.97
        lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
        prob[:, ANY_INDEX] = prob[:, :ANY_INDEX].max(axis=1)
        noisy = rng.random((n, 6)) < 0.02  # model noise on correct labels
        prob[noisy] = np.where(lab[noisy] == 1, 0.4, 0.6)
        frame = pd.DataFrame(
            {"image_id": [f"ID_{s:02d}{i:02d}" for i in range(n)], "study_uid": f"st{s}"}
        )
        frame["slice_index"] = np.arange(n)
        for k, c in enumerate(CLASSES):
            frame[c] = lab[:, k]
        frames.append(frame)
        probs.append(prob)
    table, prob = pd.concat(frames, ignore_index=True), np.concatenate(probs)
    truth = set(errors)
    k = 2 * len(truth)

    def recall(signal) -> float:
        top = rank_flags(table, prob, signal_only=signal, top=k)
        return len(truth & set(zip(top["image_id"], top["class"], strict=True))) / len(truth)

    combined, model, rule = recall(None), recall("model"), recall("sequence")
    assert combined >= 0.8
    assert combined > model and combined > rule


# ----------------------------------------------------------------- probability files


def test_read_probs_csv_aligns_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "oof.csv"
    rows = ["ID,Label"]
    values = {"ID_b": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "ID_a": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]}
    for image_id, vals in values.items():
        rows += [f"{image_id}_{c},{v}" for c, v in zip(CLASSES, vals, strict=True)]
    rows += ["ID_extra_any,0.3", "ID_a_any,0.4"]  # other image, identical duplicate
    path.write_text("\n".join(rows) + "\n")
    got = read_probs_csv(path, ["ID_a", "ID_b"])
    np.testing.assert_allclose(got, [values["ID_a"], values["ID_b"]])
    assert got.shape == (2, 6)
    with pytest.raises(ValueError, match="no probability for 6"):
        read_probs_csv(path, ["ID_a", "ID_missing"])

    bad = tmp_path / "bad.csv"
    bad.write_text("ID,Label\nID_a_bleed,0.5\n")
    with pytest.raises(ValueError, match="unknown class"):
        read_probs_csv(bad, ["ID_a"])
    bad.write_text("ID,Label\n" + "\n".join(f"ID_a_{c},1.5" for c in CLASSES) + "\n")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        read_probs_csv(bad, ["ID_a"])
    bad.write_text(path.read_text() + "ID_a_any,0.9\n")
    with pytest.raises(ValueError, match="conflicting"):
        read_probs_csv(bad, ["ID_a"])
    bad.write_text("image,prob\nID_a_any,0.5\n")
    with pytest.raises(ValueError, match="ID,Label"):
        read_probs_csv(bad, ["ID_a"])


# ----------------------------------------------------------------- end to end


def test_audit_from_files_finds_injected_errors(tmp_path: Path) -> None:
    """Synthetic RSNA folder with injected sequential errors; a stand-in model (clean
    labels blurred with noise) as out-of-fold probabilities; most errors rank in the top
    2 x (number of errors)."""
    from hohoho_core.audit import audit_from_files
    from hohoho_core.synthetic import generate_dataset

    data = tmp_path / "rsna"
    generate_dataset(data, n_studies=16, seed=5, size=64, label_noise=1.0, slices=(12, 20))
    errors = pd.read_csv(data / "label_errors.csv")
    truth = pd.read_csv(data / "truth.csv")
    assert len(errors) >= 8
    rng = np.random.default_rng(0)
    clean = truth[list(CLASSES)].to_numpy(dtype=float)
    prob = np.clip(0.08 + 0.84 * clean + rng.normal(0, 0.08, clean.shape), 0.001, 0.999)
    oof = tmp_path / "oof.csv"
    pd.DataFrame(
        {
            "ID": [f"{i}_{c}" for i in truth["image_id"] for c in CLASSES],
            "Label": prob.reshape(-1),
        }
    ).to_csv(oof, index=False)

    k = 2 * len(errors)
    wanted = set(zip(errors["image_id"], errors["class"], strict=True))
    flags = audit_from_files(data, oof, cache_dir=tmp_path / "cache", workers=1)
    assert len(flags) == 6 * len(truth)
    top = flags.iloc[:k]
    found = wanted & set(zip(top["image_id"], top["class"], strict=True))
    assert len(found) / len(wanted) >= 0.8
    # The table carries the noisy labels from stage_2_train.csv, not the clean ones.
    noisy = errors.set_index(["image_id", "class"])["noisy"]
    hits = top.set_index(["image_id", "class"]).loc[sorted(found)]
    assert (hits["label"] == noisy.loc[sorted(found)]).all()
    for signal in ("model", "sequence"):
        alone = audit_from_files(
            data, oof, cache_dir=tmp_path / "cache", workers=1, signal_only=signal, top=k
        )
        assert len(found) >= len(wanted & set(zip(alone["image_id"], alone["class"], strict=True)))


@pytest.mark.parametrize(
    ("label", "prob", "expected"),
    [
        (0, 0.40, "subdural labelled 0; the model gives 0.40 (supports the label)."),
        (1, 0.70, "subdural labelled 1; the model gives 0.70 (supports the label)."),
        (0, 0.80, "subdural labelled 0; the model gives 0.80 (backs a relabel to 1)."),
        (1, 0.10, "subdural labelled 1; the model gives 0.10 (backs a relabel to 0)."),
    ],
)
def test_reason_names_a_target_only_for_a_relabel(label: int, prob: float, expected: str) -> None:
    # Regression: the reason used to read "(supports the label to 1)" for a model that
    # agreed with the label, which says the opposite of what the model thinks.
    lab = np.zeros((3, 6), dtype=int)
    lab[1, SDH] = label
    lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    prob_arr = np.where(lab == 1, 0.9, 0.1).astype(float)
    prob_arr[1, SDH] = prob
    table = pd.DataFrame(lab, columns=list(CLASSES))
    table.insert(0, "image_id", [f"ID_{i}" for i in range(3)])
    table.insert(1, "study_uid", "s")
    table.insert(2, "slice_index", range(3))
    out = rank_flags(table, prob_arr)
    row = out[(out["image_id"] == "ID_1") & (out["class"] == "subdural")].iloc[0]
    reason = str(row["reason"])
    assert reason.endswith(expected.split("; ", 1)[1]) or reason == expected
    assert "supports the label to" not in reason
    if "supports the label" in expected:
        assert "relabel" not in reason
