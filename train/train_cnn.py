"""Stage 1: train the slice CNN (ResNet-18 + asymmetric loss by default).

One GPU or CPU::

    python -m train.train_cnn --data-root /data/rsna --cache-dir /data/cache --size 256 \
        --output-dir runs/cnn --epochs 10 --batch-size 64

N GPUs (or CPU processes with gloo) through torchrun::

    torchrun --nproc_per_node 4 --standalone -m train.train_cnn ...same arguments...

Writes into ``--output-dir``: ``args.json``, ``splits.json``, ``log.csv`` (one row per epoch),
``checkpoint.safetensors`` + ``checkpoint.json`` (last epoch, for ``--resume``) and
``best_cnn.safetensors`` (the epoch with the best validation macro F2). Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from hohoho_core.augment import PRESETS, AugmentConfig, HUAugment, to_model_input
from hohoho_core.datasets import SliceDataset, WeightedSliceSampler, slice_weights
from hohoho_core.distributed import DistInfo, barrier, cleanup, group_joined
from hohoho_core.evaluate import score
from hohoho_core.losses import LOSS_NAMES, any_weights, build_loss
from hohoho_core.metrics import search_thresholds
from hohoho_core.models import MODEL_NAMES, create_model
from train import common

log = logging.getLogger("hohoho.train")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Stage 1: train the slice CNN",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=MODEL_NAMES, default="resnet18")
    g.add_argument("--init", default="random",
                   help="random, imagenet, or a SimCLR backbone .safetensors")
    g.add_argument("--init-from", type=Path, default=None, metavar="BEST_CNN",
                   help="fine-tune: start every layer (the head too) from a stage-1 run's "
                   "best_cnn.safetensors (train.cnn_run_from_weights makes one from a weights "
                   "folder); --init must stay random")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=LOSS_NAMES, default="asl")
    g.add_argument("--gamma-neg", type=float, default=4.0, help="ASL gamma for negatives")
    g.add_argument("--gamma-pos", type=float, default=1.0, help="ASL gamma for positives")
    g.add_argument("--clip", type=float, default=0.05, help="ASL probability margin")
    g.add_argument("--focal-gamma", type=float, default=2.0)
    g.add_argument("--any-weight", type=float, default=1.0, help="weight of the 'any' column")
    common.add_optim_args(p, lr=1e-3)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=64, help="per process")
    g.add_argument("--eval-batch-size", type=int, default=None)
    g.add_argument("--steps-per-epoch", type=int, default=None,
                   help="optimiser steps per epoch (default: one pass over the train split)")
    g.add_argument("--positive-fraction", type=float, default=0.0,
                   help="draw positive slices this often (0 = plain shuffling)")
    g.add_argument("--labeled-fraction", type=float, default=1.0,
                   help="train on this fraction of the train studies (poster's small set)")
    g.add_argument("--resume", type=Path, default=None,
                   help="checkpoint stem or run folder to resume from (its saved arguments "
                   "are restored; different ones are refused)")
    g.add_argument("--overwrite", action="store_true",
                   help="start again in an --output-dir that holds a run (its files are "
                   "removed first); without it such a folder is refused")
    g.add_argument("--prepare-only", action="store_true",
                   help="index, cache and split, then stop (run once before multi-node jobs)")
    g = p.add_argument_group("augmentation (on HU, before windowing)")
    g.add_argument("--augment", choices=sorted(PRESETS), default="generous")
    for name, kind in (("rotation", float), ("shift", float), ("hflip", float),
                       ("vflip", float), ("centre-jitter", float), ("width-jitter", float),
                       ("noise", float), ("blur", float)):
        g.add_argument(f"--{name}", type=kind, default=None, help="override the preset")
    g.add_argument("--scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    common.add_runtime_args(p)
    return p


def augment_config(args: argparse.Namespace) -> AugmentConfig:
    """The preset with any command-line overrides."""
    d = PRESETS[args.augment].to_dict()
    for name in ("rotation", "shift", "hflip", "vflip", "centre_jitter", "width_jitter",
                 "noise", "blur", "scale"):
        v = getattr(args, name)
        if v is not None:
            d[name] = tuple(v) if isinstance(v, list) else v
    return AugmentConfig.from_dict(d)


def build_loss_fn(args: argparse.Namespace) -> nn.Module:
    weight = any_weights(args.any_weight) if args.any_weight != 1.0 else None
    if args.loss == "asl":
        return build_loss("asl", gamma_neg=args.gamma_neg, gamma_pos=args.gamma_pos,
                          clip=args.clip, weight=weight)
    if args.loss == "focal":
        return build_loss("focal", gamma=args.focal_gamma, weight=weight)
    return build_loss("bce", any_weight=args.any_weight)


def build_loaders(
    args: argparse.Namespace, data: common.DataBundle, dist: DistInfo
) -> tuple[DataLoader, DataLoader, SliceDataset]:
    """Train loader (HU slabs, augmented later on the device) and validation loader."""
    train_keys = common.labelled_subset(data.splits["train"], data.cache,
                                        args.labeled_fraction, args.seed)
    train_ds = SliceDataset(data.cache, train_keys, data.cfg, output="hu", seed=args.seed)
    val_ds = SliceDataset(data.cache, data.splits["val"], data.cfg, output="input")
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise SystemExit("the train and val splits need labelled slices")
    per_epoch = (args.steps_per_epoch * args.batch_size * dist.world_size
                 if args.steps_per_epoch else len(train_ds))
    if args.positive_fraction > 0:
        w = slice_weights(train_ds.labels, args.positive_fraction)
        sampler = WeightedSliceSampler(w, per_epoch, dist.rank, dist.world_size, args.seed)
    elif dist.distributed:
        sampler = DistributedSampler(train_ds, dist.world_size, dist.rank, shuffle=True,
                                     seed=args.seed)
    else:
        g = torch.Generator().manual_seed(args.seed)
        sampler = RandomSampler(train_ds, num_samples=per_epoch
                                if args.steps_per_epoch else None, generator=g)
    pin = dist.device.type == "cuda"
    train_loader = DataLoader(train_ds, args.batch_size, sampler=sampler, drop_last=True,
                              num_workers=args.workers, pin_memory=pin,
                              persistent_workers=args.workers > 0)
    if len(train_loader) == 0:
        raise SystemExit("the train split is smaller than one batch: lower --batch-size")
    val_sampler = (DistributedSampler(val_ds, dist.world_size, dist.rank, shuffle=False)
                   if dist.distributed else None)
    val_loader = DataLoader(val_ds, args.eval_batch_size or args.batch_size * 2,
                            sampler=val_sampler, num_workers=args.workers, pin_memory=pin)
    return train_loader, val_loader, train_ds


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    augment: HUAugment,
    args: argparse.Namespace,
    dist: DistInfo,
    epoch: int,
    scaler: torch.amp.GradScaler,
    cfg: Any,
) -> dict[str, float]:
    from tqdm.auto import tqdm

    model.train()
    device = dist.device
    mformat = common.memory_format(args, device)
    steps = len(loader)
    total = steps * args.epochs
    warmup = int(args.warmup_epochs * steps)
    # one augmentation stream per (seed, epoch, rank): reproducible, different per rank
    g = torch.Generator().manual_seed(args.seed * 100_003 + epoch * 1_009 + dist.rank)
    loss_sum, n_seen, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (args.progress and dist.rank == 0),
               leave=False, dynamic_ncols=True)
    for i, (hu, y, _) in enumerate(bar):
        common.set_lr(optimizer, common.lr_at(epoch * steps + i, total, args.lr, warmup,
                                              args.schedule))
        hu = hu.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        x = to_model_input(augment(hu, g), cfg).contiguous(memory_format=mformat)
        with common.train_autocast(args, device):
            _, logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if not math.isfinite(loss.item()):
            raise SystemExit(f"loss is {loss.item()} at epoch {epoch} step {i}: stopping")
        loss_sum += loss.item() * len(y)
        n_seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}")
    seconds = time.perf_counter() - t0
    mean_loss = common.all_reduce_mean(loss_sum / max(n_seen, 1), n_seen, dist)
    return {"train_loss": mean_loss, "images_per_s": n_seen * dist.world_size / seconds,
            "epoch_s": seconds}


def evaluate(
    model: nn.Module, loader: DataLoader, args: argparse.Namespace, dist: DistInfo
) -> dict[str, Any]:
    """Validation: macro F2 at 0.5 and at thresholds tuned on this split, log loss, AUC."""
    ds: SliceDataset = loader.dataset
    out = common.infer_slices(model, loader, dist.device, common.use_amp(args, dist.device),
                              common.memory_format(args, dist.device), dist,
                              progress=args.progress, desc="val")
    y = ds.labels[out["index"]]
    prob = common.sigmoid(out["logits"])
    study = np.asarray(ds.keys)[ds.study_index[out["index"]]]
    tuned = search_thresholds(y, prob)
    rep = score(y, prob, tuned, study)
    at_half = score(y, prob, np.full(len(tuned), 0.5))
    return {
        "val_f2": rep["slice"]["macro"],
        "val_f2_at_0.5": at_half["slice"]["macro"],
        "val_study_f2": rep["study"]["macro"],
        "val_log_loss": rep["log_loss"],
        "val_auc": rep["auc_macro"] if rep["auc_macro"] is not None else float("nan"),
        "thresholds": tuned.tolist(),
    }


def device_type(device: str) -> str:
    """``--device`` as it resolves here: "auto" is cuda where a GPU is visible."""
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def _resume_stem(path: Path) -> Path:
    path = Path(path)
    return path / "checkpoint" if path.is_dir() else Path(str(path).removesuffix(".json"))


def main(args: argparse.Namespace) -> dict[str, Any]:
    # called by another script (oof_predict under torchrun): its process group stays up
    own_group = not group_joined()
    restored = [] if args.resume is None else common.restore_resume_args(
        args, get_args_parser(), common.read_checkpoint_state(_resume_stem(args.resume))["args"])
    if args.init_from is not None and args.resume is None:  # resuming: the checkpoint's
        if args.init != "random":
            raise SystemExit(f"--init-from with --init {args.init}: give one starting point")
        if not Path(args.init_from).is_file():
            raise SystemExit(f"--init-from {args.init_from}: no such file")
    dist = common.setup_runtime(args)
    run_dir = Path(args.output_dir)
    main_proc = dist.rank == 0
    if main_proc:
        common.refuse_taken_run_dir(args)
        if restored:
            log.info("resume: restored --%s from the checkpoint", ", --".join(restored))
        run_dir.mkdir(parents=True, exist_ok=True)
        # --prepare-only is not a run: the training run that follows may use the folder
        name = "prepare_args.json" if args.prepare_only else "args.json"
        common.write_json(run_dir / name, common.args_to_dict(args))
    data = common.prepare_data(args, dist, run_dir)
    if args.prepare_only:
        if main_proc:
            log.info("prepared: %s", ", ".join(f"{k} {len(v)} studies"
                                               for k, v in data.splits.items()))
        if own_group:
            cleanup()
        return {"splits": {k: len(v) for k, v in data.splits.items()}}
    train_loader, val_loader, train_ds = build_loaders(args, data, dist)

    model = create_model(args.arch, init=args.init, in_channels=data.cfg.channels)
    if args.init_from is not None and args.resume is None:
        common.load_model_weights(args.init_from, model)  # strict: same arch and input
    model = model.to(dist.device)
    model = model.to(memory_format=common.memory_format(args, dist.device))
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    criterion = build_loss_fn(args).to(dist.device)
    optimizer = common.build_optimizer(args, model.parameters())
    scaler = torch.amp.GradScaler(dist.device.type, enabled=common.use_amp(args, dist.device))
    augment = HUAugment(augment_config(args))

    start, best = 0, {"val_f2": -1.0}
    if args.resume is not None:
        # protect_run_dir has already made the arguments those of the checkpoint
        state = common.load_checkpoint(_resume_stem(args.resume), model, optimizer)
        start, best = int(state["epoch"]) + 1, state.get("best", best)
        log.info("resumed from epoch %d", state["epoch"])

    if main_proc:
        log.info("train %d slices (%d studies), val %d slices (%d studies), %s on %s x%d",
                 len(train_ds), len(train_ds.keys), len(val_loader.dataset),
                 len(data.splits["val"]), args.arch, dist.device, dist.world_size)
    csv_log = common.CsvLog(run_dir / "log.csv") if main_proc else None
    resolved = common.args_to_dict(args)
    for epoch in range(start, args.epochs):
        for obj in (train_loader.sampler, train_ds):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        row: dict[str, Any] = {"epoch": epoch}
        row.update(train_one_epoch(model, criterion, optimizer, train_loader, augment, args,
                                   dist, epoch, scaler, data.cfg))
        metrics = evaluate(model, val_loader, args, dist)
        thresholds = metrics.pop("thresholds")
        row.update(metrics)
        row["lr"] = optimizer.param_groups[0]["lr"]
        if main_proc:
            log.info(common.metrics_line(f"epoch {epoch}", row))
            csv_log.write(row)
            if row["val_f2"] > best["val_f2"]:
                best = {**row, "thresholds": thresholds}
                common.save_model_weights(run_dir / "best_cnn.safetensors", model,
                                          {"arch": args.arch, "epoch": epoch,
                                           "preprocess": data.cfg.to_dict()})
            common.save_checkpoint(run_dir / "checkpoint", model, optimizer,
                                   {"epoch": epoch, "args": resolved, "metrics": row,
                                    "best": best, "preprocess": data.cfg.to_dict()})
        barrier()
    result = {"best": best, "epochs": args.epochs, "run_dir": str(run_dir)}
    if main_proc:
        common.write_json(run_dir / "result.json", result)
        csv_log.close()
    if own_group:
        cleanup()
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
