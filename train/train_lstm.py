"""Stage 2: the stacked bidirectional LSTM over each study's slice embeddings, then the
final weights folder (CNN + LSTM + config) with thresholds tuned on validation.

    python -m train.train_lstm --cnn-run runs/cnn --embeddings runs/emb \
        --output-dir runs/lstm --weights-out weights

Reads ``emb_{train,val,test}.npz`` from ``extract_embeddings.py``. Studies are padded to the
longest in a batch and masked, so padding never counts in the BCE. Per-class thresholds for
the LSTM and for the CNN alone are chosen on the validation split, never on test; test
metrics are measured once at the end. The LSTM is tiny, so this script runs in one process.

For data from another source (issue 13) the sequence model has three guards, each a flag:
``--residual`` (the output is the CNN's logits, scaled per class, plus an LSTM correction
that starts at zero and is penalised by ``--residual-penalty``), sequence augmentation of
the training studies along z (``--z-stride``, ``--z-crop``, ``--z-flip``, ``--slice-drop``:
other slice spacing, coverage and order), and ``--label-smoothing`` / ``--patience``
(early stopping on validation F2). docs/ablation.md, "Stage-2 sequence model that
transfers", measures them.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hohoho_core.calibration import apply_temperature, fit_temperature, logit
from hohoho_core.datasets import (
    EmbeddingSequenceDataset,
    EmbeddingTable,
    collate_sequences,
    load_embeddings,
)
from hohoho_core.evaluate import score
from hohoho_core.labels import CLASSES
from hohoho_core.losses import masked_bce
from hohoho_core.metrics import search_thresholds
from hohoho_core.models import LstmConfig, SequenceModel, create_model
from hohoho_core.weights import ModelConfig, save_weights
from train import common

log = logging.getLogger("hohoho.train")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Stage 2: sequence model over slice embeddings",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cnn-run", type=Path, required=True, help="train_cnn.py output folder")
    p.add_argument("--embeddings", type=Path, required=True, help="extract_embeddings output")
    p.add_argument("--weights-out", type=Path, default=None,
                   help="final weights folder (default: <output-dir>/weights)")
    p.add_argument("--weights-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--data-json", type=Path, default=None,
                   help="JSON describing the data, copied into the weights config")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--dropout", type=float, default=0.2)
    g.add_argument("--use-logits", action=argparse.BooleanOptionalAction, default=True,
                   help="feed the stage-1 logits too")
    g.add_argument("--use-diffs", action=argparse.BooleanOptionalAction, default=False,
                   help="feed emb - previous and emb - next too")
    g.add_argument("--use-embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="feed the slice embeddings (--no-use-embeddings: the stage-1 logits "
                        "only, a sequence model of the CNN's scores)")
    g.add_argument("--residual", action=argparse.BooleanOptionalAction, default=False,
                   help="output = CNN logits (per-class scale and bias) + an LSTM correction "
                        "that starts at zero (needs --use-logits)")
    g.add_argument("--residual-penalty", type=float, default=0.01,
                   help="weight of the mean squared residual correction in the loss")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=8, help="studies per batch")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--any-weight", type=float, default=1.0)
    g.add_argument("--emb-noise", type=float, default=0.0,
                   help="Gaussian noise on train embeddings, relative to their std")
    g.add_argument("--label-smoothing", type=float, default=0.0,
                   help="targets y (1 - e) + e / 2: caps the confidence the BCE asks for")
    g.add_argument("--patience", type=int, default=0,
                   help="stop after this many epochs without a better validation F2 (0: off)")
    g = p.add_argument_group("sequence augmentation (training studies, drawn per study)")
    g.add_argument("--z-stride", type=float, default=0.0,
                   help="probability of keeping every second slice (random phase): twice "
                        "the slice spacing")
    g.add_argument("--z-crop", type=float, default=0.0,
                   help="probability of keeping a random run of 50-100 %% of the slices")
    g.add_argument("--z-flip", type=float, default=0.0,
                   help="probability of reversing the slice order")
    g.add_argument("--slice-drop", type=float, default=0.0,
                   help="probability of dropping each slice (at least 2 kept)")
    g.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="fit one temperature per class (CNN and LSTM outputs) on validation "
                        "and tune the thresholds on the calibrated probabilities")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output-dir", type=Path, required=True)
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def build_loaders(args: argparse.Namespace) -> tuple[dict[str, EmbeddingTable], dict[str, DataLoader]]:
    tables, loaders = {}, {}
    for name in common.SPLITS:
        path = Path(args.embeddings) / f"emb_{name}.npz"
        if not path.is_file():
            if name == "test":
                continue  # a run without a test split still trains
            raise SystemExit(f"missing {path}: run extract_embeddings.py first")
        tables[name] = load_embeddings(path)
        ds: Any = EmbeddingSequenceDataset(tables[name])
        if name == "train" and z_augmenting(args):
            ds = ZAugmented(ds, args, np.random.default_rng(args.seed))
        g = torch.Generator().manual_seed(args.seed)
        loaders[name] = DataLoader(ds, args.batch_size if name == "train" else 32,
                                   shuffle=name == "train", generator=g,
                                   collate_fn=collate_sequences)
    return tables, loaders


def z_augmenting(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, 0.0) > 0 for k in ("z_stride", "z_crop", "z_flip", "slice_drop"))


def z_augment_rows(n: int, rng: np.random.Generator, stride: float = 0.0, crop: float = 0.0,
                   flip: float = 0.0, drop: float = 0.0) -> np.ndarray:
    """Positions (into a study of ``n`` slices) of one augmented view of it, in the order the
    sequence model reads them: a random run (``crop``), every second slice (``stride``),
    independent slice drop-out (``drop``), reversed (``flip``); each an independent draw.
    At least two slices (or all, when fewer) are kept."""
    idx = np.arange(n)
    if n >= 4 and rng.random() < crop:
        keep = int(rng.integers((n + 1) // 2, n + 1))
        start = int(rng.integers(0, n - keep + 1))
        idx = idx[start:start + keep]
    if len(idx) >= 4 and rng.random() < stride:
        idx = idx[int(rng.integers(0, 2))::2]
    if drop > 0 and len(idx) > 2:
        kept = idx[rng.random(len(idx)) >= drop]
        idx = kept if len(kept) >= 2 else idx[np.sort(rng.choice(len(idx), 2, replace=False))]
    if rng.random() < flip:
        idx = idx[::-1]
    return idx


class ZAugmented(Dataset):
    """An `EmbeddingSequenceDataset` whose studies are re-sampled along z on every read
    (`z_augment_rows`); the slices' labels travel with them."""

    def __init__(self, base: EmbeddingSequenceDataset, args: argparse.Namespace,
                 rng: np.random.Generator) -> None:
        self.base, self.rng = base, rng
        self.p = {"stride": args.z_stride, "crop": args.z_crop, "flip": args.z_flip,
                  "drop": args.slice_drop}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        idx = torch.from_numpy(np.ascontiguousarray(
            z_augment_rows(int(item["emb"].shape[0]), self.rng, **self.p)))
        return {**{k: item[k][idx] for k in ("emb", "logits", "labels", "rows")},
                "key": item["key"]}


def lstm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw = {"hidden": args.hidden, "layers": args.layers, "bidirectional": args.bidirectional,
          "dropout": args.dropout, "use_logits": args.use_logits, "use_diffs": args.use_diffs}
    # Only when set, so configs of the plain recipe keep their old layout.
    if getattr(args, "residual", False):
        kw["residual"] = True
    if not getattr(args, "use_embeddings", True):
        kw["use_embeddings"] = False
    return kw


def train_one_epoch(model: SequenceModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    args: argparse.Namespace, device: torch.device, emb_std: float,
                    g: torch.Generator) -> float:
    model.train()
    total, n = 0.0, 0
    for b in loader:
        emb, mask = b["emb"].to(device), b["mask"].to(device)
        labels = b["labels"].to(device)
        if args.emb_noise > 0:
            emb = emb + torch.randn(emb.shape, generator=g).to(device) * args.emb_noise * emb_std
        base, seq = model.parts(emb, mask, b["logits"].to(device) if args.use_logits else None)
        out = seq if base is None else base + seq
        known = mask & (labels >= 0).all(-1)
        if not bool(known.any()):
            continue
        target = labels.clamp(min=0)
        if args.label_smoothing > 0:
            target = target * (1 - args.label_smoothing) + args.label_smoothing / 2
        loss = masked_bce(out, target, known, any_weight=args.any_weight)
        if base is not None and args.residual_penalty > 0:
            # Small corrections unless the sequence evidence pays for them.
            loss = loss + args.residual_penalty * seq[known].pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        total += loss.item() * int(known.sum())
        n += int(known.sum())
    return total / max(n, 1)


@torch.no_grad()
def predict(model: SequenceModel, loader: DataLoader, n_rows: int, use_logits: bool,
            device: torch.device) -> np.ndarray:
    """LSTM probabilities ``(N, 6)`` in the row order of the split's embedding table."""
    model.eval()
    prob = np.zeros((n_rows, 6), np.float32)
    for b in loader:
        mask = b["mask"]
        out = model(b["emb"].to(device), mask.to(device),
                    b["logits"].to(device) if use_logits else None)
        p = torch.sigmoid(out).cpu().numpy()
        rows = b["rows"].numpy()
        m = mask.numpy()
        prob[rows[m]] = p[m]
    return prob


def evaluate(model: SequenceModel, loader: DataLoader, table: EmbeddingTable,
             args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Any], np.ndarray]:
    prob = predict(model, loader, len(table.study), args.use_logits, device)
    thr = search_thresholds(*_labelled(table.labels, prob))
    rep = score(table.labels, prob, thr, table.study)
    return rep, prob


def _labelled(y: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = (y >= 0).all(1)
    return y[keep].astype(np.int64), prob[keep]


def fit_calibration(tables: dict[str, EmbeddingTable], lstm_prob: dict[str, np.ndarray],
                    enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-class temperatures (CNN, LSTM) fitted on the validation split; ones when off."""
    ones = np.ones(len(CLASSES))
    if not enabled:
        return ones, ones
    y = tables["val"].labels
    return (fit_temperature(tables["val"].logits, y),
            fit_temperature(logit(lstm_prob["val"]), y))


def final_metrics(tables: dict[str, EmbeddingTable], lstm_prob: dict[str, np.ndarray],
                  calibrate: bool = True) -> dict:
    """CNN alone and CNN + LSTM on every split; temperatures and thresholds from validation
    only (thresholds on the calibrated probabilities)."""
    t_cnn, t_lstm = fit_calibration(tables, lstm_prob, calibrate)
    raw_lstm = lstm_prob
    cnn_prob = {k: common.sigmoid(t.logits / t_cnn) for k, t in tables.items()}
    lstm_prob = {k: apply_temperature(p, t_lstm) for k, p in lstm_prob.items()}
    thr_lstm = search_thresholds(*_labelled(tables["val"].labels, lstm_prob["val"]))
    thr_cnn = search_thresholds(*_labelled(tables["val"].labels, cnn_prob["val"]))
    out: dict[str, Any] = {"thresholds": common.classes_dict(thr_lstm),
                           "cnn_thresholds": common.classes_dict(thr_cnn),
                           "temperatures": common.classes_dict(t_lstm),
                           "cnn_temperatures": common.classes_dict(t_cnn)}
    for split, t in tables.items():
        real = np.char.find(t.study.astype(str), "#aug") < 0  # not the augmented copies
        out[split] = {
            "cnn": score(t.labels[real], cnn_prob[split][real], thr_cnn, t.study[real]),
            "cnn_lstm": score(t.labels[real], lstm_prob[split][real], thr_lstm,
                                     t.study[real]),
            "n_studies": len(set(t.study[real].tolist())),
            # Calibration error before calibration, to show what the temperatures bought.
            "ece_raw": {
                "cnn": score(t.labels[real], common.sigmoid(t.logits[real]), thr_cnn)["ece_macro"],
                "cnn_lstm": score(t.labels[real], raw_lstm[split][real], thr_lstm)["ece_macro"],
            },
        }
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    common.setup_logging(True)
    common.seed_everything(args.seed)
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available()
                          else "cpu")
    common.set_threads(args.threads, common.DistInfo(0, 1, 0, device, False))
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(out_dir / "args.json", common.args_to_dict(args))
    tables, loaders = build_loaders(args)
    embed_dim = int(tables["train"].embeddings.shape[1])
    model = SequenceModel(embed_dim, **lstm_kwargs(args)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(args.epochs, 1))
    emb_std = float(tables["train"].embeddings.std())
    g = torch.Generator().manual_seed(args.seed)
    csv_log = common.CsvLog(out_dir / "log.csv")
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state = copy.deepcopy(model.state_dict())
    since_best = 0
    for epoch in range(args.epochs):
        loss = train_one_epoch(model, loaders["train"], optimizer, args, device, emb_std, g)
        sched.step()
        rep, _ = evaluate(model, loaders["val"], tables["val"], args, device)
        row = {"epoch": epoch, "train_loss": loss, "val_f2": rep["slice"]["macro"],
               "val_study_f2": rep["study"]["macro"], "val_log_loss": rep["log_loss"]}
        log.info(common.metrics_line(f"lstm epoch {epoch}", row))
        csv_log.write(row)
        # best validation F2 (tuned thresholds), ties broken by the lower log loss
        key = (round(row["val_f2"], 6), -row["val_log_loss"])
        if key > (best[0], -best[1]):
            best = (key[0], row["val_log_loss"])
            best_state = copy.deepcopy(model.state_dict())
            since_best = 0
        else:
            since_best += 1
            if args.patience > 0 and since_best >= args.patience:
                log.info("no better validation F2 for %d epochs: stopping", since_best)
                break
    csv_log.close()
    model.load_state_dict(best_state)
    lstm_prob = {k: predict(model, loaders[k], len(t.study), args.use_logits, device)
                 for k, t in tables.items()}
    metrics = final_metrics(tables, lstm_prob, args.calibrate)
    common.write_json(out_dir / "metrics.json", metrics)
    folder = write_weights(args, model.cpu(), metrics, embed_dim)
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            log.info("%s macro F2: CNN %.4f, CNN+LSTM %.4f", split,
                     m["cnn"]["slice"]["macro"], m["cnn_lstm"]["slice"]["macro"])
    return {"metrics": metrics, "weights": str(folder)}


def write_weights(args: argparse.Namespace, lstm: SequenceModel, metrics: dict[str, Any],
                  embed_dim: int) -> Path:
    """The final folder in the ``hohoho_core.weights`` format."""
    from train.extract_embeddings import read_cnn_run

    cnn_args, cfg, splits = read_cnn_run(args.cnn_run)
    cnn = create_model(cnn_args["arch"], init="random", in_channels=cfg.channels)
    common.load_model_weights(Path(args.cnn_run) / "best_cnn.safetensors", cnn)
    data = {"splits": {k: len(v) for k, v in splits.items()}}
    if args.data_json is not None:
        data.update(json.loads(Path(args.data_json).read_text(encoding="utf-8")))
    config = ModelConfig(
        arch=cnn_args["arch"],
        embed_dim=embed_dim,
        preprocess=cfg,
        lstm=LstmConfig.from_dict(lstm_kwargs(args)),
        thresholds=list(metrics["thresholds"].values()),
        cnn_thresholds=list(metrics["cnn_thresholds"].values()),
        temperatures=[float(t) for t in metrics["temperatures"].values()],
        cnn_temperatures=[float(t) for t in metrics["cnn_temperatures"].values()],
        training={"cnn": cnn_args, "lstm": common.args_to_dict(args)},
        data=data,
        metrics={k: v for k, v in metrics.items() if k in common.SPLITS},
    )
    folder = Path(args.weights_out or Path(args.output_dir) / "weights")
    dtype = torch.float16 if args.weights_dtype == "float16" else torch.float32
    save_weights(folder, cnn.eval(), lstm.eval(), config, dtype=dtype)
    log.info("weights -> %s", folder)
    return folder


if __name__ == "__main__":
    main(get_args_parser().parse_args())
