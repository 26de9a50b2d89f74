"""Smoke test of bench/: every section's code path at tiny sizes, and the ratio arithmetic.

Nothing here is a timed benchmark: figures from a shared CI machine mean nothing. The
tests check that `python -m bench.run_all` runs end to end and that the numbers it writes are
consistent with each other (ratios, floors, goal verdicts).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench import run_all
from bench.common import (
    Timing,
    check_goal,
    cnn_flops,
    compute_floor_s,
    lstm_flops,
    ratio,
    time_call,
)
from bench.context import QUICK, with_overrides
from bench.report import fmt, merge, render_markdown
from hohoho_core.models import SequenceModel

TINY = with_overrides(
    QUICK,
    study_px=64,
    model_px=32,
    repeats=1,
    matmul_n=64,
    matmul_repeats=2,
    batch_sweep=(1,),
    scan_px=32,
    saliency_repeats=(("gradcam", 1), ("saliency", 1), ("integrated_gradients", 1),
                      ("occlusion", 1)),
    tsne_sizes=((40, 1),),
    tsne_sklearn_points=40,
    train_batch=2,
    train_steps=1,
    train_warmup=1,
    app_px=32,
    app_scroll_steps=1,
)


# --------------------------------------------------------------------------- arithmetic


def test_ratio_and_compute_floor() -> None:
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(1.0, 4.0) == 0.25
    for bad in ((1.0, 0.0), (1.0, -2.0), (float("nan"), 1.0), (1.0, float("inf"))):
        assert math.isnan(ratio(*bad))
    # 190 GFLOP at 100 GFLOP/s is 1.9 s; a run of 3.8 s is then 2x the floor.
    floor = compute_floor_s(190e9, 100e9)
    assert floor == pytest.approx(1.9)
    assert ratio(3.8, floor) == pytest.approx(2.0)


def test_goal_verdicts_keep_the_cause_only_when_missed() -> None:
    met = check_goal("floor", 1.5, "<=", 2.0, "x", cause="slow CNN")
    assert met.met is True and met.cause == ""
    missed = check_goal("floor", 2.5, "<=", 2.0, "x", cause="slow CNN")
    assert missed.met is False and missed.cause == "slow CNN"
    assert check_goal("speed-up", 2.0, ">=", 2.0).met is True  # the limit itself counts
    assert check_goal("speed-up", 1.9, ">=", 2.0).met is False
    unmeasured = check_goal("t-SNE 20k", float("nan"), "<=", 60.0)
    assert unmeasured.met is None and unmeasured.cause == "not measured"
    with pytest.raises(ValueError):
        check_goal("bad", 1.0, "<", 2.0)


def test_timing_median_best_and_call_count() -> None:
    t = Timing((3.0, 1.0, 2.0))
    assert (t.median, t.best, t.n) == (2.0, 1.0, 3)
    calls = []
    timing = time_call(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and timing.n == 4
    assert all(s >= 0 for s in timing.samples)


def test_flops_match_hand_counts() -> None:
    # One 3x3 conv, 3 -> 4 channels, 8x8 output: 2 * 4 * 3 * 9 * 64 multiply-adds x 2.
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert cnn_flops(conv, torch.zeros(1, 3, 8, 8)) == 2 * 4 * 3 * 9 * 64
    # LSTM: per step, layer and direction 2 * (4H * in + 4H * H).
    one = SequenceModel(8, hidden=4, layers=1, bidirectional=False)
    assert lstm_flops(one, 10) == 10 * 2 * (16 * 8 + 16 * 4)
    two = SequenceModel(8, hidden=4, layers=2, bidirectional=True)
    per_step = 2 * (2 * (16 * 8 + 16 * 4) + 2 * (16 * 8 + 16 * 4))  # layer 2 input is 2H = 8
    assert lstm_flops(two, 5) == 5 * per_step


def test_fmt() -> None:
    assert fmt(None) == "-" and fmt(float("nan")) == "-"
    assert fmt(1.23456) == "1.23" and fmt(0.0456) == "0.0456" and fmt(123.4) == "123"
    assert fmt(20000.0) == "20,000" and fmt(0.00012) == "1.2e-04" and fmt(0) == "0"
    assert fmt("none available") == "none available"


def _fake_results(created: str, sections: dict) -> dict:
    machine = {"cores": 2, "cpu": "Test CPU", "isa": ["avx2"], "torch": "2.x", "numpy": "2.x",
               "python": "3.11", "threads": 2, "gpu": None, "torch_cpu_capability": "AVX2"}
    return {"command": "python -m bench.run_all", "created": created, "quick": False,
            "threads": 2, "machine": machine, "sections": sections}


def test_markdown_and_merge() -> None:
    goal = check_goal("whole study / compute floor", 2.5, "<=", 2.0, "x", cause="CNN at 2.2x")
    study = {"name": "study", "title": "1. Whole-study analysis", "params": {"model": "m"},
             "rows": [{"what": "compute floor", "value": 1.9, "unit": "s", "detail": "a|b"}],
             "goals": [goal.__dict__], "notes": [], "seconds": 3.0, "error": None,
             "created": "t1", "command": "c1"}
    first = _fake_results("t1", {"study": study})
    app = {"name": "app", "title": "6. The app", "params": {}, "rows": [], "goals": [],
           "notes": [], "seconds": 1.0, "error": "RuntimeError: boom", "created": "t2",
           "command": "c2"}
    merged = merge(first, _fake_results("t2", {"app": app}))
    assert list(merged["sections"]) == ["study", "app"]  # report order, old section kept
    md = render_markdown(merged)
    assert "2 cores of Test CPU" in md and "`python -m bench.run_all`" in md
    assert "| 1. Whole-study analysis | whole study / compute floor | <= 2.00 x | 2.50 x | " \
           "NOT met | CNN at 2.2x |" in md
    assert "| compute floor | 1.90 | s | a\\|b |" in md  # pipes escaped inside cells
    assert "_From an earlier run: `c1` on t1._" in md
    assert "**Failed:** RuntimeError: boom" in md


# --------------------------------------------------------------------------- predict.py speed paths


def _tiny_predictor_parts(size: int = 64) -> tuple:
    from hohoho_core.models import create_model
    from hohoho_core.weights import ModelConfig

    torch.manual_seed(0)
    cnn = create_model("resnet18").eval()
    lstm = SequenceModel(cnn.embed_dim, hidden=8, layers=1).eval()
    config = ModelConfig(preprocess={"mode": "stacked", "size": size, "crop": True},
                         lstm={"hidden": 8, "layers": 1})
    return cnn, lstm, config


def test_inference_twin_folds_batch_norm_and_leaves_the_model_alone() -> None:
    from hohoho_core.predict import inference_twin

    cnn, _, _ = _tiny_predictor_parts()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    twin = inference_twin(cnn)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())  # original kept
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (e1, l1), (e2, l2) = cnn(x), twin(x)
    torch.testing.assert_close(e2, e1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-5)


def _phantom_input(cfg, seed: int, n_slices: int = 8, render_px: int = 64) -> np.ndarray:
    """Model input of two phantom studies (one with bleeds), as int8 calibration data."""
    from hohoho_core.preprocess import make_input
    from hohoho_core.synthetic import StudyPlan, make_study

    plans = (StudyPlan(subtypes=("subdural", "intraparenchymal"), n_slices=n_slices),
             StudyPlan(n_slices=n_slices))
    return np.concatenate([make_input(make_study(seed, i, size=render_px, plan=plan).hu, cfg)
                           for i, plan in enumerate(plans)])


def test_int8_predictor_is_close_to_fp32_and_checks_its_arguments() -> None:
    from hohoho_core.predict import Predictor

    cnn, lstm, config = _tiny_predictor_parts()
    fp32 = Predictor(cnn, lstm, config)
    calib = _phantom_input(fp32.preprocess_config, seed=0)
    assert calib.shape == (16, 3, 64, 64) and calib.dtype == np.float32
    int8 = Predictor(cnn, lstm, config, precision="int8", calibration=calib)
    x = _phantom_input(fp32.preprocess_config, seed=5)
    e32, l32 = fp32.predict_input(x)
    e8, l8 = int8.predict_input(x)
    assert e8.shape == e32.shape and e8.dtype == np.float32
    assert np.array_equal(int8.predict_input(x)[1], l8)  # deterministic
    p32, p8 = 1 / (1 + np.exp(-l32)), 1 / (1 + np.exp(-l8))
    # Quantisation error, not garbage: close to fp32 but not bit-identical.
    assert 0 < np.abs(p8 - p32).max() < 0.1
    assert np.corrcoef(e8.ravel(), e32.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="precision"):
        Predictor(cnn, lstm, config, precision="fp8")
    with pytest.raises(ValueError, match="CPU only"):
        Predictor(cnn, lstm, config, device="cuda", precision="int8")


def test_int8_observers_follow_the_cpu() -> None:
    """Full 8-bit min-max activations only where VNNI sums in 32 bits; torch's default else."""
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

    from hohoho_core.predict import int8_qconfig_mapping, quantize_int8
    from hohoho_core.runtime import best_quantized_engine

    def activation(flags: set[str], engine: str = "x86") -> object:
        mapping = int8_qconfig_mapping(engine, frozenset(flags))
        with warnings.catch_warnings():  # torch's own default observer warns about itself
            warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
            return mapping.global_qconfig.activation()

    vnni = activation({"avx2", "avx512f", "avx512_vnni"})
    assert isinstance(vnni, MinMaxObserver) and not vnni.reduce_range
    # AVX-VNNI without AVX-512: torch's kernels are not known to sum in 32 bits there.
    assert isinstance(activation({"avx2", "avx_vnni"}), HistogramObserver)
    assert isinstance(activation({"avx2", "amx_int8"}), MinMaxObserver)
    plain = activation({"avx2", "avx512f"})
    assert isinstance(plain, HistogramObserver) and plain.reduce_range
    assert not isinstance(activation({"avx512_vnni"}, "qnnpack"), MinMaxObserver)

    cnn, _, config = _tiny_predictor_parts()
    calib = torch.as_tensor(_phantom_input(config.preprocess, seed=0))
    engine = best_quantized_engine()
    if engine == "qnnpack":
        return  # ARM: one recipe only, nothing to compare
    x = calib[:8]
    with torch.inference_mode():
        ref = cnn.eval()(x)[1]
        outs = [quantize_int8(cnn, calib, flags=frozenset(f))(x)[1]
                for f in ({"avx2"}, {"avx2", "avx512_vnni"})]
    assert not torch.equal(outs[0], outs[1])  # the flags choose the recipe
    for out in outs:
        assert (torch.sigmoid(out) - torch.sigmoid(ref)).abs().max() < 0.1


# --------------------------------------------------------------------------- end to end


def _row(section: dict, what: str) -> float:
    for r in section["rows"]:
        if r["what"].strip() == what:
            return float(r["value"])
    raise KeyError(what)


def test_run_all_quick_writes_consistent_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_all, "QUICK", TINY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    # a section another benchmark wrote (bench.batch, bench.pacs, ...): a full run keeps it
    out.mkdir()
    kept = {"title": "9. Batch", "rows": [], "goals": [], "notes": [], "error": None}
    (out / "results.json").write_text(json.dumps({"sections": {"batch": kept}}))
    threads = torch.get_num_threads()
    try:
        code = run_all.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out),
                             "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    results = json.loads((out / "results.json").read_text())
    errors = {k: s["error"] for k, s in results["sections"].items() if s["error"]}
    assert code == 0 and not errors, errors
    assert results["sections"].pop("batch") == kept
    assert list(results["sections"]) == list(run_all.SECTIONS)
    assert results["quick"] is True and results["threads"] == 1
    assert results["machine"]["cores"] >= 1 and results["machine"]["torch"] == torch.__version__

    study = results["sections"]["study"]
    rate = _row(study, "fp32 matmul rate") * 1e9
    flops = _row(study, "FLOPs per study") * 1e9
    floor = _row(study, "compute floor")
    shipped = _row(study, "whole study, shipped path")
    naive = _row(study, "whole study, naive baseline")
    assert floor == pytest.approx(flops / rate, rel=1e-9)
    assert _row(study, "shipped / compute floor") == pytest.approx(shipped / floor, rel=1e-9)
    assert _row(study, "naive / shipped (speed-up)") == pytest.approx(naive / shipped, rel=1e-9)
    # ResNet-18 at 32 px on 8 slices: between 0.1 and 1 GFLOP (0.6 at 32 px by hand).
    assert 0.1e9 < flops < 1e9
    # The shipped path and the naive fp32 reference agree (the 1e-3 goal), really measured.
    diff = _row(study, "max |p shipped - p reference|")
    assert 0 <= diff < 1e-4
    goals = {g["what"]: g for g in study["goals"]}
    for g in goals.values():
        if math.isnan(g["measured"]):
            assert g["met"] is None
        else:
            assert g["met"] == (g["measured"] <= g["limit"] if g["op"] == "<="
                                else g["measured"] >= g["limit"])
    # Random-init weights name no test split: the int8 F2 check is reported, not faked.
    f2_goal = goals["int8: |macro F2 - fp32 macro F2| on the test split"]
    assert f2_goal["met"] is None and "trained weights" in f2_goal["cause"]
    assert _row(study, "whole study, int8 path (opt-in)") > 0

    assert {r["what"] for r in results["sections"]["saliency"]["rows"]} == {
        "gradcam", "integrated_gradients", "saliency", "occlusion"}
    assert _row(results["sections"]["tsne"], "40 points") > 0
    report_row = "server run per slice report (scrolling is in the browser)"
    assert _row(results["sections"]["app"], report_row) > 0
    md = (out / "results.md").read_text()
    for sec in results["sections"].values():
        assert f"## {sec['title']}" in md

    # --only reruns one section and keeps the others.
    try:
        code = run_all.main(["--quick", "--only", "tsne", "--work", str(tmp_path / "work"),
                             "--out", str(out), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    again = json.loads((out / "results.json").read_text())
    assert code == 0 and list(again["sections"]) == [*run_all.SECTIONS, "batch"]
    assert again["sections"]["study"] == results["sections"]["study"]
    assert again["command"].endswith("--threads 1") and "--only tsne" in again["command"]
    assert again["command"].startswith("python -m bench.run_all ")  # how the bench is run now


def test_test_split_is_regenerated_as_the_weights_made_it(tmp_path: Path) -> None:
    """A randomised test split recorded in a weights config comes back randomised.

    Regression: ``test_split_root`` regenerated every split plain, so the precision
    check scored a plain split under the randomised split's name.
    """
    from bench.context import FULL, BenchContext
    from bench.int8 import split_randomise, test_split_root
    from hohoho_core.synthetic import generate_dataset

    spec = {"studies": 2, "seed": 77, "size": 48, "slices": [8, 8], "label_noise": 0.0,
            "root": str(tmp_path / "absent"), "randomise": True}
    assert split_randomise(spec) is True
    assert split_randomise({**spec, "randomise_fraction": 0.5}) == 0.5
    assert split_randomise({k: v for k, v in spec.items() if k != "randomise"}) is False

    ctx = BenchContext(FULL, tmp_path / "work", threads=1)
    root = test_split_root(ctx, {"sets": {"test": spec}})
    assert root is not None and root.name.endswith("_rand1")
    generate_dataset(tmp_path / "plain", 2, 77, size=48, slices=(8, 8))
    generate_dataset(tmp_path / "rand", 2, 77, size=48, slices=(8, 8),
                     randomise=True)

    def pixels(folder: Path) -> list[bytes]:
        return [p.read_bytes() for p in sorted((folder / "stage_2_train").glob("*.dcm"))]

    got = pixels(root)
    assert got == pixels(tmp_path / "rand")
    assert got != pixels(tmp_path / "plain")
    # The cached folder is reused: same marker, no second generation.
    stamp = {p: p.stat().st_mtime_ns for p in (root / "stage_2_train").glob("*.dcm")}
    assert test_split_root(ctx, {"sets": {"test": spec}}) == root
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_peak_rss_is_the_commands_own_not_its_launchers(tmp_path: Path) -> None:
    """A child started straight from a large process reports that process's size as its
    peak (Linux keeps the old image's high-water mark across exec); started through
    `bench/peak_rss.py` it reports its own. The bench's section 9 once measured itself."""
    import os
    import subprocess
    import sys

    big = np.ones(2**27, dtype=np.float32)  # 512 MiB, touched
    cmd = [sys.executable, "-c", "import sys; sys.exit(3)"]
    direct = subprocess.Popen(cmd)
    _, _, usage = os.wait4(direct.pid, 0)
    out = tmp_path / "rss"
    launched = subprocess.run([sys.executable, str(Path(run_all.__file__).with_name("peak_rss.py")), str(out),
                               *cmd], check=False)
    assert big.sum() == 2**27  # still held while both ran
    assert launched.returncode == 3  # the command's exit status comes through
    own = int(out.read_text(encoding="utf-8"))  # KiB
    assert usage.ru_maxrss > 512 * 1024 > 4 * own
