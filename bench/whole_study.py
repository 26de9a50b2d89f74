"""1. Whole-study analysis: DICOM folder -> HU -> input -> CNN -> LSTM, against two references.

- the shipped path: ``load_study`` then ``Predictor.predict`` (whatever `Predictor` does by
  default is what is timed);
- (a) a naive baseline written here: bare pydicom file by file, per-slice preprocessing
  and a per-slice batch-of-one NCHW fp32 forward of the torchvision model holding the same
  weights; its probabilities are the fp32 reference for the 1e-3 check;
- (b) the compute floor: FLOPs of the CNN over the study plus the LSTM, divided by this
  machine's fp32 matrix-multiply rate measured in the same run.

Then the candidates behind the default: the CNN alone over the preprocessed study in
NCHW or channels-last, with or without batch norm folded into the convolutions, at several
batch sizes, and ``torch.compile`` (full runs only), each with its largest probability
difference from the reference; and the opt-in int8 path (``Predictor(precision="int8")``)
with its macro-F2 check on the weights' synthetic test split (`bench.int8`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import torch
import torchvision.models as tvm
from torch import nn

from bench.common import (
    Section,
    Timing,
    check_goal,
    cnn_flops,
    compute_floor_s,
    lstm_flops,
    matmul_note,
    matmul_rates,
    ratio,
    time_call,
)
from bench.context import BenchContext, ModelBundle
from bench.int8 import GOAL_F2_DELTA, split_f2, test_split_root
from hohoho_core.dicom import load_study
from hohoho_core.predict import Predictor, calibration_input, inference_twin
from hohoho_core.preprocess import (
    PreprocessConfig,
    crop_to_box,
    head_bbox,
    input_from_resized_hu,
    resize_stack,
)
from hohoho_core.weights import load_calibration

__all__ = ["naive_analyse", "naive_read", "run"]

GOAL_FLOOR = 2.0  # whole study within 2.0x the compute floor
GOAL_SPEEDUP = 2.0  # at least 2x faster than the naive baseline
GOAL_DIFF = 1e-3  # max |p - p_fp32 reference|


# --------------------------------------------------------------------------- naive baseline


def naive_read(folder: Path) -> np.ndarray:
    """Bare pydicom, file by file: HU ``[S, H, W]`` sorted along the slice normal."""
    slices = []
    for path in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept
        )
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(iop[:3], iop[3:])
        z = float(normal @ np.asarray(ds.ImagePositionPatient, dtype=np.float64))
        slices.append((z, hu))
    slices.sort(key=lambda t: t[0])
    return np.stack([hu for _, hu in slices])


def naive_input(hu: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Per-slice crop and resize (one study-wide head box), then window and stack."""
    box = head_bbox(hu) if cfg.crop else None
    small = []
    for k in range(hu.shape[0]):
        one = crop_to_box(hu[k : k + 1], box) if box is not None else hu[k : k + 1]
        small.append(resize_stack(one, cfg.size)[0])
    return input_from_resized_hu(np.stack(small), cfg)


class TorchvisionTwin(nn.Module):
    """The torchvision ResNet holding the `SliceClassifier`'s weights (``fc`` = its head)."""

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__()
        cnn = bundle.cnn
        if not cnn.arch.startswith("resnet"):
            raise ValueError(f"the naive baseline needs a ResNet, got {cnn.arch}")
        net = getattr(tvm, cnn.arch)(weights=None, num_classes=cnn.num_classes)
        state = {k: v.detach().clone() for k, v in cnn.backbone.state_dict().items()}
        state["fc.weight"] = cnn.head.weight.detach().clone()
        state["fc.bias"] = cnn.head.bias.detach().clone()
        net.load_state_dict(state, strict=True)
        self.net = net.eval()
        self.register_buffer("mean", cnn.mean.detach().clone())
        self.register_buffer("std", cnn.std.detach().clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, 3, H, W]`` in [0, 1] -> (embedding ``[N, D]``, logits ``[N, K]``)."""
        n = self.net
        x = (x - self.mean) / self.std
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        emb = torch.flatten(n.avgpool(x), 1)
        return emb, n.fc(emb)


def _temperatures(bundle: ModelBundle, cnn: bool) -> torch.Tensor:
    """The weights' calibration (1 where the config has none), as the Predictor applies it."""
    t = bundle.config.cnn_temperatures if cnn else bundle.config.temperatures
    return torch.tensor(t if t is not None else [1.0] * len(bundle.config.classes))


def _sequence_prob(bundle: ModelBundle, emb: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
    if bundle.lstm is None:
        return torch.sigmoid(logits / _temperatures(bundle, cnn=True)).numpy()
    mask = torch.ones(1, emb.shape[0], dtype=torch.bool)
    with torch.inference_mode():
        out = bundle.lstm(emb[None], mask, logits[None] if bundle.lstm.use_logits else None)
    return torch.sigmoid(out[0] / _temperatures(bundle, cnn=False)).numpy()


def naive_analyse(
    folder: Path, twin: TorchvisionTwin, bundle: ModelBundle
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The naive baseline, stage by stage: (final prob ``(S, K)``, CNN prob, seconds per stage)."""
    t = [time.perf_counter()]
    hu = naive_read(folder)
    t.append(time.perf_counter())
    x = torch.from_numpy(naive_input(hu, bundle.preprocess))
    t.append(time.perf_counter())
    embs, logits = [], []
    with torch.no_grad():
        for k in range(x.shape[0]):  # batch of one, NCHW, fp32
            e, lg = twin(x[k : k + 1])
            embs.append(e)
            logits.append(lg)
    emb, lg = torch.cat(embs), torch.cat(logits)
    t.append(time.perf_counter())
    prob = _sequence_prob(bundle, emb, lg)
    t.append(time.perf_counter())
    names = ("read + HU", "preprocess", "CNN", "LSTM")
    cnn_prob = torch.sigmoid(lg / _temperatures(bundle, cnn=True)).numpy()
    return prob, cnn_prob, {n: t[i + 1] - t[i] for i, n in enumerate(names)}


# --------------------------------------------------------------------------- CNN candidates


def run_cnn(model: nn.Module, x: torch.Tensor, batch: int, channels_last: bool) -> torch.Tensor:
    """Logits ``(S, K)`` of ``model`` over ``x [S, 3, H, W]`` in chunks of ``batch``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            out.append(model(x[start : start + batch].contiguous(memory_format=fmt))[1])
    return torch.cat(out)


def _candidates(cnn: nn.Module, sweep: tuple[int, ...]) -> list[tuple[str, nn.Module, int, bool]]:
    # Copies in each layout (the Predictor may already have made ``cnn`` channels-last).
    plain = copy.deepcopy(cnn).eval().to(memory_format=torch.contiguous_format)
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    folded = inference_twin(plain)  # the shipped path's batch-norm folding
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    mid = 16 if 16 in sweep else sweep[-1]
    rows = [
        (f"NCHW, batch {b}", plain, b, False) for b in sorted({1, mid})
    ] + [(f"channels-last, batch {mid}", cl, mid, True)]
    rows += [(f"NCHW, BN folded, batch {mid}", folded, mid, False)]
    rows += [(f"channels-last, BN folded, batch {b}", folded_cl, b, True) for b in sweep]
    return rows


def _max_diff(logits: torch.Tensor, ref_prob: np.ndarray, temperatures: torch.Tensor) -> float:
    return float(np.abs(torch.sigmoid(logits / temperatures).numpy() - ref_prob).max())


# --------------------------------------------------------------------------- section


def run(ctx: BenchContext) -> Section:
    sec = Section("study", "1. Whole-study analysis")
    s = ctx.sizes
    bundle = ctx.model
    folder = ctx.study_dir
    cfg = bundle.preprocess
    sec.params.update(model=bundle.source, threads=ctx.threads,
                      study=f"{s.study_slices} slices of {s.study_px}x{s.study_px} px, "
                            "synthetic, signed 16-bit DICOM",
                      preprocess=cfg.to_dict())

    # (b) compute floor, measured first while nothing else is warm.
    rates = matmul_rates(s.matmul_n, repeats=s.matmul_repeats)
    rate = max(rates.values())
    sec.add("fp32 matmul rate", rate / 1e9, "GFLOP/s",
            matmul_note(rates, s.matmul_n, s.matmul_repeats))

    predictor = Predictor(bundle.cnn, bundle.lstm, bundle.config)  # threads: run_all's
    study = load_study(folder)
    x_np = predictor.preprocess(study)
    x = torch.from_numpy(x_np)
    n = study.n_slices
    f_cnn = cnn_flops(bundle.cnn, x)
    f_lstm = lstm_flops(bundle.lstm, n) if bundle.lstm is not None else 0
    flops = f_cnn + f_lstm
    floor = compute_floor_s(flops, rate)
    floor_cnn = compute_floor_s(f_cnn, rate)
    sec.add("FLOPs per study", flops / 1e9, "GFLOP",
            f"CNN {f_cnn / 1e9:.2f} (FlopCounterMode over [{n}, 3, {cfg.size}, {cfg.size}]) "
            f"+ LSTM {f_lstm / 1e9:.4f} (by hand)")
    sec.add("compute floor", floor, "s", "FLOPs / matmul rate")

    # Shipped path and (a) the naive baseline, end to end, interleaved so that a change in
    # the machine's load hits both alike. The naive run is the fp32 reference.
    twin = TorchvisionTwin(bundle)
    pred = predictor.predict(study)  # warm-up
    ref_prob, ref_cnn_prob, _ = naive_analyse(folder, twin, bundle)  # warm-up
    fast_s: list[float] = []
    totals: list[float] = []
    stage_runs: list[dict[str, float]] = []
    for r in range(max(s.repeats, s.naive_repeats)):
        if r < s.repeats:
            t0 = time.perf_counter()
            pred = predictor.predict(load_study(folder))
            fast_s.append(time.perf_counter() - t0)
        if r < s.naive_repeats:
            t0 = time.perf_counter()
            ref_prob, ref_cnn_prob, stages = naive_analyse(folder, twin, bundle)
            totals.append(time.perf_counter() - t0)
            stage_runs.append(stages)
    fast = Timing(tuple(fast_s))
    sec.add("whole study, shipped path", fast.median, "s",
            f"load_study + Predictor.predict (batch {predictor.batch_size}); median of "
            f"{fast.n}, {1e3 * fast.median / n:.1f} ms/slice", fast)

    # Stages of the shipped path.
    t_load = time_call(lambda: load_study(folder), repeats=s.repeats, warmup=0)
    t_pre = time_call(lambda: predictor.preprocess(study), repeats=s.repeats, warmup=0)
    t_cnn = time_call(lambda: predictor.predict_input(x_np), repeats=s.repeats, warmup=0)
    emb, logits = predictor.predict_input(x_np)
    t_seq = time_call(lambda: predictor.sequence_prob(emb, logits), repeats=s.repeats, warmup=1)
    for name, t in (("read + HU (load_study)", t_load), ("preprocess (make_input)", t_pre),
                    ("CNN (predict_input)", t_cnn), ("LSTM (sequence_prob)", t_seq)):
        sec.add(f"  stage: {name}", t.median, "s", f"median of {t.n}", t)
    cnn_x_floor = ratio(t_cnn.median, floor_cnn)
    sec.add("  CNN alone / its floor", cnn_x_floor, "x",
            f"{f_cnn / t_cnn.median / 1e9:.0f} GFLOP/s achieved")

    naive_s = float(np.median(totals))
    sec.add("whole study, naive baseline", naive_s, "s",
            f"pydicom file by file, per-slice preprocessing, batch-1 NCHW fp32 torchvision "
            f"{bundle.config.arch}; median of {len(totals)}", totals)
    for name in stage_runs[0]:
        runs = [r[name] for r in stage_runs]
        sec.add(f"  naive stage: {name}", float(np.median(runs)), "s", "", runs)
    naive_cnn = float(np.median([r["CNN"] for r in stage_runs]))

    diff = float(np.abs(pred.prob - ref_prob).max())
    diff_cnn = float(np.abs(pred.cnn_prob - ref_cnn_prob).max())
    sec.add("max |p shipped - p reference|", diff, "",
            f"final output; CNN output alone: {diff_cnn:.2e}")

    x_floor = ratio(fast.median, floor)
    speedup = ratio(naive_s, fast.median)
    sec.add("shipped / compute floor", x_floor, "x")
    sec.add("naive / shipped (speed-up)", speedup, "x")
    sec.add("naive / compute floor", ratio(naive_s, floor), "x",
            "the largest speed-up any exact fp32 path could show against this baseline")

    # Candidates for the CNN part (same input, same threads).
    ref_cnn = torch.from_numpy(ref_cnn_prob)
    cnn_t = _temperatures(bundle, cnn=True)
    for label, model, batch, cl in _candidates(bundle.cnn, s.batch_sweep):
        t = time_call(lambda m=model, b=batch, c=cl: run_cnn(m, x, b, c),
                      repeats=s.sweep_repeats, warmup=1)
        d = _max_diff(run_cnn(model, x, batch, cl), ref_cnn.numpy(), cnn_t)
        sec.add(f"  CNN candidate: {label}", t.median, "s",
                f"{ratio(t.median, floor_cnn):.2f}x floor, {ratio(naive_cnn, t.median):.2f}x "
                f"naive CNN, max |dp| {d:.1e}", t)
    if s.try_compile:
        _compile_row(sec, bundle.cnn, x, ref_cnn.numpy(), cnn_t, floor_cnn, naive_cnn,
                     s.sweep_repeats)

    # The opt-in int8 path: whole study, CNN alone, and the F2 check that makes it eligible.
    # Calibrate as users get it: the studies saved beside the weights, else (random-init
    # weights have none) the study's own slices.
    studies = load_calibration(bundle.folder)
    calib = x_np if studies is None else calibration_input(studies, cfg)
    calib_from = "the study's own" if studies is None else "calibration.safetensors"
    t0 = time.perf_counter()
    q = Predictor(bundle.cnn, bundle.lstm, bundle.config, precision="int8", calibration=calib)
    setup_s = time.perf_counter() - t0
    q_prob = q.predict(study).prob
    t_q = time_call(lambda: q.predict(load_study(folder)), repeats=s.repeats, warmup=0)
    q_diff = float(np.abs(q_prob - ref_prob).max())
    q_speedup = ratio(naive_s, t_q.median)
    sec.add("whole study, int8 path (opt-in)", t_q.median, "s",
            f"Predictor(precision='int8'): {ratio(t_q.median, floor):.2f}x floor, "
            f"{q_speedup:.2f}x naive, max |dp| {q_diff:.1e}; calibration once per model "
            f"{setup_s:.1f} s ({len(calib)} slices, {calib_from})", t_q)
    t_qcnn = time_call(lambda: q.predict_input(x_np), repeats=s.sweep_repeats, warmup=1)
    sec.add("  CNN candidate: int8 static (FX, x86 engine), batch 16", t_qcnn.median, "s",
            f"{ratio(t_qcnn.median, floor_cnn):.2f}x floor, {ratio(naive_cnn, t_qcnn.median):.2f}x "
            f"naive CNN", t_qcnn)
    root = test_split_root(ctx, bundle.config.data) if bundle.trained else None
    f2_delta = float("nan")
    split_dp = float("nan")
    if root is not None:
        f2 = split_f2({"fp32": predictor, "int8": q}, root)
        f2_delta = abs(f2["int8"]["slice"] - f2["fp32"]["slice"])
        split_dp = float(f2["int8"]["max_abs_dp"])
        for name in ("fp32", "int8"):
            sec.add(f"macro F2 on the test split, {name}", f2[name]["slice"], "",
                    f"slice level, {f2[name]['n_slices']} slices, the weights' thresholds; "
                    f"study level {f2[name]['study']:.4f}; max |dp| vs fp32 "
                    f"{f2[name]['max_abs_dp']:.1e}")
    int8_goal = check_goal(
        "int8: |macro F2 - fp32 macro F2| on the test split", f2_delta, "<=", GOAL_F2_DELTA,
        cause="needs trained weights naming their synthetic test split "
              "(weights/config.json data.sets.test)" if root is None else
              f"int8 moves probabilities by up to {split_dp:.3f} on the test split "
              f"({q_diff:.3f} on the timed study), flipping slices near the thresholds")

    # Goals, with the measured cause when missed.
    other = fast.median - t_cnn.median
    sec.goal("whole study / compute floor", x_floor, "<=", GOAL_FLOOR, "x",
             cause=f"the CNN alone runs at {cnn_x_floor:.2f}x its floor "
                   f"({ratio(1.0, cnn_x_floor):.0%} of the matmul rate); reading, "
                   f"preprocessing and the LSTM add {other:.2f} s")
    sec.goal("speed-up over the naive baseline", speedup, ">=", GOAL_SPEEDUP, "x",
             cause=f"the naive batch-1 forward already runs at {ratio(naive_cnn, floor_cnn):.2f}x "
                   f"the floor, so even an fp32 path at the floor would be only "
                   f"{ratio(naive_s, floor):.2f}x faster; the int8 path is "
                   f"{q_speedup:.2f}x faster but opt-in (see its F2 check)")
    sec.goal("max |p - fp32 reference|", diff, "<=", GOAL_DIFF)
    sec.goals.append(int8_goal)
    return sec


def _compile_row(sec: Section, cnn: nn.Module, x: torch.Tensor, ref_prob: np.ndarray,
                 temperatures: torch.Tensor, floor_cnn: float, naive_cnn: float,
                 repeats: int) -> None:
    """``torch.compile`` (inductor, frozen weights) of the channels-last CNN, batch 16."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        model = torch.compile(copy.deepcopy(cnn).eval().to(memory_format=torch.channels_last))
        run: Callable[[], torch.Tensor] = lambda: run_cnn(model, x, 16, True)  # noqa: E731
        t0 = time.perf_counter()
        out = run()
        compile_s = time.perf_counter() - t0
        t = time_call(run, repeats=repeats, warmup=1)
        d = _max_diff(out, ref_prob, temperatures)
        sec.add("  CNN candidate: torch.compile, channels-last, batch 16", t.median, "s",
                f"{ratio(t.median, floor_cnn):.2f}x floor, {ratio(naive_cnn, t.median):.2f}x "
                f"naive CNN, max |dp| {d:.1e}; first call (compiling) {compile_s:.1f} s", t)
    except Exception as exc:  # a missing compiler must not sink the run
        sec.add("  CNN candidate: torch.compile", None, "",
                f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    finally:
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = False
        except ImportError:
            pass
