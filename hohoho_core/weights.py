"""The weights format: a folder with ``model.safetensors`` and ``config.json``.

``model.safetensors`` holds the slice CNN's tensors under ``cnn.*`` and, when there is a
sequence model, its tensors under ``lstm.*`` (float16 allowed: cast back to float32 on
load). ``config.json`` (`ModelConfig`) says how to rebuild the models and how to
preprocess for them, which thresholds to apply, and how the model was trained and scored.

Pickles are never read: unpickling can execute arbitrary code, so ``*.pt``/``*.pth``/
``*.bin``/``*.pkl``/``*.ckpt`` files and a pickle renamed ``model.safetensors`` are refused
with `WeightsError`. Nothing here calls ``torch.load`` or ``pickle``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from hohoho_core.atomic import atomic_path, atomic_write_text
from hohoho_core.labels import CLASSES
from hohoho_core.models import (
    MODEL_NAMES,
    LstmConfig,
    SequenceModel,
    SliceClassifier,
    create_model,
)
from hohoho_core.preprocess import PreprocessConfig
from hohoho_core.spacing import trained_spacing
from hohoho_core.strictjson import finite_json
from hohoho_core.weights_dir import WEIGHTS_ENV, default_weights_dir, shipped_weights_dir

__all__ = [
    "CALIBRATION_FILE",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "PICKLE_SUFFIXES",
    "TENSORS_FILE",
    "WEIGHTS_ENV",
    "LoadedModel",
    "LstmConfig",
    "ModelConfig",
    "PreprocessConfig",
    "WeightsError",
    "default_weights_dir",
    "shipped_weights_dir",
    "load_calibration",
    "load_weights",
    "save_calibration",
    "save_weights",
]

FORMAT_VERSION = 1
TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Optional int8 calibration studies beside the weights (`save_calibration`).
CALIBRATION_FILE = "calibration.safetensors"
PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib")
_WHY_NO_PICKLE = (
    "pickled checkpoints are refused because loading a pickle can run arbitrary code; "
    "convert it once, in a trusted environment, with hohoho_core.weights.save_weights"
)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit for the JSON header


class WeightsError(ValueError):
    """A weights folder that cannot be used (missing, pickled, or not matching its config)."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild, run and judge a model; saved as ``config.json``.

    Attributes:
        version: format version (`FORMAT_VERSION`).
        arch: registered backbone name (`models.MODEL_NAMES`).
        embed_dim: the backbone's embedding size ``D``.
        classes: output columns, ``labels.CLASSES``.
        preprocess: `preprocess.PreprocessConfig` (mode, size, crop, window(s)).
        lstm: `models.LstmConfig` (the `SequenceModel` settings) or None for CNN only.
        thresholds: per-class thresholds for the final output (LSTM when present).
        cnn_thresholds: optional per-class thresholds for the CNN output alone.
        temperatures: optional per-class temperatures of the final output: its probability
            is ``sigmoid(logit / T)`` (`calibration.fit_temperature`, fitted on validation);
            thresholds apply to these calibrated probabilities.
        cnn_temperatures: the same for the CNN output alone (the LSTM still reads the raw
            CNN logits).
        training: the resolved training arguments.
        data: what it was trained on (description, counts, folds).
        metrics: measured validation metrics.
        created: ISO 8601 UTC time of saving (filled in by `save_weights` when empty).

    ``preprocess`` and ``lstm`` may be given as the JSON dicts; they are parsed into their
    dataclasses here, once, so consumers never re-parse them. ``to_dict`` writes them back
    as dicts: ``config.json`` keeps its layout.
    """

    arch: str = "resnet18"
    embed_dim: int = 512
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    lstm: LstmConfig | None = None
    thresholds: list[float] = field(default_factory=lambda: [0.5] * len(CLASSES))
    cnn_thresholds: list[float] | None = None
    temperatures: list[float] | None = None
    cnn_temperatures: list[float] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, Mapping):
            try:
                self.preprocess = PreprocessConfig.from_dict(self.preprocess)
            except (TypeError, ValueError) as err:
                raise WeightsError(f"preprocess config is invalid: {err}") from None
        if isinstance(self.lstm, Mapping):
            if "in_dim" in self.lstm:
                raise WeightsError("lstm must be SequenceModel keyword arguments without in_dim")
            try:
                self.lstm = LstmConfig.from_dict(self.lstm)
            except (TypeError, ValueError) as err:
                raise WeightsError(f"lstm config is invalid: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in ``config.json``'s layout (nested configs as dicts)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("training", "data", "metrics"):
            d[name] = copy.deepcopy(d[name])
        d["classes"] = list(self.classes)
        d["thresholds"] = list(self.thresholds)
        if self.cnn_thresholds is not None:
            d["cnn_thresholds"] = list(self.cnn_thresholds)
        for name in ("temperatures", "cnn_temperatures"):  # absent keys keep old layouts
            if d[name] is None:
                del d[name]
            else:
                d[name] = [float(t) for t in d[name]]
        d["preprocess"] = self.preprocess.to_dict()
        d["lstm"] = None if self.lstm is None else self.lstm.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Build and validate; unknown keys or a newer format version are a `WeightsError`."""
        if not isinstance(d, Mapping):
            raise WeightsError(f"config.json must hold a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise WeightsError(f"config.json has unknown keys {unknown}")
        try:
            cfg = cls(**dict(d))
        except (TypeError, ValueError) as err:
            raise WeightsError(f"config.json is malformed: {err}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check values that a model can be rebuilt from; raises `WeightsError`."""
        if not isinstance(self.version, int) or self.version > FORMAT_VERSION:
            raise WeightsError(
                f"weights format version {self.version!r} is newer than this code "
                f"({FORMAT_VERSION}); update HOHOHO"
            )
        # Types and ranges first, before anything is built from them: a config.json with
        # "thresholds": 5 or an LSTM of 10**9 units is a WeightsError, not a crash later.
        if not isinstance(self.arch, str) or self.arch not in MODEL_NAMES:
            raise WeightsError(f"unknown arch {self.arch!r}; known: {', '.join(MODEL_NAMES)}")
        if not _is_int(self.embed_dim) or not 1 <= self.embed_dim <= _MAX_WIDTH:
            raise WeightsError(f"embed_dim must be an integer in 1..{_MAX_WIDTH}")
        if not isinstance(self.classes, list | tuple) or list(self.classes) != list(CLASSES):
            raise WeightsError(f"classes must be the list {list(CLASSES)}")
        for name in ("thresholds", "cnn_thresholds"):
            thr = getattr(self, name)
            if thr is None and name == "cnn_thresholds":
                continue
            if (not isinstance(thr, list | tuple) or len(thr) != len(self.classes)
                    or not all(_is_number(t) and 0.0 <= t <= 1.0 for t in thr)):
                raise WeightsError(f"{name} must be a list of {len(self.classes)} numbers in [0, 1]")
        for name in ("training", "data", "metrics"):
            if not isinstance(getattr(self, name), Mapping):
                raise WeightsError(f"{name} must be a JSON object")
        try:
            trained_spacing(self.data)
        except ValueError as err:
            raise WeightsError(str(err)) from None
        if not isinstance(self.created, str):
            raise WeightsError("created must be a string")
        for name in ("temperatures", "cnn_temperatures"):
            temp = getattr(self, name)
            if temp is None:
                continue
            if (not isinstance(temp, (list, tuple)) or len(temp) != len(self.classes)
                    or not all(isinstance(t, (int, float)) and math.isfinite(t) and t > 0
                               for t in temp)):
                raise WeightsError(f"{name} must be {len(self.classes)} positive numbers")
        if not isinstance(self.preprocess, PreprocessConfig):
            raise WeightsError("preprocess must be a PreprocessConfig")
        if self.lstm is not None and not isinstance(self.lstm, LstmConfig):
            raise WeightsError("lstm must be an LstmConfig or None")
        if self.lstm is not None:
            _validate_lstm(self.lstm)


#: Largest embedding width and LSTM hidden size a config may ask for (resnet50's 2048 and
#: our 128 are far below); larger ones are a broken file, not a model to allocate.
_MAX_WIDTH = 8192
_MAX_LSTM_LAYERS = 16


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool) and math.isfinite(x)


def _validate_lstm(lstm: LstmConfig) -> None:
    """Types and sane ranges of the LSTM settings (``lstm`` in ``config.json``)."""
    if not _is_int(lstm.hidden) or not 1 <= lstm.hidden <= _MAX_WIDTH:
        raise WeightsError(f"lstm hidden must be an integer in 1..{_MAX_WIDTH}")
    if not _is_int(lstm.layers) or not 1 <= lstm.layers <= _MAX_LSTM_LAYERS:
        raise WeightsError(f"lstm layers must be an integer in 1..{_MAX_LSTM_LAYERS}")
    if not _is_number(lstm.dropout) or not 0.0 <= lstm.dropout < 1.0:
        raise WeightsError("lstm dropout must be a number in [0, 1)")
    for name in ("bidirectional", "use_logits", "use_diffs", "residual", "use_embeddings"):
        if not isinstance(getattr(lstm, name), bool):
            raise WeightsError(f"lstm {name} must be true or false")


class LoadedModel(NamedTuple):
    """What `load_weights` returns; unpacks as ``cnn, lstm, config``."""

    cnn: SliceClassifier
    lstm: SequenceModel | None
    config: ModelConfig


def _build(config: ModelConfig) -> tuple[SliceClassifier, SequenceModel | None]:
    cnn = create_model(config.arch, init="random", num_classes=len(config.classes),
                       in_channels=config.preprocess.channels)
    if cnn.embed_dim != config.embed_dim:
        raise WeightsError(
            f"config says embed_dim {config.embed_dim} but {config.arch} has {cnn.embed_dim}"
        )
    lstm = None
    if config.lstm is not None:
        try:
            lstm = config.lstm.build(config.embed_dim, num_classes=len(config.classes))
        except (TypeError, ValueError) as err:
            raise WeightsError(f"lstm config is invalid: {err}") from None
    return cnn, lstm


def _state(cnn: nn.Module, lstm: nn.Module | None) -> dict[str, torch.Tensor]:
    state = {f"cnn.{k}": v for k, v in cnn.state_dict().items()}
    if lstm is not None:
        state.update({f"lstm.{k}": v for k, v in lstm.state_dict().items()})
    return state


def save_weights(
    folder: str | Path,
    cnn: SliceClassifier,
    lstm: SequenceModel | None,
    config: ModelConfig,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``.

    ``config.arch``, ``embed_dim`` and ``lstm`` must describe the models given (an lstm
    config without a model, or the reverse, is an error). Floating tensors are stored as
    ``dtype`` (float16 halves the size; use float32 for bit-exact round trips).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    if config.arch != cnn.arch or config.embed_dim != cnn.embed_dim:
        raise WeightsError(
            f"config ({config.arch}, {config.embed_dim}) does not match the CNN "
            f"({cnn.arch}, {cnn.embed_dim})"
        )
    if (config.lstm is None) != (lstm is None):
        raise WeightsError("config.lstm must be set exactly when an lstm model is saved")
    config.validate()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not config.created:
        config.created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    tensors = {}
    for k, v in _state(cnn, lstm).items():
        t = v.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(dtype)
        tensors[k] = t.contiguous().clone()  # safetensors refuses shared storage
    # Rebuilding from the config must give exactly these tensors; check before writing.
    _check_tensors(config, tensors)
    # Serialise the config first: a value JSON cannot hold fails before anything is written.
    # Strict JSON: a metric that is NaN (a split without positives or without studies)
    # is stored as null, which every JSON reader accepts.
    text = json.dumps(finite_json(config.to_dict()), indent=2, default=_json_default,
                      allow_nan=False) + "\n"
    meta = {"format": "pt", "hohoho_format": str(FORMAT_VERSION), "arch": config.arch}
    with atomic_path(folder / TENSORS_FILE) as tmp:
        save_file(tensors, tmp, metadata=meta)
    atomic_write_text(folder / CONFIG_FILE, text)
    return folder


def _json_default(value: Any) -> Any:
    """JSON for values training scripts put in configs: NumPy scalars and arrays, paths."""
    if hasattr(value, "tolist"):  # NumPy scalars and arrays, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"config value of type {type(value).__name__} is not JSON serialisable")


def _refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"weights folder holds {', '.join(pickles[:3])}: {_WHY_NO_PICKLE}; "
            f"remove it from the folder"
        )


def _check_safetensors_file(path: Path) -> None:
    """Refuse a file that is not safetensors (e.g. a ``torch.save`` pickle renamed)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then a JSON object.
    n = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else -1
    if 0 < n <= _MAX_HEADER and 8 + n <= size and head[8:9] == b"{":
        return
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        kind = "it is a zip/pickle as written by torch.save"
    else:
        kind = "bad header"
    raise WeightsError(f"{path.name} is not a safetensors file ({kind}); {_WHY_NO_PICKLE}")


def _check_tensors(
    config: ModelConfig,
    tensors: Mapping[str, torch.Tensor],
    models: tuple[SliceClassifier, SequenceModel | None] | None = None,
) -> None:
    """Compare stored tensor names and shapes with the models the config describes.

    ``models``: already built from ``config``; otherwise they are built on the meta device
    (shapes only, no memory, no initialisation cost).
    """
    if models is None:
        with torch.device("meta"):
            models = _build(config)
    cnn, lstm = models
    expected = {k: tuple(v.shape) for k, v in _state(cnn, lstm).items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shaped = sorted(
        k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (first: {', '.join(missing[:4])})")
    if unexpected:
        problems.append(
            f"unexpected {len(unexpected)} tensors (first: {', '.join(unexpected[:4])})"
        )
    if shaped:
        first = ", ".join(f"{k} {tuple(tensors[k].shape)} vs {expected[k]}" for k in shaped[:3])
        problems.append(f"{len(shaped)} tensors with other shapes ({first})")
    if problems:
        raise WeightsError(
            f"{TENSORS_FILE} does not match config.json ({config.arch}, "
            f"lstm={'yes' if config.lstm is not None else 'no'}): " + "; ".join(problems)
        )


def _read_config(path: Path) -> ModelConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read {path.name}: {err}") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path.name} must hold a JSON object")
    return ModelConfig.from_dict(raw)


def load_weights(folder: str | Path) -> LoadedModel:
    """Load a weights folder into float32 models in eval mode.

    Raises:
        WeightsError: missing folder or files, a pickle in the folder, a non-safetensors
            ``model.safetensors``, or tensors that do not match the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder}")
    _refuse_pickles(folder)
    tensors_path, config_path = folder / TENSORS_FILE, folder / CONFIG_FILE
    if not tensors_path.is_file():
        raise WeightsError(f"{folder} has no {TENSORS_FILE}")
    if not config_path.is_file():
        raise WeightsError(f"{folder} has no {CONFIG_FILE}")
    config = _read_config(config_path)
    _check_safetensors_file(tensors_path)
    try:
        tensors = load_file(str(tensors_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"cannot read {TENSORS_FILE}: {err}") from None
    cnn, lstm = _build(config)
    _check_tensors(config, tensors, (cnn, lstm))
    for prefix, model in (("cnn.", cnn), ("lstm.", lstm)):
        if model is None:
            continue
        own = model.state_dict()
        state = {
            k[len(prefix) :]: v.to(own[k[len(prefix) :]].dtype)
            for k, v in tensors.items()
            if k.startswith(prefix)
        }
        model.load_state_dict(state, strict=True)
        model.eval()
    return LoadedModel(cnn, lstm, config)


def save_calibration(
    folder: str | Path, studies: Sequence[np.ndarray], description: str = ""
) -> Path:
    """Write int8 calibration studies beside the weights: ``folder/calibration.safetensors``.

    Args:
        folder: the weights folder.
        studies: HU volumes ``[S, H, W]`` (one per study, sorted slices). Stored as int16
            when every value is a whole number in int16 range (exact for CT), else float32.
        description: where the studies come from (saved in the file's metadata).

    Stored as HU, not as model input, so the `predict.Predictor` preprocesses them for its
    own config exactly as it would a user's study.

    Returns:
        The file written.
    """
    from safetensors.numpy import save_file

    if not studies:
        raise ValueError("calibration needs at least one study")
    tensors: dict[str, np.ndarray] = {}
    for i, hu in enumerate(studies):
        arr = np.asarray(hu)
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(f"calibration study {i} must be [S, H, W], got {arr.shape}")
        whole = np.array_equal(arr, np.round(arr))
        fits = arr.size and arr.min() >= -32768 and arr.max() <= 32767
        dtype = np.int16 if whole and fits else np.float32
        tensors[f"study_{i:03d}"] = np.ascontiguousarray(arr.astype(dtype))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CALIBRATION_FILE
    meta = {"hohoho_format": str(FORMAT_VERSION), "kind": "int8 calibration studies (HU)",
            "description": description}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


def load_calibration(folder: str | Path) -> list[np.ndarray] | None:
    """The calibration studies of a weights folder (float32 HU ``[S, H, W]`` each, in saved
    order), or None when the folder has no ``calibration.safetensors``.

    Raises:
        WeightsError: the file is not safetensors or holds something other than studies.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    _check_safetensors_file(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"cannot read {CALIBRATION_FILE}: {err}") from None
    studies = [tensors[k] for k in sorted(tensors)]
    if not studies or any(a.ndim != 3 or a.shape[0] == 0 for a in studies):
        raise WeightsError(f"{CALIBRATION_FILE} must hold HU volumes [S, H, W]")
    return [a.astype(np.float32) for a in studies]
