"""End-to-end runs of the training scripts on a tiny synthetic set (CPU, 64 px, 1 epoch)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    """Import a script of the ``train`` package (``common``, ``train_cnn``, ...)."""
    return importlib.import_module(f"train.{name}")


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """The scripts set torch's process-wide thread count; give it back to later tests."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """The whole demo recipe in its --quick form: data, cache, CNN, embeddings, LSTM, card."""
    root = tmp_path_factory.mktemp("demo")
    mdw = script("make_demo_weights")
    args = mdw.get_args_parser().parse_args(
        ["--quick", "--out", str(root / "weights"), "--data-dir", str(root / "data"),
         "--work-dir", str(root / "runs"), "--no-progress", "--threads", "1", "--workers", "1"]
    )
    info = mdw.main(args)
    return {"root": root, "info": info, "work": root / "runs", "weights": root / "weights",
            "cache": root / "runs" / "cache"}


def _cnn_args(demo: dict, out: Path, *extra: str) -> list[str]:
    return ["--cache-dir", str(demo["cache"]), "--splits", str(demo["work"] / "splits.json"),
            "--size", "64", "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "2",
            "--device", "cpu",
            "--threads", "1", "--output-dir", str(out), "--no-progress", *extra]


def test_quick_recipe_writes_a_loadable_weights_folder(demo) -> None:
    from hohoho_core.dicom import load_studies
    from hohoho_core.labels import CLASSES
    from hohoho_core.metrics import search_thresholds
    from hohoho_core.predict import Predictor
    from hohoho_core.weights import load_weights

    cnn, lstm, cfg = load_weights(demo["weights"])
    assert lstm is not None and lstm.use_logits
    assert cfg.arch == "resnet18" and cfg.preprocess.size == 64
    assert cfg.preprocess.mode == "stacked"
    assert cfg.training["cnn"]["loss"] == "asl" and cfg.training["cnn"]["init"] == "random"
    # thresholds were tuned on the validation split: recompute them from its logits
    from hohoho_core.datasets import load_embeddings

    val = load_embeddings(demo["work"] / "emb" / "emb_val.npz")
    prob = 1 / (1 + np.exp(-val.logits.astype(np.float64)))
    np.testing.assert_allclose(cfg.cnn_thresholds, search_thresholds(val.labels, prob),
                               atol=1e-6)
    card = (demo["weights"] / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card
    # stage 1 ran here, on the CPU: the card says so and names no other machine
    assert "- Compute: 1 CPU thread(s)" in card and "--cnn-run" not in card
    macro = demo["info"]["shipped_test"]["cnn_lstm"]["slice"]["macro"]
    assert f"**{macro:.3f}**" in card and "seed" in card
    assert "Against the project's target" in card
    # the recipe ends on studies from the foreign generator, scored with the same thresholds
    foreign = demo["info"]["foreign"]
    assert foreign["data"]["generator"] == "bench.foreign_phantom"
    assert foreign["data"]["studies"] == 2
    shipped_thr = Predictor.from_folder(demo["weights"]).thresholds
    used = foreign["metrics"]["cnn_lstm"]["thresholds"]
    np.testing.assert_allclose([used[c] for c in CLASSES], shipped_thr, atol=1e-6)
    assert "On a generator it never saw" in card
    assert f"**{foreign['metrics']['cnn_lstm']['slice']['macro']:.3f}**" in card
    # the Predictor runs the folder on a study read from DICOM
    study = load_studies(demo["root"] / "data" / "test" / "stage_2_train")[0]
    pred = Predictor.from_folder(demo["weights"]).predict(study)
    assert pred.prob.shape == (study.n_slices, 6) and pred.lstm_prob is not None
    assert np.isfinite(pred.prob).all()


def test_splits_never_share_a_study(demo) -> None:
    from hohoho_core.cache import StudyCache

    splits = json.loads((demo["work"] / "splits.json").read_text())
    keys = [k for s in ("train", "val", "test") for k in splits[s]]
    assert len(keys) == len(set(keys)) == 8
    assert sorted(keys) == StudyCache(demo["cache"] / "studies").keys()
    cnn_splits = json.loads((demo["work"] / "cnn" / "splits.json").read_text())
    assert cnn_splits == splits
    emb_test = np.load(demo["work"] / "emb" / "emb_test.npz")["study"]
    assert set(emb_test.tolist()) == set(splits["test"])


def test_training_reads_no_dicom_and_resumes(demo, tmp_path, monkeypatch) -> None:
    import pydicom

    import hohoho_core.dicom

    def no_dicom(*a, **k):
        raise AssertionError("DICOM read during training")

    monkeypatch.setattr(pydicom, "dcmread", no_dicom)
    monkeypatch.setattr(hohoho_core.dicom, "load_study", no_dicom)
    tc = script("train_cnn")
    out = tmp_path / "cnn"
    first = _cnn_args(demo, out, "--optimizer", "sgd")
    first[first.index("--epochs") + 1] = "2"
    tc.main(tc.get_args_parser().parse_args(first))
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["state"]["epoch"] == 1 and state["state"]["args"]["optimizer"] == "sgd"
    # Simulate a run stopped after epoch 0: its checkpoint says epoch 0, its log one row.
    state["state"]["epoch"] = 0
    (out / "checkpoint.json").write_text(json.dumps(state))
    rows = (out / "log.csv").read_text().strip().splitlines()
    (out / "log.csv").write_text("\n".join(rows[:2]) + "\n")
    # Resume with nothing but --resume: --optimizer sgd and --epochs 2 come from the run.
    resume = _cnn_args(demo, out, "--resume", str(out))
    at = resume.index("--epochs")
    resume = resume[:at] + resume[at + 2 :]
    tc.main(tc.get_args_parser().parse_args(resume))
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    assert json.loads((out / "checkpoint.json").read_text())["state"]["epoch"] == 1
    # A different value for a setting of the run is refused, naming it.
    with pytest.raises(SystemExit, match="batch-size 8"):
        tc.main(tc.get_args_parser().parse_args(
            _cnn_args(demo, out, "--resume", str(out), "--batch-size", "8")))


def test_fine_tuning_starts_from_the_given_cnn(demo, tmp_path) -> None:
    """--init-from: every layer starts from a stage-1 CNN (the head too); with a learning
    rate of almost nothing the trained weights are still that CNN's."""
    from safetensors.torch import load_file

    tc = script("train_cnn")
    start = demo["work"] / "cnn" / "best_cnn.safetensors"
    out = tmp_path / "ft"
    tc.main(tc.get_args_parser().parse_args(
        _cnn_args(demo, out, "--init-from", str(start), "--lr", "1e-12")))
    before, after = load_file(str(start)), load_file(str(out / "best_cnn.safetensors"))
    learned = [k for k in before if k.endswith((".weight", ".bias"))]
    assert "model.head.weight" in learned
    for key in learned:
        np.testing.assert_allclose(after[key].numpy(), before[key].numpy(), atol=1e-6)
    assert json.loads((out / "args.json").read_text())["init_from"] == str(start)
    # a random start does not land there: the check above could fail
    tc.main(tc.get_args_parser().parse_args(_cnn_args(demo, tmp_path / "rnd", "--lr", "1e-12")))
    rnd = load_file(str(tmp_path / "rnd" / "best_cnn.safetensors"))
    assert not np.allclose(rnd["model.head.weight"].numpy(), before["model.head.weight"].numpy())
    with pytest.raises(SystemExit, match="give one starting point"):
        tc.main(tc.get_args_parser().parse_args(
            _cnn_args(demo, tmp_path / "x", "--init-from", str(start), "--init", "imagenet")))
    with pytest.raises(SystemExit, match="no such file"):
        tc.main(tc.get_args_parser().parse_args(
            _cnn_args(demo, tmp_path / "y", "--init-from", str(tmp_path / "none.safetensors"))))
    # the recipe passes it on, after checking it is there and reads the recipe's input
    mdw = script("make_demo_weights")
    args = mdw.get_args_parser().parse_args(["--quick", "--init-cnn", str(start)])
    cmd = mdw.stage_args(mdw.resolve(args), tmp_path, tmp_path / "c", tmp_path / "s.json")
    assert cmd["train_cnn"][cmd["train_cnn"].index("--init-from") + 1] == str(start)
    with pytest.raises(SystemExit, match="no such file"):
        mdw.resolve(mdw.get_args_parser().parse_args(
            ["--quick", "--init-cnn", str(tmp_path / "none.safetensors")]))
    with pytest.raises(SystemExit, match="was trained with --mode stacked"):
        mdw.resolve(mdw.get_args_parser().parse_args(
            ["--quick", "--init-cnn", str(start), "--mode", "windows"]))
    # another size is allowed (the tensors do not depend on it) and named on the card
    trained = json.loads((start.parent / "args.json").read_text())["size"]
    assert mdw.init_cnn_size(start) == trained
    other = mdw.resolve(mdw.get_args_parser().parse_args(
        ["--init-cnn", str(start), "--mode", "stacked", "--size", str(trained + 32),
         "--epochs", "1", "--threads", "1", "--cpu-bf16", "off"]))
    assert other.size == trained + 32 and mdw.init_cnn_size(None) is None


def test_run_folder_is_never_mixed(demo, tmp_path) -> None:
    tc = script("train_cnn")
    out = tmp_path / "cnn"
    tc.main(tc.get_args_parser().parse_args(_cnn_args(demo, out)))
    log_before = (out / "log.csv").read_text()
    with pytest.raises(SystemExit, match="already holds a run"):
        tc.main(tc.get_args_parser().parse_args(_cnn_args(demo, out)))
    assert (out / "log.csv").read_text() == log_before  # nothing appended or replaced
    # --overwrite starts again: one epoch 0 row, not two
    tc.main(tc.get_args_parser().parse_args(_cnn_args(demo, out, "--overwrite")))
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0"]
    # Paths are saved absolute, so the run folder works from any working directory.
    saved = json.loads((out / "args.json").read_text())
    assert Path(saved["cache_dir"]).is_absolute() and Path(saved["output_dir"]).is_absolute()


def test_recipe_finishes_from_a_stage1_run_made_elsewhere(demo, tmp_path) -> None:
    """--cnn-run: the later stages adopt a finished stage-1 folder (as --stop-after cnn
    leaves it on a GPU machine) instead of training, and ship exactly its CNN."""
    import shutil

    from safetensors.torch import load_file

    mdw = script("make_demo_weights")
    elsewhere = tmp_path / "gpu_cnn"
    shutil.copytree(demo["work"] / "cnn", elsewhere)
    (elsewhere / "machine.json").write_text(json.dumps(
        {"machine": "x86_64 Linux, 16 CPU cores, NVIDIA H200", "device": "cuda",
         "seconds": 123.0}))
    base = ["--quick", "--data-dir", str(demo["root"] / "data"), "--no-progress",
            "--threads", "1", "--workers", "1", "--no-foreign-check"]
    info = mdw.main(mdw.get_args_parser().parse_args(
        [*base, "--out", str(tmp_path / "w"), "--work-dir", str(tmp_path / "runs"),
         "--cnn-run", str(elsewhere)]))
    assert info["times"]["stage 1 CNN"] == 123.0
    assert info["epochs"] == 1 and info["stage1_machine"]["device"] == "cuda"
    card = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert "stage 1 on a GPU (x86_64 Linux, 16 CPU cores, NVIDIA H200" in card
    assert "the later stages here on 1 CPU thread(s)" in card and "`--cnn-run`)" in card
    # the shipped CNN is the adopted one (float16 as shipped)
    best = load_file(str(elsewhere / "best_cnn.safetensors"))
    shipped = load_file(str(tmp_path / "w" / "model.safetensors"))
    key = next(k for k in best if k.endswith("conv1.weight"))
    name = key.removeprefix("model.")
    got = next(v for k, v in shipped.items() if k.endswith(name))
    np.testing.assert_allclose(got.float().numpy(), best[key].half().float().numpy())
    # the adopted folder points at this machine's cache and gains its test split
    args = json.loads((tmp_path / "runs" / "cnn" / "args.json").read_text())
    assert args["cache_dir"] == str(tmp_path / "runs" / "cache")
    splits = json.loads((tmp_path / "runs" / "cnn" / "splits.json").read_text())
    assert splits == json.loads((demo["work"] / "splits.json").read_text())


def test_stage1_run_of_other_studies_is_refused(demo, tmp_path) -> None:
    mdw = script("make_demo_weights")
    args = mdw.get_args_parser().parse_args(
        ["--quick", "--cnn-run", str(demo["work"] / "cnn"), "--stop-after", "cnn"])
    assert mdw.made_splits(args) == ("train", "val")
    with pytest.raises(SystemExit, match="--size 64, this recipe asks for --size 96"):
        mdw.reused_cnn_args(mdw.get_args_parser().parse_args(
            ["--cnn-run", str(demo["work"] / "cnn"), "--size", "96"]))
    splits = json.loads((demo["work"] / "splits.json").read_text())
    splits["val"] = splits["val"][1:]
    with pytest.raises(SystemExit, match="its val studies are not those"):
        mdw.adopt_cnn_run(args, tmp_path / "work", tmp_path / "cache", splits)
    assert not (tmp_path / "work").exists()


def test_stage2_retrained_from_a_weights_folder(demo, tmp_path) -> None:
    """train.cnn_run_from_weights: a shipped folder's CNN becomes a stage-1 run that
    --cnn-run adopts after checking the regenerated sets against the recorded ones; the new
    folder ships that very CNN and a newly trained LSTM."""
    from safetensors.torch import load_file

    mdw, cfw = script("make_demo_weights"), script("cnn_run_from_weights")
    run = cfw.write_run(demo["weights"], tmp_path / "from_w", epochs_run=1)
    assert not (run / "splits.json").exists()
    shipped = load_file(str(demo["weights"] / "model.safetensors"))
    best = load_file(str(run / "best_cnn.safetensors"))
    assert best and all(v.dtype != np.float16 for v in best.values())
    for key, value in best.items():
        np.testing.assert_array_equal(value.numpy(),
                                      shipped["cnn." + key.removeprefix("model.")].float().numpy())
    with pytest.raises(SystemExit, match="is not an empty folder"):
        cfw.write_run(demo["weights"], run)
    base = ["--quick", "--data-dir", str(demo["root"] / "data"), "--no-progress",
            "--threads", "1", "--workers", "1", "--no-foreign-check"]
    out = tmp_path / "w"
    info = mdw.main(mdw.get_args_parser().parse_args(
        [*base, "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--cnn-run", str(run)]))
    assert info["epochs"] == 1 and info["stage1_elsewhere"]
    again = load_file(str(out / "model.safetensors"))
    cnn_keys = [k for k in shipped if k.startswith("cnn.")]
    for k in cnn_keys:
        np.testing.assert_array_equal(again[k].numpy(), shipped[k].numpy())
    splits = json.loads((tmp_path / "runs" / "cnn" / "splits.json").read_text())
    assert splits == json.loads((demo["work"] / "splits.json").read_text())
    # sets other than the recorded ones are refused before anything is trained
    other = tmp_path / "other"
    cfw.write_run(demo["weights"], other)
    data = json.loads((other / "data.json").read_text())
    data["sets"]["val"]["seed"] += 7
    (other / "data.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="its val set .* is not this recipe's"):
        mdw.main(mdw.get_args_parser().parse_args(
            [*base, "--out", str(tmp_path / "w2"), "--work-dir", str(tmp_path / "runs2"),
             "--cnn-run", str(other), "--data-dir", str(tmp_path / "data2")]))
    # refused from the options alone, before any study was generated or cached
    assert not (tmp_path / "w2").exists() and not (tmp_path / "data2").exists()
    assert not (tmp_path / "runs2" / "cache").exists()


def test_recipe_states_the_slice_spacing_it_trained_on(demo) -> None:
    from hohoho_core.spacing import trained_spacing
    from hohoho_core.synthetic.anatomy import spacing_range_mm

    config = json.loads((demo["weights"] / "config.json").read_text())
    assert trained_spacing(config["data"]) == spacing_range_mm(10) == (3.0, 6.0)
    card = (demo["weights"] / "MODEL_CARD.md").read_text()
    assert "Slice spacing: every training study is 3-6 mm between slices" in card
    assert spacing_range_mm(80)[0] < 3.0  # long studies are squeezed to fit the head


def test_weights_without_a_stage1_record_are_refused(demo, tmp_path) -> None:
    import shutil

    cfw = script("cnn_run_from_weights")
    folder = tmp_path / "w"
    shutil.copytree(demo["weights"], folder)
    config = json.loads((folder / "config.json").read_text())
    del config["training"]["cnn"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="no training.cnn record"):
        cfw.write_run(folder, tmp_path / "run")
    config["training"]["cnn"] = {"arch": "resnet18", "mode": "windows"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"training.cnn lacks \['size', 'crop'"):
        cfw.write_run(folder, tmp_path / "run")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read it"):
        cfw.write_run(folder, tmp_path / "run")
    # a refusal writes nothing, so the corrected command can run into the same folder
    with pytest.raises(SystemExit, match="--epochs-run 5: outside 1..1"):
        cfw.write_run(demo["weights"], tmp_path / "run2", epochs_run=5)
    assert not (tmp_path / "run2").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is not an empty folder"):
        cfw.write_run(demo["weights"], tmp_path / "file")
    assert not (tmp_path / "run").exists()


def test_stage2_scores_at_the_calibrated_cut_of_another_set(demo) -> None:
    """score --calibrated-on: CNN+LSTM also at F*/5 per class, F* the best F2 of the
    folder's own probabilities on the named set."""
    from hohoho_core.datasets import EmbeddingTable
    from hohoho_core.labels import CLASSES
    from hohoho_core.metrics import fbeta_per_class, search_thresholds
    from hohoho_core.predict import Predictor
    from train import stage2_transfer as st

    pred = Predictor.from_folder(demo["weights"])
    n, k = 40, len(CLASSES)

    def table(seed: int) -> EmbeddingTable:
        r = np.random.default_rng(seed)
        labels = (r.random((n, k)) < 0.3).astype(np.int8)
        return EmbeddingTable(
            embeddings=r.normal(size=(n, pred.config.embed_dim)).astype(np.float32),
            logits=(r.normal(size=(n, k)) + 2.0 * labels).astype(np.float32), labels=labels,
            study=np.repeat(np.asarray(["a", "b", "c", "d"]), n // 4),
            image_id=np.asarray([f"i{j}" for j in range(n)]),
            slice_index=np.tile(np.arange(n // 4, dtype=np.int32), 4))

    val, test = table(1), table(2)
    got = st.score_folder(demo["weights"], test, cut_on=val)
    _, p_val = st.folder_probs(pred, val)
    y = val.labels.astype(int)
    best = fbeta_per_class(y, p_val >= search_thresholds(y, p_val, 2.0)[None, :], 2.0)
    np.testing.assert_allclose(got["cnn_lstm_calibrated"]["cut_thresholds"], best / 5.0)
    _, p_test = st.folder_probs(pred, test)
    want = fbeta_per_class(test.labels.astype(int), p_test >= (best / 5.0)[None, :], 2.0)
    assert got["cnn_lstm_calibrated"]["slice"]["macro"] == pytest.approx(float(want.mean()))
    assert "cnn_lstm_calibrated" not in st.score_folder(demo["weights"], test)
    # a slice without a label (-1) is left out of the cut, as the scores leave it out
    unlabelled = val.labels.copy()
    unlabelled[0] = -1
    partly = EmbeddingTable(val.embeddings, val.logits, unlabelled, val.study, val.image_id,
                            val.slice_index)
    kept = np.arange(n) != 0
    yk = y[kept]
    best_k = fbeta_per_class(yk, p_val[kept] >= search_thresholds(yk, p_val[kept], 2.0)[None, :],
                             2.0)
    np.testing.assert_allclose(st.calibrated_cuts(pred, partly), best_k / 5.0)


def test_strict_json_never_writes_nan(tmp_path) -> None:
    from train import common

    common.write_json(tmp_path / "x.json", {"f2": float("nan"), "a": [1.0, float("inf")]})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"f2": None, "a": [1.0, None]}


@pytest.mark.slow
def test_torchrun_two_process_ddp_writes_one_checkpoint(demo, tmp_path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--standalone", "-m", "train.train_cnn",
           *_cnn_args(demo, out)]
    cmd[cmd.index("--threads") + 1] = "1"
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "cpu x2" in res.stdout  # both ranks joined one gloo group
    files = sorted(p.name for p in out.iterdir())
    assert [f for f in files if f.startswith("checkpoint")] == [
        "checkpoint.json", "checkpoint.safetensors"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "best_cnn.safetensors", "checkpoint.safetensors"]
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + one epoch, written by rank 0 only
    assert res.stdout.count("epoch 0:") == 1


def test_simclr_pretraining_feeds_train_cnn_init(demo, tmp_path) -> None:
    from safetensors import safe_open

    from hohoho_core.cache import StudyCache

    ps = script("pretrain_simclr")
    out = tmp_path / "simclr"
    res = ps.main(ps.get_args_parser().parse_args(
        ["--cache-dir", str(demo["cache"]), "--splits", str(demo["work"] / "splits.json"),
         "--size", "64", "--epochs", "2", "--batch-size", "4", "--steps-per-epoch", "1",
         "--device", "cpu", "--threads", "1", "--output-dir", str(out), "--no-progress"]))
    backbone = Path(res["backbone"])
    assert len(res["losses"]) == 2 and all(np.isfinite(res["losses"]))
    with safe_open(str(backbone), "pt") as f:
        assert f.metadata()["arch"] == "resnet18"
        conv1 = f.get_tensor("backbone.conv1.weight")
    # fine-tune with lr 0 on half of the labelled studies: the CNN starts from the backbone
    tc = script("train_cnn")
    cnn_out = tmp_path / "cnn"
    tc.main(tc.get_args_parser().parse_args(_cnn_args(
        demo, cnn_out, "--init", str(backbone), "--labeled-fraction", "0.5", "--lr", "0")))
    with safe_open(str(cnn_out / "best_cnn.safetensors"), "pt") as f:
        np.testing.assert_array_equal(f.get_tensor("model.backbone.conv1.weight").numpy(),
                                      conv1.numpy())
    common = script("common")
    train_keys = json.loads((demo["work"] / "splits.json").read_text())["train"]
    half = common.labelled_subset(train_keys, StudyCache(demo["cache"] / "studies"), 0.5, 0)
    assert len(half) == 2 and set(half) <= set(train_keys)


def test_ablate_quick_writes_the_table(tmp_path) -> None:
    ab = script("ablate")
    rows = ab.main(ab.get_args_parser().parse_args(
        ["--synthetic", "--quick", "--only", "lstm", "--output-dir", str(tmp_path),
         "--device", "cpu", "--threads", "1", "--no-progress"]))
    assert [r["variant"] for r in rows] == ["CNN alone", "CNN + LSTM"]
    md = (tmp_path / "ablation.md").read_text().splitlines()
    table = [ln for ln in md if ln.startswith("| 3 ")]
    assert len(table) == 2
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3].startswith("synthetic") and cells[4] == "64" and cells[6] == "1"
        assert all(0.0 <= float(v) <= 1.0 for v in cells[7:10])


TRAIN_SCRIPTS = ("train_cnn", "extract_embeddings", "train_lstm", "pretrain_simclr", "ablate",
                 "oof_predict", "make_demo_weights")


#: Runs each ``train.<script> --help`` as ``python -m`` would (runpy, ``__main__``), in one
#: process: seven interpreters importing torch took 30 s of the test budget on 2 cores.
#: Module state carries from one script to the next, which ``--help`` cannot feel: it
#: exits in argparse, before any script's own code runs.
AS_MODULES = """
import json, runpy, sys
codes = {}
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    try:
        runpy.run_module(f"train.{name}", run_name="__main__", alter_sys=True)
        codes[name] = "returned without printing usage"
    except SystemExit as stop:
        codes[name] = stop.code
print(json.dumps(codes))
"""


def test_every_script_runs_as_a_module_from_the_repo_root() -> None:
    # `python -m train.<script>` with no PYTHONPATH: the package imports need nothing else
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", AS_MODULES, *TRAIN_SCRIPTS], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    *helps, last = res.stdout.strip().splitlines()
    assert json.loads(last) == {name: 0 for name in TRAIN_SCRIPTS}
    assert sum(line.startswith("usage:") for line in helps) == len(TRAIN_SCRIPTS)


def test_no_script_or_test_edits_the_import_path() -> None:
    needle = "sys." + "path"  # spelled apart so this file does not match itself
    offenders = [str(p.relative_to(REPO)) for folder in ("train", "bench", "tests")
                 for p in (REPO / folder).rglob("*.py") if needle in p.read_text(encoding="utf-8")]
    assert offenders == []
