"""Helpers the training scripts share: data preparation, devices, checkpoints and logs.

Every script in the ``train`` package imports this module (``from train import common``),
the way torchvision's reference scripts import their ``utils.py``; scripts run as
``python -m train.<script>`` from the repository root. Nothing here parses arguments; it
only adds argument groups to a parser the script owns.

Checkpoints (``hohoho_core.checkpoint``, re-exported here) are two files:
``<stem>.safetensors`` (model and optimiser tensors) and ``<stem>.json`` (epoch, resolved
arguments, metrics, optimiser hyper-parameters). No pickle is ever written or read
(``torch.save``/``torch.load`` are not used in this project).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import platform
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from hohoho_core.atomic import atomic_write_text
from hohoho_core.cache import StudyCache, study_key
from hohoho_core.checkpoint import (  # noqa: F401  (re-exported for the scripts)
    load_checkpoint,
    load_model_weights,
    load_tensors,
    read_checkpoint_state,
    save_checkpoint,
    save_model_weights,
    save_tensors,
    unwrap,
)
from hohoho_core.csvsafe import safe_cell
from hohoho_core.distributed import DistInfo, barrier, init_distributed
from hohoho_core.labels import CLASSES
from hohoho_core.preprocess import MODES, WINDOWS, PreprocessConfig
from hohoho_core.runtime import configure_torch
from hohoho_core.strictjson import finite_json
from hohoho_core.system import available_cores

log = logging.getLogger("hohoho.train")

SPLITS: tuple[str, ...] = ("train", "val", "test")


# --- arguments ------------------------------------------------------------------------


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Where the data is, how to preprocess it and how to split it."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data-root", type=Path, nargs="+", default=None,
        help="RSNA-layout folder(s): stage_2_train.csv + stage_2_train/*.dcm",
    )
    g.add_argument(
        "--labels", type=Path, default=None,
        help="labels CSV when not <data-root>/stage_2_train.csv (one root only)",
    )
    g.add_argument("--cache-dir", type=Path, required=True, help="preprocessed study cache")
    g.add_argument("--mode", choices=MODES, default="stacked",
                   help="input mode: stacked (the poster's), gray, windows (brain/subdural/"
                   "bone), stacked_windows (neighbours x windows, 9 channels)")
    g.add_argument("--size", type=int, default=256, help="square input size (px)")
    g.add_argument("--no-crop", dest="crop", action="store_false", help="do not crop to the head")
    g.add_argument("--window", choices=sorted(WINDOWS), default="brain",
                   help="window for gray/stacked input")
    g.add_argument("--splits", type=Path, default=None,
                   help="JSON {train,val,test: [cache keys]}; made from the data when absent")
    g.add_argument("--split-by", choices=["patient", "study"], default="patient",
                   help="group for splitting (patient falls back to study without PatientID)")
    g.add_argument("--split-fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1],
                   metavar=("TRAIN", "VAL", "TEST"))
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--prep-workers", type=int, default=1,
                   help="processes for indexing and caching")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """Device, threads, seed, output folder."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: cores / processes on this node)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision (CUDA only)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format")
    g.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bfloat16 autocast for training on CPU (validation stays float32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output-dir", type=Path, required=True, help="run folder")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars")


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """JSON-ready copy of resolved arguments (paths as absolute strings, so a run folder's
    ``args.json`` still points at its cache from another working directory)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v.absolute())
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in sorted(vars(args).items())}


def preprocess_config(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(mode=args.mode, size=args.size, crop=args.crop, window=args.window)


# --- runtime --------------------------------------------------------------------------


def setup_runtime(args: argparse.Namespace) -> DistInfo:
    """Join torchrun's group (or run alone), pick the device, threads and seeds, logging."""
    dist = init_distributed()
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        dist = DistInfo(dist.rank, dist.world_size, dist.local_rank, torch.device("cpu"),
                        dist.distributed)
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no GPU is available")
    set_threads(args.threads, dist)
    seed_everything(args.seed + dist.rank)
    setup_logging(dist.rank == 0)
    return dist


def set_threads(threads: int | None, dist: DistInfo) -> int:
    """Torch threads for this training process (`runtime.configure_torch`), set once by the
    script's ``main``: the cores it may use, shared with torchrun's other local ranks."""
    if threads is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, available_cores() // max(local, 1))
    return configure_torch(threads).threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_logging(main: bool) -> None:
    """INFO on rank 0, warnings only elsewhere (only rank 0 logs), to stdout.

    Configures the "hohoho" logger only, so a caller's (or pytest's) root setup is kept.
    """
    logger = logging.getLogger("hohoho")
    logger.setLevel(logging.INFO if main else logging.WARNING)
    if not any(getattr(h, "_hohoho", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._hohoho = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def use_amp(args: argparse.Namespace, device: torch.device) -> bool:
    return bool(args.amp) and device.type == "cuda"


def autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def train_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for training: float16 on CUDA with ``--amp``, bfloat16 on CPU with
    ``--cpu-bf16`` (about 1.8x faster where the CPU has AVX512-BF16/AMX), else None."""
    if use_amp(args, device):
        return torch.float16
    if device.type == "cpu" and getattr(args, "cpu_bf16", False):
        return torch.bfloat16
    return None


def train_autocast(args: argparse.Namespace, device: torch.device) -> Any:
    dtype = train_dtype(args, device)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None)


def memory_format(args: argparse.Namespace, device: torch.device) -> torch.memory_format:
    # channels-last suits cuDNN tensor cores and, measured here, oneDNN on CPU too (~+30 %)
    if getattr(args, "channels_last", False):
        return torch.channels_last
    return torch.contiguous_format


def machine_description() -> str:
    cores = available_cores()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {platform.system()}, {cores} CPU cores, {gpu}, torch {torch.__version__}"


# --- data -----------------------------------------------------------------------------


@dataclass
class DataBundle:
    """Everything a script needs to build datasets: cache, preprocessing, splits."""

    cache: StudyCache
    cfg: PreprocessConfig
    splits: dict[str, list[str]]


def _index_cache_dir(cache_dir: Path, root: Path) -> Path:
    # one header-index cache per data root, under the study cache
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir / "index" / digest


def _study_table(tables: Sequence[Any]) -> Any:
    """One row per cached study: key, group (patient or study) and any-positive flag."""
    import pandas as pd

    rows = []
    for table in tables:
        has_patient = "patient_id" in table.columns
        for (study_uid, series_uid), g in table.groupby(["study_uid", "series_uid"], sort=True):
            key = study_key(str(study_uid), str(series_uid))
            patient = str(g["patient_id"].iloc[0]) if has_patient else ""
            pos = int((g["any"].fillna(0).to_numpy() > 0).any()) if "any" in g.columns else 0
            rows.append({"key": key, "study_uid": str(study_uid), "patient": patient,
                         "positive": pos})
    return pd.DataFrame(rows, columns=["key", "study_uid", "patient", "positive"])


def build_data(args: argparse.Namespace, progress: bool = True) -> tuple[StudyCache, Any]:
    """Index each data root and fill the cache (idempotent). Returns (cache, study table)."""
    from hohoho_core.cache import build_cache_from_index
    from hohoho_core.rsna import build_index

    if not args.data_root:
        raise SystemExit("--data-root is needed to build the cache (or give --splits with a built cache)")
    if args.labels is not None and len(args.data_root) != 1:
        raise SystemExit("--labels works with exactly one --data-root")
    cfg = preprocess_config(args)
    studies_dir = Path(args.cache_dir) / "studies"
    tables = []
    cache = StudyCache(studies_dir)
    for root in args.data_root:
        index = build_index(
            root, labels_csv=args.labels, cache_dir=_index_cache_dir(Path(args.cache_dir), root),
            workers=args.prep_workers, progress=progress,
        )
        build_cache_from_index(index.table, root, studies_dir, cfg, workers=args.prep_workers,
                               progress=progress)
        tables.append(index.table)
    return cache, _study_table(tables)


def make_splits(args: argparse.Namespace, studies: Any, cached: set[str]) -> dict[str, list[str]]:
    """Split studies by patient (when known) or study, stratified by any-positive."""
    from hohoho_core.datasets import split_by_study

    studies = studies[studies["key"].isin(cached)]
    keys = studies["key"].tolist()
    if args.split_by == "patient" and (studies["patient"] != "").all():
        groups = dict(zip(keys, studies["patient"], strict=True))
    else:
        groups = dict(zip(keys, studies["study_uid"], strict=True))
    strata = dict(zip(keys, studies["positive"].astype(int), strict=True))
    parts = split_by_study(keys, args.split_fractions, args.split_seed, groups, strata)
    return dict(zip(SPLITS, parts, strict=True))


def prepare_data(args: argparse.Namespace, dist: DistInfo, run_dir: Path) -> DataBundle:
    """Rank 0 indexes, caches and splits; every rank then reads ``run_dir/splits.json``.

    With ``--splits FILE`` the file decides the splits (and the cache must hold its keys,
    built by an earlier run or by ``--data-root``).
    """
    cfg = preprocess_config(args)
    studies_dir = Path(args.cache_dir) / "studies"
    split_file = run_dir / "splits.json"
    if dist.rank == 0:
        cache = StudyCache(studies_dir)
        studies = None
        if args.data_root:
            cache, studies = build_data(args, progress=args.progress)
        if args.splits is not None:
            splits = read_splits(args.splits)
        elif studies is not None:
            splits = make_splits(args, studies, set(cache.keys()))
        else:
            raise SystemExit("give --data-root or --splits")
        write_json(split_file, splits)
    barrier()
    cache = StudyCache(studies_dir)
    splits = read_splits(split_file)
    missing = [k for ks in splits.values() for k in ks if k not in cache]
    if missing:
        raise SystemExit(f"{len(missing)} split studies are not in the cache {studies_dir}")
    for k in splits["train"][:1]:
        size, crop = cache.settings(k)
        if (size, crop) != (cfg.size, cfg.crop):
            raise SystemExit(
                f"the cache holds size={size}, crop={crop} but the run asks for "
                f"size={cfg.size}, crop={cfg.crop}: use another --cache-dir"
            )
    return DataBundle(cache, cfg, splits)


def read_splits(path: Path) -> dict[str, list[str]]:
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(d, dict) or not set(SPLITS) <= set(d):
        raise SystemExit(f"{path} must hold {{'train': [...], 'val': [...], 'test': [...]}}")
    splits = {s: [str(k) for k in d[s]] for s in SPLITS}
    seen: dict[str, str] = {}
    for s, keys in splits.items():
        for k in keys:
            if k in seen:
                raise SystemExit(f"{path}: a study is in both {seen[k]} and {s}")
            seen[k] = s
    return splits


def labelled_subset(
    keys: Sequence[str], cache: StudyCache, fraction: float, seed: int
) -> list[str]:
    """Keep ``fraction`` of the studies (at least 2), stratified by any-positive: the
    poster's small labelled dataset. Whole studies, never single slices."""
    from hohoho_core.datasets import split_by_study

    if fraction >= 1.0:
        return list(keys)
    if not 0 < fraction < 1:
        raise SystemExit("--labeled-fraction must be in (0, 1]")
    strata = {k: int((cache.get(k).labels[:, -1] > 0).any()) for k in keys}
    keep, _ = split_by_study(keys, (fraction, 1 - fraction), seed, strata=strata)
    if len(keep) < 2:
        keep = list(keys)[:2]
    return keep


# --- distributed gathering ------------------------------------------------------------


def gather_rows(index: torch.Tensor, values: torch.Tensor, dist: DistInfo) -> tuple[
    np.ndarray, np.ndarray
]:
    """Collect ``(index (n,), values (n, K))`` from every rank; duplicates (the padding of
    ``DistributedSampler``) are dropped. Returns NumPy arrays sorted by index."""
    index = index.detach().to(torch.int64).cpu()
    values = values.detach().float().cpu()
    if dist.distributed:
        backend_device = dist.device if tdist.get_backend() == "nccl" else torch.device("cpu")
        n = torch.tensor([len(index)], device=backend_device)
        sizes = [torch.zeros_like(n) for _ in range(dist.world_size)]
        tdist.all_gather(sizes, n)
        m = int(max(int(s) for s in sizes))
        pad_i = torch.full((m,), -1, dtype=torch.int64)
        pad_i[: len(index)] = index
        pad_v = torch.zeros((m, values.shape[1]))
        pad_v[: len(values)] = values
        gi = [torch.zeros_like(pad_i, device=backend_device) for _ in sizes]
        gv = [torch.zeros_like(pad_v, device=backend_device) for _ in sizes]
        tdist.all_gather(gi, pad_i.to(backend_device))
        tdist.all_gather(gv, pad_v.to(backend_device))
        index = torch.cat([g.cpu() for g in gi])
        values = torch.cat([g.cpu() for g in gv])
        keep = index >= 0
        index, values = index[keep], values[keep]
    idx = index.numpy()
    _, first = np.unique(idx, return_index=True)
    return idx[first], values.numpy()[first]


def all_reduce_mean(value: float, count: int, dist: DistInfo) -> float:
    """Mean of per-rank means weighted by their counts."""
    if not dist.distributed:
        return value
    dev = dist.device if tdist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value * count, float(count)], dtype=torch.float64, device=dev)
    tdist.all_reduce(t)
    return float(t[0] / max(t[1], 1.0))


# --- optimisation ---------------------------------------------------------------------


def add_optim_args(parser: argparse.ArgumentParser, lr: float = 1e-3) -> None:
    g = parser.add_argument_group("optimiser")
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum for SGD")
    g.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine")
    g.add_argument("--warmup-epochs", type=float, default=0.0)


def build_optimizer(args: argparse.Namespace, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                               nesterov=bool(args.nesterov) and args.momentum > 0,
                               weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)


def lr_at(step: int, total: int, base: float, warmup: int, schedule: str) -> float:
    """Learning rate at optimiser step ``step`` of ``total`` (linear warm-up first)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    t = min(max(t, 0.0), 1.0)
    if schedule == "cosine":
        return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule == "step":
        return base * (0.1 ** (int(t >= 0.6) + int(t >= 0.85)))
    return base


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- checkpoints ----------------------------------------------------------------------
# The checkpoint format lives in hohoho_core.checkpoint; the names are imported above so
# scripts keep calling ``common.save_checkpoint`` and friends.


def write_json(path: Path, obj: Any) -> None:
    """Indented strict JSON (NaN as null, other non-JSON values as ``str``), atomically."""
    text = json.dumps(finite_json(obj), indent=2, default=str, allow_nan=False)
    atomic_write_text(Path(path), text + "\n")


#: Files that mark a folder as holding a stage-1 run (``train_cnn``'s outputs).
RUN_FILES = ("args.json", "log.csv", "checkpoint.json", "best_cnn.safetensors", "result.json")
#: Arguments a resumed run may change: where and how fast it runs, not what it trains.
RESUME_FREE = frozenset({
    "resume", "overwrite", "output_dir", "workers", "prep_workers", "threads", "progress",
    "device", "dist_backend", "eval_batch_size", "channels_last",
})


def refuse_taken_run_dir(args: argparse.Namespace) -> None:
    """Refuse an ``--output-dir`` that already holds a run (`RUN_FILES`) unless ``--resume``
    or ``--overwrite`` says what to do; ``--overwrite`` removes the old run files first (a
    new run never appends to an old ``log.csv``). Call on the main process only."""
    if getattr(args, "resume", None) is not None:
        return
    run_dir = Path(args.output_dir)
    taken = [n for n in RUN_FILES if (run_dir / n).exists()]
    if taken and not getattr(args, "overwrite", False):
        raise SystemExit(
            f"{run_dir} already holds a run ({', '.join(taken)}): pass --resume {run_dir} "
            "to continue it, --overwrite to start it again, or another --output-dir"
        )
    for n in taken:
        (run_dir / n).unlink(missing_ok=True)


def restore_resume_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                        saved: Mapping[str, Any]) -> list[str]:
    """On ``--resume``: every argument left at its default takes the checkpoint's value
    (``saved``), and one given with another value is refused (the learning-rate schedule,
    sampling and epochs must stay those of the run). Returns the restored names."""
    restored, conflicts = [], []
    current = args_to_dict(args)
    for name, value in saved.items():
        if name in RESUME_FREE or name not in current or current[name] == value:
            continue
        default = parser.get_default(name)
        if current[name] == args_to_dict(argparse.Namespace(x=default))["x"]:
            setattr(args, name, Path(value) if isinstance(default, Path) else value)
            restored.append(name)
        else:
            conflicts.append(f"--{name.replace('_', '-')} {current[name]} (the run has {value})")
    if conflicts:
        raise SystemExit("cannot resume with other settings: " + "; ".join(conflicts))
    return restored


# --- logs -----------------------------------------------------------------------------


class CsvLog:
    """Append one row per epoch to ``path`` (and to TensorBoard when it is installed)."""

    def __init__(self, path: Path, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] | None = None
        if self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            self.fields = header or None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.path.parent / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                self.tb = None

    def write(self, row: Mapping[str, Any]) -> None:
        # numbers stay numbers; text cells cannot start a spreadsheet formula
        row = {k: (f"{v:.6g}" if isinstance(v, float) else safe_cell(v)) for k, v in row.items()}
        if self.fields is None:
            self.fields = list(row)
            with self.path.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(self.fields)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            step = int(row.get("epoch", 0))
            for k, v in row.items():
                try:
                    self.tb.add_scalar(k, float(v), step)
                except (TypeError, ValueError):
                    continue
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def metrics_line(prefix: str, row: Mapping[str, Any]) -> str:
    parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
    return f"{prefix}: " + "  ".join(parts)


def classes_dict(values: Sequence[float]) -> dict[str, float]:
    return {c: float(v) for c, v in zip(CLASSES, values, strict=True)}


# --- inference over slices ------------------------------------------------------------


@torch.no_grad()
def infer_slices(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: bool,
    mformat: torch.memory_format,
    dist: DistInfo,
    tta_flip: bool = False,
    want_embeddings: bool = False,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Run the CNN over a ``SliceDataset`` loader (``output="input"``) on every rank and
    gather: ``index (N,)``, ``logits (N, 6)`` and, when asked, ``embeddings (N, D)``.

    ``tta_flip`` averages the outputs for the slice and its left-right mirror image.
    """
    from tqdm.auto import tqdm

    net = unwrap(model)
    was_training = net.training
    net.eval()
    idx_l, log_l, emb_l = [], [], []
    for x, _, meta in tqdm(loader, desc=desc, disable=not (progress and dist.rank == 0),
                           leave=False, dynamic_ncols=True):
        x = x.to(device, non_blocking=True).contiguous(memory_format=mformat)
        with autocast(device, amp):
            emb, logits = net(x)
            if tta_flip:
                emb_f, logits_f = net(torch.flip(x, dims=[3]))
                emb, logits = (emb + emb_f) / 2, (logits + logits_f) / 2
        idx_l.append(meta["index"])
        log_l.append(logits.float().cpu())
        if want_embeddings:
            emb_l.append(emb.float().cpu())
    net.train(was_training)
    index = torch.cat(idx_l) if idx_l else torch.zeros(0, dtype=torch.int64)
    logits = torch.cat(log_l) if log_l else torch.zeros(0, len(CLASSES))
    out: dict[str, np.ndarray] = {}
    if want_embeddings:
        emb_t = torch.cat(emb_l) if emb_l else torch.zeros(0, getattr(net, "embed_dim", 1))
        both = torch.cat([logits, emb_t], 1)
        out["index"], vals = gather_rows(index, both, dist)
        out["logits"], out["embeddings"] = vals[:, : len(CLASSES)], vals[:, len(CLASSES):]
    else:
        out["index"], out["logits"] = gather_rows(index, logits, dist)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))
