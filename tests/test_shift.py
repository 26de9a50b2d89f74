"""Shifted validation views and thresholds picked over them (hohoho_core.shift)."""

from __future__ import annotations

import numpy as np
import pytest

from hohoho_core.shift import (
    PERTURBATIONS,
    View,
    leave_one_view_out,
    macro_at,
    perturb_hu,
    pick_thresholds,
)


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    hu = np.full((3, 64, 64), 30.0, np.float32)
    hu[:, 20:30, 20:30] = 70.0  # a bleed
    hu[:, :4, :] = 1000.0  # bone
    return hu + rng.normal(0, 2, hu.shape).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_each_perturbation_changes_the_volume_and_repeats_with_its_seed(kind: str) -> None:
    hu = _volume()
    a, b, c = perturb_hu(hu, kind, 1), perturb_hu(hu, kind, 1), perturb_hu(hu, kind, 2)
    assert a.shape == hu.shape and a.dtype == np.float32
    assert np.abs(a - hu).mean() > 0.5
    np.testing.assert_array_equal(a, b)
    if kind not in ("calibration", "lowres"):  # the random ones depend on the seed
        assert not np.array_equal(a, c)
    # Slices are perturbed in-plane only: no slice borrows from its neighbour.
    one = perturb_hu(hu[:1], kind, 1)
    if kind in ("calibration", "lowres"):
        np.testing.assert_allclose(one[0], a[0], atol=1e-4)


def test_calibration_moves_tissue_as_documented() -> None:
    out = perturb_hu(np.array([[[30.0, 70.0]]], np.float32), "calibration", 0)
    np.testing.assert_allclose(out[0, 0], [36.0, 70.0], atol=1e-4)


def test_lowres_averages_away_a_one_pixel_line() -> None:
    hu = np.zeros((1, 32, 32), np.float32)
    hu[0, :, 15] = 80.0
    assert perturb_hu(hu, "lowres", 0)[0, :, 15].max() < 70.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb_hu(_volume(), "gamma", 0)
    with pytest.raises(ValueError, match=r"\[S, H, W\]"):
        perturb_hu(np.zeros((4, 4), np.float32), "soft", 0)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        pick_thresholds([View("a", np.zeros((2, 1)), np.zeros((2, 1)))], "median")
    with pytest.raises(ValueError, match="no views"):
        pick_thresholds([], "pooled")


def _view(name: str, pos: list[float], neg: list[float]) -> View:
    prob = np.array(pos + neg, dtype=np.float64)[:, None]
    labels = np.array([1] * len(pos) + [0] * len(neg))[:, None]
    return View(name, labels, prob)


# Two sources: on "home" positives score high; on "shifted" the same model scores them lower.
HOME = _view("home", [0.9, 0.85, 0.8, 0.75], [0.5, 0.3, 0.2, 0.1, 0.05, 0.02])
SHIFTED = _view("shifted", [0.45, 0.4, 0.35, 0.3], [0.2, 0.1, 0.05, 0.02, 0.01, 0.01])


@pytest.mark.parametrize("rule", ["pooled", "mean", "worst"])
def test_rules_over_both_views_keep_the_shifted_positives(rule: str) -> None:
    thr = pick_thresholds([HOME, SHIFTED], rule)
    # Picked on "home" alone, the cut sits above every shifted positive...
    home_only = pick_thresholds([HOME], "pooled")
    assert home_only[0] > 0.45
    # ...over both views, it keeps most of them, and "home" loses little.
    assert thr[0] <= 0.35
    scores = macro_at({"home": HOME, "shifted": SHIFTED}, thr)
    assert scores["shifted"] >= 0.9 and scores["home"] >= 0.8


def test_leave_one_view_out_scores_the_held_out_view_only() -> None:
    res = leave_one_view_out([HOME, SHIFTED], ["pooled"])
    # The threshold from "home" misses every shifted positive: F2 0 there.
    assert res["pooled"]["shifted"] == 0.0
    # The one from "shifted" (0.25 < every home positive) finds them all: F2 > 0.8.
    assert res["pooled"]["home"] > 0.8


def test_recipe_decides_on_views_only_caches_them_and_writes_a_folder(tmp_path) -> None:  # noqa: ANN001
    """train.shift_thresholds end to end on a tiny model: the decision comes from the
    views, the test folder is scored afterwards, views are cached per weights, and the
    written folder carries the decided thresholds."""
    from hohoho_core.synthetic import generate_dataset
    from hohoho_core.weights import load_weights
    from tests.test_predict import make_weights
    from train import shift_thresholds as st

    weights = make_weights(tmp_path / "w")
    val, test = tmp_path / "val", tmp_path / "test"
    generate_dataset(val, n_studies=2, seed=11, size=64, slices=(8, 8), positive_fraction=1.0)
    generate_dataset(test, n_studies=1, seed=12, size=64, slices=(8, 8), positive_fraction=1.0)
    argv = ["--weights", str(weights), "--val", str(val), "--perturb", "noisy", "lowres",
            "--test", f"held={test}", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "rep.json"), "--write", str(tmp_path / "new"),
            "--threads", "1"]
    rep = st.main(st.get_args_parser().parse_args(argv))
    assert rep["views"] == ["val", "val_noisy", "val_lowres"]
    for stage in ("cnn_lstm", "cnn"):
        r = rep["stages"][stage]
        assert set(r["held_out"]) == {"val", "pooled", "mean", "worst"}
        assert set(r["held_out"]["pooled"]) == {"val", "val_noisy", "val_lowres"}
        assert r["chosen"] in r["held_out"]
        assert set(r["tests"]["as shipped"]) == {"held"}
    cached = sorted(p.name for p in (tmp_path / "cache" / rep["weights_key"]).iterdir())
    assert cached == ["test_held.npz", "val.npz", "val_lowres.npz", "val_noisy.npz"]
    chosen = rep["stages"]["cnn_lstm"]["chosen"]
    new = load_weights(tmp_path / "new").config
    # Keeping the current rule keeps the folder's own thresholds; a new rule writes its own.
    want = (load_weights(weights).config.thresholds if chosen == "val"
            else rep["stages"]["cnn_lstm"]["thresholds"][chosen])
    np.testing.assert_allclose(new.thresholds, want)
    assert new.data["retuned"]["how"] == "train.shift_thresholds"
    assert (tmp_path / "rep.md").read_text().count("Decision:") == 2
    # A second run reuses the cached views (same figures); a view name that now points at
    # another folder is scored again, not read from the cache.
    rep2 = st.main(st.get_args_parser().parse_args(argv[:-4] + ["--threads", "1"]))
    assert rep2["stages"]["cnn_lstm"]["held_out"] == rep["stages"]["cnn_lstm"]["held_out"]
    moved = [a if a != f"held={test}" else f"held={val}" for a in argv[:-4]]
    rep3 = st.main(st.get_args_parser().parse_args(moved + ["--threads", "1"]))
    assert rep3["stages"]["cnn_lstm"]["tests"]["as shipped"]["held"] == pytest.approx(
        rep["stages"]["cnn_lstm"]["shipped_on_views"]["val"])
    with pytest.raises(SystemExit, match="share a name"):
        st.main(st.get_args_parser().parse_args(argv[:-4] + ["--view", f"noisy={test}"]))


@pytest.mark.parametrize("rule", ["mean", "worst"])
def test_a_view_without_positives_does_not_decide_the_cut(rule: str) -> None:
    # "empty" has no positive of the class: its F2 is 0 at every cut and must not drag the
    # cut to the top of the grid; a class with no positives anywhere gets 0.5.
    empty = _view("empty", [], [0.6, 0.3, 0.1, 0.05])
    thr = pick_thresholds([HOME, SHIFTED, empty], rule)
    assert thr[0] == pytest.approx(pick_thresholds([HOME, SHIFTED], rule)[0])
    assert pick_thresholds([empty], rule)[0] == 0.5


def test_scores_at_every_cut_equal_scoring_each_cut() -> None:
    """The mean/worst rules score every cut from one sort per class
    (`metrics.fbeta_at_cuts`): the same F-beta as thresholding at each cut, ties and the
    grid's own values included; a non-finite probability is refused."""
    from hohoho_core.metrics import fbeta_at_cuts
    from hohoho_core.shift import _f, _grid

    rng = np.random.default_rng(3)
    labels = (rng.random((300, 6)) < 0.2).astype(int)
    labels[:, 5] = 0  # a class with no positives
    prob = np.round(rng.random((300, 6)), 2)  # many ties
    view = View("v", labels, prob)
    grid = np.concatenate([_grid([view]), [0.0, 1.0, 1.5]])
    fast = fbeta_at_cuts(labels, prob, grid, 2.0)
    for g, cut in enumerate(grid):
        np.testing.assert_allclose(fast[g], _f(view, np.full(6, cut), 2.0), rtol=0, atol=1e-12)
    prob[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fbeta_at_cuts(labels, prob, grid)


def _calibrated_draw(n: int, seed: int) -> View:
    # Scores that mean what they say: each slice is positive with its own probability.
    rng = np.random.default_rng(seed)
    p = rng.beta(0.3, 3.0, size=(n, 1))
    return View(f"draw{seed}", (rng.random((n, 1)) < p).astype(int), p)


def test_calibrated_rule_cuts_at_the_best_f_over_one_plus_beta_squared() -> None:
    from hohoho_core.metrics import fbeta_per_class, search_thresholds

    views = [HOME, SHIFTED]
    y = np.concatenate([v.labels for v in views])
    p = np.concatenate([v.prob for v in views])
    best = fbeta_per_class(y, p >= search_thresholds(y, p)[None, :], 2.0)[0]
    assert pick_thresholds(views, "calibrated")[0] == pytest.approx(best / 5.0)
    assert pick_thresholds(views, "calibrated", beta=1.0)[0] == pytest.approx(
        fbeta_per_class(y, p >= search_thresholds(y, p, 1.0)[None, :], 1.0)[0] / 2.0)
    empty = _view("empty", [], [0.6, 0.3])
    assert pick_thresholds([empty], "calibrated")[0] == 0.5


def test_calibrated_rule_is_near_optimal_on_a_fresh_draw_of_calibrated_scores() -> None:
    """The rule's point: on calibrated scores its cut, from one sample, scores on another
    sample of the same source within a few thousandths of that sample's own best cut."""
    from hohoho_core.metrics import search_thresholds

    a, b = _calibrated_draw(100_000, 1), _calibrated_draw(100_000, 2)
    cut = pick_thresholds([a], "calibrated")
    oracle = search_thresholds(b.labels, b.prob)
    got, best = macro_at({"b": b}, cut)["b"], macro_at({"b": b}, oracle)["b"]
    assert best - 0.003 <= got <= best
    assert abs(cut[0] - oracle[0]) < 0.02
    # Half the best F (the F1 cut) is far off for F2: the rule's beta matters.
    assert macro_at({"b": b}, cut * 2.5)["b"] < best - 0.05


def test_decide_on_fresh_studies_needs_the_gain_and_bounds_the_loss() -> None:
    from train.shift_thresholds import AS_SHIPPED, CURRENT, decide_on_fresh

    # Two fresh sets: "a" is cut well anywhere in 0.25-0.7, "b" at 0.25 (its positives
    # score lower); a cut at 0.01 takes every negative of "a".
    a = _view("a", [0.9, 0.8, 0.7], [0.2, 0.1, 0.05, 0.02, 0.015, 0.012])
    b = _view("b", [0.6, 0.3, 0.28], [0.2, 0.1, 0.05])
    own = np.array([0.5])
    thr = {"low": np.array([0.25]), "lower": np.array([0.01]), "same": np.array([0.5])}
    rep = decide_on_fresh({"a": a, "b": b}, thr, own, ["low", "lower", "same"], 0.005, 0.01)
    assert rep["scores"][AS_SHIPPED]["b"] < rep["scores"]["low"]["b"]
    assert rep["chosen"] == "low"
    # "same" gains nothing; "lower" gains on b but loses more than 0.01 on a: neither may win.
    rep = decide_on_fresh({"a": a, "b": b}, thr, own, ["lower", "same"], 0.005, 0.01)
    assert rep["mean"]["same"] == pytest.approx(rep["mean"][AS_SHIPPED])
    assert rep["mean"]["lower"] > rep["mean"][AS_SHIPPED] + 0.005
    assert rep["largest_loss"]["lower"] > 0.01 and rep["largest_loss"]["same"] == 0.0
    assert rep["chosen"] == CURRENT


def test_recipe_decides_on_fresh_studies_when_given(tmp_path) -> None:  # noqa: ANN001
    """--decide-on: the decision is made on folders no view holds (scored and cached as
    ``fresh_*``), the held-out-view decision is kept in the report, and --write follows
    the fresh decision."""
    from hohoho_core.synthetic import generate_dataset
    from hohoho_core.weights import load_weights
    from tests.test_predict import make_weights
    from train import shift_thresholds as st

    weights = make_weights(tmp_path / "w")
    val, fresh = tmp_path / "val", tmp_path / "fresh"
    generate_dataset(val, n_studies=2, seed=11, size=64, slices=(8, 8), positive_fraction=1.0)
    generate_dataset(fresh, n_studies=2, seed=13, size=64, slices=(8, 8), positive_fraction=1.0)
    argv = ["--weights", str(weights), "--val", str(val), "--perturb", "noisy",
            "--decide-on", f"new={fresh}", "--rules", "pooled", "calibrated",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "rep.json"),
            "--write", str(tmp_path / "new"), "--threads", "1"]
    rep = st.main(st.get_args_parser().parse_args(argv))
    assert rep["decide_on"] == ["fresh_new"]
    cached = sorted(p.name for p in (tmp_path / "cache" / rep["weights_key"]).iterdir())
    assert cached == ["fresh_new.npz", "val.npz", "val_noisy.npz"]
    for stage in ("cnn_lstm", "cnn"):
        r = rep["stages"][stage]
        assert set(r["fresh"]["scores"]) == {"pooled", "calibrated", st.AS_SHIPPED}
        assert r["chosen"] == r["fresh"]["chosen"]
        assert r["held_out_chosen"] in ("val", "pooled", "calibrated")
    chosen = rep["stages"]["cnn_lstm"]["chosen"]
    want = (load_weights(weights).config.thresholds if chosen == "val"
            else rep["stages"]["cnn_lstm"]["thresholds"][chosen])
    new = load_weights(tmp_path / "new").config
    np.testing.assert_allclose(new.thresholds, want)
    assert new.data["retuned"]["decided_on"] == ["fresh_new"]
    md = (tmp_path / "rep.md").read_text()
    assert "Decided on studies in no view" in md and md.count("Decision by views alone") == 2
    # A "fresh" folder holding a view's studies would decide in-sample: refused.
    same = [a if a != f"new={fresh}" else f"new={val}" for a in argv[:-4]]
    with pytest.raises(SystemExit, match="share studies with the views"):
        st.main(st.get_args_parser().parse_args(same + ["--threads", "1"]))
