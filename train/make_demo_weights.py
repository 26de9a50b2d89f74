"""Make the shipped demo model end to end from the synthetic generator (``make weights``).

    python -m train.make_demo_weights --out weights            # the full recipe
    python -m train.make_demo_weights --out /tmp/w --quick     # a 1-minute smoke run

Stages, each timed and recorded in ``<out>/MODEL_CARD.md``:

0. a 20-second speed test picks 1 thread or all cores and bfloat16 or float32 for stage 1
   (whichever trains fastest on this machine now) and measures images/s;
1. generate three synthetic datasets with fixed seeds (train 300 and val 60 studies at
   256 px, test 60 studies at 512 px like real CT; separate seeds, so no study or image is
   shared) under ``--data-dir``;
2. index them and fill the preprocessed cache (crop to the head, resize to ``--size``);
3. stage 1: ResNet-18 from random init (ImageNet weights cannot be downloaded here),
   stacked input, asymmetric loss, generous CT-preserving augmentation, for as many epochs
   as fit ``--budget-min`` (45) given the measured speed (``--epochs N`` fixes them);
4. embeddings and logits of every slice of every split;
5. stage 2: bidirectional 2-layer LSTM; thresholds for the CNN and for CNN + LSTM tuned on
   the validation split;
6. check the written (float16) weights folder on the held-out test split and write the card.

Nothing is downloaded. Every setting is an argument (saved in the weights' config).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hohoho_core.cache import build_cache_from_index, study_key
from hohoho_core.labels import CLASSES, SHORT_NAMES, SUBTYPES
from hohoho_core.preprocess import MODES, PreprocessConfig
from hohoho_core.system import available_cores
from train import common, extract_embeddings, train_cnn, train_lstm

log = logging.getLogger("hohoho.train")
REPO = Path(__file__).resolve().parents[1]

QUICK = {
    "train_studies": 4, "val_studies": 2, "test_studies": 2, "gen_size": 128,
    "test_gen_size": 128, "min_slices": 8, "max_slices": 10, "size": 64, "epochs": 1,
    "batch_size": 8, "lstm_epochs": 2, "steps_per_epoch": 3, "foreign_studies": 2,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the demo weights from synthetic data",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("weights"), help="weights folder to write")
    p.add_argument("--data-dir", type=Path, default=Path("data/demo_train"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--quick", action="store_true", help="tiny smoke run (minutes -> seconds)")
    p.add_argument("--seed", type=int, default=2019, help="train data seed; val +1, test +2")
    p.add_argument("--train-studies", type=int, default=300)
    p.add_argument("--val-studies", type=int, default=60)
    p.add_argument("--test-studies", type=int, default=60)
    p.add_argument("--gen-size", type=int, default=256, help="generated image size (px)")
    p.add_argument("--test-gen-size", type=int, default=512,
                   help="generated size of the test split: 512 like real CT, so the test "
                        "also checks that the model copes with another source resolution")
    p.add_argument("--train-positive-studies", type=float, default=0.4,
                   help="fraction of training studies with a bleed (val and test keep 0.4): "
                        "more distinct positive slices for the sampler to draw from")
    p.add_argument("--randomise", action=argparse.BooleanOptionalAction, default=True,
                   help="domain randomisation in the generator for train, val and test "
                        "(hohoho_core.synthetic.randomise); a plain test split is scored too")
    p.add_argument("--randomise-fraction", type=float, default=1.0,
                   help="with --randomise: the share of studies randomised in train, val and "
                        "test (the others plain, as the plain dataset's studies)")
    p.add_argument("--mode", choices=list(MODES), default="stacked",
                   help="model input: neighbours in the brain window (stacked), one slice "
                        "(gray), one slice in three windows (windows), or the neighbours in "
                        "the three windows (stacked_windows, 9 channels)")
    p.add_argument("--min-slices", type=int, default=20)
    p.add_argument("--max-slices", type=int, default=40)
    p.add_argument("--size", type=int, default=128, help="model input size (px)")
    p.add_argument("--epochs", default="auto",
                   help="stage-1 epochs, or 'auto': as many as fit --budget-min here")
    p.add_argument("--budget-min", type=float, default=45.0,
                   help="wall-clock budget of the whole recipe for --epochs auto")
    p.add_argument("--max-epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap optimiser steps per epoch (default: one pass over the slices)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--positive-fraction", type=float, default=0.4)
    p.add_argument("--lstm-epochs", type=int, default=20)
    p.add_argument("--lstm-dropout", type=float, default=0.2)
    p.add_argument("--lstm-emb-noise", type=float, default=0.1,
                   help="Gaussian noise on training embeddings (relative to their std)")
    p.add_argument("--lstm-weight-decay", type=float, default=1e-4)
    p.add_argument("--lstm-residual", action=argparse.BooleanOptionalAction, default=False,
                   help="stage 2 outputs the CNN's logits plus a penalised LSTM correction "
                        "(train_lstm --residual; docs/ablation.md)")
    p.add_argument("--lstm-residual-penalty", type=float, default=0.01)
    p.add_argument("--lstm-label-smoothing", type=float, default=0.0,
                   help="stage-2 label smoothing (train_lstm --label-smoothing; 0 = off)")
    p.add_argument("--lstm-z-augment", type=float, default=0.0,
                   help="probability of each z re-sampling of a training study for stage 2 "
                        "(train_lstm --z-stride/--z-crop/--z-flip; 0 = off)")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="temperature-scale the CNN and LSTM outputs on validation")
    p.add_argument("--train-copies", type=int, default=1,
                   help="augmented copies of the train studies for stage 2")
    p.add_argument("--workers", type=int, default=2, help="processes for data generation")
    p.add_argument("--threads", default="auto",
                   help="torch threads per stage, or 'auto': time 1 thread against all cores "
                        "and keep the faster (a shared machine is often faster with 1)")
    p.add_argument("--cpu-bf16", choices=["auto", "on", "off"], default="auto",
                   help="bfloat16 autocast for stage 1 on CPU; auto = when measured faster")
    p.add_argument("--foreign-check", action=argparse.BooleanOptionalAction, default=True,
                   help="end by scoring the weights on studies from bench/foreign_phantom.py, "
                        "a generator the model never saw (about a minute)")
    p.add_argument("--foreign-studies", type=int, default=60)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="where stage 1, the embeddings and stage 2 run (cuda: one GPU; "
                        "--threads and --cpu-bf16 then only concern CPU work)")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="DataLoader worker processes of stage 1 (a GPU needs a few)")
    p.add_argument("--stop-after", choices=["cnn"], default=None,
                   help="stop once stage 1 is trained (only train and val are generated): "
                        "train the CNN on a GPU machine, finish anywhere with --cnn-run")
    p.add_argument("--cnn-run", type=Path, default=None,
                   help="a finished stage-1 run folder (train_cnn's, e.g. from --stop-after "
                        "cnn elsewhere) used instead of training stage 1 here; its input mode "
                        "and size must be this recipe's, its train and val studies this data's")
    p.add_argument("--init-cnn", type=Path, default=None, metavar="BEST_CNN",
                   help="fine-tune stage 1 from this CNN (a run's best_cnn.safetensors; "
                        "train.cnn_run_from_weights makes one from a weights folder) instead "
                        "of a random start")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def init_cnn_size(init: Path | None) -> int | None:
    """The input size an ``--init-cnn`` file was trained at (its run's args.json), or None."""
    saved = None if init is None else Path(init).parent / "args.json"
    if saved is None or not saved.is_file():
        return None
    size = json.loads(saved.read_text(encoding="utf-8")).get("size")
    return int(size) if isinstance(size, int) else None


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Apply ``--quick`` and pick threads and precision by a short speed test."""
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.threads = "1" if args.threads == "auto" else args.threads
        args.cpu_bf16 = "off" if args.cpu_bf16 == "auto" else args.cpu_bf16
    if getattr(args, "init_cnn", None) is not None:
        if args.cnn_run is not None:
            raise SystemExit("--init-cnn with --cnn-run: stage 1 is either trained here or "
                             "adopted")
        init = Path(args.init_cnn)
        if not init.is_file():
            raise SystemExit(f"--init-cnn {init}: no such file")
        # its run's args.json, when beside it: the same input mode, or the tensors would
        # load (same shapes) into a model that reads other channels. Another size is
        # allowed: the weights do not depend on it, and fine-tuning at a higher resolution
        # is a measured option (docs/ablation.md).
        saved = init.parent / "args.json"
        if saved.is_file():
            theirs = json.loads(saved.read_text(encoding="utf-8"))
            if "mode" in theirs and theirs["mode"] != args.mode:
                raise SystemExit(f"--init-cnn {init} was trained with --mode "
                                 f"{theirs['mode']}, this recipe asks for --mode {args.mode}")
    if args.cnn_run is not None:
        # stage 1 is done: its epochs are the run's, nothing to plan
        cnn = reused_cnn_args(args)
        args.epochs = str(cnn["epochs"])
        args.batch_size, args.lr = cnn["batch_size"], cnn["lr"]
        args.positive_fraction = cnn["positive_fraction"]
        args.steps_per_epoch = cnn.get("steps_per_epoch")
    elif args.epochs == "auto" and args.device != "cpu":
        raise SystemExit("--epochs auto plans from a CPU speed test: give --epochs with "
                         f"--device {args.device}")
    args.speed = speed_test(args.size, str(args.threads), args.cpu_bf16,
                            measure=args.epochs == "auto")
    args.threads = args.speed["threads"]
    args.cpu_bf16 = "on" if args.speed["bf16"] else "off"
    return args


def _train_img_s(model: Any, x: Any, threads: int, bf16: bool) -> float:
    """Training images per second of ``model`` on batch ``x`` (two timed steps)."""
    import torch

    torch.set_num_threads(threads)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for i in range(3):
        if i == 1:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x)[1].float().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 2 * len(x) / (time.perf_counter() - t0)


def _infer_img_s(model: Any, x: Any, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    model.eval()
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        model(x)
        model(x)
    model.train()
    return 2 * len(x) / (time.perf_counter() - t0)


def speed_test(size: int, threads: str, bf16: str, measure: bool) -> dict[str, Any]:
    """Pick threads (1 or all cores) and bfloat16 autocast, whichever trains fastest now, and
    measure training and inference throughput (images/s) for planning the epochs.

    OpenMP threads that wait for each other collapse when other processes share the cores
    (measured: 2 threads 3x slower than 1 on a busy 2-core machine); bfloat16 is ~1.8x
    faster on CPUs with AVX512-BF16/AMX and much slower on CPUs without.
    """
    import torch

    from hohoho_core.models import create_model

    if threads != "auto" and bf16 != "auto" and not measure:
        return {"threads": int(threads), "bf16": bf16 == "on"}
    cores = available_cores()
    before = torch.get_num_threads()
    model = create_model("resnet18").to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, size, size).contiguous(memory_format=torch.channels_last)
    tried: dict[str, float] = {}
    if threads == "auto":
        choices = [1, cores] if cores > 1 else [1]
        for n in choices:
            tried[f"{n} threads fp32"] = _train_img_s(model, x, n, False)
        n_threads = max(choices, key=lambda n: tried[f"{n} threads fp32"])
    else:
        n_threads = int(threads)
    fp32 = tried.get(f"{n_threads} threads fp32") or _train_img_s(model, x, n_threads, False)
    use_bf16 = bf16 == "on"
    if bf16 != "off":
        tried["bf16"] = _train_img_s(model, x, n_threads, True)
        use_bf16 = use_bf16 or tried["bf16"] > 1.25 * fp32
    out = {"threads": n_threads, "bf16": use_bf16,
           "train_img_s": tried["bf16"] if use_bf16 else fp32,
           "infer_img_s": _infer_img_s(model, torch.cat([x, x, x, x]), n_threads),
           "tried": {k: round(v, 1) for k, v in tried.items()}}
    torch.set_num_threads(before)
    log.info("speed test (train images/s): %s -> %d thread(s), bf16 %s; inference %.0f images/s",
             out["tried"], n_threads, use_bf16, out["infer_img_s"])
    return out


def plan_epochs(args: argparse.Namespace, stats: dict[str, Any], elapsed: float) -> int:
    """Stage-1 epochs that fit ``--budget-min`` on this machine, from the speed test.

    Time left = budget x 0.9 - time spent so far - estimated time of the later stages
    (embeddings of every split and the augmented train copies, the final check, the
    LSTM); each epoch costs the train slices at the measured training speed plus one
    validation pass at the inference speed. Clamped to [2, --max-epochs].
    """
    sp = args.speed
    n_tr, n_va, n_te = (stats[s]["slices"] for s in common.SPLITS)
    studies = stats["train"]["studies"] * (1 + args.train_copies) + stats["val"]["studies"]
    later = (((1 + args.train_copies) * n_tr + n_va + 2 * n_te) / sp["infer_img_s"]
             + 0.012 * args.lstm_epochs * studies + 20)
    per_epoch = n_tr / sp["train_img_s"] + n_va / sp["infer_img_s"]
    left = args.budget_min * 60 * 0.9 - elapsed - later
    epochs = int(max(2, min(args.max_epochs, left // per_epoch)))
    log.info("plan: %.0f s used, ~%.0f s for later stages, %.0f s per epoch -> %d epochs",
             elapsed, later, per_epoch, epochs)
    return epochs


def planned_sets(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """What `generate` writes, without touching a file: per split its folder (``root``)
    and generator options (the ``generated.json`` marker).

    train, val and test (randomised with ``--randomise``), and with it ``test_plain``: the
    test seed without randomisation (the split earlier demo models were scored on).
    """
    from hohoho_core.synthetic import DEFAULT_POSITIVE_FRACTION as DEFAULT_POSITIVE

    sets: dict[str, Any] = {}
    counts = {"train": args.train_studies, "val": args.val_studies, "test": args.test_studies}
    plan = [(split, args.seed + i, args.randomise) for i, split in enumerate(common.SPLITS)
            if split in made_splits(args)]
    # getattr: train.ablate calls this with a Namespace of its own
    fraction = getattr(args, "randomise_fraction", 1.0)
    if args.randomise and getattr(args, "stop_after", None) is None:
        plan.append(("test_plain", args.seed + 2, False))
    for split, seed, randomise in plan:
        n = counts["test" if split == "test_plain" else split]
        size = args.gen_size if split in ("train", "val") else args.test_gen_size
        spec = {"studies": n, "seed": seed, "size": size,
                "slices": [args.min_slices, args.max_slices], "label_noise": 0.0}
        positive = args.train_positive_studies if split == "train" else DEFAULT_POSITIVE
        if positive != DEFAULT_POSITIVE:
            spec["positive_studies"] = positive
        if randomise:  # only then, so markers of plain datasets stay as they were
            spec["randomise"] = True
            if fraction != 1.0:
                spec["randomise_fraction"] = fraction
        sets[split] = {"root": str(args.data_dir / split), **spec}
    return sets


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or reuse) the synthetic datasets of `planned_sets`; returns their description."""
    from hohoho_core.synthetic import DEFAULT_POSITIVE_FRACTION as DEFAULT_POSITIVE
    from hohoho_core.synthetic import generate_dataset

    sets = planned_sets(args)
    for entry in sets.values():
        root = Path(entry["root"])
        spec = {k: v for k, v in entry.items() if k != "root"}
        marker = root / "generated.json"
        if not (marker.is_file() and json.loads(marker.read_text()) == spec):
            if root.exists():
                shutil.rmtree(root)
            randomise = spec.get("randomise_fraction", 1.0) if spec.get("randomise") else False
            generate_dataset(root, spec["studies"], spec["seed"], size=spec["size"],
                             slices=tuple(spec["slices"]), workers=max(1, args.workers),
                             positive_fraction=spec.get("positive_studies", DEFAULT_POSITIVE),
                             randomise=randomise)
            marker.write_text(json.dumps(spec))
    return sets


def made_splits(args: argparse.Namespace) -> tuple[str, ...]:
    """The splits this run generates and caches: train and val only when it stops after
    stage 1 (the test split is scored where the recipe is finished)."""
    return ("train", "val") if getattr(args, "stop_after", None) == "cnn" else common.SPLITS


def reused_cnn_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of the ``--cnn-run`` folder, checked against this recipe's."""
    run = Path(args.cnn_run)
    if not (run / "best_cnn.safetensors").is_file() or not (run / "args.json").is_file():
        raise SystemExit(f"--cnn-run {run}: no best_cnn.safetensors and args.json there")
    if not (run / "splits.json").is_file() and not (run / "data.json").is_file():
        raise SystemExit(f"--cnn-run {run}: neither splits.json nor data.json says which "
                         "studies it was trained on")
    cnn = json.loads((run / "args.json").read_text(encoding="utf-8"))
    state = run / "checkpoint.json"
    if state.is_file():  # a run stopped early (a time limit) ran fewer epochs than planned
        last = json.loads(state.read_text(encoding="utf-8")).get("state", {}).get("epoch")
        if last is not None and int(last) + 1 < int(cnn["epochs"]):
            log.warning("--cnn-run %s stopped after %d of %d epochs", run, int(last) + 1,
                        cnn["epochs"])
            cnn = {**cnn, "epochs": int(last) + 1, "epochs_planned": cnn["epochs"]}
    for key in ("mode", "size"):
        if cnn.get(key) != getattr(args, key):
            raise SystemExit(f"--cnn-run {run} was trained with --{key} {cnn.get(key)}, "
                             f"this recipe asks for --{key} {getattr(args, key)}")
    return cnn


def same_plans(src: Path, sets: dict[str, Any]) -> None:
    """The check of `same_sets` that needs no data: a ``--cnn-run`` folder rebuilt from
    weights must have been trained on this recipe's train and val options (seeds, counts,
    randomisation), refused before anything is generated or cached."""
    if not (src / "data.json").is_file() or (src / "splits.json").is_file():
        return  # study ids (splits.json) are compared once the data is indexed
    theirs = json.loads((src / "data.json").read_text(encoding="utf-8"))
    for split in ("train", "val"):
        mine = {k: v for k, v in sets[split].items() if k != "root"}
        recorded = {k: v for k, v in theirs["sets"][split].items() if k != "root"}
        if mine != recorded:
            raise SystemExit(f"--cnn-run {src}: its {split} set ({recorded}) is not this "
                             f"recipe's ({mine})")


def same_sets(src: Path, data: dict[str, Any], stats: dict[str, Any]) -> None:
    """A run folder rebuilt from weights (`train.cnn_run_from_weights`) records its train
    and val sets by generator options and counts, not study ids: this recipe's must match."""
    theirs = json.loads((src / "data.json").read_text(encoding="utf-8"))
    for split in ("train", "val"):
        mine = {k: v for k, v in data[split].items() if k != "root"}
        recorded = {k: v for k, v in theirs["sets"][split].items() if k != "root"}
        if mine != recorded or stats[split] != theirs["stats"][split]:
            raise SystemExit(f"--cnn-run {src}: its {split} set ({recorded}, "
                             f"{theirs['stats'][split].get('slices')} slices) is not this "
                             f"recipe's ({mine}, {stats[split].get('slices')} slices)")


def adopt_cnn_run(args: argparse.Namespace, work: Path, cache_dir: Path,
                  splits: dict[str, list[str]], data: dict[str, Any] | None = None,
                  stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the ``--cnn-run`` folder to ``work/cnn`` as if stage 1 had run here.

    Its train and val studies must be the ones indexed here (the data is regenerated from
    the same seeds): by study ids (``splits.json``) or, for a folder rebuilt from weights,
    by generator options and counts (``data.json``, needs ``data`` and ``stats``); its
    ``args.json`` is pointed at this cache and its ``splits.json`` is this machine's, with
    its test split, so the later stages read it like their own.
    """
    src, dst = Path(args.cnn_run), work / "cnn"
    if (src / "splits.json").is_file():
        theirs = common.read_splits(src / "splits.json")
        for split in ("train", "val"):
            if sorted(theirs.get(split, [])) != sorted(splits[split]):
                raise SystemExit(f"--cnn-run {src}: its {split} studies are not those of "
                                 f"{args.data_dir / split} (other seeds, counts or generator?)")
    elif data is None or stats is None:
        raise SystemExit(f"--cnn-run {src}: no splits.json, and no data to check its "
                         "data.json against")
    else:
        same_sets(src, data, stats)
    if dst.resolve() != src.resolve():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    cnn = json.loads((dst / "args.json").read_text(encoding="utf-8"))
    cnn["cache_dir"] = str(cache_dir)
    common.write_json(dst / "args.json", cnn)
    common.write_json(dst / "splits.json", splits)
    where = dst / "machine.json"
    return json.loads(where.read_text(encoding="utf-8")) if where.is_file() else {}


def index_and_cache(args: argparse.Namespace, cfg: PreprocessConfig,
                    cache_dir: Path) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Index each split's folder and cache it; split = the folder a study came from."""
    from hohoho_core.rsna import build_index

    splits, stats = {}, {}
    for split in made_splits(args):
        root = args.data_dir / split
        index = build_index(root, cache_dir=cache_dir / "index" / split,
                            workers=max(1, args.workers), progress=args.progress)
        build_cache_from_index(index.table, root, cache_dir / "studies", cfg,
                               workers=max(1, args.workers), progress=args.progress)
        t = index.table
        splits[split] = sorted({study_key(a, b) for a, b in zip(t["study_uid"], t["series_uid"],
                                                                strict=True)})
        pos_studies = t.groupby("study_uid")["any"].max()
        stats[split] = {
            "studies": len(splits[split]),
            "slices": len(t),
            "positive_slices": {c: int((t[c] > 0).sum()) for c in CLASSES},
            "positive_studies": int((pos_studies > 0).sum()),
        }
    return splits, stats


def stage_args(args: argparse.Namespace, work: Path, cache_dir: Path, splits_file: Path
               ) -> dict[str, list[str]]:
    """Command lines of the three stage scripts (argparse stays the source of truth)."""
    prog = [] if args.progress else ["--no-progress"]
    threads = ["--threads", str(args.threads)]
    cnn = [
        "--cache-dir", str(cache_dir), "--splits", str(splits_file), "--size", str(args.size),
        "--mode", args.mode, "--arch", "resnet18", "--init", "random",
        *([] if getattr(args, "init_cnn", None) is None
          else ["--init-from", str(args.init_cnn)]),
        "--loss", "asl", "--gamma-neg", "4", "--gamma-pos", "1", "--clip", "0.05",
        "--optimizer", "adam", "--lr", str(args.lr), "--weight-decay", "1e-4",
        "--schedule", "cosine", "--warmup-epochs", "0.3" if args.epochs > 1 else "0",
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        *([] if args.steps_per_epoch is None else ["--steps-per-epoch",
                                                   str(args.steps_per_epoch)]),
        "--positive-fraction", str(args.positive_fraction), "--augment", "generous",
        "--seed", str(args.seed), "--device", args.device, "--workers", str(args.loader_workers),
        "--output-dir", str(work / "cnn"), "--overwrite",
        "--cpu-bf16" if args.cpu_bf16 == "on" else "--no-cpu-bf16", *prog, *threads,
    ]
    emb = ["--cnn-run", str(work / "cnn"), "--output-dir", str(work / "emb"),
           "--train-copies", str(args.train_copies), "--train-augment", "generous",
           "--device", args.device, "--batch-size", "64", *prog, *threads]
    lstm = ["--cnn-run", str(work / "cnn"), "--embeddings", str(work / "emb"),
            "--output-dir", str(work / "lstm"), "--weights-out", str(args.out),
            "--data-json", str(work / "data.json"), "--epochs", str(args.lstm_epochs),
            "--hidden", "128", "--layers", "2", "--bidirectional", "--use-logits",
            "--dropout", str(args.lstm_dropout), "--emb-noise", str(args.lstm_emb_noise),
            "--weight-decay", str(args.lstm_weight_decay),
            "--calibrate" if args.calibrate else "--no-calibrate", "--seed", str(args.seed),
            "--device", args.device, *prog, *threads, *stage2_options(args)]
    return {"train_cnn": cnn, "extract_embeddings": emb, "train_lstm": lstm}


def stage2_options(args: argparse.Namespace) -> list[str]:
    """The issue-13 stage-2 options for train_lstm, only those switched on (so the command
    of the plain recipe is unchanged)."""
    out: list[str] = []
    if getattr(args, "lstm_residual", False):
        out += ["--residual", "--residual-penalty", str(args.lstm_residual_penalty)]
    if getattr(args, "lstm_label_smoothing", 0.0) > 0:
        out += ["--label-smoothing", str(args.lstm_label_smoothing)]
    z = getattr(args, "lstm_z_augment", 0.0)
    if z > 0:
        out += ["--z-stride", str(z), "--z-crop", str(z), "--z-flip", str(z)]
    return out


def _stage2_text(reg: dict[str, Any]) -> str:
    """The card's words for the stage-2 options of issue 13 that were switched on."""
    text = ""
    if reg.get("residual"):
        text += ("; residual: the output is the CNN's logits (per-class scale and bias) plus "
                 "the LSTM's correction, which starts at zero and is penalised "
                 f"({reg.get('residual_penalty', 0):g} x its mean square)")
    if reg.get("label_smoothing"):
        text += f"; label smoothing {reg['label_smoothing']:g}"
    if reg.get("z_augment"):
        text += (f"; training studies re-sampled along z (probability {reg['z_augment']:g} "
                 "each: every second slice, a 50-100 % run, reversed order)")
    return text


def check_folder(folder: Path, root: Path, index_cache: Path) -> dict[str, Any]:
    """Score the written weights folder the way users run it: DICOM files of the split,
    read and sorted by `hohoho_core.dicom`, through `Predictor.predict` (float16 tensors as
    shipped, thresholds from validation), via `hohoho_core.evaluate.evaluate_index`."""
    from hohoho_core.evaluate import evaluate_index
    from hohoho_core.predict import Predictor
    from hohoho_core.rsna import build_index

    # fp32: the card's figures are the reference arithmetic's on any CPU (auto may be bf16).
    pred = Predictor.from_folder(folder, batch_size=64, precision="fp32")
    table = build_index(root, cache_dir=index_cache, workers=1, progress=False).table
    return evaluate_index(pred, root, table, tune=True)[1]


def write_calibration(folder: Path, n_slices: int = 16, render_px: int = 256,
                      seed: int = 0) -> Path:
    """Write the int8 calibration studies beside the weights (``calibration.safetensors``).

    Two phantom studies from the generator the demo model was trained on (one with
    subdural, intraparenchymal and intraventricular bleeds, one normal), stored as int16
    HU: `Predictor.from_folder(precision="int8")` preprocesses them for its own config, so
    inference never needs `hohoho_core.synthetic`. For weights trained on real scans,
    write a few real studies with `hohoho_core.weights.save_calibration` instead.
    """
    from hohoho_core.synthetic import StudyPlan, make_study
    from hohoho_core.weights import save_calibration

    plans = (
        StudyPlan(subtypes=("subdural", "intraparenchymal", "intraventricular"),
                  n_slices=n_slices),
        StudyPlan(n_slices=n_slices),
    )
    studies = [make_study(seed, i, size=render_px, plan=plan).hu for i, plan in enumerate(plans)]
    description = (f"hohoho_core.synthetic phantoms: seed {seed}, studies 0-1, "
                   f"{n_slices} slices each, {render_px} px (study 0 with bleeds)")
    return save_calibration(folder, studies, description)


def foreign_check(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run ``python -m bench.generalization`` on the written weights; returns its JSON report.

    A separate process, so the bench stays a script users run the same way.
    """
    out = work / "generalization"
    size = 128 if args.quick else 512
    # Run from the repository root, where the bench package is, so paths go absolute.
    cmd = [sys.executable, "-m", "bench.generalization", "--weights", str(Path(args.out).resolve()),
           "--studies", str(args.foreign_studies), "--size", str(size), "--seed", "7001",
           "--data-dir", str((args.data_dir / "foreign").resolve()), "--out", str(out.resolve()),
           "--threads", str(args.threads)]
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))


_MODE_TEXT = {
    "stacked": "stacked input (slices i-1, i, i+1 in the brain window 40/80)",
    "gray": "one slice in the brain window 40/80, repeated in three channels",
    "windows": "one slice in three windows (brain 40/80, subdural 80/200, bone 600/2800)",
    "stacked_windows": "slices i-1, i, i+1 in each of three windows (brain 40/80, subdural "
                       "80/200, bone 600/2800): nine channels, first convolution widened",
}

#: The project's bar for the demo model (issue 4): macro slice F2 of CNN + LSTM on the test
#: split, and not below the CNN alone.
TARGET_F2 = 0.80


def _target_lines(test: dict[str, Any]) -> list[str]:
    cnn, both = test["cnn"]["slice"]["macro"], test["cnn_lstm"]["slice"]["macro"]
    met = both >= TARGET_F2 and both >= cnn
    weakest = min(SUBTYPES, key=lambda c: test["cnn_lstm"]["slice"]["per_class"][c])
    return [
        "## Against the project's target",
        f"Target: macro slice F2 of CNN + LSTM at least {TARGET_F2:.2f} on this test split and "
        f"not below the CNN alone. Measured: CNN + LSTM {both:.3f}, CNN alone {cnn:.3f}: "
        + ("**met**." if met else "**not met**.")
        + f" Weakest class: {weakest} "
        f"({test['cnn_lstm']['slice']['per_class'][weakest]:.3f}).",
        "",
    ]


def _foreign_lines(rep: dict[str, Any] | None) -> list[str]:
    if rep is None:
        return []
    d, m = rep["data"], rep["metrics"]
    pos = d.get("positive_slices", {})
    lines = [
        "## On a generator it never saw",
        f"{d['studies']} studies ({d['slices']} slices, {d['size']} px, seed {d['seed']}) from "
        "`bench/foreign_phantom.py`, written independently of `hohoho_core.synthetic` "
        "(other anatomy, bleed shapes, noise and DICOM conventions; a subtype is labelled from "
        f"{d.get('area_threshold_mm2', 10):g} mm^2 on a slice), scored with the same "
        "thresholds; full report: `bench/generalization.md` (`make generalization`).",
        "",
    ]
    return lines + _class_table(m, {c: pos[c] for c in CLASSES if c in pos})


#: Columns of the per-class tables: (heading, report path) for the CNN and CNN + LSTM.
_COLUMNS = (("F2 shipped thr.", ("slice", "per_class")),
            ("F2 thr. picked on this set", ("tuned", "slice", "per_class")),
            ("AUC", ("auc",)), ("ECE", ("ece",)))


def _get(rep: dict[str, Any], path: tuple[str, ...], cls: str | None) -> Any:
    for key in path:
        rep = rep.get(key) if isinstance(rep, dict) else None
        if rep is None:
            return None
    if cls is None:  # the macro of this column
        return rep.get("macro") if "macro" in rep else None
    return rep.get(cls)


def _class_table(reps: dict[str, Any], positives: dict[str, int] | None = None) -> list[str]:
    """Per class, CNN and CNN + LSTM: slice F2 with the shipped thresholds and with
    thresholds picked on the set itself (calibration vs ranking), AUC and calibration error."""
    stages = [("cnn", "CNN"), ("cnn_lstm", "CNN+LSTM")]
    head = [f"{name} {label}" for name, _ in _COLUMNS for _, label in stages]
    lines = ["| class | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 1)]
    macro_key = {"slice": ("slice",), "auc": ("auc_macro",), "ece": ("ece_macro",)}
    for c in CLASSES:
        name = f"{c} ({positives[c]} slices)" if positives and c in positives else c
        cells = [_f(_get(reps[s], path, c)) for _, path in _COLUMNS for s, _ in stages]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for _, path in _COLUMNS:
        for s, _ in stages:
            if path[0] in macro_key and path[0] != "slice":
                cells.append(_f(reps[s].get(macro_key[path[0]][0])))
            else:
                cells.append(_f(_get(reps[s], path[:-1], None)))
    lines.append("| **macro** | " + " | ".join(cells) + " |")
    return lines + [""]


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _plain_lines(rep: dict[str, Any] | None, spec: dict[str, Any] | None) -> list[str]:
    if rep is None or spec is None:
        return []
    return [
        "## On the plain test split",
        f"The test seed ({spec['seed']}, {spec['studies']} studies at {spec['size']} px) "
        "generated without randomisation: the split that models trained before domain "
        "randomisation were scored on. Macro slice F2 with the shipped thresholds: CNN "
        f"{rep['cnn']['slice']['macro']:.3f}, CNN+LSTM {rep['cnn_lstm']['slice']['macro']:.3f}.",
        "",
        *_class_table(rep),
    ]


def _compute_line(info: dict[str, Any]) -> str:
    stage1 = info.get("stage1_machine") or {}
    rest = "embeddings, validation and the shipped model in float32 (stored as float16)."
    if stage1.get("device", "cpu") != "cpu":
        later = (f"the later stages here on {info['threads']} CPU thread(s)"
                 if info.get("stage1_elsewhere") else "the later stages on the same GPU")
        return (f"- Compute: stage 1 on a GPU ({stage1.get('machine', 'unknown machine')}, "
                f"float16 autocast{'; ' + stage1['note'] if stage1.get('note') else ''}); "
                f"{later}; " + rest)
    return (f"- Compute: {info['threads']} CPU thread(s), stage 1 in "
            f"{'bfloat16 autocast' if info['cpu_bf16'] else 'float32'} ("
            + ("picked by a short speed test at start" if "tried" in info["speed"]
               else "fixed by --threads and --cpu-bf16")
            + "); " + rest)


def _spacing_line(max_slices: int) -> str:
    """The card's line on the slice spacing the model saw (`hohoho_core.spacing`)."""
    from hohoho_core.spacing import TOLERANCE
    from hohoho_core.synthetic.anatomy import spacing_range_mm

    low, high = spacing_range_mm(max_slices)
    return (f"Slice spacing: every training study is {low:.3g}-{high:g} mm between slices "
            "(`data.slice_spacing_mm` in config.json); a series outside "
            f"{low / TOLERANCE:.3g}-{high * TOLERANCE:g} mm gets a note from `predict` and the app "
            "(`hohoho_core.spacing`), since nothing is resampled along z.")


def write_card(path: Path, info: dict[str, Any]) -> None:
    """``MODEL_CARD.md`` from the measured numbers."""
    m, test = info["metrics"], info["shipped_test"]
    lines = [
        "# HOHOHO demo model",
        "",
        "**Trained on synthetic data. Not for clinical use.** This model has only seen phantom",
        "head-CT studies made by `hohoho_core.synthetic`; it demonstrates the pipeline and the",
        "app. Its numbers say nothing about real patients.",
        "",
        "## Model",
        "- Stage 1: ResNet-18 ("
        + (f"fine-tuned from `{info['init_cnn']}`"
           + (f", trained at {info['init_cnn_size']} px" if info.get("init_cnn_size") else "")
           if info.get("init_cnn") else "random init")
        + f") on {info['size']} x {info['size']} px "
        + _MODE_TEXT[info.get("mode", "stacked")]
        + ", asymmetric loss (gamma_neg 4, gamma_pos 1, clip 0.05).",
        "- Stage 2: bidirectional 2-layer LSTM (hidden 128) over each study's 512-d slice "
        "embeddings plus the stage-1 logits, BCE"
        + _stage2_text(info.get("lstm_regularisation", {})) + ".",
        "- Weights: `model.safetensors` (float16) + `config.json` (preprocessing, thresholds, "
        "all training arguments).",
        "",
        "## Data",
        "Three separately generated synthetic datasets (RSNA 2019 layout, DICOM), split by "
        "dataset so no study is shared"
        + ((", all three with domain randomisation" if info.get("randomise_fraction", 1.0) >= 1
            else f", {info['randomise_fraction']:.0%} of the studies of each with domain "
            "randomisation, the others plain") + " (`hohoho_core.synthetic.randomise`: head "
           "size, position and rotation, tissue HU and grey/white contrast, noise level and "
           "kernel texture, sharpness, partial volume, beam hardening, streaks, metal, motion, "
           "hard negatives such as dense sinuses and calcifications, blood density from "
           "chronic to hyperacute, and the area that makes a slice positive, 5-40 mm^2; "
           "extremes in `docs/randomisation_montage.png`)" if info.get("randomise") else "")
        + ":",
        "",
        "| split | seed | studies | slices | positive studies | generated size (px) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in common.SPLITS:
        d, st = info["data"][s], info["stats"][s]
        lines.append(f"| {s} | {d['seed']} | {st['studies']} | {st['slices']} | "
                     f"{st['positive_studies']} | {d['size']} |")
    lines += [
        "",
        "Positive slices per class (train / val / test): "
        + "; ".join(
            f"{SHORT_NAMES[c]} {info['stats']['train']['positive_slices'][c]} / "
            f"{info['stats']['val']['positive_slices'][c]} / "
            f"{info['stats']['test']['positive_slices'][c]}"
            for c in CLASSES
        )
        + ".",
        f"Training studies were drawn with "
        f"{info['data']['train'].get('positive_studies', 0.4):.0%} positive (validation and test "
        "40 %), so the sampler has more distinct bleeds to draw from.",
        "",
        _spacing_line(int(info["data"]["train"]["slices"][1])),
        "",
        "## Settings",
        f"- Stage 1: {info['epochs']} epoch{'s' if info['epochs'] != 1 else ''}"
        + (f" (planned to fit the {info['budget_min']:g}-minute budget from the speed test)"
           if info["epochs_planned"] else "")
        + f", batch {info['batch_size']}, Adam lr {info['lr']} "
        "(cosine), positive-aware sampling "
        f"({info['positive_fraction']:.0%} positive slices), augmentation on HU before "
        "windowing: rotation +-30 deg, scale 0.85-1.15, shift 8 %, left-right flips, window "
        "centre +-10 HU and width +-20 %, Gaussian noise up to 6 HU, blur (30 %).",
        f"- Stage 2: {info['lstm_epochs']} epochs, AdamW lr 1e-3 (weight decay "
        f"{info['lstm_regularisation']['weight_decay']:g}), dropout "
        f"{info['lstm_regularisation']['dropout']:g}, batch 8 studies, Gaussian noise "
        f"{info['lstm_regularisation']['emb_noise']:g} std on training embeddings, plus "
        f"{info['train_copies']} augmented cop{'y' if info['train_copies'] == 1 else 'ies'} "
        "of every training study (one transform per study) so the LSTM sees stage-1 "
        "mistakes like those on unseen data; best epoch by validation macro F2.",
        f"- Why this size and length: {info['size']} px keeps small bleeds several pixels "
        "wide (thin subarachnoid and subdural blood vanish at lower resolution); "
        + ("the number of epochs is what the measured speed allows within the "
           f"{info['budget_min']:g}-minute budget (times below). " if info["epochs_planned"]
           else "the number of epochs was fixed with --epochs. ")
        + f"Data is generated at {info['data']['train']['size']} px (test at "
        f"{info['data']['test']['size']} px) to keep generation to a few minutes; the model "
        "crops to the head and resizes anyway.",
        _compute_line(info),
        "- Calibration: "
        + ("one temperature per class for the CNN output and for the CNN + LSTM output, "
           "fitted on the validation split (Guo et al. 2017); the LSTM still reads the raw "
           "CNN logits. Macro ECE on validation before -> after: CNN "
           f"{_f(m['val']['ece_raw']['cnn'])} -> {_f(m['val']['cnn']['ece_macro'])}, "
           f"CNN+LSTM {_f(m['val']['ece_raw']['cnn_lstm'])} -> "
           f"{_f(m['val']['cnn_lstm']['ece_macro'])}."
           if info.get("calibrate") and "ece_raw" in m.get("val", {}) else "none.")
        + "",
        "- Thresholds: per class, maximising F2 on the validation split (never on test), "
        "on the calibrated probabilities.",
        "",
        "## Results on the held-out synthetic test split",
        f"{info['stats']['test']['studies']} studies, {test['cnn']['n_slices']} slices, "
        "measured once the way users run the model: the split's DICOM files read and sorted by "
        "`hohoho_core.dicom`, then `Predictor.predict` with the shipped float16 weights and "
        "the validation thresholds.",
        "",
        "| class | threshold CNN | threshold CNN+LSTM | slice F2 CNN | slice F2 CNN+LSTM | "
        "study F2 CNN | study F2 CNN+LSTM | AUC CNN | AUC CNN+LSTM |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    c_rep, l_rep = test["cnn"], test["cnn_lstm"]
    for c in CLASSES:
        lines.append(
            f"| {c} | {c_rep['thresholds'][c]:.3f} | {l_rep['thresholds'][c]:.3f} | "
            f"{c_rep['slice']['per_class'][c]:.3f} | {l_rep['slice']['per_class'][c]:.3f} | "
            f"{c_rep['study']['per_class'][c]:.3f} | {l_rep['study']['per_class'][c]:.3f} | "
            f"{_f(c_rep['auc'][c])} | {_f(l_rep['auc'][c])} |"
        )
    lines += [
        f"| **macro** | | | **{c_rep['slice']['macro']:.3f}** | "
        f"**{l_rep['slice']['macro']:.3f}** | {c_rep['study']['macro']:.3f} | "
        f"{l_rep['study']['macro']:.3f} | {_f(c_rep['auc_macro'])} | "
        f"{_f(l_rep['auc_macro'])} |",
        "",
        f"RSNA weighted log loss: CNN {c_rep['log_loss']:.4f}, CNN+LSTM {l_rep['log_loss']:.4f}.",
        "",
        "Shipped thresholds against thresholds picked on this split itself (an oracle: the "
        "difference is what the thresholds cost, AUC is the ranking), and the expected "
        "calibration error (ECE, 15 bins) of the probabilities as shipped:",
        "",
        *_class_table(test),
        *_plain_lines(info.get("plain_test"), info["data"].get("test_plain")),
        "Validation (used to pick thresholds and epochs, so optimistic): macro slice F2 CNN "
        f"{m['val']['cnn']['slice']['macro']:.3f}, CNN+LSTM "
        f"{m['val']['cnn_lstm']['slice']['macro']:.3f}. Training split: CNN "
        f"{m['train']['cnn']['slice']['macro']:.3f}, CNN+LSTM "
        f"{m['train']['cnn_lstm']['slice']['macro']:.3f}.",
        "",
        *_target_lines(test),
        *_foreign_lines(info.get("foreign")),
        "## How it was made",
        "- Reproduce: `make weights` runs this recipe with the seeds, sizes and epochs pinned "
        "as flags in the Makefile, writing its data under `data/mixed_train/` (the data is "
        "regenerated from the seeds, so the `data.sets.*.root` paths in `config.json` need not "
        "exist; `bench/` regenerates the test split from them). Bit-identical weights are not "
        "promised: CPU kernels and thread timing vary between machines.",
        f"- Command: `{info['command']}`",
        f"- Machine: {info['machine']}"
        + (f"; stage 1 on {info['stage1_machine']['machine']} ({info['stage1_machine']['device']}"
           ", `--stop-after cnn` there, then this command with `--cnn-run`)"
           if info.get("stage1_elsewhere") else ""),
        "- Wall time per stage (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in info["times"].items())
        + f"; total {sum(info['times'].values()) / 60:.1f} min.",
        f"- Created {time.strftime('%Y-%m-%d %H:%M')} with Python {platform.python_version()}.",
        "",
        "Trained on synthetic data. Not for clinical use.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(args: argparse.Namespace) -> dict[str, Any]:
    common.setup_logging(True)
    t_start = t = time.perf_counter()
    args = resolve(args)
    work, cache_dir = Path(args.work_dir), Path(args.work_dir) / "cache"
    work.mkdir(parents=True, exist_ok=True)
    cfg = PreprocessConfig(mode=args.mode, size=args.size, crop=True, window="brain")
    times: dict[str, float] = {"speed test": time.perf_counter() - t}

    if args.cnn_run is not None:  # a mismatch is refused before minutes of generating
        same_plans(Path(args.cnn_run), planned_sets(args))
    t = time.perf_counter()
    data = generate(args)
    times["generate"] = time.perf_counter() - t
    t = time.perf_counter()
    splits, stats = index_and_cache(args, cfg, cache_dir)
    splits.setdefault("test", [])  # --stop-after cnn: the test split is made where it ends
    times["index+cache"] = time.perf_counter() - t
    common.write_json(work / "splits.json", splits)
    from hohoho_core.spacing import CONFIG_KEY as SPACING_KEY
    from hohoho_core.synthetic.anatomy import spacing_range_mm

    common.write_json(work / "data.json", {"description": "synthetic phantom head CT "
                                           "(hohoho_core.synthetic)", "sets": data,
                                           "stats": stats,
                                           SPACING_KEY: list(spacing_range_mm(
                                               args.max_slices))})
    planned = args.epochs == "auto"
    args.epochs = (plan_epochs(args, stats, time.perf_counter() - t_start) if planned
                   else int(args.epochs))
    cmds = stage_args(args, work, cache_dir, work / "splits.json")
    t = time.perf_counter()
    stage1_machine: dict[str, Any] = {}
    if args.cnn_run is not None:
        stage1_machine = adopt_cnn_run(args, work, cache_dir, splits, data, stats)
        times["stage 1 CNN"] = float(stage1_machine.get("seconds", 0.0))
    else:
        train_cnn.main(train_cnn.get_args_parser().parse_args(cmds["train_cnn"]))
        times["stage 1 CNN"] = time.perf_counter() - t
        # where stage 1 ran: for the card, here or of a recipe finished elsewhere (--cnn-run)
        stage1_machine = {"machine": common.machine_description(),
                          "device": train_cnn.device_type(args.device),
                          "seconds": times["stage 1 CNN"]}
        common.write_json(work / "cnn" / "machine.json", stage1_machine)
    if args.stop_after == "cnn":
        log.info("stage 1 done in %.0f s (--stop-after cnn): %s", times["stage 1 CNN"],
                 work / "cnn")
        return {"times": times, "cnn_run": str(work / "cnn"), "stats": stats}
    t = time.perf_counter()
    extract_embeddings.main(extract_embeddings.get_args_parser().parse_args(
        cmds["extract_embeddings"]))
    times["embeddings"] = time.perf_counter() - t
    t = time.perf_counter()
    result = train_lstm.main(train_lstm.get_args_parser().parse_args(cmds["train_lstm"]))
    times["stage 2 LSTM"] = time.perf_counter() - t
    write_calibration(Path(args.out))
    t = time.perf_counter()
    shipped = check_folder(args.out, args.data_dir / "test", cache_dir / "index" / "test")
    plain = (check_folder(args.out, args.data_dir / "test_plain",
                          cache_dir / "index" / "test_plain") if "test_plain" in data else None)
    times["final check"] = time.perf_counter() - t
    foreign = None
    if args.foreign_check:
        t = time.perf_counter()
        foreign = foreign_check(args, work)
        times["foreign check"] = time.perf_counter() - t

    info = {
        "size": args.size, "epochs": args.epochs, "epochs_planned": planned,
        "budget_min": args.budget_min, "speed": args.speed,
        "batch_size": args.batch_size, "lr": args.lr,
        "positive_fraction": args.positive_fraction, "lstm_epochs": args.lstm_epochs,
        "train_copies": args.train_copies, "threads": args.threads,
        "cpu_bf16": args.cpu_bf16 == "on",
        "data": data, "stats": stats, "metrics": result["metrics"], "shipped_test": shipped,
        "plain_test": plain, "mode": args.mode, "randomise": args.randomise,
        "randomise_fraction": args.randomise_fraction,
        "lstm_regularisation": {"dropout": args.lstm_dropout, "emb_noise": args.lstm_emb_noise,
                                "weight_decay": args.lstm_weight_decay,
                                "residual": args.lstm_residual,
                                "residual_penalty": args.lstm_residual_penalty,
                                "z_augment": args.lstm_z_augment,
                                "label_smoothing": args.lstm_label_smoothing},
        "calibrate": args.calibrate,
        "foreign": foreign,
        "times": times, "machine": common.machine_description(),
        "stage1_machine": stage1_machine, "stage1_elsewhere": args.cnn_run is not None,
        "init_cnn": None if getattr(args, "init_cnn", None) is None else str(args.init_cnn),
        "init_cnn_size": init_cnn_size(getattr(args, "init_cnn", None)),
        "device": args.device,
        "command": "python -m train.make_demo_weights " + " ".join(
            [*(["--quick"] if args.quick else []),
             *(f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(args).items())
               if k not in ("quick", "progress", "speed") and v is not None)]),
    }
    write_card(Path(args.out) / "MODEL_CARD.md", info)
    common.write_json(work / "demo_result.json", info)
    log.info("test macro slice F2: CNN %.3f, CNN+LSTM %.3f; total %.1f min",
             shipped["cnn"]["slice"]["macro"], shipped["cnn_lstm"]["slice"]["macro"],
             sum(times.values()) / 60)
    return info


if __name__ == "__main__":
    main(get_args_parser().parse_args())
