"""Out-of-fold probabilities for a labelled dataset, so an audit never judges a slice with a
model that trained on it.

    python -m train.oof_predict --data data/rsna --folds 5 --size 128 --epochs 4 \
        --out oof.csv --run-dir runs/oof
    python -m hohoho_core audit --data data/rsna --probs oof.csv --out flags.csv

At RSNA scale, point ``--cache-dir`` at the training cache (same ``--size``: nothing is
decoded again), prepare once, then run one fold per call (``--fold K``; each call may itself
run under ``torchrun``, one fold on N GPUs), in any order or in parallel; the call that
finishes the last missing fold merges them all into ``--out``::

    python -m train.oof_predict ... --prepare-only
    torchrun --standalone --nproc_per_node 4 -m train.oof_predict ... --fold 0

The studies are split into ``--folds`` groups by patient (by study where the index has no
patient column; the synthetic generator writes one study per patient), stratified by whether a
study has a bleed. For each fold a stage-1 CNN is trained by ``train_cnn.py`` (same loop, loss,
augmentation and arguments) on the other folds with the labels *as given* (noisy labels are the
point: the audit looks for them), and the weights of its last epoch predict the held-out fold.
The held-out fold is also ``train_cnn.py``'s validation split, so its per-epoch metrics are
logged against the given labels, but they never choose weights (no best-epoch selection on
the fold being predicted).

Writes:

- ``--out``: every image of every cached study, six rows each, in the RSNA submission format
  ``ID,Label`` with IDs ``ID_<hex>_<class>`` (read by ``hohoho_core.audit.read_probs_csv``);
- ``<out stem>.folds.csv``: ``image_id, study_key, fold`` (the fold whose model predicted it);
- ``--run-dir/fold_<f>/``: ``train_cnn.py``'s run folder (``splits.json`` lists the studies
  the fold's model trained on), ``heldout.csv`` (the fold's held-out probabilities) and
  ``fold_result.json``; ``--run-dir/folds.json`` (the fold of every study and the settings
  every call must share: a call with other settings is refused) and
  ``--run-dir/oof_result.json`` (settings, folds, metrics of the out-of-fold probabilities
  against the given labels).

By default the probabilities are the stage-1 CNN's (``"stage": "cnn"`` in the result JSON).
With ``--stage2`` each fold also gets the stage-2 LSTM over its slice embeddings (trained on
the fold's training studies only); ``--out`` then holds the CNN + LSTM probabilities
(``"stage": "cnn+lstm"``) and ``<out stem>.cnn.csv`` the CNN's.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler

from hohoho_core.augment import PRESETS
from hohoho_core.cache import StudyCache
from hohoho_core.csvsafe import safe_frame
from hohoho_core.datasets import SliceDataset, split_by_study
from hohoho_core.distributed import DistInfo, barrier, cleanup, group_joined
from hohoho_core.evaluate import score
from hohoho_core.labels import CLASSES
from hohoho_core.losses import LOSS_NAMES
from hohoho_core.models import MODEL_NAMES, SequenceModel, create_model
from hohoho_core.preprocess import MODES, PreprocessConfig
from hohoho_core.rsna_csv import write_rsna_csv
from train import common, extract_embeddings, train_cnn, train_lstm

log = logging.getLogger("hohoho.train")



def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="k-fold out-of-fold probabilities for the audit",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="RSNA-layout folder: stage_2_train.csv + stage_2_train/*.dcm")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels CSV when not <data>/stage_2_train.csv")
    p.add_argument("--folds", type=int, default=5, help="number of folds (>= 2)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment and training seed")
    p.add_argument("--out", type=Path, default=Path("oof.csv"), help="probabilities CSV")
    p.add_argument("--run-dir", type=Path, default=Path("runs/oof"), help="per-fold runs")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="preprocessed study cache (default <run-dir>/cache); give the "
                        "training run's cache (same --size) to reuse it; one built "
                        "with other labels is refused (it would keep the old ones)")
    p.add_argument("--fold", type=int, action="append", default=None,
                   help="run only this fold (repeatable; default: every fold); the call "
                        "that completes the last missing fold writes --out")
    p.add_argument("--prepare-only", action="store_true",
                   help="index, cache and assign folds, then stop: run once before "
                        "--fold calls that run in parallel")
    g = p.add_argument_group("stage-1 training (passed to train_cnn.py)")
    g.add_argument("--size", type=int, default=128, help="model input size (px)")
    g.add_argument("--mode", choices=MODES, default="stacked")
    g.add_argument("--arch", choices=MODEL_NAMES, default="resnet18")
    g.add_argument("--epochs", type=int, default=4)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--loss", choices=LOSS_NAMES, default="asl")
    g.add_argument("--positive-fraction", type=float, default=0.4,
                   help="draw positive slices this often (0 = plain shuffling)")
    g.add_argument("--augment", choices=sorted(PRESETS), default="generous")
    g.add_argument("--train-args", default="",
                   help="any other train_cnn.py options, one quoted string")
    g = p.add_argument_group("stage 2 (optional)")
    g.add_argument("--stage2", action=argparse.BooleanOptionalAction, default=False,
                   help="also train the LSTM per fold; --out then holds CNN + LSTM "
                        "probabilities and <out stem>.cnn.csv the CNN's")
    g.add_argument("--lstm-epochs", type=int, default=20)
    g.add_argument("--lstm-args", default="",
                   help="any other train_lstm.py options, one quoted string")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--threads", type=int, default=None, help="CPU threads")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision (CUDA only)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--prep-workers", type=int, default=1,
                   help="processes for indexing and caching")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


# --- folds ----------------------------------------------------------------------------


def assign_folds(studies: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """Put every study in one of ``folds`` folds, never splitting a patient.

    studies: one row per cached series with columns ``key``, ``study_uid``, ``patient``
    ("" when unknown) and ``positive`` (0/1), as ``common.build_data`` returns. Groups are
    patients when every row has one, else studies; folds are stratified by ``positive``.
    Returns a copy sorted by key with ``group`` and ``fold`` (int in [0, folds)) added.
    Raises ``ValueError`` when a fold would be empty.
    """
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    out = studies.sort_values("key").reset_index(drop=True).copy()
    by_patient = bool(len(out)) and bool((out["patient"].astype(str) != "").all())
    out["group"] = out["patient"].astype(str) if by_patient else out["study_uid"].astype(str)
    n_groups = out["group"].nunique()
    if n_groups < folds:
        raise ValueError(f"{n_groups} patients/studies cannot fill {folds} folds")
    keys = out["key"].tolist()
    parts = split_by_study(
        keys,
        [1.0 / folds] * folds,
        seed,
        groups=dict(zip(keys, out["group"], strict=True)),
        strata=dict(zip(keys, out["positive"].astype(int), strict=True)),
    )
    fold_of = {k: f for f, part in enumerate(parts) for k in part}
    out["fold"] = [fold_of[k] for k in keys]
    empty = sorted(set(range(folds)) - set(out["fold"]))
    if empty:
        raise ValueError(f"folds {empty} got no study: use fewer folds or more studies")
    return out


def fold_splits(assigned: pd.DataFrame, fold: int) -> dict[str, list[str]]:
    """``train_cnn.py`` splits for one fold: train on the others, validate on this one."""
    held = assigned.loc[assigned["fold"] == fold, "key"].tolist()
    train = assigned.loc[assigned["fold"] != fold, "key"].tolist()
    # The guarantee this script exists for; cheap to check, fatal to get wrong.
    if set(held) & set(train) or set(
        assigned.loc[assigned["fold"] == fold, "group"]
    ) & set(assigned.loc[assigned["fold"] != fold, "group"]):
        raise RuntimeError("a study or patient is in both the training and held-out folds")
    return {"train": train, "val": held, "test": []}


# --- stages ---------------------------------------------------------------------------


def base_train_args(args: argparse.Namespace, cache_dir: Path) -> list[str]:
    """The ``train_cnn.py`` options every fold shares (argparse stays the source of truth)."""
    cmd = [
        "--cache-dir", str(cache_dir), "--size", str(args.size), "--mode", args.mode,
        "--arch", args.arch, "--init", "random", "--loss", args.loss, "--lr", str(args.lr),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--positive-fraction", str(args.positive_fraction), "--augment", args.augment,
        "--device", args.device, "--amp" if args.amp else "--no-amp",
        "--workers", str(args.workers),
        "--prep-workers", str(args.prep_workers),
        "--progress" if args.progress else "--no-progress",
    ]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    return cmd + shlex.split(args.train_args)


def _cnn_args(args: argparse.Namespace, cache_dir: Path) -> argparse.Namespace:
    """``train_cnn.py``'s arguments for indexing and caching ``--data``."""
    return train_cnn.get_args_parser().parse_args(
        [*base_train_args(args, cache_dir), "--data-root", str(args.data),
         "--output-dir", str(args.run_dir)]
        + (["--labels", str(args.labels)] if args.labels is not None else [])
    )


def prepare(args: argparse.Namespace, cache_dir: Path
            ) -> tuple[StudyCache, pd.DataFrame, PreprocessConfig]:
    """Index ``--data`` and fill the cache; returns (cache, study table, preprocessing).

    A cache that already holds the studies (the training run's, same ``--size``) is reused
    as it is: the index and the cache are idempotent."""
    cnn_args = _cnn_args(args, cache_dir)
    cache, studies = common.build_data(cnn_args, progress=args.progress)
    cached = set(cache.keys())
    missing = int((~studies["key"].isin(cached)).sum())
    if missing:
        log.warning("%d studies could not be cached and get no probabilities", missing)
        studies = studies[studies["key"].isin(cached)]
    labels_csv = args.labels if args.labels is not None else Path(args.data) / "stage_2_train.csv"
    stale = stale_label_studies(cache, studies["key"].tolist(), labels_csv)
    if stale:
        raise SystemExit(f"{stale} cached studies hold labels that differ from {labels_csv.name}: "
                         f"the cache keeps the labels it was built with; use a fresh --cache-dir")
    return cache, studies, common.preprocess_config(cnn_args)


# --- the run folder: one fold assignment, one set of settings, one part per fold -----

FOLDS_FILE = "folds.json"
#: Arguments every call on one run folder must share (the rest are runtime choices).
SHARED_SETTINGS: tuple[str, ...] = (
    "data", "labels", "folds", "seed", "cache_dir", "size", "mode", "arch", "epochs",
    "batch_size", "lr", "loss", "positive_fraction", "augment", "train_args", "stage2",
    "lstm_epochs", "lstm_args",
)


def shared_settings(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    """The settings of ``args`` that decide the folds' results (paths absolute)."""
    d = common.args_to_dict(args)
    out = {k: d.get(k) for k in SHARED_SETTINGS}
    out["cache_dir"] = str(Path(cache_dir).resolve())
    return out


def write_assignment(run_dir: Path, assigned: pd.DataFrame, settings: dict[str, Any]) -> None:
    cols = ["key", "study_uid", "patient", "positive", "group", "fold"]
    rows = assigned[cols].astype({"positive": int, "fold": int}).to_dict(orient="records")
    common.write_json(run_dir / FOLDS_FILE, {"settings": settings, "studies": rows})


def read_assignment(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """(settings, fold table) of a run folder, or None before its first call."""
    import json

    path = run_dir / FOLDS_FILE
    if not path.is_file():
        return None
    d = json.loads(path.read_text(encoding="utf-8"))
    table = pd.DataFrame(d["studies"], columns=["key", "study_uid", "patient", "positive",
                                                "group", "fold"])
    return d["settings"], table.astype({"key": str, "patient": str, "group": str})


def check_same_run(run_dir: Path, settings: dict[str, Any], assigned: pd.DataFrame) -> None:
    """Refuse a call whose settings or fold assignment differ from the run folder's: its
    folds would be mixed with folds of another experiment (or of other data)."""
    stored = read_assignment(run_dir)
    if stored is None:
        return
    old, table = stored
    differ = sorted(k for k in SHARED_SETTINGS if old.get(k) != settings.get(k))
    if differ:
        raise SystemExit(f"{run_dir} holds folds made with other settings "
                         f"({', '.join('--' + k.replace('_', '-') for k in differ)}): "
                         f"use the same settings or a new --run-dir")
    same = (table[["key", "fold"]].reset_index(drop=True)
            .equals(assigned[["key", "fold"]].astype({"fold": int}).reset_index(drop=True)))
    if not same:
        raise SystemExit(f"the studies of --data no longer match the fold assignment in "
                         f"{run_dir / FOLDS_FILE}: use a new --run-dir")


def part_path(run_dir: Path, fold: int) -> Path:
    """One fold's held-out probabilities (written when the fold finishes)."""
    return Path(run_dir) / f"fold_{fold}" / "heldout.csv"


def write_part(path: Path, image_ids: Sequence[str], keys: Sequence[str], cnn: np.ndarray,
               lstm: np.ndarray | None) -> None:
    """``image_id, study_key, cnn_<class>..., [lstm_<class>...]``, written atomically."""
    from hohoho_core.atomic import atomic_path

    frame = pd.DataFrame({"image_id": list(image_ids), "study_key": list(keys)})
    for j, c in enumerate(CLASSES):
        frame[f"cnn_{c}"] = cnn[:, j]
    if lstm is not None:
        for j, c in enumerate(CLASSES):
            frame[f"lstm_{c}"] = lstm[:, j]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")


def read_part(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray | None]:
    frame = pd.read_csv(path, dtype={"image_id": str, "study_key": str})
    cnn = frame[[f"cnn_{c}" for c in CLASSES]].to_numpy(np.float64)
    lcols = [f"lstm_{c}" for c in CLASSES]
    lstm = frame[lcols].to_numpy(np.float64) if set(lcols) <= set(frame.columns) else None
    return frame["image_id"].tolist(), frame["study_key"].tolist(), cnn, lstm


def stale_label_studies(cache: StudyCache, keys: Sequence[str], labels_csv: Path) -> int:
    """How many cached studies carry labels other than those in ``labels_csv`` now.

    An audit after relabelling must train on the new labels; the cache would silently keep
    the old ones (it skips studies it already holds)."""
    from hohoho_core.rsna import read_labels

    if not Path(labels_csv).is_file():
        return 0
    given = read_labels(labels_csv)
    given = given[~given.index.duplicated(keep="last")]
    stale = 0
    for key in keys:
        st = cache.get(key)
        want = given.reindex(st.image_ids)[list(CLASSES)].to_numpy(dtype=np.float64)
        want = np.where(np.isnan(want), -1, want)
        stale += int(not np.array_equal(want, np.asarray(st.labels, dtype=np.float64)))
    return stale


def train_fold(args: argparse.Namespace, fold: int, splits: dict[str, list[str]],
               cache_dir: Path, dist: DistInfo) -> tuple[Path, dict[str, Any]]:
    """Train one fold's CNN with ``train_cnn.main`` (on every rank under torchrun); returns
    (run folder, its result)."""
    fold_dir = Path(args.run_dir) / f"fold_{fold}"
    split_file = fold_dir / "fold_splits.json"
    if dist.rank == 0:
        fold_dir.mkdir(parents=True, exist_ok=True)
        common.write_json(split_file, splits)
    barrier()
    cnn_args = train_cnn.get_args_parser().parse_args(
        [*base_train_args(args, cache_dir), "--splits", str(split_file),
         "--seed", str(args.seed + fold), "--output-dir", str(fold_dir), "--overwrite"]
    )
    result = train_cnn.main(cnn_args)
    return fold_dir, result


def predict_fold(
    fold_dir: Path, arch: str, cache: StudyCache, keys: Sequence[str], cfg: PreprocessConfig,
    args: argparse.Namespace, dist: DistInfo,
) -> tuple[list[str], list[str], np.ndarray]:
    """The fold's last-epoch CNN on its held-out studies, every slice (labelled or not),
    sharded across ranks under torchrun and gathered.

    Returns (image_ids, study keys, probabilities ``(N, 6)``), rows in dataset order.
    """
    model = create_model(arch, init="random", in_channels=cfg.channels)
    common.load_checkpoint(fold_dir / "checkpoint", model)
    mformat = common.memory_format(args, dist.device)
    model = model.to(dist.device).to(memory_format=mformat)
    ds = SliceDataset(cache, keys, cfg, output="input", labeled_only=False)
    sampler = (DistributedSampler(ds, dist.world_size, dist.rank, shuffle=False)
               if dist.distributed else None)
    loader = DataLoader(ds, args.batch_size * 2, shuffle=False, sampler=sampler,
                        num_workers=args.workers)
    out = common.infer_slices(model, loader, dist.device, common.use_amp(args, dist.device),
                              mformat, dist, progress=args.progress, desc="held-out")
    idx = out["index"]
    if len(idx) != len(ds):
        raise RuntimeError(f"predicted {len(idx)} of {len(ds)} held-out slices")
    image_ids = [ds.image_id(int(i)) for i in idx]
    study = [ds.keys[int(s)] for s in ds.study_index[idx]]
    return image_ids, study, common.sigmoid(out["logits"]).astype(np.float64)


def lstm_fold(fold_dir: Path, args: argparse.Namespace, dist: DistInfo
              ) -> tuple[list[str], np.ndarray] | None:
    """Stage 2 for one fold: embeddings of its train and held-out studies from the fold's
    last-epoch CNN (``extract_embeddings.py``, sharded under torchrun), an LSTM trained on
    the train studies for ``--lstm-epochs`` (``train_lstm.py``'s epoch; no selection on the
    held-out fold; small, so rank 0 alone), then its probabilities on the held-out studies.
    Returns (image_ids, ``(N, 6)``) on rank 0, None on the other ranks."""
    emb_dir = fold_dir / "emb"
    common_rt = ["--device", args.device, "--seed", str(args.seed)]
    if args.threads is not None:
        common_rt += ["--threads", str(args.threads)]
    prog = ["--progress" if args.progress else "--no-progress"]
    extract_embeddings.main(extract_embeddings.get_args_parser().parse_args(
        ["--cnn-run", str(fold_dir), "--weights-file", str(fold_dir / "checkpoint.safetensors"),
         "--splits", "train", "val", "--output-dir", str(emb_dir),
         "--batch-size", str(args.batch_size * 2), "--amp" if args.amp else "--no-amp",
         *common_rt, *prog]))
    barrier()  # rank 0 wrote the embeddings
    if dist.rank != 0:
        return None
    largs = train_lstm.get_args_parser().parse_args(
        ["--cnn-run", str(fold_dir), "--embeddings", str(emb_dir),
         "--output-dir", str(fold_dir / "lstm"), "--epochs", str(args.lstm_epochs),
         *common_rt, *prog, *shlex.split(args.lstm_args)])
    tables, loaders = train_lstm.build_loaders(largs)
    device = dist.device
    model = SequenceModel(int(tables["train"].embeddings.shape[1]),
                          **train_lstm.lstm_kwargs(largs)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=largs.lr,
                                  weight_decay=largs.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(largs.epochs, 1))
    emb_std = float(tables["train"].embeddings.std())
    g = torch.Generator().manual_seed(largs.seed)
    for epoch in range(largs.epochs):
        loss = train_lstm.train_one_epoch(model, loaders["train"], optimizer, largs, device,
                                          emb_std, g)
        sched.step()
        log.info("lstm epoch %d: train_loss %.4f", epoch, loss)
    held = tables["val"]
    prob = train_lstm.predict(model, loaders["val"], len(held.study), largs.use_logits, device)
    return [str(i) for i in held.image_id], prob.astype(np.float64)


# --- output ---------------------------------------------------------------------------


def write_probs_csv(path: Path, image_ids: Sequence[str], prob: np.ndarray) -> Path:
    """RSNA submission format (`rsna_csv.write_rsna_csv`), images sorted by id so that runs
    over the same images diff cleanly. ``prob``: ``(N, 6)`` in [0, 1], rows aligned with
    ``image_ids``; written atomically."""
    prob = np.asarray(prob, dtype=np.float64)
    if prob.shape != (len(image_ids), len(CLASSES)):
        raise ValueError(f"prob must have shape ({len(image_ids)}, {len(CLASSES)})")
    ids = np.asarray(image_ids, dtype=str)
    order = np.argsort(ids, kind="stable")
    write_rsna_csv(path, ids[order], prob[order], kind="probabilities")
    return Path(path)


def folds_path(out: Path) -> Path:
    """Sidecar of ``out``: ``oof.csv`` -> ``oof.folds.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.folds.csv")


def cnn_path(out: Path) -> Path:
    """With ``--stage2``, where the CNN-only probabilities go: ``oof.csv`` -> ``oof.cnn.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.cnn.csv")


def run_fold(
    args: argparse.Namespace, fold: int, assigned: pd.DataFrame, cache: StudyCache,
    cfg: PreprocessConfig, cache_dir: Path, dist: DistInfo,
) -> dict[str, Any]:
    """Train on the other folds, predict this one; rank 0 writes the fold's part
    (`part_path`) and ``fold_result.json``. Returns the fold's summary."""
    t0 = time.perf_counter()
    splits = fold_splits(assigned, fold)
    log.info("fold %d/%d: train on %d studies, predict %d", fold + 1, args.folds,
             len(splits["train"]), len(splits["val"]))
    fold_dir, result = train_fold(args, fold, splits, cache_dir, dist)
    common.setup_logging(dist.rank == 0)  # train_cnn.main resets handlers; keep ours
    ids, keys, prob = predict_fold(fold_dir, args.arch, cache, splits["val"], cfg, args, dist)
    lstm = None
    if args.stage2:
        got = lstm_fold(fold_dir, args, dist)
        common.setup_logging(dist.rank == 0)
        if got is not None:
            lstm_ids, lstm_prob = got
            if set(lstm_ids) != set(ids):
                raise RuntimeError("stage 2 did not predict the same held-out slices")
            by_id = dict(zip(lstm_ids, lstm_prob, strict=True))
            lstm = np.stack([by_id[i] for i in ids]) if ids else np.zeros((0, len(CLASSES)))
    info = {"fold": fold, "train_studies": len(splits["train"]),
            "heldout_studies": len(splits["val"]), "heldout_slices": len(ids),
            "last_epoch_weights": str(fold_dir / "checkpoint.safetensors"),
            "logged_val_f2_best_epoch": result.get("best", {}).get("val_f2"),
            "processes": dist.world_size, "seconds": time.perf_counter() - t0}
    if dist.rank == 0:
        write_part(part_path(args.run_dir, fold), ids, keys, prob, lstm)
        common.write_json(fold_dir / "fold_result.json", info)
    barrier()
    return info


def merge_folds(args: argparse.Namespace, assigned: pd.DataFrame, cache: StudyCache,
                t_start: float) -> dict[str, Any]:
    """Every fold's part -> ``--out`` (+ sidecars) and ``oof_result.json``."""
    import json

    ids_all, keys_all, folds_all, probs, lstms, fold_info = [], [], [], [], [], []
    for fold in range(args.folds):
        ids, keys, prob, lstm = read_part(part_path(args.run_dir, fold))
        if args.stage2 and lstm is None:
            raise SystemExit(f"fold {fold} has no stage-2 probabilities: run it again "
                             f"with --stage2 (--fold {fold})")
        ids_all += ids
        keys_all += keys
        folds_all += [fold] * len(ids)
        probs.append(prob)
        lstms.append(lstm)
        info_path = part_path(args.run_dir, fold).with_name("fold_result.json")
        fold_info.append(json.loads(info_path.read_text(encoding="utf-8")))
    prob = np.concatenate(probs) if probs else np.zeros((0, len(CLASSES)))
    if len(set(ids_all)) != len(ids_all):
        raise RuntimeError("an image was predicted by more than one fold")
    stage = "cnn"
    if args.stage2:
        stage = "cnn+lstm"
        write_probs_csv(cnn_path(args.out), ids_all, prob)
        prob = np.concatenate(lstms)
    write_probs_csv(args.out, ids_all, prob)
    # study keys are UIDs from the files: safe_frame keeps them from opening as formulas
    safe_frame(pd.DataFrame({"image_id": ids_all, "study_key": keys_all, "fold": folds_all})
               .sort_values("image_id")).to_csv(folds_path(args.out), index=False)
    result = {
        "stage": stage,
        "weights": "last epoch of each fold (no selection on the held-out fold)",
        "out": str(args.out), "folds_file": str(folds_path(args.out)),
        "cnn_out": str(cnn_path(args.out)) if args.stage2 else str(args.out),
        "folds": args.folds, "grouping": "patient" if (assigned["patient"] != "").all()
        else "study", "studies": len(assigned), "images": len(ids_all),
        "per_fold": fold_info, "metrics_vs_given_labels": _oof_metrics(cache, assigned,
                                                                       ids_all, prob),
        "seconds_this_call": time.perf_counter() - t_start,
        "fold_seconds": float(sum(f["seconds"] for f in fold_info)),
        "machine": common.machine_description(),
    }
    common.write_json(Path(args.run_dir) / "oof_result.json", result)
    log.info("out-of-fold probabilities for %d images of %d studies -> %s", len(ids_all),
             len(assigned), args.out)
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    own_group = not group_joined()
    dist = common.setup_runtime(args)
    t_start = time.perf_counter()
    run_dir = Path(args.run_dir)
    cache_dir = Path(args.cache_dir) if args.cache_dir is not None else run_dir / "cache"
    folds = sorted(set(args.fold)) if args.fold else list(range(args.folds))
    bad = [f for f in folds if not 0 <= f < args.folds]
    if bad:
        raise SystemExit(f"--fold {bad[0]} is not in 0..{args.folds - 1}")
    settings = shared_settings(args, cache_dir)
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        cache, studies, cfg = prepare(args, cache_dir)
        try:
            assigned = assign_folds(studies, args.folds, args.seed)
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
        check_same_run(run_dir, settings, assigned)
        write_assignment(run_dir, assigned, settings)
        common.write_json(run_dir / "oof_args.json", common.args_to_dict(args))
    barrier()
    if dist.rank != 0:  # rank 0 indexed and cached; the others read what it wrote
        cache = StudyCache(cache_dir / "studies")
        cfg = common.preprocess_config(_cnn_args(args, cache_dir))
        assigned = read_assignment(run_dir)[1]
    result: dict[str, Any] = {"prepared": len(assigned)}
    if not args.prepare_only:
        for fold in folds:
            run_fold(args, fold, assigned, cache, cfg, cache_dir, dist)
        if dist.rank == 0:
            left = [f for f in range(args.folds) if not part_path(run_dir, f).is_file()]
            if left:
                log.info("folds %s done; still to run: %s (then --out is written)",
                         folds, " ".join(f"--fold {f}" for f in left))
                result = {"done_folds": folds, "missing_folds": left}
            else:
                result = merge_folds(args, assigned, cache, t_start)
    else:
        log.info("prepared %d studies in %d folds: run each with --fold K", len(assigned),
                 args.folds)
    barrier()
    if own_group:
        cleanup()
    return result


def _oof_metrics(cache: StudyCache, assigned: pd.DataFrame, image_ids: Sequence[str],
                 prob: np.ndarray) -> dict[str, Any]:
    """AUC and log loss of the out-of-fold probabilities against the labels as given."""
    label_of: dict[str, np.ndarray] = {}
    for key in assigned["key"]:
        st = cache.get(key)
        label_of.update(zip(st.image_ids, np.asarray(st.labels), strict=True))
    y = np.stack([label_of[i] for i in image_ids]) if image_ids else np.zeros((0, 6))
    keep = (y >= 0).all(1)
    if not keep.any():
        return {}
    rep = score(y[keep], prob[keep], np.full(len(CLASSES), 0.5))
    return {"auc": rep["auc"], "auc_macro": rep["auc_macro"], "log_loss": rep["log_loss"],
            "labelled_slices": int(keep.sum())}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
