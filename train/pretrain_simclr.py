"""SimCLR pre-training on unlabelled slices; writes a backbone ``train_cnn.py --init`` loads.

    python -m train.pretrain_simclr --data-root /data/rsna --cache-dir /data/cache \
        --size 256 --output-dir runs/simclr --epochs 50 --batch-size 256
    python -m train.train_cnn ... --init runs/simclr/simclr_backbone.safetensors \
        --labeled-fraction 0.1

Labels are never read. Slices come from the train split only (``--use-splits`` may add val;
test is never used). Two views per slice (``hohoho_core.simclr.CTViews``: window jitter,
large crops, rotation, flips, noise, blur), ResNet embedding -> projection head -> NT-Xent.
``--neighbour-positives`` also treats adjacent slices of one study in the batch as positives.
Under torchrun each rank contrasts its own batch (negatives are not gathered across ranks).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from hohoho_core.datasets import SliceDataset
from hohoho_core.distributed import DistInfo, barrier, cleanup
from hohoho_core.models import MODEL_NAMES, SliceClassifier, create_model, save_backbone
from hohoho_core.simclr import CTViews, ProjectionHead, neighbour_positive_mask, nt_xent
from train import common

log = logging.getLogger("hohoho.train")

BACKBONE_FILE = "simclr_backbone.safetensors"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="SimCLR pre-training on unlabelled CT slices",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_data_args(p)
    p.add_argument("--arch", choices=MODEL_NAMES, default="resnet18")
    p.add_argument("--use-splits", nargs="+", choices=["train", "val"], default=["train"])
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--proj-hidden", type=int, default=512)
    p.add_argument("--proj-dim", type=int, default=128)
    p.add_argument("--neighbour-positives", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--resume", type=Path, default=None, help="run folder or checkpoint stem")
    common.add_optim_args(p, lr=1e-3)
    common.add_runtime_args(p)
    return p


class SimCLRNet(nn.Module):
    """``x [N, 3, H, W] -> z [N, proj_dim]``: the classifier's embedding, then the head."""

    def __init__(self, classifier: SliceClassifier, head: ProjectionHead) -> None:
        super().__init__()
        self.classifier = classifier
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier.embed(x))


def build_loaders(args: argparse.Namespace, data: common.DataBundle,
                  dist: DistInfo) -> tuple[DataLoader, SliceDataset]:
    keys = [k for s in args.use_splits for k in data.splits[s]]
    ds = SliceDataset(data.cache, keys, data.cfg, output="hu", labeled_only=False)
    per_epoch = (args.steps_per_epoch * args.batch_size * dist.world_size
                 if args.steps_per_epoch else None)
    if dist.distributed:
        sampler = DistributedSampler(ds, dist.world_size, dist.rank, shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(ds, num_samples=per_epoch,
                                generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(ds, args.batch_size, sampler=sampler, drop_last=True,
                        num_workers=args.workers, pin_memory=dist.device.type == "cuda")
    if len(loader) == 0:
        raise SystemExit("fewer slices than one batch: lower --batch-size")
    return loader, ds


def train_one_epoch(net: nn.Module, loader: DataLoader, views: CTViews,
                    optimizer: torch.optim.Optimizer, args: argparse.Namespace, dist: DistInfo,
                    epoch: int, scaler: torch.amp.GradScaler) -> dict[str, float]:
    from tqdm.auto import tqdm

    net.train()
    device = dist.device
    mformat = common.memory_format(args, device)
    steps = len(loader)
    total, warmup = steps * args.epochs, int(args.warmup_epochs * steps)
    g = torch.Generator().manual_seed(args.seed * 100_003 + epoch * 1_009 + dist.rank)
    loss_sum, n, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"simclr {epoch}", disable=not (args.progress and dist.rank == 0),
               leave=False, dynamic_ncols=True)
    for i, (hu, _, meta) in enumerate(bar):
        common.set_lr(optimizer, common.lr_at(epoch * steps + i, total, args.lr, warmup,
                                              args.schedule))
        v1, v2 = views(hu.to(device, non_blocking=True), g)
        x = torch.cat([v1, v2]).contiguous(memory_format=mformat)
        positives = None
        if args.neighbour_positives:
            positives = neighbour_positive_mask(meta["study"], meta["slice"])
        with common.train_autocast(args, device):
            z = net(x)
        z1, z2 = z.float().chunk(2)
        loss = nt_xent(z1, z2, args.temperature, positives)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item()
        n += 1
        bar.set_postfix(loss=f"{loss_sum / n:.4f}")
    seconds = time.perf_counter() - t0
    return {"loss": common.all_reduce_mean(loss_sum / max(n, 1), n, dist),
            "images_per_s": 2 * n * args.batch_size * dist.world_size / seconds}


def main(args: argparse.Namespace) -> dict[str, Any]:
    dist = common.setup_runtime(args)
    run_dir = Path(args.output_dir)
    if dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        common.write_json(run_dir / "args.json", common.args_to_dict(args))
    data = common.prepare_data(args, dist, run_dir)
    loader, ds = build_loaders(args, data, dist)
    classifier = create_model(args.arch, init="random", in_channels=data.cfg.channels)
    net: nn.Module = SimCLRNet(classifier, ProjectionHead(classifier.embed_dim, args.proj_hidden,
                                                          args.proj_dim))
    net = net.to(dist.device).to(memory_format=common.memory_format(args, dist.device))
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    optimizer = common.build_optimizer(args, net.parameters())
    scaler = torch.amp.GradScaler(dist.device.type, enabled=common.use_amp(args, dist.device))
    views = CTViews(data.cfg)
    start = 0
    if args.resume is not None:
        stem = Path(args.resume) / "checkpoint" if Path(args.resume).is_dir() else args.resume
        start = int(common.load_checkpoint(stem, net, optimizer)["epoch"]) + 1
    csv_log = common.CsvLog(run_dir / "log.csv") if dist.rank == 0 else None
    if dist.rank == 0:
        log.info("SimCLR on %d unlabelled slices of %d studies", len(ds), len(ds.keys))
    losses: list[float] = []
    for epoch in range(start, args.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        row = {"epoch": epoch, **train_one_epoch(net, loader, views, optimizer, args, dist,
                                                 epoch, scaler)}
        losses.append(row["loss"])
        if dist.rank == 0:
            log.info(common.metrics_line(f"simclr epoch {epoch}", row))
            csv_log.write(row)
            save_backbone(common.unwrap(net).classifier, run_dir / BACKBONE_FILE)
            common.save_checkpoint(run_dir / "checkpoint", net, optimizer,
                                   {"epoch": epoch, "args": common.args_to_dict(args),
                                    "metrics": row})
        barrier()
    if dist.rank == 0:
        csv_log.close()
    cleanup()
    return {"backbone": str(run_dir / BACKBONE_FILE), "losses": [float(x) for x in
                                                                  np.asarray(losses)]}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
