"""The poster's comparisons on one dataset, as a markdown table (train, val and test F2).

    # CPU, small: synthetic data generated with fixed seeds
    python -m train.ablate --synthetic --output-dir runs/ablate --out-md docs/ablation.md
    python -m train.ablate --synthetic --quick --output-dir /tmp/ablate      # smoke test
    # GPU, full size: the RSNA 2019 data
    python -m train.ablate --data-root /data/rsna --cache-dir /data/cache --size 256 \
        --epochs 10 --batch-size 64 --output-dir runs/ablate --out-md docs/ablation.md

Comparisons (each row trains with ``train_cnn.py`` and scores with ``extract_embeddings.py``;
F2 is the macro slice-level F2 over the six classes, thresholds tuned on validation):

1. loss: BCE vs asymmetric loss (stacked input)                 - poster Tables 1-2
2. input: gray vs stacked (asymmetric loss)                       - poster Tables 1-2
3. stage 2: CNN alone vs CNN + LSTM (asymmetric loss, stacked)   - poster Table 3
4. small labelled set: random init vs SimCLR, ``--labeled-fraction`` of the train
   studies (SimCLR pre-trains on all train slices without labels) - poster Table 6

Runs are single-process (one GPU or the CPU); rows that share a configuration share a run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hohoho_core.datasets import load_embeddings
from hohoho_core.metrics import f2_report, search_thresholds
from hohoho_core.preprocess import PreprocessConfig
from train import common, extract_embeddings, pretrain_simclr, train_cnn, train_lstm

log = logging.getLogger("hohoho.train")

COMPARISONS = ("loss", "input", "lstm", "simclr")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run the poster's ablations, write a markdown table",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true",
                     help="generate synthetic train/val/test sets (fixed seeds)")
    src.add_argument("--data-root", type=Path, nargs="+", help="RSNA-layout folder(s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: <output-dir>/cache")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--out-md", type=Path, default=None, help="default: <output-dir>/ablation.md")
    p.add_argument("--only", nargs="+", choices=COMPARISONS, default=list(COMPARISONS))
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap optimiser steps per epoch (default: one pass)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lstm-epochs", type=int, default=30)
    p.add_argument("--labeled-fraction", type=float, default=0.1)
    p.add_argument("--simclr-epochs", type=int, default=10)
    p.add_argument("--simclr-batch-size", type=int, default=64)
    p.add_argument("--split-fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--prep-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    # synthetic data (ignored with --data-root)
    p.add_argument("--train-studies", type=int, default=100)
    p.add_argument("--val-studies", type=int, default=24)
    p.add_argument("--test-studies", type=int, default=24)
    p.add_argument("--gen-size", type=int, default=256)
    p.add_argument("--data-seed", type=int, default=2019)
    return p


QUICK = {"size": 64, "epochs": 1, "batch_size": 8, "lstm_epochs": 2, "simclr_epochs": 1,
         "simclr_batch_size": 8, "steps_per_epoch": 2, "train_studies": 4, "val_studies": 2, "test_studies": 2,
         "gen_size": 128, "labeled_fraction": 0.5}


def prepare(args: argparse.Namespace) -> tuple[list[str], str]:
    """Data arguments shared by every run, and a one-line description of the data."""
    cache_dir = args.cache_dir or args.output_dir / "cache"
    common_args = ["--cache-dir", str(cache_dir), "--size", str(args.size)]
    if args.synthetic:
        from train import make_demo_weights as demo

        gen = argparse.Namespace(
            data_dir=args.output_dir / "data", seed=args.data_seed,
            train_studies=args.train_studies, val_studies=args.val_studies,
            test_studies=args.test_studies, gen_size=args.gen_size,
            test_gen_size=args.gen_size, min_slices=8 if args.quick else 20,
            max_slices=10 if args.quick else 40, workers=max(1, args.prep_workers),
            train_positive_studies=0.4, randomise=False,
            progress=args.progress)
        demo.generate(gen)
        cfg = PreprocessConfig(mode="stacked", size=args.size)
        splits, stats = demo.index_and_cache(gen, cfg, cache_dir)
        common.write_json(args.output_dir / "splits.json", splits)
        desc = (f"synthetic (seeds {args.data_seed}/{args.data_seed + 1}/{args.data_seed + 2}; "
                + "/".join(str(stats[s]["studies"]) for s in common.SPLITS)
                + f" studies; generated at {args.gen_size} px)")
        return [*common_args, "--splits", str(args.output_dir / "splits.json")], desc
    roots = [str(r) for r in args.data_root]
    desc = "RSNA 2019 ({}), split {}".format(", ".join(Path(r).name for r in roots),
                                             "/".join(f"{f:g}" for f in args.split_fractions))
    return [*common_args, "--data-root", *roots, "--split-fractions",
            *[str(f) for f in args.split_fractions], "--split-seed", str(args.seed),
            "--prep-workers", str(args.prep_workers)], desc


def _runtime(args: argparse.Namespace, train: bool = True) -> list[str]:
    out = ["--device", args.device, "--seed", str(args.seed), "--workers", str(args.workers)]
    if train and args.steps_per_epoch is not None:
        out += ["--steps-per-epoch", str(args.steps_per_epoch)]
    if args.threads is not None:
        out += ["--threads", str(args.threads)]
    if not args.progress:
        out.append("--no-progress")
    return out


def run_cnn(args: argparse.Namespace, data_args: list[str], name: str, extra: list[str],
            splits_from: Path | None = None) -> Path:
    """Train one CNN configuration and extract its outputs; returns the run folder."""
    run = args.output_dir / "runs" / name
    if (run / "emb" / "emb_test.npz").is_file() and (run / "cnn" / "result.json").is_file():
        log.info("%s: reusing %s", name, run)
        return run
    data = list(data_args)
    if splits_from is not None and "--splits" not in data:
        # one split for every row: later runs read the first run's split file
        data = [*_data_only(data), "--splits", str(splits_from)]
    cmd = [*data, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--output-dir", str(run / "cnn"), "--overwrite", *_runtime(args),
           *extra]
    train_cnn.main(train_cnn.get_args_parser().parse_args(cmd))
    extract_embeddings.main(extract_embeddings.get_args_parser().parse_args(
        ["--cnn-run", str(run / "cnn"), "--output-dir", str(run / "emb"),
         *_runtime(args, train=False)]))
    return run


def cnn_f2(run: Path) -> dict[str, float]:
    """Macro slice F2 of the CNN on train/val/test with thresholds tuned on val."""
    tables = {s: load_embeddings(run / "emb" / f"emb_{s}.npz") for s in common.SPLITS}

    def labelled(t: Any) -> tuple[np.ndarray, np.ndarray]:
        keep = (t.labels >= 0).all(1)
        return t.labels[keep].astype(np.int64), common.sigmoid(t.logits[keep])

    thr = search_thresholds(*labelled(tables["val"]))
    return {s: f2_report(*labelled(t), thr)["slice"]["macro"] for s, t in tables.items()}


def lstm_f2(args: argparse.Namespace, run: Path) -> dict[str, float]:
    res = train_lstm.main(train_lstm.get_args_parser().parse_args(
        ["--cnn-run", str(run / "cnn"), "--embeddings", str(run / "emb"),
         "--output-dir", str(run / "lstm"), "--epochs", str(args.lstm_epochs),
         "--seed", str(args.seed), "--device", args.device,
         *([] if args.progress else ["--no-progress"])]))
    return {s: res["metrics"][s]["cnn_lstm"]["slice"]["macro"] for s in common.SPLITS}


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    common.setup_logging(True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data_args, desc = prepare(args)
    rows: list[dict[str, Any]] = []
    base = ["--mode", "stacked", "--loss", "asl"]

    def row(table: str, comparison: str, variant: str, f2: dict[str, float],
            epochs: int, size: int | None = None) -> None:
        rows.append({"table": table, "comparison": comparison, "variant": variant,
                     "data": desc, "size": size or args.size, "seed": args.seed,
                     "epochs": epochs, **{f"{s}_f2": f2[s] for s in common.SPLITS}})

    base_run = run_cnn(args, data_args, "asl_stacked", base)
    splits = base_run / "cnn" / "splits.json"
    if "loss" in args.only:
        bce = run_cnn(args, data_args, "bce_stacked", ["--mode", "stacked", "--loss", "bce"],
                      splits)
        row("1-2", "loss", "BCE, stacked", cnn_f2(bce), args.epochs)
        row("1-2", "loss", "asymmetric, stacked", cnn_f2(base_run), args.epochs)
    if "input" in args.only:
        gray = run_cnn(args, data_args, "asl_gray", ["--mode", "gray", "--loss", "asl"], splits)
        row("1-2", "input", "gray, asymmetric", cnn_f2(gray), args.epochs)
        row("1-2", "input", "stacked, asymmetric", cnn_f2(base_run), args.epochs)
    if "lstm" in args.only:
        row("3", "stage 2", "CNN alone", cnn_f2(base_run), args.epochs)
        row("3", "stage 2", "CNN + LSTM", lstm_f2(args, base_run),
            args.epochs)
    if "simclr" in args.only:
        frac = ["--labeled-fraction", str(args.labeled_fraction)]
        rand = run_cnn(args, data_args, "small_random", [*base, *frac], splits)
        simclr_dir = args.output_dir / "runs" / "simclr"
        backbone = simclr_dir / pretrain_simclr.BACKBONE_FILE
        if not backbone.is_file():
            pretrain_simclr.main(pretrain_simclr.get_args_parser().parse_args(
                [*_data_only(data_args), "--splits", str(splits),
                 "--epochs", str(args.simclr_epochs),
                 "--batch-size", str(args.simclr_batch_size), "--output-dir", str(simclr_dir),
                 *_runtime(args)]))
        sim = run_cnn(args, data_args, "small_simclr", [*base, *frac, "--init", str(backbone)],
                      splits)
        pct = f"{args.labeled_fraction:.0%}"
        row("6", f"{pct} labelled", "random init", cnn_f2(rand), args.epochs)
        row("6", f"{pct} labelled", f"SimCLR ({args.simclr_epochs} ep) init", cnn_f2(sim),
            args.epochs)
    out_md = args.out_md or args.output_dir / "ablation.md"
    write_markdown(out_md, rows, time.perf_counter() - t0, args)
    common.write_json(args.output_dir / "ablation.json", rows)
    log.info("ablation table -> %s", out_md)
    return rows


def _data_only(data_args: list[str]) -> list[str]:
    """Cache and size arguments without a data root or split file."""
    keep, skip = [], False
    for a in data_args:
        if a in ("--data-root", "--splits", "--split-fractions", "--split-seed",
                 "--prep-workers"):
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        keep.append(a)
    return keep


def write_markdown(path: Path, rows: list[dict[str, Any]], seconds: float,
                   args: argparse.Namespace) -> None:
    lines = [
        "# Ablations (poster Tables 1-6, reproduced)",
        "",
        "Macro slice-level F2 over the six classes; thresholds tuned on the validation split.",
        f"Machine: {common.machine_description()}; wall time {seconds / 60:.1f} min.",
        "",
        "| poster table | comparison | variant | data | size | seed | epochs | train F2 | "
        "val F2 | test F2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']} | {r['comparison']} | {r['variant']} | {r['data']} | {r['size']} "
            f"| {r['seed']} | {r['epochs']} | {r['train_f2']:.3f} | {r['val_f2']:.3f} | "
            f"{r['test_f2']:.3f} |"
        )
    if args.quick:
        lines += ["", "Quick smoke run: tiny data, numbers are meaningless."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
