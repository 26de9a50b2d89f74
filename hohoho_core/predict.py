"""Whole-study inference: `Study` -> per-slice probabilities, embeddings, labels, summary.

The `Predictor` wraps a loaded weights folder: it preprocesses a study the way the config
says, runs the slice CNN in batches (channels-last, ``torch.inference_mode``), then the
sequence model over the study's embeddings when there is one. The same study always gives
bit-identical output: fixed batch composition, eval mode, no randomness.

Speed (bench/results.md, section 1): the CNN runs as an inference twin whose batch norms
are folded into the preceding convolutions (`inference_twin`), in channels-last batches of
16. Both were measured to win on CPU; the outputs differ from the plain fp32 model only by
rounding (about 1e-6, far inside the project's 1e-3 tolerance). ``precision="bf16"`` runs
the same twin in bfloat16 as a frozen TorchScript module on the CPU (`bf16_script`; eager
``torch.autocast(bfloat16)`` elsewhere, or where tracing fails; fast only with avx512_bf16/AMX);
``precision="int8"`` a static int8 CNN (`quantize_int8`), several times faster on CPUs with
VNNI/AMX. Both move probabilities; `from_folder`'s default ``"auto"`` picks one only where
the weights' measured table says it keeps their answers (`hohoho_core.precision`). On the
CPU the fp32 twin runs in ONNX Runtime where it is installed (`onnx_cnn`,
``engine="auto"``): the same fp32 arithmetic in faster kernels, rounding apart.

Nothing here changes process-wide torch state (threads, quantised engine, cuDNN flags):
the entry point sets those once with `runtime.configure_torch`.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from hohoho_core.atomic import atomic_open
from hohoho_core.csvsafe import safe_cell
from hohoho_core.labels import CLASSES
from hohoho_core.models import SequenceModel, SliceClassifier
from hohoho_core.onnx_cnn import OnnxCnn, onnx_cnn
from hohoho_core.precision import (
    ENGINES,
    PRECISIONS,
    Resolution,
    int8_recipe,
    read_table,
    resolve_precision,
)
from hohoho_core.preprocess import PreprocessConfig, make_input
from hohoho_core.rsna_csv import row_id, write_rsna_csv
from hohoho_core.runtime import QUANTIZED_ENGINES, cpu_flags
from hohoho_core.spacing import (
    THIN_MODES,
    average_slabs,
    measured_spacing,
    phase_stride,
    slab_groups,
    slab_ids,
    slab_note,
    sliding_note,
    sliding_reformat,
    spacing_note,
    trained_spacing,
)
from hohoho_core.spacing import TOLERANCE as SPACING_TOLERANCE
from hohoho_core.study import Study
from hohoho_core.weights import ModelConfig, WeightsError, load_calibration, load_weights

__all__ = [
    "PRECISIONS",
    "CnnTiming",
    "PreparedInput",
    "Predictor",
    "StudyPrediction",
    "StudySummary",
    "calibration_input",
    "inference_twin",
    "int8_qconfig_mapping",
    "positive_runs",
    "prediction_record",
    "quantize_int8",
    "resolve_folder_precision",
    "submission_id",
    "summarise",
    "write_predictions",
]

log = logging.getLogger(__name__)


def positive_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(S,)`` bool -> runs of consecutive True as inclusive ``(first, last)`` indices."""
    f = np.asarray(flags, dtype=bool).ravel()
    if not f.any():
        return []
    edges = np.diff(np.r_[0, f.astype(np.int8), 0])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class StudySummary:
    """Study-level view of one prediction, per class name.

    Attributes:
        n_slices: slices in the study.
        max_prob: highest slice probability.
        positive: True when any slice reaches its class threshold.
        ranges: runs of positive slices as inclusive ``(first, last)`` slice indices.
    """

    n_slices: int
    max_prob: dict[str, float]
    positive: dict[str, bool]
    ranges: dict[str, list[tuple[int, int]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_slices": self.n_slices,
            "max_prob": dict(self.max_prob),
            "positive": dict(self.positive),
            "ranges": {k: [list(r) for r in v] for k, v in self.ranges.items()},
        }


@dataclass
class StudyPrediction:
    """Per-slice outputs for one study, slices in study order (``S`` slices, ``K = 6``).

    Attributes:
        image_ids: ``S`` slice ids (``SliceInfo.image_id``).
        cnn_prob: ``(S, K)`` float32, stage-1 sigmoid outputs.
        lstm_prob: ``(S, K)`` float32 stage-2 outputs, or None without a sequence model.
        prob: ``(S, K)`` the final output (``lstm_prob`` if present, else ``cnn_prob``).
        embeddings: ``(S, D)`` float32 pooled CNN embeddings.
        labels: ``(S, K)`` bool, ``prob >= thresholds``.
        thresholds: ``(K,)`` the thresholds used.
        summary: `StudySummary`.
        notes: one-line notes on the input (`spacing.spacing_note`), empty when none.
    """

    study_uid: str
    series_uid: str
    image_ids: list[str]
    cnn_prob: np.ndarray
    lstm_prob: np.ndarray | None
    prob: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    thresholds: np.ndarray
    summary: StudySummary
    classes: tuple[str, ...] = field(default=CLASSES)
    #: What a reader should know about this series before trusting the calls (for example
    #: a slice spacing the model was not trained on, `spacing.spacing_note`).
    notes: tuple[str, ...] = ()


def summarise(
    prob: np.ndarray, labels: np.ndarray, classes: Sequence[str] = CLASSES
) -> StudySummary:
    """``prob (S, K)``, ``labels (S, K)`` bool -> `StudySummary`."""
    return StudySummary(
        n_slices=int(prob.shape[0]),
        max_prob={c: float(prob[:, k].max()) if len(prob) else 0.0 for k, c in enumerate(classes)},
        positive={c: bool(labels[:, k].any()) for k, c in enumerate(classes)},
        ranges={c: positive_runs(labels[:, k]) for k, c in enumerate(classes)},
    )


class _FoldedClassifier(nn.Module):
    """A `SliceClassifier`'s forward pass with batch norm folded into its convolutions."""

    def __init__(self, cnn: SliceClassifier) -> None:
        from torch.fx.experimental.optimization import fuse

        super().__init__()
        # fuse() traces the backbone with torch.fx and folds every Conv -> BatchNorm pair
        # (eval statistics) into the conv's weight and bias; it works on its own copy.
        self.backbone = fuse(copy.deepcopy(cnn.backbone).eval(), inplace=True)
        self.head = cnn.head
        self.register_buffer("mean", cnn.mean.detach().clone(), persistent=False)
        self.register_buffer("std", cnn.std.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, 3, H, W]`` in [0, 1] -> ``(embedding [N, D], logits [N, K])``."""
        emb = self.backbone((x - self.mean) / self.std)
        return emb, self.head(emb)


def inference_twin(cnn: SliceClassifier) -> nn.Module:
    """An eval-only copy of ``cnn`` with batch norm folded into the convolutions.

    Same ``(embedding, logits)`` as ``cnn`` in eval mode up to float rounding, with one
    pass over each activation less per convolution (measured 5-8 % faster on CPU). The
    original keeps its modules, so hooks on ``cnn.cam_layer`` (Grad-CAM) still work there.
    Falls back to ``cnn`` itself when its backbone cannot be traced by torch.fx.
    """
    try:
        twin = _FoldedClassifier(cnn.eval())
    except Exception as exc:  # an untraceable backbone still runs, just unfolded
        log.info("batch norm not folded (%s): running the model as is", type(exc).__name__)
        return cnn
    param = next(cnn.parameters(), None)
    if param is not None:
        twin = twin.to(param.device)
    return twin.eval()


class _Bf16Classifier(nn.Module):
    """The inference twin in bfloat16: float32 in, float32 ``(embedding, logits)`` out.

    The same arithmetic as running the twin under ``torch.autocast(bfloat16)`` on the CPU
    (normalisation in fp32, convolutions and the head in bf16), with the weights cast once
    here instead of at every batch.
    """

    def __init__(self, twin: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(twin.backbone).to(torch.bfloat16).eval()
        self.head = copy.deepcopy(twin.head).to(torch.bfloat16).eval()
        self.register_buffer("mean", twin.mean.detach().clone(), persistent=False)
        self.register_buffer("std", twin.std.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, 3, H, W]`` float32 in [0, 1] -> float32 ``(embedding, logits)``."""
        emb = self.backbone(((x - self.mean) / self.std).to(torch.bfloat16))
        return emb.float(), self.head(emb).float()


def bf16_script(twin: nn.Module, channels: int, size: int) -> nn.Module | None:
    """``twin`` as a frozen TorchScript module in bfloat16 (CPU), or None if it cannot be.

    Why TorchScript: a scripted call runs the whole forward in C++ with Python's GIL
    released, while eager torch takes the GIL back at every operator. With the batch
    pipeline's reader and CNN lanes in threads of one process, an eager bf16 batch of 16
    took 4.3 times as long while another Python thread was busy (80 -> 345 ms on the Zen
    5); the scripted one 1.25 times (`bench/gil_stall.py`, bench/README.md). TorchScript is
    deprecated in this torch (2.14) but still the one GIL-free torch runner that needs no
    compiler; where tracing fails the caller keeps eager autocast.
    """
    example = torch.rand(2, channels, size, size).contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
            module = _Bf16Classifier(twin).cpu().to(memory_format=torch.channels_last)
            with torch.inference_mode():
                traced = torch.jit.trace(module, example, check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
                frozen(example)  # the first call optimises the graph: do it here, not in a lane
    except Exception as exc:  # noqa: BLE001 - any failure keeps the eager path
        log.info("bf16 CNN not scripted (%s): running it under autocast", type(exc).__name__)
        return None
    return frozen


class _QuantizedClassifier(nn.Module):
    """An int8 backbone (float in, float embedding out) with the fp32 head.

    Its packed weights belong to the quantised engine active when it was converted; it
    refuses to run under another one rather than fail deep inside a kernel.
    """

    def __init__(self, backbone: nn.Module, cnn: SliceClassifier, engine: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.engine = engine
        self.head = copy.deepcopy(cnn.head).cpu()
        self.register_buffer("mean", cnn.mean.detach().cpu().clone(), persistent=False)
        self.register_buffer("std", cnn.std.detach().cpu().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, 3, H, W]`` in [0, 1] -> ``(embedding [N, D], logits [N, K])``, float32."""
        _check_engine(self.engine)
        emb = self.backbone((x - self.mean) / self.std)
        return emb, self.head(emb)


def _active_engine() -> str:
    """The process's quantised engine, when it is one int8 inference can use."""
    engine = str(torch.backends.quantized.engine)
    if engine not in QUANTIZED_ENGINES:
        raise RuntimeError(
            f"int8 needs a quantized CPU engine, but torch's active one is {engine!r}: call "
            "hohoho_core.runtime.configure_torch(quantized_engine='auto') at the entry point"
        )
    return engine


def _check_engine(engine: str) -> None:
    active = str(torch.backends.quantized.engine)
    if active != engine:
        raise RuntimeError(
            f"this int8 model was quantised for the {engine!r} engine but torch's active "
            f"quantized engine is now {active!r}; set it back once at the entry point "
            f"(hohoho_core.runtime.configure_torch(quantized_engine={engine!r}))"
        )


def int8_qconfig_mapping(engine: str, flags: frozenset[str]) -> Any:
    """The observers `quantize_int8` uses: weights per channel, activations by the CPU.

    Without VNNI, x86 int8 kernels add pairs of products in 16 bits, which can saturate,
    so torch's default stays (activations on 7 bits, histogram-fitted ranges). With VNNI
    or AMX the sums go straight to 32 bits: activations get all 8 bits and their full
    observed range (min-max; the histogram fit clips the tails, and the clipped slices are
    the ones whose probabilities moved most). Measured with the shipped weights on the
    2-core AVX-512 Xeon, largest |dp| against fp32: 0.269 -> 0.110 over 1,214 slices of 40
    own validation studies (seed 2020), 0.081 -> 0.044 over the test split's first 598
    slices; min-max on 7 bits was worse (0.45).
    """
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    if int8_recipe(flags, engine) != "vnni-minmax8":
        return get_default_qconfig_mapping(engine)
    qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                  qscheme=torch.per_channel_symmetric))
    # Torch's per-op entries (fixed ranges for sigmoid, shared ones for reshapes) stay.
    mapping: QConfigMapping = get_default_qconfig_mapping(engine)
    return mapping.set_global(qconfig)


def quantize_int8(cnn: SliceClassifier, calibration: torch.Tensor,
                  flags: frozenset[str] | None = None) -> nn.Module:
    """A static int8 copy of ``cnn``'s backbone (FX graph mode), its head kept in fp32.

    Weights are quantised per channel, activations per tensor with ranges observed on
    ``calibration`` (float32 ``[N, 3, H, W]`` model inputs in [0, 1], a few dozen slices);
    how depends on the CPU (``flags``, this one's by default: `int8_qconfig_mapping`).
    On CPUs with VNNI/AMX-int8 this runs several times faster than fp32, but probabilities
    move by up to a few 1e-2, so it is only acceptable where macro F2 on held-out data stays
    within 0.005 of fp32 (``bench/run_all.py --only study`` checks that on the synthetic test
    split of the shipped weights). CPU only. Uses torch's active quantized engine (set by
    the entry point, `runtime.configure_torch`) and never changes it.
    """
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    calib = torch.as_tensor(calibration, dtype=torch.float32).cpu()
    want = int(cnn.mean.shape[1])
    if calib.ndim != 4 or calib.shape[1] != want or calib.shape[0] == 0:
        raise ValueError(f"calibration must be [N, {want}, H, W], got {tuple(calib.shape)}")
    engine = _active_engine()
    mean = cnn.mean.detach().cpu()
    std = cnn.std.detach().cpu()
    backbone = copy.deepcopy(cnn.backbone).cpu().eval()
    backbone = backbone.to(memory_format=torch.contiguous_format)
    example = ((calib[:1] - mean) / std,)
    with warnings.catch_warnings():
        # torch.ao's FX quantisation and quantized tensors announce their deprecation (the
        # successor, torchao, is not installed) and the x86 qconfig warns about reduce_range:
        # known and harmless in this torch (2.14); the fp32 default never takes this path.
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize")
        qconfig = int8_qconfig_mapping(engine, cpu_flags() if flags is None else flags)
        prepared = prepare_fx(backbone, qconfig, example_inputs=example)
        with torch.inference_mode():
            for chunk in calib.split(16):
                prepared((chunk - mean) / std)
        quantized = convert_fx(prepared)
    return _QuantizedClassifier(quantized, cnn, engine).eval()


def calibration_input(studies: Sequence[np.ndarray], cfg: PreprocessConfig) -> np.ndarray:
    """HU calibration studies (`weights.load_calibration`) -> int8 calibration input.

    Each ``[S, H, W]`` study is preprocessed on its own, as `Predictor.preprocess` would;
    returns float32 ``[sum S, 3, cfg.size, cfg.size]`` in saved order.
    """
    if not studies:
        raise ValueError("no calibration studies")
    return np.concatenate([make_input(np.asarray(hu, dtype=np.float32), cfg) for hu in studies])


@dataclass
class CnnTiming:
    """Seconds spent in the CNN's forward passes and the (real, unpadded) slices they ran."""

    seconds: float = 0.0
    slices: int = 0

    @property
    def rate(self) -> float:
        """Slices per second while the CNN ran (0 before any)."""
        return self.slices / self.seconds if self.seconds > 0 else 0.0


class PreparedInput(Protocol):
    """What `Predictor.predict_stream` needs of an item (`batch.PreparedStudy` has it)."""

    study_uid: str
    series_uid: str
    image_ids: list[str]
    x: np.ndarray | None


_P = TypeVar("_P", bound=PreparedInput)
#: One CNN batch's (embeddings, logits, start, end); times by ``time.perf_counter``.
_Ran = tuple[torch.Tensor, torch.Tensor, float, float]


@dataclass
class _Pending(Generic[_P]):
    """A study of the stream whose slices are still (partly) waiting for the CNN."""

    item: _P
    left: int  # slices not yet through the CNN
    embs: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)


#: How a `Predictor` reads a series thinner than its trained spacing: "off" (slice by
#: slice), "blocks" (slabs, each slice given its slab's calls) or "sliding" (a thick
#: reformat centred on every slice, the sequence model over phases); the rules in
#: docs/rules/ (2026-12-02-thin-slabs.md, 2026-12-02-sliding-slabs.md) decide the default.
THIN_SLABS = "off"


class Predictor:
    """Runs a loaded model on whole studies.

    Args:
        cnn: stage-1 `SliceClassifier`.
        lstm: stage-2 `SequenceModel` or None.
        config: the weights' `ModelConfig` (preprocessing and thresholds).
        device: "cpu", "cuda", "cuda:1", ...
        batch_size: slices per CNN forward pass.
        precision: "fp32" (default: same probabilities as the plain model up to rounding),
            "bf16" (`bf16_script`; probabilities move by about 1e-2) or "int8"
            (`quantize_int8`, CPU only, probabilities within a few 1e-2; see
            bench/README.md before using it). int8 uses torch's active quantized engine,
            which the entry point selects (`runtime.configure_torch`).
        precision_note: why this path runs (`precision.Resolution.describe`), for display.
        engine: what runs the fp32 CNN on the CPU: "onnxruntime" (`onnx_cnn`: the same
            fp32 arithmetic, faster kernels), "torch", or "auto" (the default):
            onnxruntime where it is installed and exports this model, torch otherwise.
            bf16, int8 and GPUs always run in torch. ``self.engine`` says which ran.
        calibration: int8 only: model inputs ``[N, 3, H, W]`` to calibrate on. None
            calibrates on the first study predicted (its own slices); `from_folder` passes
            the folder's ``calibration.safetensors`` when there is one.
        lanes: CPU only: CNN batches `predict_stream` runs at once, each in its own thread
            (`default_lanes`). With 2 lanes of 1 thread the next studies are read while
            both cores run the CNN; the entry point sets torch's threads per lane. Each
            batch's output is the same whichever lane runs it.

    Threads and other process-wide torch settings are the entry point's
    (`runtime.configure_torch`); constructing a `Predictor` leaves them as they are.

    ``predict`` runs `inference_twin` (a batch-norm-folded copy made here), so weights
    changed in ``cnn`` after construction are not seen by it: build a new `Predictor`.
    ``self.cnn`` stays the model given, for saliency methods that hook its layers.
    """

    def __init__(
        self,
        cnn: SliceClassifier,
        lstm: SequenceModel | None,
        config: ModelConfig,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        precision: str = "fp32",
        calibration: np.ndarray | torch.Tensor | None = None,
        precision_note: str | None = None,
        engine: str = "auto",
        lanes: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.device = torch.device(device)
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if lanes > 1 and self.device.type != "cpu":
            raise ValueError(f"lanes > 1 run the CNN on the CPU only, not on {self.device}")
        self.lanes = lanes
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError("precision 'int8' runs on the CPU only")
        self.config = config
        self.preprocess_config: PreprocessConfig = config.preprocess
        self.thin_slabs = THIN_SLABS
        self.batch_size = batch_size
        self.precision = precision
        self.precision_note = precision_note or f"{precision} (requested)"
        self.cnn = cnn.eval().to(self.device, memory_format=torch.channels_last)
        # One lock per predictor: the app shares it across sessions, and a lazily
        # calibrated int8 model must be built once.
        self._lock = threading.Lock()
        self._infer_cnn: nn.Module | OnnxCnn | None = None
        onnx_ok = precision == "fp32" and self.device.type == "cpu"
        if engine == "onnxruntime" and not onnx_ok:
            raise ValueError("engine 'onnxruntime' runs the fp32 CNN on the CPU only")
        self.engine = "torch"
        if precision == "int8":
            _active_engine()  # fail now, not at the first study, without an int8 engine
            if calibration is not None:
                self._infer_cnn = quantize_int8(self.cnn, torch.as_tensor(calibration))
        else:
            twin = inference_twin(self.cnn)
            self._infer_cnn = twin.to(memory_format=torch.channels_last)
            if precision == "bf16" and self.device.type == "cpu":
                scripted = bf16_script(twin, config.preprocess.channels, config.preprocess.size)
                if scripted is not None:
                    self._infer_cnn, self.engine = scripted, "torch (TorchScript)"
            if onnx_ok and engine != "torch":
                fast = onnx_cnn(twin, config.preprocess.channels, config.preprocess.size,
                                torch.get_num_threads())
                if fast is None and engine == "onnxruntime":
                    raise ValueError("engine 'onnxruntime' asked for, but onnxruntime (or "
                                     "onnx) is not installed or cannot run this model")
                if fast is not None:
                    self._infer_cnn, self.engine = fast, "onnxruntime"
        self.lstm = lstm.eval().to(self.device) if lstm is not None else None
        self.thresholds = np.asarray(config.thresholds, dtype=np.float64)
        # Calibration (temperature per class, fitted on validation): 1 = the raw model.
        ones = [1.0] * len(config.classes)
        self.temperatures = np.asarray(config.temperatures or ones, dtype=np.float32)
        self.cnn_temperatures = np.asarray(config.cnn_temperatures or ones, dtype=np.float32)
        self.classes: tuple[str, ...] = tuple(config.classes)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        precision: str = "auto",
        calibration: np.ndarray | torch.Tensor | None = None,
        engine: str = "auto",
        lanes: int = 1,
    ) -> Predictor:
        """Load a weights folder (`weights.load_weights`; raises `WeightsError`).

        ``precision="auto"`` resolves with the folder's ``precision.json`` and this CPU
        (`resolve_precision`; fp32 without a table). int8 without ``calibration`` calibrates on the folder's calibration studies
        (`weights.load_calibration`) when it has them, else on the first study predicted.
        """
        resolution = resolve_folder_precision(path, precision, device)
        precision = resolution.precision
        cnn, lstm, config = load_weights(path)
        if precision == "int8" and calibration is None:
            studies = load_calibration(path)
            if studies is not None:
                calibration = calibration_input(studies, config.preprocess)
        return cls(cnn, lstm, config, device=device, batch_size=batch_size,
                   precision=precision, calibration=calibration,
                   precision_note=resolution.describe(), engine=engine, lanes=lanes)

    def preprocess(self, study: Study) -> np.ndarray:
        """The study's model input: float32 ``[S, C, size, size]`` in [0, 1] (C: the mode's)."""
        return make_input(study.hu, self.preprocess_config)

    def predict_input(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed input ``[S, C, H, W]`` -> (embeddings ``(S, D)``, logits ``(S, K)``).

        Both float32 NumPy arrays, computed in batches of ``batch_size``.
        """
        t = self._checked_input(x)
        model = self._cnn_for(t)
        embs, logits = [], []
        for start in range(0, t.shape[0], self.batch_size):
            e, lg = self._forward(model, t[start : start + self.batch_size])
            embs.append(e)
            logits.append(lg)
        if not embs:
            raise ValueError("input has no slices")
        return torch.cat(embs).numpy(), torch.cat(logits).numpy()

    def _checked_input(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float32)
        want = self.preprocess_config.channels
        if t.ndim != 4 or t.shape[1] != want:
            raise ValueError(f"expected input [S, {want}, H, W], got {tuple(t.shape)}")
        return t

    @property
    def path_note(self) -> str:
        """The arithmetic and what ran it, for the CLI and the app."""
        lanes = "" if self.lanes == 1 else f" in {self.lanes} lanes"
        return f"{self.precision_note}; CNN run by {self.engine}{lanes}"

    def _forward(self, model: nn.Module | OnnxCnn,
                 chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One CNN batch -> (embeddings, logits), float32 on the CPU."""
        if isinstance(model, OnnxCnn):
            return model(chunk)
        with torch.inference_mode():
            chunk = chunk.to(self.device).contiguous(memory_format=torch.channels_last)
            if isinstance(model, torch.jit.ScriptModule):  # bf16 inside, float32 out
                return model(chunk)
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.precision == "bf16"):
                e, lg = model(chunk)
            return e.float().cpu(), lg.float().cpu()

    def predict_stream(
        self, items: Iterable[_P], *, timing: CnnTiming | None = None
    ) -> Iterator[tuple[_P, StudyPrediction | None]]:
        """``(item, prediction)`` for each prepared study of ``items``, in their order.

        The batch path (``python -m hohoho_core predict``): the CNN runs over full batches
        of ``batch_size`` slices that may span studies, instead of one study at a time with
        a small last batch per study, so a GPU can take batches larger than any study. The
        last batch of the stream is padded with zeros to ``batch_size``, so every slice
        goes through a batch of the same size: a slice's output then does not depend on
        which studies came before it (this CPU's kernels for batches of 1 and 3 slices round
        differently from those for 16), and
        a resumed run writes what an uninterrupted one writes
        (tests/test_batch.py::test_stream_output_does_not_depend_on_the_studies_before).
        Results may differ from per-study `predict` by float rounding (about 1e-7) where
        its last batch was very small.

        An item with ``x is None`` (a series with no usable slice) yields ``None`` in its
        place. A study is yielded once all of its slices have run; at most the studies of
        ``lanes`` batches are held. With ``lanes > 1`` the batches run in that many threads
        while this generator goes on reading its items; studies still come out in their
        order. ``timing``, when given, adds up the seconds in which the CNN ran (lanes that
        overlap counted once) and the slices it ran (the run's own "CNN alone" rate).
        """
        b = self.batch_size
        pending: deque[_Pending[_P]] = deque()
        chunks: list[tuple[_Pending[_P], torch.Tensor]] = []
        filled = 0
        model: nn.Module | OnnxCnn | None = None
        # Batches handed to the lanes and not yet delivered, oldest first: at most one per
        # lane, so memory stays at ``lanes`` batches whatever the stream's length.
        running: deque[tuple[Future[_Ran], list[tuple[_Pending[_P], torch.Tensor]], int]]
        running = deque()
        pool = (ThreadPoolExecutor(self.lanes, thread_name_prefix="hohoho-cnn")
                if self.lanes > 1 else None)
        covered = 0.0  # end of the CNN's busy time counted so far (lanes overlap)

        def deliver(ran: _Ran, batch: list[tuple[_Pending[_P], torch.Tensor]],
                    n: int) -> None:
            nonlocal covered
            e, lg, start, end = ran
            if timing is not None:
                # Seconds in which at least one lane ran the CNN: overlapping lanes are
                # counted once, so the rate is the CNN's, not the sum of the lanes' times.
                timing.seconds += max(0.0, end - max(start, covered))
                timing.slices += n
            covered = max(covered, end)
            at = 0
            for entry, c in batch:
                entry.embs.append(e[at : at + len(c)])
                entry.logits.append(lg[at : at + len(c)])
                entry.left -= len(c)
                at += len(c)

        def run_batch() -> None:
            nonlocal filled
            assert model is not None
            x = torch.cat([c for _, c in chunks])
            if len(x) < b:  # the stream's last batch: same size as all the others
                x = torch.cat([x, x.new_zeros((b - len(x), *x.shape[1:]))])
            batch, n = list(chunks), filled
            chunks.clear()
            filled = 0
            if pool is None:
                deliver(self._timed_forward(model, x), batch, n)
                return
            while len(running) >= self.lanes:
                collect()
            running.append((pool.submit(self._timed_forward, model, x), batch, n))

        def collect() -> None:
            future, batch, n = running.popleft()
            deliver(future.result(), batch, n)  # a lane's error is raised here

        def finished() -> Iterator[tuple[_P, StudyPrediction | None]]:
            while pending and pending[0].left == 0:
                entry = pending.popleft()
                if entry.item.x is None:
                    yield entry.item, None
                    continue
                emb = torch.cat(entry.embs).numpy()
                logits = torch.cat(entry.logits).numpy()
                item = entry.item
                # slice_spacing is optional on an item (PreparedInput needs only the rest)
                yield item, self._prediction(emb, logits, item.study_uid, item.series_uid,
                                             item.image_ids,
                                             getattr(item, "slice_spacing", None))

        try:
            for item in items:
                if item.x is None:
                    pending.append(_Pending(item, 0))
                    yield from finished()
                    continue
                t = self._checked_input(item.x)
                if len(item.image_ids) != len(t):
                    raise ValueError(f"{len(item.image_ids)} image ids for {len(t)} slices")
                if len(t) == 0:
                    raise ValueError("input has no slices")
                if model is None:
                    model = self._cnn_for(t)
                entry = _Pending(item, len(t))
                pending.append(entry)
                at = 0
                while at < len(t):
                    take = min(b - filled, len(t) - at)
                    chunks.append((entry, t[at : at + take]))
                    filled += take
                    at += take
                    if filled == b:
                        run_batch()
                        yield from finished()
                # Deliver what the lanes have done without waiting, so a finished study
                # is written while the next one is read.
                while running and running[0][0].done():
                    collect()
                yield from finished()
            if chunks:
                run_batch()
            while running:
                collect()
            yield from finished()
        finally:
            if pool is not None:
                # Stopped early (Ctrl-C, an error, the caller closing the stream): the
                # lanes finish their batch and end; nothing is left running.
                pool.shutdown(wait=True, cancel_futures=True)

    def _timed_forward(self, model: nn.Module | OnnxCnn, x: torch.Tensor) -> _Ran:
        """`_forward` with its start and end (``time.perf_counter``); runs in a lane."""
        start = time.perf_counter()
        e, lg = self._forward(model, x)
        return e, lg, start, time.perf_counter()

    def _cnn_for(self, first_input: torch.Tensor) -> nn.Module | OnnxCnn:
        """The inference CNN; an uncalibrated int8 one is calibrated on ``first_input``."""
        if self._infer_cnn is None:
            with self._lock:
                if self._infer_cnn is None:
                    if first_input.shape[0] == 0:
                        raise ValueError("input has no slices")
                    self._infer_cnn = quantize_int8(self.cnn, first_input)
        return self._infer_cnn

    def sequence_prob(self, emb: np.ndarray, logits: np.ndarray,
                      phases: int = 1) -> np.ndarray | None:
        """Stage-2 probabilities ``(S, K)`` for one study, or None without a sequence model.

        ``phases > 1``: the model runs on every ``phases``-th slice separately (slices
        ``r, r + phases, ...`` for each ``r``), each slice taking its own phase's output: a
        thin series read at steps the model was trained on (`sliding_for`).
        """
        if self.lstm is None:
            return None
        if phases > 1:
            out = np.empty(logits.shape, dtype=np.float32)
            for r in range(min(phases, len(logits))):
                out[r::phases] = self._sequence_prob(emb[r::phases], logits[r::phases])
            return out
        return self._sequence_prob(emb, logits)

    def _sequence_prob(self, emb: np.ndarray, logits: np.ndarray) -> np.ndarray:
        assert self.lstm is not None
        e = torch.as_tensor(emb, dtype=torch.float32)[None].to(self.device)
        mask = torch.ones(e.shape[:2], dtype=torch.bool, device=self.device)
        lg = torch.as_tensor(logits, dtype=torch.float32)[None].to(self.device)
        with torch.inference_mode():
            out = self.lstm(e, mask, lg if self.lstm.use_logits else None)
        out = out[0].float().cpu() / torch.from_numpy(self.temperatures)
        return torch.sigmoid(out).numpy()

    def predict(self, study: Study) -> StudyPrediction:
        """Run the whole pipeline on one sorted study (a thin series as ``thin_slabs``
        says, `model_volume`)."""
        spacing = measured_spacing(study)
        hu, groups = self.model_volume(study.hu, spacing)
        x = make_input(hu, self.preprocess_config)
        if groups is None:
            return self.predict_prepared(x, study.study_uid, study.series_uid,
                                         list(study.image_ids), slice_spacing=spacing)
        ids = list(study.image_ids)
        slab = self.predict_prepared(x, study.study_uid, study.series_uid,
                                     slab_ids(ids, groups))
        return self.expand_slabs(slab, groups, ids, float(spacing or 0.0))

    @property
    def thin_slabs(self) -> str:
        """How a series thinner than the trained spacing is read (`spacing.THIN_MODES`:
        `slabs_for`, `sliding_for`); the default is `THIN_SLABS`, an entry point may set
        it per run (ValueError for an unknown mode, or "sliding" with an input that stacks
        neighbouring slices: those would be reformats one thin spacing apart, not the
        trained steps)."""
        return self._thin_slabs

    @thin_slabs.setter
    def thin_slabs(self, mode: str) -> None:
        if mode not in THIN_MODES:
            raise ValueError(f"thin_slabs must be one of {THIN_MODES}, got {mode!r}")
        if mode == "sliding" and self.preprocess_config.centre_channel != 0:
            raise ValueError(f"thin_slabs 'sliding' needs a one-slice input; these weights "
                             f"stack neighbouring slices (mode {self.preprocess_config.mode})")
        self._thin_slabs = mode

    def _thin_slab_mm(self, slice_spacing: float | None) -> float | None:
        """The slab thickness for a series read in a thin mode (the middle of the trained
        range: 4.5 mm for 3-6 mm), or None: mode off, or a spacing not below the trained
        range by more than the tolerance."""
        trained = trained_spacing(self.config.data)
        if (self.thin_slabs == "off" or slice_spacing is None or trained is None
                or not 0 < slice_spacing < trained[0] / SPACING_TOLERANCE):
            return None
        return sum(trained) / 2

    def slabs_for(self, slice_spacing: float | None, n_slices: int) -> np.ndarray | None:
        """Slab index per slice (`spacing.slab_groups`) for a series this model reads as
        slabs: ``thin_slabs == "blocks"``, a measured spacing below the trained range by
        more than the tolerance, and at least two slices to a slab; else None."""
        slab_mm = self._thin_slab_mm(slice_spacing)
        if self.thin_slabs != "blocks" or slab_mm is None or slice_spacing is None:
            return None
        groups = slab_groups(n_slices, slice_spacing, slab_mm=slab_mm)
        return groups if int(np.bincount(groups).max()) >= 2 else None

    def sliding_for(self, slice_spacing: float | None) -> float | None:
        """The reformat thickness (mm) for a series this model reads as sliding slabs
        (`spacing.sliding_reformat`, the sequence model over `spacing.phase_stride`
        phases): ``thin_slabs == "sliding"`` and a measured spacing below the trained
        range by more than the tolerance; else None."""
        slab_mm = self._thin_slab_mm(slice_spacing)
        return slab_mm if self.thin_slabs == "sliding" else None

    def model_volume(self, hu: np.ndarray, slice_spacing: float | None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """What the model reads of a series' HU volume: ``(volume, groups)``.

        Slice by slice: ``hu`` itself and None. Blocks (`slabs_for`):
        the slabs' mean HU and the slab index per slice (`expand_slabs` gives the
        slabs' calls back). Sliding (`sliding_for`): a reformat per slice and None.
        """
        groups = self.slabs_for(slice_spacing, len(hu))
        if groups is not None:
            return average_slabs(hu, groups), groups
        slab_mm = self.sliding_for(slice_spacing)
        if slab_mm is not None and slice_spacing is not None:
            return sliding_reformat(hu, slice_spacing, slab_mm), None
        return hu, None

    def model_input(self, study: Study) -> np.ndarray:
        """What the CNN read for each slice of ``study`` (``[S, C, H, W]``, as `predict`
        reads it: the slice itself, its slab's input, or its reformat), for saliency."""
        hu, groups = self.model_volume(study.hu, measured_spacing(study))
        x = make_input(hu, self.preprocess_config)
        return x if groups is None else x[groups]

    def expand_slabs(self, slab: StudyPrediction, groups: np.ndarray, image_ids: Sequence[str],
                     slice_spacing: float) -> StudyPrediction:
        """A prediction made on slabs, given back to every slice of the series."""
        trained = trained_spacing(self.config.data)
        if trained is None:
            raise ValueError("this model states no trained slice spacing")
        prob = slab.prob[groups]
        labels = slab.labels[groups]
        return replace(
            slab, image_ids=list(image_ids), cnn_prob=slab.cnn_prob[groups],
            lstm_prob=None if slab.lstm_prob is None else slab.lstm_prob[groups], prob=prob,
            embeddings=slab.embeddings[groups], labels=labels,
            summary=summarise(prob, labels, self.classes),
            notes=(slab_note(slice_spacing, trained, groups),))

    def predict_prepared(
        self, x: np.ndarray, study_uid: str, series_uid: str, image_ids: Sequence[str],
        slice_spacing: float | None = None,
    ) -> StudyPrediction:
        """`predict` from the study's model input ``[S, C, H, W]`` (`preprocess`'s output).

        What a batch pipeline calls when the preprocessing ran in another process; the
        same input gives the same bits as `predict`. ``slice_spacing`` (mm), when known,
        is checked against the model's training range (`input_notes`). With
        ``thin_slabs == "sliding"`` and a thin ``slice_spacing``, ``x`` must be made from
        `model_volume`'s reformat (the sequence model then runs over phases); a series
        read as blocks comes through `expand_slabs` instead.
        """
        if len(image_ids) != len(x):
            raise ValueError(f"{len(image_ids)} image ids for {len(x)} slices")
        emb, logits = self.predict_input(x)
        return self._prediction(emb, logits, study_uid, series_uid, image_ids, slice_spacing)

    def input_notes(self, slice_spacing: float | None) -> tuple[str, ...]:
        """Notes on a series this model was not trained for (`StudyPrediction.notes`)."""
        if slice_spacing is None:
            return ()
        note = spacing_note(float(slice_spacing), trained_spacing(self.config.data))
        return () if note is None else (note,)

    def _prediction(self, emb: np.ndarray, logits: np.ndarray, study_uid: str, series_uid: str,
                    image_ids: Sequence[str], slice_spacing: float | None = None
                    ) -> StudyPrediction:
        """The CNN's output for one study -> calibrated probabilities, sequence model, labels."""
        cnn_prob = torch.sigmoid(torch.from_numpy(logits / self.cnn_temperatures)).numpy()
        slab_mm = self.sliding_for(slice_spacing)
        phases = 1
        notes = self.input_notes(slice_spacing)
        if slab_mm is not None and slice_spacing is not None:
            # read as sliding slabs (`model_volume`): the sequence model over phases
            phases = phase_stride(slice_spacing, slab_mm)
            trained = trained_spacing(self.config.data)
            assert trained is not None
            notes = (sliding_note(slice_spacing, trained, slab_mm, self.lstm is not None),)
        lstm_prob = self.sequence_prob(emb, logits, phases=phases)
        prob = lstm_prob if lstm_prob is not None else cnn_prob
        labels = prob >= self.thresholds[None, :]
        return StudyPrediction(
            study_uid=study_uid,
            series_uid=series_uid,
            image_ids=list(image_ids),
            cnn_prob=cnn_prob,
            lstm_prob=lstm_prob,
            prob=prob,
            embeddings=emb,
            labels=labels,
            thresholds=self.thresholds.copy(),
            summary=summarise(prob, labels, self.classes),
            classes=self.classes,
            notes=notes,
        )


def resolve_folder_precision(
    folder: str | Path, precision: str = "auto", device: str | torch.device = "cpu"
) -> Resolution:
    """The path `Predictor.from_folder` runs for ``precision`` on this machine's CPU."""
    if precision != "auto":
        return resolve_precision(precision, None, (), ())
    try:
        table = read_table(folder)
    except ValueError as err:
        raise WeightsError(str(err)) from None
    return resolve_precision(
        "auto", table, cpu_flags(), torch.backends.quantized.supported_engines,
        torch.device(device).type,
    )


def submission_id(image_id: str, cls: str) -> str:
    """RSNA submission row id ``ID_<image>_<class>``; an ``ID_`` prefix is not doubled."""
    return row_id(image_id, cls)


def prediction_record(pred: StudyPrediction) -> dict[str, Any]:
    """JSON-ready dict of one `StudyPrediction` (probabilities as nested lists ``S x K``)."""
    return {
        "study_uid": pred.study_uid,
        "series_uid": pred.series_uid,
        "classes": list(pred.classes),
        "image_ids": list(pred.image_ids),
        "prob": pred.prob.astype(float).tolist(),
        "cnn_prob": pred.cnn_prob.astype(float).tolist(),
        "lstm_prob": None if pred.lstm_prob is None else pred.lstm_prob.astype(float).tolist(),
        "labels": pred.labels.astype(int).tolist(),
        "thresholds": pred.thresholds.astype(float).tolist(),
        "summary": pred.summary.to_dict(),
        "notes": list(pred.notes),
    }


def studies_path(out: Path) -> Path:
    """Where the per-study summary goes beside a CSV output: ``<stem>_studies.csv``."""
    return out.with_name(f"{out.stem}_studies.csv")


def write_predictions(records: Sequence[dict[str, Any]], out: str | Path) -> list[Path]:
    """Write `prediction_record` dicts to ``out``.

    ``.csv``: the RSNA submission format (header ``ID,Label``; six rows per image,
    ``ID_<image>_<class>`` with the final probability) plus ``<stem>_studies.csv`` (study_uid,
    series_uid, n_slices, ``max_<class>``, ``positive_<class>`` as 0/1, ``notes``: the
    series' `StudyPrediction.notes`, ``|``-joined). ``.json``: one
    object with every record (per-slice probabilities and study summaries).

    Returns:
        The files written.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"output must end in .csv or .json, got {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        doc = {"classes": list(CLASSES), "studies": list(records)}
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return [out]
    image_ids: list[str] = []
    probs: list[np.ndarray] = [np.empty((0, len(CLASSES)))]
    for rec in records:
        # Columns in CLASSES order whatever order the record lists them in.
        cols = [list(rec["classes"]).index(c) for c in CLASSES]
        prob = np.asarray(rec["prob"], dtype=np.float64).reshape(-1, len(rec["classes"]))
        image_ids += rec["image_ids"]
        probs.append(prob[:, cols])
    write_rsna_csv(out, image_ids, np.concatenate(probs), kind="probabilities")
    summary_path = studies_path(out)
    with atomic_open(summary_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["study_uid", "series_uid", "n_slices"]
            + [f"max_{c}" for c in CLASSES]
            + [f"positive_{c}" for c in CLASSES]
            + ["notes"]
        )
        for rec in records:
            s = rec["summary"]
            w.writerow(
                # UIDs come from the files: one starting "=" must not become a formula.
                [safe_cell(rec["study_uid"]), safe_cell(rec["series_uid"]), s["n_slices"]]
                + [f"{s['max_prob'][c]:.6g}" for c in CLASSES]
                + [int(s["positive"][c]) for c in CLASSES]
                + [safe_cell(" | ".join(rec.get("notes") or []))]
            )
    return [out, summary_path]
