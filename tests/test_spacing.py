"""Slice spacing outside the model's training range is said, never silently scored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hohoho_core.__main__ import main
from hohoho_core.spacing import measured_spacing, notes_line, spacing_note, trained_spacing
from tests.test_predict import make_weights


def test_trained_spacing_reads_only_a_valid_range() -> None:
    assert trained_spacing({"slice_spacing_mm": [3, 6.0]}) == (3.0, 6.0)
    assert trained_spacing({}) is None and trained_spacing({"slice_spacing_mm": None}) is None
    for bad in ([6.0, 3.0], [0, 5], [3.0], ["3", 5], [True, 5], [3.0, float("inf")], "3-6"):
        with pytest.raises(ValueError, match="data.slice_spacing_mm must be"):
            trained_spacing({"slice_spacing_mm": bad})


def test_a_weights_folder_with_a_malformed_spacing_range_is_refused(tmp_path: Path) -> None:
    import shutil

    from hohoho_core.predict import Predictor
    from hohoho_core.weights import WeightsError, shipped_weights_dir

    folder = tmp_path / "w"
    shutil.copytree(shipped_weights_dir(), folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["data"]["slice_spacing_mm"] = "3-6 mm"
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(WeightsError, match="data.slice_spacing_mm must be"):
        Predictor.from_folder(folder, precision="fp32")


def test_spacing_note_says_which_side_and_keeps_quiet_near_the_range() -> None:
    trained = (3.0, 6.0)
    for inside in (3.0, 5.0, 6.0, 2.1, 8.9):  # within x/÷ 1.5 of the range
        assert spacing_note(inside, trained) is None, inside
    thin = spacing_note(0.625, trained)
    assert thin is not None and "0.625 mm apart, closer together than the 3-6 mm" in thin
    assert "thicker series" in thin
    thick = spacing_note(10.0, trained)
    assert thick is not None and "10 mm apart, further apart than the 3-6 mm" in thick
    assert "thicker series" not in thick
    assert spacing_note(0.625, None) is None  # a folder that states no range
    for unknown in (0.0, float("nan")):
        assert spacing_note(unknown, trained) is None
    assert spacing_note(2.1, trained, tolerance=1.0) is not None


def test_shipped_weights_state_the_generator_range() -> None:
    from hohoho_core.synthetic.anatomy import SPACING_RANGE_MM

    config = json.loads(Path("weights/config.json").read_text(encoding="utf-8"))
    assert trained_spacing(config["data"]) == SPACING_RANGE_MM == (3.0, 6.0)


@pytest.fixture(scope="module")
def ranged_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_weights(tmp_path_factory.mktemp("spacing_weights"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["data"]["slice_spacing_mm"] = [3.0, 6.0]
    # one slice per input, as the shipped weights read it ("sliding" needs that)
    config["preprocess"]["mode"] = "windows"
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_predictor_notes_a_thin_series(ranged_weights: Path, tmp_path: Path) -> None:
    import dataclasses

    from hohoho_core.predict import Predictor, prediction_record
    from tests.test_predict import make_study

    pred = Predictor.from_folder(ranged_weights, precision="fp32")
    unranged = Predictor.from_folder(make_weights(tmp_path / "plain"), precision="fp32")
    study = make_study(n_slices=4)
    assert 3.0 <= study.slice_spacing <= 6.0
    thin = dataclasses.replace(study, slice_spacing=1.0)
    got = pred.predict(thin)
    assert len(got.notes) == 1 and "closer together than the 3-6 mm" in got.notes[0]
    assert prediction_record(got)["notes"] == list(got.notes)
    same = pred.predict(study)
    assert same.notes == ()
    np.testing.assert_array_equal(got.prob, same.prob)  # a note, not another computation
    assert unranged.predict(thin).notes == ()  # no range stated, no note


def test_predict_command_notes_the_thin_series_of_an_exam(
    ranged_weights: Path, tmp_path: Path, write_ct_series,
    capsys: pytest.CaptureFixture[str],
) -> None:
    thick = write_ct_series(tmp_path / "exam" / "thick", n_slices=4, spacing=5.0)
    thin = write_ct_series(tmp_path / "exam" / "thin", n_slices=8, spacing=1.0,
                           study_uid=thick.study_uid, seed=1, slice_thickness=1.0)
    out = tmp_path / "p.csv"
    base = ["predict", str(tmp_path / "exam"), "--weights", str(ranged_weights),
            "--out", str(out), "--precision", "fp32"]
    assert main(base) == 0
    err = capsys.readouterr().err
    assert "hohoho: note: 1 of 2 series: slices 1 mm apart, closer together than the 3-6 mm" in err
    rows = {r["series_uid"]: r for r in
            csv.DictReader(out.with_name("p_studies.csv").open(encoding="utf-8"))}
    assert "closer together than the 3-6 mm" in rows[thin.series_uid]["notes"]
    assert rows[thick.series_uid]["notes"] == ""
    # the JSON output carries each series' notes too
    js = tmp_path / "p.json"
    assert main([*base[:-3], str(js), "--precision", "fp32"]) == 0
    notes = {r["series_uid"]: r["notes"] for r in
             json.loads(js.read_text(encoding="utf-8"))["studies"]}
    assert notes[thick.series_uid] == [] and len(notes[thin.series_uid]) == 1
    # the thick series alone: nothing to say
    capsys.readouterr()
    assert main([*base, "--series", "thickest"]) == 0
    assert "hohoho: note" not in capsys.readouterr().err


def test_only_a_spacing_the_positions_measured_counts(tmp_path: Path, write_ct_series) -> None:
    """A single slice (the loader falls back to its SliceThickness) and a series without
    positions (sorted by InstanceNumber, spaced by a tag or a 1 mm guess) are never called
    thin; a series whose positions say 1 mm is."""
    from hohoho_core.dicom import load_study

    thin = write_ct_series(tmp_path / "thin", n_slices=4, spacing=1.0, slice_thickness=1.0)
    study = load_study(tmp_path / "thin")
    assert study.report.sort_method == "normal"
    assert measured_spacing(study) == pytest.approx(1.0)
    write_ct_series(tmp_path / "one", n_slices=1, slice_thickness=0.625)
    single = load_study(tmp_path / "one")
    assert len(single.slices) == 1 and single.slice_spacing == pytest.approx(0.625)
    assert measured_spacing(single) is None
    # positions removed: the reader sorts by InstanceNumber and guesses the spacing
    import pydicom

    for p in thin.paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        del ds.SliceThickness
        ds.save_as(p)
    unplaced = load_study(tmp_path / "thin")
    assert unplaced.report.sort_method != "normal"
    assert measured_spacing(unplaced) is None


def test_notes_line_counts_the_noted_series() -> None:
    assert notes_line([{"notes": []}, {}]) is None
    one = notes_line([{"notes": ["slices 1 mm apart"]}, {"notes": []}])
    assert one == "hohoho: note: 1 of 2 series: slices 1 mm apart"
    two = notes_line([{"notes": ["a"]}, {"notes": ["b"]}, {}])
    assert two is not None and two.startswith("hohoho: note: 2 of 3 series: a (the first;")


def test_slab_helpers_by_hand() -> None:
    from hohoho_core.spacing import average_slabs, slab_groups, slab_ids

    groups = slab_groups(10, 1.25, 5.0)  # 5 mm / 1.25 mm = 4 slices a slab
    assert groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    hu = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 2, 3), np.float32)
    slabs = average_slabs(hu, groups)
    assert slabs.shape == (3, 2, 3) and slabs[:, 0, 0].tolist() == [1.5, 5.5, 8.5]
    assert slab_ids([f"i{k}" for k in range(10)], groups) == ["i0", "i4", "i8"]
    assert slab_groups(4, 5.0, 5.0).tolist() == [0, 1, 2, 3]


def test_sliding_reformat_by_hand() -> None:
    from hohoho_core.spacing import phase_stride, sliding_reformat, sliding_weights

    # 4.5 mm box at 1.25 mm: the slice and one each side whole, the next ones 0.375 / 1.25
    w = sliding_weights(9, 1.25, 4.5)
    np.testing.assert_allclose(w[4] * 3.6, [0, 0, 0.3, 1, 1, 1, 0.3, 0, 0], atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    # at the ends the box is cut and renormalised: the first row holds 2.3 slices' worth
    np.testing.assert_allclose(w[0] * 2.3, [1, 1, 0.3, 0, 0, 0, 0, 0, 0], atol=1e-12)
    # a box no thicker than a slice is the slice itself
    np.testing.assert_allclose(sliding_weights(5, 5.0, 5.0), np.eye(5))
    hu = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((9, 2, 3), np.float32)
    out = sliding_reformat(hu, 1.25, 4.5)
    assert out.shape == hu.shape and out.dtype == np.float32
    # a linear ramp keeps its value wherever the box is whole (symmetric weights)
    np.testing.assert_allclose(out[2:7, 0, 0], hu[2:7, 0, 0], atol=1e-5)
    assert out[0, 0, 0] == pytest.approx((0 + 1 + 0.3 * 2) / 2.3, abs=1e-5)
    assert phase_stride(1.25, 4.5) == 4 and phase_stride(0.625, 4.5) == 7
    assert phase_stride(5.0, 4.5) == 1
    with pytest.raises(ValueError, match="must be > 0"):
        sliding_weights(3, 0.0, 4.5)


def test_sequence_model_over_phases_equals_each_phase_alone(ranged_weights: Path) -> None:
    from hohoho_core.predict import Predictor

    pred = Predictor.from_folder(ranged_weights, precision="fp32")
    rng = np.random.default_rng(0)
    assert pred.lstm is not None
    emb = rng.normal(size=(11, pred.lstm.in_dim)).astype(np.float32)
    logits = rng.normal(size=(11, 6)).astype(np.float32)
    whole = pred.sequence_prob(emb, logits)
    phased = pred.sequence_prob(emb, logits, phases=4)
    assert phased.shape == whole.shape == (11, 6)
    for r in range(4):
        alone = pred.sequence_prob(emb[r::4], logits[r::4])
        np.testing.assert_allclose(phased[r::4], alone, atol=1e-6)
    assert not np.allclose(phased, whole)  # context from other phases is not mixed in


def test_sliding_slabs_are_refused_for_weights_that_stack_neighbours(tmp_path: Path) -> None:
    from hohoho_core.predict import Predictor

    stacked = Predictor.from_folder(make_weights(tmp_path / "w"), precision="fp32")
    assert stacked.preprocess_config.mode == "stacked"
    stacked.thin_slabs = "blocks"  # slabs are whole slices: any input mode reads them
    with pytest.raises(ValueError, match="needs a one-slice input"):
        stacked.thin_slabs = "sliding"
    assert stacked.thin_slabs == "blocks"


def test_predictor_reads_a_thin_series_as_sliding_slabs_when_asked(ranged_weights: Path) -> None:
    import dataclasses

    from hohoho_core.predict import Predictor
    from hohoho_core.preprocess import make_input
    from hohoho_core.spacing import sliding_reformat
    from tests.test_predict import make_study

    pred = Predictor.from_folder(ranged_weights, precision="fp32")
    study = make_study(n_slices=9)
    thin = dataclasses.replace(study, slice_spacing=1.25)
    pred.thin_slabs = "sliding"
    assert pred.sliding_for(1.25) == pytest.approx(4.5)
    assert pred.sliding_for(2.5) is None and pred.sliding_for(None) is None
    got = pred.predict(thin)
    assert got.image_ids == list(study.image_ids) and got.prob.shape == (9, 6)
    assert len(got.notes) == 1 and "4 interleaved phases of 5 mm steps" in got.notes[0]
    # the CNN saw the reformat; the sequence model each phase
    x = make_input(sliding_reformat(study.hu, 1.25, 4.5), pred.preprocess_config)
    emb, logits = pred.predict_input(x)
    np.testing.assert_allclose(got.embeddings, emb, atol=1e-5)
    np.testing.assert_allclose(got.prob, pred.sequence_prob(emb, logits, phases=4), atol=1e-5)
    # saliency reads what the CNN read
    np.testing.assert_array_equal(pred.model_input(thin), x)
    pred.thin_slabs = "off"
    assert not np.allclose(pred.predict(thin).cnn_prob, got.cnn_prob)
    np.testing.assert_array_equal(pred.model_input(thin), pred.preprocess(thin))
    pred.thin_slabs = "blocks"
    blocks = pred.model_input(thin)
    np.testing.assert_array_equal(blocks[0], blocks[3])  # one slab's input for its slices
    assert not np.array_equal(blocks[3], blocks[4])


def test_predictor_reads_a_thin_series_as_slabs_when_asked(ranged_weights: Path) -> None:
    import dataclasses

    from hohoho_core.predict import Predictor
    from tests.test_predict import make_study

    pred = Predictor.from_folder(ranged_weights, precision="fp32")
    study = make_study(n_slices=8)
    thin = dataclasses.replace(study, slice_spacing=1.25)
    pred.thin_slabs = "off"
    assert pred.slabs_for(1.25, 8) is None
    pred.thin_slabs = "blocks"
    assert pred.slabs_for(1.25, 8).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pred.slabs_for(2.5, 8) is None  # within the tolerance: slice by slice
    assert pred.slabs_for(None, 8) is None
    got = pred.predict(thin)
    assert got.image_ids == list(study.image_ids) and got.prob.shape == (8, 6)
    np.testing.assert_array_equal(got.prob[:4], np.repeat(got.prob[:1], 4, axis=0))
    np.testing.assert_array_equal(got.prob[4:], np.repeat(got.prob[4:5], 4, axis=0))
    assert len(got.notes) == 1 and "read as slabs of 4 slices (about 5 mm" in got.notes[0]
    # the slabs are what the model saw: the same as predicting the averaged study
    from hohoho_core.spacing import average_slabs, slab_groups

    slabs = average_slabs(study.hu, slab_groups(8, 1.25, 4.5))
    slab_study = dataclasses.replace(study, hu=slabs,
                                     slices=study.slices[::4], slice_spacing=5.0)
    direct = pred.predict(slab_study)
    np.testing.assert_allclose(got.prob[[0, 4]], direct.prob, atol=1e-6)
    # a series inside the range is untouched by the switch
    pred.thin_slabs = "off"
    plain = pred.predict(study)
    for mode in ("blocks", "sliding"):
        pred.thin_slabs = mode
        np.testing.assert_array_equal(pred.predict(study).prob, plain.prob)
    with pytest.raises(ValueError, match="thin_slabs must be one of"):
        pred.thin_slabs = "diagonal"
    assert pred.thin_slabs == "sliding"  # a refused mode leaves the one set before


def test_predict_command_reads_thin_series_as_slabs_like_the_predictor(
    ranged_weights: Path, tmp_path: Path, write_ct_series,
) -> None:
    from hohoho_core.dicom import load_study
    from hohoho_core.predict import Predictor

    write_ct_series(tmp_path / "thin", n_slices=9, spacing=1.25, slice_thickness=1.25)
    pred = Predictor.from_folder(ranged_weights, precision="fp32")
    for mode, said in (("blocks", "read as slabs of 4 slices"),
                       ("sliding", "4.5 mm thick reformat centred on it")):
        pred.thin_slabs = mode
        want = pred.predict(load_study(tmp_path / "thin"))
        # in the main thread and in a reader process (what the model reads is made where
        # the study is read)
        for workers in ("0", "1"):
            out = tmp_path / f"p{mode}{workers}.json"
            assert main(["predict", str(tmp_path / "thin"), "--weights", str(ranged_weights),
                         "--out", str(out), "--precision", "fp32", "--thin-slabs", mode,
                         "--workers", workers]) == 0
            rec = json.loads(out.read_text(encoding="utf-8"))["studies"][0]
            assert len(rec["image_ids"]) == 9 and said in rec["notes"][0]
            assert rec["image_ids"] == want.image_ids
            np.testing.assert_allclose(np.asarray(rec["prob"]), want.prob, atol=1e-6)


def test_evaluate_says_whether_slabs_ran_and_never_retunes_on_them(
    ranged_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from hohoho_core.synthetic import generate_dataset

    data = tmp_path / "thin"
    generate_dataset(data, 2, seed=3, size=64, slices=(8, 8), slice_spacing=1.25)
    out = tmp_path / "r.json"
    base = ["evaluate", "--data", str(data), "--weights", str(ranged_weights),
            "--out", str(out)]
    assert main([*base, "--thin-slabs", "blocks"]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["thin_slabs"] == "blocks" and report["slices"] > 16
    # each thin series is noted, once for the run on stderr and counted in the report
    assert report["noted_series"] == 2
    err = capsys.readouterr().err
    assert "hohoho: note: 2 of 2 series: slices 1.25 mm apart" in err
    assert "read as slabs of 4 slices" in err  # the note of the reading that ran
    assert main([*base[:-1], str(tmp_path / "r2.json")]) == 0
    from hohoho_core.predict import THIN_SLABS

    assert json.loads((tmp_path / "r2.json").read_text())["thin_slabs"] == THIN_SLABS
    capsys.readouterr()
    # retuned on outputs of another reading than the folder's own: refused
    for mode in ("blocks", "sliding"):
        assert main([*base[:-2], "--thin-slabs", mode, "--retune", str(tmp_path / "new")]) == 2
        assert f"--retune with --thin-slabs {mode}" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()
    # the folder's own reading, named: retuned as without the flag
    assert main([*base[:-2], "--thin-slabs", THIN_SLABS, "--retune", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "config.json").is_file()
