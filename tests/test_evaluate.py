"""The one evaluation path: predict_index alignment and score against scikit-learn."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import fbeta_score, roc_auc_score

from hohoho_core.evaluate import evaluate_index, predict_index, score
from hohoho_core.labels import CLASSES


def _data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < 0.3).astype(np.int8)
    y[:, 5] = y[:, :5].max(axis=1)
    prob = np.clip(0.6 * y + 0.5 * rng.random((n, 6)), 0, 1).astype(np.float32)
    sids = np.repeat([f"s{i}" for i in range(n // 10)], 10)
    return y, prob, sids


def test_score_matches_scikit_learn_and_drops_unlabelled_rows() -> None:
    y, prob, sids = _data()
    thr = np.array([0.3, 0.4, 0.5, 0.5, 0.6, 0.45])
    y_unk = np.vstack([y, -np.ones((3, 6), np.int8)])
    p_unk = np.vstack([prob, np.ones((3, 6), np.float32)])
    s_unk = np.concatenate([sids, ["x", "x", "x"]])
    rep = score(y_unk, p_unk, thr, s_unk, study_auc=True, tune=True)
    assert rep["n_slices"] == len(y)
    want_f2 = fbeta_score(y, prob >= thr, beta=2, average=None, zero_division=0)
    got_f2 = [rep["slice"]["per_class"][c] for c in CLASSES]
    np.testing.assert_allclose(got_f2, want_f2)
    assert rep["slice"]["macro"] == pytest.approx(want_f2.mean())
    want_auc = [roc_auc_score(y[:, k], prob[:, k]) for k in range(6)]
    np.testing.assert_allclose([rep["auc"][c] for c in CLASSES], want_auc)
    # Study level: a study is positive when any slice is, scored on per-study maxima.
    ys = y.reshape(-1, 10, 6).max(axis=1)
    ps = prob.reshape(-1, 10, 6).max(axis=1)
    want_study = fbeta_score(ys, ps >= thr, beta=2, average=None, zero_division=0)
    np.testing.assert_allclose([rep["study"]["per_class"][c] for c in CLASSES], want_study)
    # Thresholds picked on the set itself do at least as well as the given ones.
    assert rep["tuned"]["slice"]["macro"] >= rep["slice"]["macro"]
    assert set(rep["tuned"]["thresholds"]) == set(CLASSES)
    assert np.isfinite(rep["log_loss"]) and rep["log_loss"] > 0


def test_score_auc_is_none_for_a_class_without_positives() -> None:
    y, prob, _ = _data()
    y[:, 0] = 0
    rep = score(y, prob, np.full(6, 0.5))
    assert rep["auc"]["epidural"] is None
    assert rep["auc_macro"] == pytest.approx(np.mean([rep["auc"][c] for c in CLASSES[1:]]))
    assert rep["study"] is None and "tuned" not in rep


class _FakePredictor:
    """Returns per-slice probabilities looked up by image id (no model)."""

    def __init__(self, prob_by_id: dict[str, np.ndarray], lstm: bool = True) -> None:
        self.prob_by_id = prob_by_id
        self.lstm = object() if lstm else None
        self.thresholds = np.full(6, 0.5)
        self.config = SimpleNamespace(thresholds=[0.5] * 6, cnn_thresholds=[0.7] * 6)
        self.calls = 0

    def predict(self, study):
        self.calls += 1
        p = np.stack([self.prob_by_id[i] for i in study.image_ids]).astype(np.float32)
        return SimpleNamespace(image_ids=list(study.image_ids), cnn_prob=p * 0.5, prob=p,
                               embeddings=np.ones((len(p), 4), np.float32), notes=())


def test_predict_index_keeps_rows_aligned_across_series() -> None:
    studies, probs = [], {}
    for s, n in (("a", 3), ("b", 2)):
        ids = [f"{s}{k}" for k in range(n)]
        labels = np.eye(6, dtype=np.int8)[:n]
        for i, lab in zip(ids, labels, strict=True):
            probs[i] = lab * 0.9 + 0.05
        studies.append((f"{s}|1", SimpleNamespace(image_ids=ids), labels))
    fake = _FakePredictor(probs)
    out = predict_index(fake, ".", None, keep_embeddings=True, studies=iter(studies))
    assert len(out) == 5 and fake.calls == 2
    assert list(out.image_ids) == ["a0", "a1", "a2", "b0", "b1"]
    assert list(out.study_ids) == ["a|1"] * 3 + ["b|1"] * 2
    np.testing.assert_array_equal(out.labels, np.vstack([np.eye(6)[:3], np.eye(6)[:2]]))
    np.testing.assert_allclose(out.prob, out.labels * 0.9 + 0.05, atol=1e-7)
    np.testing.assert_allclose(out.cnn_prob, out.prob * 0.5)
    assert out.embeddings is not None and out.embeddings.shape == (5, 4)
    with pytest.raises(ValueError, match="no series"):
        predict_index(fake, ".", None, studies=iter([]))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory):
    from hohoho_core.rsna import build_index
    from hohoho_core.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, 3, seed=4, size=64, slices=(8, 9), positive_fraction=0.7)
    table = build_index(root, workers=1, progress=False).table
    return root, table


def test_evaluate_index_reads_the_dicom_series_and_scores_both_stages(tiny_set) -> None:
    root, table = tiny_set
    truth = table.set_index("image_id")[list(CLASSES)]
    # A perfect final stage and a CNN stage at half of it (below its 0.7 thresholds).
    probs = {i: truth.loc[i].to_numpy(np.float32) for i in truth.index}
    fake = _FakePredictor(probs)
    pred, reports = evaluate_index(fake, root, table)
    assert len(pred) == len(table)
    assert set(pred.image_ids) == set(table["image_id"])
    np.testing.assert_array_equal(pred.labels, truth.loc[pred.image_ids].to_numpy())
    assert set(reports) == {"cnn", "cnn_lstm"}
    present = truth.to_numpy().any(axis=0)
    f2 = np.array([reports["cnn_lstm"]["slice"]["per_class"][c] for c in CLASSES])
    np.testing.assert_allclose(f2[present], 1.0)
    assert reports["cnn"]["thresholds"]["any"] == pytest.approx(0.7)
    assert reports["cnn"]["slice"]["macro"] == 0.0  # 0.5 never reaches 0.7
    # CNN-only models get only the CNN report, at the final thresholds' fallback.
    _, only = evaluate_index(_FakePredictor(probs, lstm=False), root, table)
    assert set(only) == {"cnn"}


def test_predict_index_uses_load_study_order(tiny_set) -> None:
    from hohoho_core.dicom import load_study

    root, table = tiny_set
    fake = _FakePredictor({i: np.zeros(6) for i in table["image_id"]})
    pred = predict_index(fake, root, table)
    first_key = pred.study_ids[0]
    study_uid, series_uid = first_key.split("|")
    rows = table[(table["study_uid"] == study_uid) & (table["series_uid"] == series_uid)]
    study = load_study([Path(root) / p for p in rows["path"]])
    n = study.n_slices
    assert list(pred.image_ids[:n]) == list(study.image_ids)
