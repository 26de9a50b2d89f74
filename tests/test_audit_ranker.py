"""The learned audit ranker: fits on injected noise, beats a single signal, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hohoho_core.audit import SliceEvidence, audit_cells, carry_any, rank_flags
from hohoho_core.audit_ranker import FEATURES, AuditRanker, cell_features, fit_ranker
from hohoho_core.labels import ANY_INDEX, CLASSES, SUBTYPES
from hohoho_core.synthetic.labelnoise import inject_label_noise


def _simulated_set(seed: int, studies: int = 24, n: int = 18) -> dict:
    """Clean runs, a model that is unsure at bleed edges, embeddings and blood that follow
    the truth (noisily): a small stand-in for rendered studies."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((studies * n, 6), dtype=np.uint8)
    for s in range(studies):
        if s % 2:
            continue
        j = int(rng.integers(len(SUBTYPES)))
        start = int(rng.integers(2, n - 9))
        lab[s * n + start : s * n + start + int(rng.integers(3, 8)), j] = 1
    lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    # The model: confident inside runs and far from them, unsure next to an edge.
    near = np.zeros_like(lab, dtype=float)
    for s in range(studies):
        sl = slice(s * n, (s + 1) * n)
        col = lab[sl].astype(float)
        near[sl] = np.maximum(np.roll(col, 1, axis=0), np.roll(col, -1, axis=0))
    logit = np.where(lab == 1, 2.0, np.where(near > 0, -0.5, -3.5))
    logit = logit + rng.normal(0, 2.0, lab.shape)
    prob = 1 / (1 + np.exp(-logit))
    emb = rng.normal(size=(len(lab), 8)) + 1.5 * lab[:, ANY_INDEX, None] * np.eye(8)[0]
    blood = np.where(lab[:, ANY_INDEX] == 1, 300.0, 20.0) * rng.lognormal(0, 0.3, len(lab))
    return {"labels": lab, "prob": prob, "study": np.repeat(np.arange(studies), n),
            "index": np.tile(np.arange(n), studies),
            "evidence": SliceEvidence(cnn_prob=prob, embeddings=emb, blood=blood)}


def _draw(data: dict, draw: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    noisy, errors = inject_label_noise(data["labels"], data["study"], data["index"], 0.5,
                                       np.random.default_rng(draw))
    table = pd.DataFrame(noisy.astype(int), columns=list(CLASSES))
    table.insert(0, "image_id", [f"ID_{i}" for i in range(len(noisy))])
    table.insert(1, "study_uid", data["study"].astype(str))
    table.insert(2, "slice_index", data["index"])
    cells = audit_cells(table, data["prob"], evidence=data["evidence"])
    y = np.zeros(len(cells), dtype=bool)
    y[errors["row"].to_numpy(dtype=int) * 6 + errors["class"].map(CLASSES.index).to_numpy()] = True
    return table, cells, y


def _recall_at_2k(score: np.ndarray, y: np.ndarray) -> float:
    k = 2 * int(y.sum())
    top = np.argsort(-score, kind="stable")[:k]
    return float(y[top].sum() / y.sum())


@pytest.fixture(scope="module")
def fitted() -> tuple[AuditRanker, dict]:
    train = _simulated_set(1)
    parts = [_draw(train, d) for d in range(4)]
    x = np.concatenate([cell_features(c) for _, c, _ in parts])
    y = np.concatenate([yy for _, _, yy in parts])
    return fit_ranker(x, y, meta={"data": "test"}), _simulated_set(2)


def test_ranker_improves_over_single_signals_on_held_out_studies(fitted) -> None:
    ranker, test = fitted
    learned, model, boundary, n_err = [], [], [], 0
    for d in range(10, 13):
        _, cells, y = _draw(test, d)
        n = len(cells) // 6
        lab = cells["label"].to_numpy().reshape(n, 6)
        s = carry_any(ranker.score(cells).reshape(n, 6), lab)[0].reshape(-1)
        learned.append(_recall_at_2k(s, y) * y.sum())
        model.append(_recall_at_2k(cells["model_score"].to_numpy(), y) * y.sum())
        boundary.append(_recall_at_2k(cells["boundary_score"].to_numpy(), y) * y.sum())
        n_err += int(y.sum())
    r_learned, r_model, r_boundary = (sum(v) / n_err for v in (learned, model, boundary))
    assert n_err >= 20
    assert r_learned >= r_model + 0.1, (r_learned, r_model)
    assert r_learned >= r_boundary + 0.1, (r_learned, r_boundary)


def test_ranker_round_trips_through_json_without_pickle(fitted, tmp_path: Path) -> None:
    ranker, test = fitted
    path = ranker.save(tmp_path / "audit_ranker.json")
    d = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, readable by anyone
    assert d["features"] == list(FEATURES) and d["meta"]["data"] == "test"
    back = AuditRanker.load(path)
    _, cells, _ = _draw(test, 3)
    np.testing.assert_allclose(back.score(cells), ranker.score(cells))
    d["format"] = "something-else"
    (tmp_path / "bad.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ValueError, match="format|hohoho-audit-ranker"):
        AuditRanker.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        AuditRanker.load(tmp_path / "broken.json")


def test_rank_flags_ranks_by_the_learned_score_when_given_a_ranker(fitted) -> None:
    ranker, test = fitted
    table, _, _ = _draw(test, 4)
    out = rank_flags(table, test["prob"], evidence=test["evidence"], ranker=ranker, top=50)
    assert out["learned_score"].notna().all()
    assert (np.diff(out["score"].to_numpy()) <= 0).all()
    np.testing.assert_array_equal(out["score"].to_numpy(), out["learned_score"].to_numpy())


def test_fit_ranker_rejects_one_class_and_bad_files() -> None:
    x = np.zeros((5, len(FEATURES)))
    with pytest.raises(ValueError, match="both"):
        fit_ranker(x, np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="5 cells but 4"):
        fit_ranker(x, np.array([True, False, False, False]))
    good = dict(features=FEATURES, mean=np.zeros(len(FEATURES)), scale=np.ones(len(FEATURES)),
                coef=np.zeros(len(FEATURES)), intercept=0.0)
    with pytest.raises(ValueError, match="features"):
        AuditRanker(**{**good, "features": FEATURES[:-1]})
    with pytest.raises(ValueError, match="scales positive"):
        AuditRanker(**{**good, "scale": np.zeros(len(FEATURES))})


def test_bench_scoring_agrees_with_rank_flags(fitted) -> None:
    """The bench ranks cells as `rank_flags` does: same hits at k = 2 x errors."""
    from bench.audit_data import StudySet
    from bench.audit_scoring import score_set

    ranker, _ = fitted
    sim = _simulated_set(5, studies=12)
    ev = sim["evidence"]
    sset = StudySet(name="sim", labels=sim["labels"], prob=sim["prob"], cnn_prob=ev.cnn_prob,
                    embeddings=ev.embeddings, blood=ev.blood,
                    blood_map=np.zeros((len(sim["labels"]), 4, 4), dtype=np.float32),
                    blood_map_lo=np.zeros((len(sim["labels"]), 4, 4), dtype=np.float32),
                    brain=np.full(len(sim["labels"]), 1e4), study=sim["study"], index=sim["index"], seconds=0.0)
    res = score_set(sset, ranker, 0.5, seed=3, draws=1)
    table, errors = sset.noisy(0.5, 3, 0)
    ranked = rank_flags(table, sset.prob, evidence=sset.evidence, ranker=ranker)
    top = ranked.iloc[: 2 * len(errors)]
    found = set(zip(top["image_id"], top["class"], strict=True))
    hits = sum((i, c) in found for i, c in zip(errors["image_id"], errors["class"], strict=True))
    comb = res["signals"]["combined"]["pooled"]["2x"]
    assert res["n_errors"] == len(errors) > 0
    assert comb["hits"] == hits and comb["k"] == 2 * len(errors)
    per = res["signals"]["sequence only"]["recall_by_kind_at_2x"]
    assert sum(v[1] for k, v in per.items() if "(all cells)" not in k) == len(errors)


def test_shipped_ranker_matches_this_code() -> None:
    """weights/audit_ranker.json must be refitted (bench/audit_scoring.py) when FEATURES change."""
    path = Path(__file__).resolve().parents[1] / "weights" / "audit_ranker.json"
    ranker = AuditRanker.load(path)
    assert ranker.features == FEATURES
    # Fitted on the own generator's studies, plain and randomised; never the foreign ones.
    assert ranker.meta["fitted_on"] == ["own_train", "own_rand_train"]


def test_model_agreement_tells_a_lost_model_from_a_good_one() -> None:
    from hohoho_core.audit_ranker import model_agreement

    rng = np.random.default_rng(0)
    lab = (rng.random((400, 6)) < 0.2).astype(int)
    table = pd.DataFrame(lab, columns=list(CLASSES))
    table.insert(0, "image_id", [f"ID_{i}" for i in range(len(lab))])
    table.insert(1, "study_uid", "s")
    table.insert(2, "slice_index", range(len(lab)))
    good = np.clip(0.1 + 0.8 * lab + rng.normal(0, 0.1, lab.shape), 0, 1)
    blind = rng.random(lab.shape)
    inverted = 1.0 - good
    assert model_agreement(audit_cells(table, good)) > 0.9
    assert model_agreement(audit_cells(table, blind)) < 0.2
    assert model_agreement(audit_cells(table, inverted)) == 0.0
    # Every cell of a table carries the same value, in the feature matrix too.
    x = cell_features(audit_cells(table, good))
    col = x[:, FEATURES.index("model_agreement")]
    assert np.ptp(col) == 0.0 and col[0] > 0.9
    # One class present only (no positives): no evidence the model can be trusted.
    none = table.assign(**{c: 0 for c in CLASSES})
    assert model_agreement(audit_cells(none, good)) == 0.0


def test_edge_weight_ranks_run_edge_errors_higher_on_held_out_studies() -> None:
    """Weighting errors on run-edge candidates up in the fit moves those errors up the
    held-out ranking (the boundary kinds are a small share of the injected errors)."""
    train, test = _simulated_set(1), _simulated_set(2)
    parts = [_draw(train, d) for d in range(4)]
    x = np.concatenate([cell_features(c) for _, c, _ in parts])
    y = np.concatenate([yy for _, _, yy in parts])
    plain, weighted = fit_ranker(x, y), fit_ranker(x, y, boundary_weight=10.0)
    assert weighted.meta["boundary_weight"] == 10.0 and plain.meta["boundary_weight"] == 1.0
    edge_col = [FEATURES.index("is_shorter"), FEATURES.index("is_longer")]
    ranks = {"plain": [], "weighted": []}
    for d in range(10, 16):
        _, cells, yy = _draw(test, d)
        edge = (cell_features(cells)[:, edge_col].sum(axis=1) > 0) & yy
        if not edge.any():
            continue
        for name, r in (("plain", plain), ("weighted", weighted)):
            order = np.argsort(-r.score(cells), kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            ranks[name] += list(rank[edge])
    assert ranks["plain"], "no edge errors drawn"
    assert np.mean(ranks["weighted"]) < np.mean(ranks["plain"])
    with pytest.raises(ValueError, match="boundary_weight"):
        fit_ranker(x, y, boundary_weight=0.0)


def test_interleave_edges_keeps_every_mth_place_for_the_best_unlisted_edge() -> None:
    from hohoho_core.audit_ranker import edge_candidates, interleave_edges

    order = np.array([0, 1, 2, 3, 4, 5, 6, 7])  # main ranking, best first
    edges = np.array([6, 1, 7])  # edge candidates, best first (1 is high in both)
    q = interleave_edges(order, edges, 3)
    # Places 2 and 5 go to edges: 6, then 7 (1 is already listed by then).
    assert q.tolist() == [0, 1, 6, 2, 3, 7, 4, 5]
    assert sorted(q.tolist()) == list(range(8))  # every cell once
    # Candidates exhausted: the main order fills the kept places.
    assert interleave_edges(order, np.array([7]), 2).tolist() == [0, 7, 1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="every"):
        interleave_edges(order, edges, 1)
    x = np.zeros((3, len(FEATURES)))
    x[1, FEATURES.index("is_shorter")] = 1
    x[2, FEATURES.index("is_longer")] = 1
    assert edge_candidates(x).tolist() == [False, True, True]
