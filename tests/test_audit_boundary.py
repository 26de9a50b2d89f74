"""Run-boundary evidence, the any/subtype pairing and the new columns of the flags frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hohoho_core.audit import SliceEvidence, carry_any, rank_flags
from hohoho_core.audit_boundary import (
    EVIDENCE_TERMS,
    blood_area,
    blood_map,
    boundary_candidates,
)
from hohoho_core.labels import ANY_INDEX, CLASSES

SDH = CLASSES.index("subdural")
IPH = CLASSES.index("intraparenchymal")


def _table(lab: np.ndarray) -> pd.DataFrame:
    t = pd.DataFrame(lab, columns=list(CLASSES))
    t.insert(0, "image_id", [f"ID_{i}" for i in range(len(lab))])
    t.insert(1, "study_uid", "s")
    t.insert(2, "slice_index", range(len(lab)))
    return t


def _study(labelled: range, truth: range, n: int = 14) -> tuple[np.ndarray, np.ndarray, SliceEvidence]:
    """Subdural labelled on ``labelled`` while the bleed is really on ``truth``.

    The model, the embeddings and the blood area all follow the truth; the label run is one
    slice off at its superior end.
    """
    lab = np.zeros((n, 6), dtype=int)
    lab[list(labelled), SDH] = 1
    lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    true = np.zeros(n, dtype=bool)
    true[list(truth)] = True
    prob = np.full((n, 6), 0.03)
    prob[true, SDH] = prob[true, ANY_INDEX] = 0.8
    cnn = prob.copy()
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    emb = base + 0.3 * rng.normal(size=(n, 16))
    emb[true] += 2.0 * np.eye(16)[0]
    blood = np.where(true, 400.0, 5.0)
    where = np.zeros((n, 8, 8))
    where[true, 2:4, 5:7] = 100.0  # the bleed, at one place on every slice it reaches
    where[:, 6, 1] = 5.0  # a little blood-range anatomy elsewhere on every slice
    return lab, prob, SliceEvidence(cnn_prob=cnn, embeddings=emb, blood=blood,
                                    blood_map=where)


def test_blood_area_counts_blood_inside_the_skull_only() -> None:
    size, ps = 96, 0.5
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    sl = np.full((size, size), -1000.0, dtype=np.float32)
    sl[r < 44] = 1000.0  # skull
    sl[r < 40] = 30.0  # brain
    vol = np.stack([sl, sl, sl])
    blob = (np.hypot(yy - 48, xx - 42) < 14)  # a 7 mm clot, away from the bone
    vol[1][blob] = 80.0
    vol[2][(r >= 44) & (r < 46)] = 70.0  # 70 HU outside the skull (scalp): not counted
    area = blood_area(vol, ps)
    assert area[0] == 0.0 and area[2] == 0.0
    assert area[1] == pytest.approx(blob.sum() * ps * ps, rel=0.3)
    # An open bone ring (skull base) encloses nothing: no area rather than the whole slice.
    open_ring = vol[1].copy()
    open_ring[:, 44:52] = np.where(open_ring[:, 44:52] > 500, 30.0, open_ring[:, 44:52])
    assert blood_area(open_ring[None], ps)[0] < area[1]
    with pytest.raises(ValueError, match=r"\[S, H, W\]"):
        blood_area(vol[0], ps)
    # The map says where: all of the clot's area falls in the cells that hold the blob.
    where = blood_map(vol, ps, grid=8)
    assert where.shape == (3, 8, 8)
    assert where[1].sum() == pytest.approx(area[1])
    cells = np.argwhere(where[1] > 0)
    assert cells[:, 0].min() >= 2 and cells[:, 0].max() <= 5  # rows 24-72 of 96 px
    assert cells[:, 1].min() >= 2 and cells[:, 1].max() <= 5


def test_focal_blood_ignores_blood_away_from_the_bleed() -> None:
    # Slice 8 is the superior edge of the labelled run; it holds as much blood-range area
    # as the run (the blood sum cannot tell), but elsewhere on the slice: not this bleed.
    lab, prob, ev = _study(range(4, 9), range(4, 8))
    blood = np.where(np.arange(len(lab)) <= 8, 400.0, 5.0)
    blood[:4] = 5.0
    where = np.array(ev.blood_map)
    where[8] = 0.0
    where[8, 0:2, 0:2] = 100.0
    flat = np.full_like(prob, 0.5)
    cand = boundary_candidates(lab, np.zeros(len(lab)), np.arange(len(lab)), flat,
                               type(ev)(blood=blood, blood_map=where))
    top = cand[(cand["class_index"] == SDH) & (cand["row"] == 8)
               & (cand["kind"] == "shorter")].iloc[0]
    assert top["d_blood"] < 0.5 < top["d_focal"]


def test_run_extended_by_one_slice_is_the_top_boundary_candidate() -> None:
    # Bleed on slices 4..7, label run 4..8: slice 8 was added by the reader.
    lab, prob, ev = _study(range(4, 9), range(4, 8))
    cand = boundary_candidates(lab, np.zeros(len(lab)), np.arange(len(lab)), prob, ev)
    sdh = cand[cand["class_index"] == SDH].sort_values("boundary_score", ascending=False)
    top = sdh.iloc[0]
    assert (top["row"], top["kind"], top["edge"], top["proposed_label"]) == (8, "shorter", "end", 0)
    assert all(top[t] > 0 for t in EVIDENCE_TERMS)
    # The correct edge (start) does not look wrong.
    start = sdh[(sdh["edge"] == "start") & (sdh["kind"] == "shorter")].iloc[0]
    assert start["boundary_score"] < 0.5 < top["boundary_score"]

    out = rank_flags(_table(lab), prob, signal_only="boundary", evidence=ev)
    first = out.iloc[0]
    assert (first["image_id"], first["kind"], first["edge"]) in {
        ("ID_8", "run_shorter", "end")}
    # With all the evidence, the combined ranking puts both cells of the error on top.
    comb = rank_flags(_table(lab), prob, evidence=ev)
    assert set(zip(comb["image_id"][:2], comb["class"][:2], strict=True)) == {
        ("ID_8", "subdural"), ("ID_8", "any")}
    assert comb["group"].iloc[0] == comb["group"].iloc[1] == "ID_8:subdural"


def test_run_end_dropped_is_found_as_a_longer_candidate() -> None:
    # Bleed on slices 4..8, label run 4..7: the reader dropped the last slice.
    lab, prob, ev = _study(range(4, 8), range(4, 9))
    out = rank_flags(_table(lab), prob, signal_only="boundary", evidence=ev)
    first = out.iloc[0]
    assert (first["image_id"], first["label"], first["kind"], first["edge"]) == (
        "ID_8", 0, "run_longer", "end")
    assert "end one slice later" in first["reason"]


def test_image_evidence_alone_finds_the_edge_when_the_model_is_flat() -> None:
    lab, prob, ev = _study(range(4, 9), range(4, 8))
    flat = np.full_like(prob, 0.5)
    blood_only = SliceEvidence(blood=ev.blood)
    out = rank_flags(_table(lab), flat, signal_only="boundary", evidence=blood_only)
    assert (out.iloc[0]["image_id"], out.iloc[0]["kind"]) == ("ID_8", "run_shorter")
    # Without any evidence every candidate sits at 0.5: no direction either way.
    none = rank_flags(_table(lab), flat, signal_only="boundary")
    assert set(none.loc[none["boundary_score"] > 0, "boundary_score"]) == {0.5}


def test_boundary_candidates_stay_inside_a_series_and_handle_no_runs() -> None:
    lab = np.zeros((6, 6), dtype=int)
    empty = boundary_candidates(lab, np.zeros(6), np.arange(6), np.full((6, 6), 0.1))
    assert empty.empty and {"row", "kind", "edge", "boundary_score"} <= set(empty.columns)
    lab[2, SDH] = lab[3, SDH] = 1  # last two slices of series "a"; series "b" follows
    series = np.array(["a", "a", "a", "a", "b", "b"])
    cand = boundary_candidates(lab, series, np.array([0, 1, 2, 3, 0, 1]), np.full((6, 6), 0.1))
    sdh = cand[cand["class_index"] == SDH]
    assert set(sdh["row"]) == {1, 2, 3}  # never row 4, the first slice of the next series
    with pytest.raises(ValueError, match="embeddings"):
        boundary_candidates(lab, series, np.arange(6), np.full((6, 6), 0.1),
                            SliceEvidence(embeddings=np.zeros((5, 4))))


def test_carry_any_pairs_a_subtype_with_its_any_cell() -> None:
    lab = np.zeros((4, 6), dtype=int)
    lab[0, [SDH, ANY_INDEX]] = 1  # SDH the only subtype: its flip moves "any"
    lab[1, [SDH, IPH, ANY_INDEX]] = 1  # two subtypes: one flip leaves "any" at 1
    lab[2, ANY_INDEX] = 0  # negative slice: any subtype set to 1 makes "any" 1
    lab[3, [SDH, ANY_INDEX]] = 1
    score = np.full((4, 6), 0.1)
    score[0, SDH] = score[1, SDH] = score[2, IPH] = 0.9
    score[3, ANY_INDEX] = 0.8  # "any" suspicious with one positive subtype: pass it back
    carried, partner = carry_any(score, lab)
    assert carried[0, ANY_INDEX] == 0.9 and partner[0] == SDH
    assert carried[1, ANY_INDEX] == 0.1 and partner[1] == -1
    assert carried[2, ANY_INDEX] == 0.9 and partner[2] == IPH
    assert carried[3, SDH] == 0.8 and carried[3, ANY_INDEX] == 0.8
    assert carried[2, SDH] == 0.1  # "any" never passes a score to a negative subtype
    with pytest.raises(ValueError, match="same shape"):
        carry_any(score[:, :5], lab)


def test_rank_flags_keeps_old_columns_and_adds_new_ones() -> None:
    lab, prob, ev = _study(range(4, 9), range(4, 8))
    out = rank_flags(_table(lab), prob, evidence=ev, ranker=None)
    old = ["image_id", "study_uid", "slice_index", "class", "label", "prob", "model_score",
           "sequence_score", "cleanlab_score", "cleanlab_issue", "combined_score", "rules"]
    assert list(out.columns[: len(old)]) == old
    for col in ("cnn_score", "boundary_score", "learned_score", "kind", "edge", "group",
                "reason", "score", "rank"):
        assert col in out.columns
    assert out["learned_score"].isna().all()  # ranker=None: the hand-weighted score only
    assert set(out["kind"]) <= {"cell", "run_shorter", "run_longer", "isolated_positive",
                                "gap_in_run", "any_inconsistent"}
    assert set(out["edge"]) <= {"", "start", "end"}


def test_relative_terms_do_not_change_with_the_scale_of_the_evidence() -> None:
    # The same study seen by a sharper and a softer model (logits times 0.4), and with
    # every blood area ten times larger: the relative terms read the same.
    from hohoho_core.audit_boundary import RELATIVE_TERMS

    lab, prob, ev = _study(range(4, 9), range(4, 8))
    z = np.log(prob / (1 - prob))
    soft = 1 / (1 + np.exp(-0.4 * z))
    a = boundary_candidates(lab, np.zeros(len(lab)), np.arange(len(lab)), prob, ev)
    b = boundary_candidates(lab, np.zeros(len(lab)), np.arange(len(lab)), soft, ev)
    np.testing.assert_allclose(a["r_prob"], b["r_prob"], equal_nan=True)
    assert not np.allclose(a["d_prob"], b["d_prob"])  # the raw difference shrinks
    row = a[(a["class_index"] == SDH) & (a["row"] == 8) & (a["kind"] == "shorter")].iloc[0]
    # Slice 8 (labelled, truly negative) equals the outside slice: +1 on every term.
    for t in ("r_prob", "r_cnn", "r_blood", "r_focal"):
        assert row[t] == pytest.approx(1.0), t
    assert row["r_emb"] > 0.5
    # The true start edge (slice 4, truly positive) equals its inner side: -1.
    start = a[(a["class_index"] == SDH) & (a["row"] == 4) & (a["kind"] == "shorter")].iloc[0]
    assert start["r_prob"] == pytest.approx(-1.0) and start["r_blood"] == pytest.approx(-1.0)
    assert set(RELATIVE_TERMS) <= set(a.columns)


def test_relative_terms_are_missing_when_the_two_sides_look_alike() -> None:
    lab, prob, ev = _study(range(4, 9), range(4, 8))
    flat = np.full_like(prob, 0.3)
    cand = boundary_candidates(lab, np.zeros(len(lab)), np.arange(len(lab)), flat,
                               SliceEvidence(blood=np.full(len(lab), 50.0)))
    assert cand["r_prob"].isna().all() and cand["r_blood"].isna().all()
    assert (cand["d_prob"] == 0).all()  # the raw term says "no difference", not "no data"


def test_sensitive_blood_and_brain_area_make_a_fraction_that_finds_faint_blood() -> None:
    from hohoho_core.audit_boundary import SENSITIVE_BLOOD_HU, brain_area

    size, ps = 96, 0.5
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    sl = np.full((size, size), -1000.0, dtype=np.float32)
    sl[r < 44] = 1000.0
    sl[r < 40] = 30.0
    vol = np.stack([sl, sl])
    blob = np.hypot(yy - 48, xx - 42) < 10
    vol[1][blob] = 56.0  # faint blood (blood mixed with CSF): below the strict range
    brain = brain_area(vol, ps)
    # Enclosed by bone and more than 1.5 mm from it: a disc of radius about 40 - 3 px.
    assert brain[0] == pytest.approx(np.pi * (37 * ps) ** 2, rel=0.1)
    assert blood_area(vol, ps)[1] == 0.0
    lo = blood_map(vol, ps, grid=4, hu_range=SENSITIVE_BLOOD_HU, smooth_mm=1.0)
    area = blob.sum() * ps * ps  # the smoothing erodes the faint clot's rim, not its core
    assert lo[0].sum() == 0.0 and 0.5 * area < lo[1].sum() <= 1.05 * area
    with pytest.raises(ValueError, match="pixel_spacing"):
        brain_area(vol, 0.0)
    # The map and the fraction reach the candidates: a faint last slice of a run.
    lab = np.zeros((6, 6), dtype=int)
    lab[1:4, SDH] = 1  # slice 4 has the faint blood too but is labelled 0
    lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    maps = np.zeros((6, 4, 4), dtype=np.float32)
    maps[1:5, 1, 1] = 40.0
    ev = SliceEvidence(blood=maps.sum(axis=(1, 2)).astype(float), blood_map_lo=maps,
                       brain=np.full(6, 5000.0))
    cand = boundary_candidates(lab, np.zeros(6), np.arange(6), np.full((6, 6), 0.5), ev)
    longer = cand[(cand["class_index"] == SDH) & (cand["row"] == 4)].iloc[0]
    assert longer["kind"] == "longer"
    assert longer["r_focal_lo"] == pytest.approx(1.0) and longer["r_frac"] == pytest.approx(1.0)
