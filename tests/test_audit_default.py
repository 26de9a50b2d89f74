"""The learned ranking is the default: rank_flags, the CLI ``audit`` command and the page."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hohoho_core.audit import SliceEvidence, rank_flags, shipped_ranker
from hohoho_core.labels import ANY_INDEX, CLASSES

SDH = CLASSES.index("subdural")


def _two_studies() -> tuple[pd.DataFrame, np.ndarray, SliceEvidence]:
    """Study "a": subdural labelled on slices 4..8 while the bleed covers 4..7 (the run was
    extended by one slice); the blood, the embeddings and the neighbours' probabilities
    follow the bleed, the model on the extra slice itself only hesitates. Study "b": no
    bleed, and one generic cell where the model mildly disagrees (0.35 on a 0 label)."""
    n = 14
    lab = np.zeros((2 * n, 6), dtype=int)
    lab[4:9, SDH] = 1
    lab[:, ANY_INDEX] = lab[:, :ANY_INDEX].max(axis=1)
    true = np.zeros(2 * n, dtype=bool)
    true[4:8] = True
    prob = np.full((2 * n, 6), 0.03)
    prob[true, SDH] = prob[true, ANY_INDEX] = 0.85
    prob[8, SDH] = prob[8, ANY_INDEX] = 0.7  # the model leans to the (wrong) label
    prob[n + 6, CLASSES.index("intraparenchymal")] = 0.35
    rng = np.random.default_rng(0)
    emb = rng.normal(size=16) + 0.3 * rng.normal(size=(2 * n, 16))
    emb[true] += 2.0 * np.eye(16)[0]
    maps = np.zeros((2 * n, 8, 8), dtype=np.float32)
    maps[true, 2:4, 5:7] = 60.0
    lo = maps * 1.3
    blood = maps.sum(axis=(1, 2)).astype(float)
    table = pd.DataFrame(lab, columns=list(CLASSES))
    table.insert(0, "image_id", [f"ID_{i}" for i in range(2 * n)])
    table.insert(1, "study_uid", ["a"] * n + ["b"] * n)
    table.insert(2, "slice_index", list(range(n)) * 2)
    ev = SliceEvidence(cnn_prob=prob.copy(), embeddings=emb, blood=blood, blood_map=maps,
                       blood_map_lo=lo, brain=np.full(2 * n, 12000.0))
    return table, prob, ev


def test_default_ranking_is_learned_and_puts_the_boundary_error_above_a_generic_cell() -> None:
    table, prob, ev = _two_studies()
    out = rank_flags(table, prob, evidence=ev)  # no ranker argument: the shipped one
    assert out["learned_score"].notna().all()
    np.testing.assert_allclose(out["score"], out["learned_score"])
    pos = {(i, c): r for i, c, r in zip(out["image_id"], out["class"], out["rank"], strict=True)}
    extended = pos[("ID_8", "subdural")]
    generic = pos[("ID_20", "intraparenchymal")]
    assert extended < generic
    assert out.loc[out["rank"] == extended, "kind"].item() == "run_shorter"
    # The "any" cell of the extended slice ranks with it (carry_any).
    assert abs(pos[("ID_8", "any")] - extended) <= 1
    # The model alone ranks the generic disagreement first (0.35 against 0.30): the
    # boundary evidence is what lifts the extended run's edge.
    alone = rank_flags(table, prob, evidence=ev, signal_only="model")
    apos = {(i, c): r for i, c, r in zip(alone["image_id"], alone["class"], alone["rank"],
                                         strict=True)}
    assert apos[("ID_20", "intraparenchymal")] < apos[("ID_8", "subdural")]
    # ranker=None: the hand-weighted score, no learned column.
    hand = rank_flags(table, prob, evidence=ev, ranker=None)
    assert hand["learned_score"].isna().all()
    np.testing.assert_allclose(hand["score"], hand["combined_score"])


def test_shipped_ranker_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no learned audit ranker"):
        shipped_ranker(tmp_path)
    (tmp_path / "audit_ranker.json").write_text("{not json")
    with pytest.raises(ValueError, match="audit_ranker.json"):
        shipped_ranker(tmp_path)
    table, prob, _ = _two_studies()
    with pytest.raises(ValueError, match="ranker must be"):
        rank_flags(table, prob, ranker="latest")  # type: ignore[arg-type]


def test_cli_audit_writes_the_learned_score_and_reads_the_images(tmp_path: Path) -> None:
    from hohoho_core.__main__ import main
    from hohoho_core.synthetic import generate_dataset

    data = tmp_path / "rsna"
    generate_dataset(data, n_studies=6, seed=5, size=64, label_noise=1.0, slices=(12, 16))
    truth = pd.read_csv(data / "truth.csv")
    rng = np.random.default_rng(0)
    clean = truth[list(CLASSES)].to_numpy(dtype=float)
    prob = np.clip(0.08 + 0.84 * clean + rng.normal(0, 0.08, clean.shape), 0.001, 0.999)
    oof = tmp_path / "oof.csv"
    pd.DataFrame({"ID": [f"{i}_{c}" for i in truth["image_id"] for c in CLASSES],
                  "Label": prob.reshape(-1)}).to_csv(oof, index=False)

    def run(*extra: str) -> list[dict[str, str]]:
        out = tmp_path / f"flags{len(extra)}.csv"
        assert main(["audit", "--data", str(data), "--probs", str(oof), "--out", str(out),
                     *extra]) == 0
        return list(csv.DictReader(out.open(encoding="utf-8")))

    rows = run()
    assert len(rows) == 6 * len(truth)
    learned = np.array([float(r["learned_score"]) for r in rows])
    assert np.isfinite(learned).all() and (np.diff(learned) <= 1e-12).all()  # the ranking
    assert {"run_shorter", "run_longer"} & {r["kind"] for r in rows}
    # Without images and with the hand-weighted score: no learned column values.
    hand = run("--ranker", "none", "--no-images")
    assert all(r["learned_score"] == "" for r in hand)
    assert main(["audit", "--data", str(data), "--probs", str(oof), "--out",
                 str(tmp_path / "x.csv"), "--ranker", str(tmp_path / "absent.json")]) == 2


def test_a_weights_folder_without_a_ranker_uses_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hohoho_core.weights import shipped_weights_dir

    monkeypatch.setenv("HOHOHO_WEIGHTS", str(tmp_path))  # other weights, no ranker file
    assert shipped_ranker() is shipped_ranker(shipped_weights_dir())  # one cached load
