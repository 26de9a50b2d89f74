"""Embeddings and logits of every slice of every study, one file per split.

    python -m train.extract_embeddings --cnn-run runs/cnn --output-dir runs/emb [--tta-flip]
    torchrun --nproc_per_node 4 --standalone -m train.extract_embeddings ...same...

Reads the stage-1 run folder (its ``args.json``, ``splits.json`` and ``best_cnn.safetensors``)
so preprocessing and splits are exactly those the CNN was trained with. Every slice of a study
is kept, labelled or not, so the sequence model sees whole studies in order. Writes
``emb_<split>.npz`` (see ``hohoho_core.datasets.save_embeddings``) on rank 0.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from hohoho_core.augment import PRESETS, HUAugment
from hohoho_core.cache import StudyCache
from hohoho_core.datasets import EmbeddingTable, SliceDataset, save_embeddings
from hohoho_core.distributed import DistInfo, cleanup, group_joined
from hohoho_core.models import create_model
from hohoho_core.preprocess import PreprocessConfig
from train import common

log = logging.getLogger("hohoho.train")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Extract per-slice embeddings and logits",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cnn-run", type=Path, required=True, help="train_cnn.py output folder")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="the preprocessed cache (default: the one in <cnn-run>/args.json)")
    p.add_argument("--weights-file", type=Path, default=None,
                   help="model tensors (default: <cnn-run>/best_cnn.safetensors)")
    p.add_argument("--splits", nargs="+", default=list(common.SPLITS),
                   choices=list(common.SPLITS))
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=False,
                   help="average with the left-right mirrored slice")
    p.add_argument("--train-copies", type=int, default=0,
                   help="also write this many augmented copies of every train study "
                        "(keys '<key>#aug<c>'), so stage 2 sees stage-1 errors like test's")
    p.add_argument("--train-augment", choices=sorted(PRESETS), default="generous",
                   help="augmentation of the train copies (one draw per study)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def read_cnn_run(run: Path) -> tuple[dict[str, Any], PreprocessConfig, dict[str, list[str]]]:
    """(stage-1 args, preprocessing, splits) of a ``train_cnn.py`` run folder."""
    run = Path(run)
    cnn_args = json.loads((run / "args.json").read_text(encoding="utf-8"))
    cfg = PreprocessConfig(mode=cnn_args["mode"], size=cnn_args["size"], crop=cnn_args["crop"],
                           window=cnn_args["window"])
    return cnn_args, cfg, common.read_splits(run / "splits.json")


def _loader(ds: SliceDataset, args: argparse.Namespace, dist: DistInfo) -> DataLoader:
    sampler = (DistributedSampler(ds, dist.world_size, dist.rank, shuffle=False)
               if dist.distributed else None)
    return DataLoader(ds, args.batch_size, sampler=sampler, num_workers=args.workers,
                      pin_memory=dist.device.type == "cuda")


def build_loaders(
    args: argparse.Namespace, cache: StudyCache, cfg: PreprocessConfig,
    splits: dict[str, list[str]], dist: DistInfo,
) -> dict[str, list[tuple[str, DataLoader]]]:
    """Per split, ``(suffix, loader)`` pairs: the plain pass (suffix "") and, for train,
    ``--train-copies`` augmented passes (suffix "#aug<c>")."""
    loaders: dict[str, list[tuple[str, DataLoader]]] = {}
    for name in args.splits:
        ds = SliceDataset(cache, splits[name], cfg, output="input", labeled_only=False)
        loaders[name] = [("", _loader(ds, args, dist))]
        if name == "train":
            for c in range(args.train_copies):
                aug = SliceDataset(cache, splits[name], cfg, output="input",
                                   labeled_only=False, augment=HUAugment(PRESETS[
                                       args.train_augment]), seed=args.seed + 1 + c,
                                   augment_by="study")
                loaders[name].append((f"#aug{c}", _loader(aug, args, dist)))
    return loaders


def extract(model: Any, loader: DataLoader, args: argparse.Namespace, dist: DistInfo,
            name: str, suffix: str = "") -> EmbeddingTable:
    ds: SliceDataset = loader.dataset
    out = common.infer_slices(model, loader, dist.device, common.use_amp(args, dist.device),
                              common.memory_format(args, dist.device), dist,
                              tta_flip=args.tta_flip, want_embeddings=True,
                              progress=args.progress, desc=name)
    idx = out["index"]
    if len(idx) != len(ds):
        raise RuntimeError(f"{name}: gathered {len(idx)} of {len(ds)} slices")
    s, k = ds.study_index[idx], ds.slice_index[idx]
    image_ids = [ds.image_id(int(i)) for i in idx]
    return EmbeddingTable(
        embeddings=out["embeddings"].astype(np.float32),
        logits=out["logits"].astype(np.float32),
        labels=ds.labels[idx],
        study=np.asarray([k + suffix for k in ds.keys])[s],
        image_id=np.asarray(image_ids),
        slice_index=k.astype(np.int32),
    )


def concat_tables(tables: list[EmbeddingTable]) -> EmbeddingTable:
    if len(tables) == 1:
        return tables[0]
    return EmbeddingTable(*(np.concatenate([getattr(t, f) for t in tables]) for f in (
        "embeddings", "logits", "labels", "study", "image_id", "slice_index")))


def main(args: argparse.Namespace) -> dict[str, str]:
    own_group = not group_joined()  # a caller's process group (oof_predict) stays up
    dist = common.setup_runtime(args)
    cnn_args, cfg, splits = read_cnn_run(args.cnn_run)
    cache_dir = args.cache_dir or cnn_args.get("cache_dir")
    if not cache_dir or not (Path(cache_dir) / "studies").is_dir():
        raise SystemExit(f"no preprocessed cache at {cache_dir!r} (from {args.cnn_run}/args.json):"
                         " pass --cache-dir")
    cache = StudyCache(Path(cache_dir) / "studies")
    model = create_model(cnn_args["arch"], init="random", in_channels=cfg.channels)
    common.load_model_weights(args.weights_file or Path(args.cnn_run) / "best_cnn.safetensors",
                              model)
    model = model.to(dist.device).to(memory_format=common.memory_format(args, dist.device))
    out_dir = Path(args.output_dir)
    written: dict[str, str] = {}
    for name, passes in build_loaders(args, cache, cfg, splits, dist).items():
        table = concat_tables([extract(model, loader, args, dist, name + suffix, suffix)
                               for suffix, loader in passes])
        if dist.rank == 0:
            path = save_embeddings(out_dir / f"emb_{name}.npz", table)
            written[name] = str(path)
            log.info("%s: %d slices of %d studies -> %s", name, len(table.study),
                     len(set(table.study.tolist())), path.name)
    if dist.rank == 0:
        common.write_json(out_dir / "args.json", common.args_to_dict(args))
    if own_group:
        cleanup()
    return written


if __name__ == "__main__":
    main(get_args_parser().parse_args())
