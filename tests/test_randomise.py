"""Domain randomisation of the phantom generator (hohoho_core/synthetic/randomise.py)."""

from dataclasses import replace

import numpy as np
import pytest

from hohoho_core.synthetic import StudyPlan, generate_dataset, make_study
from hohoho_core.synthetic.randomise import (
    NEUTRAL_VARIATION,
    blend_partial_volume,
    draw_variation,
    variation_rng,
)

SIZE = 96


def test_randomise_off_draws_nothing_new():
    plan = StudyPlan(subtypes=("subdural",), n_slices=12)
    plain = make_study(5, 2, size=SIZE, plan=plan)
    again = make_study(5, 2, size=SIZE, plan=replace(plan, randomise=False))
    assert np.array_equal(plain.hu, again.hu)
    assert np.array_equal(plain.labels, again.labels)


def test_randomised_study_is_deterministic_and_differs_from_the_plain_one():
    plan = StudyPlan(subtypes=("intraparenchymal",), n_slices=12, randomise=True)
    a = make_study(5, 3, size=SIZE, plan=plan)
    b = make_study(5, 3, size=SIZE, plan=plan)
    plain = make_study(5, 3, size=SIZE, plan=replace(plan, randomise=False))
    assert np.array_equal(a.hu, b.hu)
    assert not np.array_equal(a.hu, plain.hu)
    assert a.labels[:, 1].any()  # the planned bleed is still on a labelled slice


def test_draws_stay_in_their_documented_ranges():
    draws = [draw_variation(variation_rng(1, i)) for i in range(300)]
    scale = np.array([d.head_scale for d in draws])
    assert scale.min() >= 0.84 and scale.max() <= 1.12
    noise = np.array([d.noise_hu for d in draws])
    assert noise.min() >= 2.0 and noise.max() <= 14.0
    contrast = np.array([d.gm - d.wm for d in draws])
    assert contrast.min() >= 0 and contrast.max() <= 30
    assert all(5 <= d.area_threshold_mm2 <= 40 for d in draws)
    kinds = {d.bleed_density for d in draws}
    assert kinds == {"acute", "mixed", "subacute", "chronic", "anaemic"}
    # Rare artefacts do occur, and do not always occur.
    assert 0 < sum(d.metal is not None for d in draws) < 100
    assert 0 < sum(d.motion is not None for d in draws) < 100


def test_labelling_rule_follows_the_variations_threshold():
    plan = StudyPlan(subtypes=("subdural",), n_slices=16)
    strict = replace(NEUTRAL_VARIATION, area_threshold_mm2=40.0)
    loose = replace(NEUTRAL_VARIATION, area_threshold_mm2=5.0)
    a = make_study(9, 0, size=SIZE, plan=plan, variation=strict)
    b = make_study(9, 0, size=SIZE, plan=plan, variation=loose)
    np.testing.assert_array_equal(a.areas, b.areas)  # same bleed, only the rule differs
    assert a.labels[:, 4].sum() <= b.labels[:, 4].sum()
    np.testing.assert_array_equal(a.labels[:, 4], (a.areas[:, 4] > 40.0).astype(np.uint8))


def test_chronic_subdural_is_darker_than_acute_but_still_labelled():
    plan = StudyPlan(subtypes=("subdural",), n_slices=16)
    acute = make_study(4, 0, size=SIZE, plan=plan, variation=NEUTRAL_VARIATION)
    chronic = make_study(4, 0, size=SIZE, plan=plan,
                         variation=replace(NEUTRAL_VARIATION, bleed_density="chronic"))
    assert acute.bleeds[0].params["hu"] >= 50
    assert chronic.bleeds[0].params["hu"] <= 28
    assert chronic.labels[:, 4].any()


def test_hard_negatives_add_bright_voxels_without_labels():
    plan = StudyPlan(n_slices=16)
    calm = make_study(2, 0, size=SIZE, plan=plan, variation=NEUTRAL_VARIATION)
    bright = make_study(2, 0, size=SIZE, plan=plan, variation=replace(
        NEUTRAL_VARIATION, sinus_hu=78.0, basal_calc_hu=220.0, falx_hu=250.0))
    assert calm.labels.sum() == 0 and bright.labels.sum() == 0
    inside = (calm.hu > 0) & (calm.hu < 60)
    assert np.count_nonzero(bright.hu[inside] > 70) > np.count_nonzero(calm.hu[inside] > 70)


def test_partial_volume_blend_keeps_constants_and_mixes_neighbours():
    flat = np.full((4, 3, 3), 7.0, np.float32)
    np.testing.assert_allclose(blend_partial_volume(flat, 0.3), flat)
    step = np.zeros((3, 1, 1), np.float32)
    step[1] = 10
    out = blend_partial_volume(step, 0.25)
    np.testing.assert_allclose(out[:, 0, 0], [2.5, 5.0, 2.5])
    assert blend_partial_volume(step, 0.0) is step


@pytest.mark.slow
def test_generate_dataset_randomise_writes_a_readable_labelled_set(tmp_path):
    res = generate_dataset(tmp_path / "r", 3, 11, size=64, slices=(8, 10), randomise=True,
                           positive_fraction=1.0)
    assert (tmp_path / "r" / "stage_2_train.csv").is_file()
    assert len(res.truth) == sum(res.studies["n_slices"])
    assert res.truth["any"].sum() > 0


def test_a_fraction_randomises_that_share_and_leaves_the_rest_as_the_plain_set(tmp_path):
    import filecmp

    n = 8
    generate_dataset(tmp_path / "plain", n, 11, size=48, slices=(8, 8))
    generate_dataset(tmp_path / "all", n, 11, size=48, slices=(8, 8), randomise=True)
    generate_dataset(tmp_path / "half", n, 11, size=48, slices=(8, 8), randomise=0.5)
    names = sorted(p.name for p in (tmp_path / "half" / "stage_2_train").iterdir())

    def same(other: str) -> int:
        return sum(filecmp.cmp(tmp_path / "half" / "stage_2_train" / f,
                               tmp_path / other / "stage_2_train" / f, shallow=False)
                   for f in names)

    # every slice is the plain set's or the fully randomised set's, and both kinds occur
    as_plain, as_random = same("plain"), same("all")
    assert as_plain + as_random == len(names) == 8 * n
    assert 0 < as_plain < len(names)
    # the draw is the seed's, not the run's
    generate_dataset(tmp_path / "again", n, 11, size=48, slices=(8, 8), randomise=0.5)
    assert same("again") == len(names)
    with pytest.raises(ValueError, match="fraction"):
        generate_dataset(tmp_path / "bad", 2, 11, size=48, slices=(8, 8), randomise=1.5)
