"""A stage-1 run folder rebuilt from a shipped weights folder, so stage 2 can be trained again
without training the CNN (no GPU needed): the later stages then see the CNN that ships.

    python -m train.cnn_run_from_weights --weights weights --out runs/s2/cnn [--epochs-run 27]
    python -m train.make_demo_weights ...the recipe's flags... --cnn-run runs/s2/cnn

Writes what `make_demo_weights --cnn-run` adopts: ``best_cnn.safetensors`` (the CNN's tensors
of ``model.safetensors``, as float32: the values `Predictor` computes with), ``args.json``
(the stage-1 arguments the weights' ``config.json`` records), ``machine.json`` and
``data.json`` (the train and validation sets the CNN was trained and selected on, by seed,
count and generator options, with their slice counts); with ``--epochs-run``, a
``checkpoint.json`` that says where an early-stopped stage 1 ended (state only: the folder
is for adopting, not for ``train_cnn --resume``). The folder has no ``splits.json``:
`make_demo_weights` regenerates the data from the seeds and checks it against ``data.json``
instead of a list of study ids.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from hohoho_core.checkpoint import load_tensors, save_tensors
from train import common

log = logging.getLogger("hohoho.train")

CNN_PREFIX = "cnn."


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="stage-1 run folder from a weights folder",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--out", type=Path, required=True, help="the run folder to write")
    p.add_argument("--epochs-run", type=int, default=None,
                   help="epochs stage 1 really ran, when it stopped before its schedule's end "
                        "(the weights' MODEL_CARD.md says; config.json keeps the plan)")
    return p


def cnn_tensors(weights: Path) -> dict[str, Any]:
    """The CNN's tensors of a weights folder, keyed as `save_model_weights` keys them."""
    tensors = load_tensors(weights / "model.safetensors")
    cnn = {f"model.{k[len(CNN_PREFIX):]}": v.float() if v.is_floating_point() else v
           for k, v in tensors.items() if k.startswith(CNN_PREFIX)}
    if not cnn:
        raise SystemExit(f"{weights / 'model.safetensors'}: no '{CNN_PREFIX}*' tensors")
    return cnn


#: Stage-1 arguments the later stages read from ``args.json`` (make_demo_weights.resolve
#: and reused_cnn_args, extract_embeddings.read_cnn_run).
NEEDED_ARGS = ("arch", "mode", "size", "crop", "window", "epochs", "batch_size", "lr",
               "positive_fraction")


def run_record(config: dict[str, Any], weights: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stage-1 args, train/val data record) from a weights folder's config."""
    training = config.get("training")
    cnn = training.get("cnn") if isinstance(training, dict) else None
    if not isinstance(cnn, dict) or not cnn:
        raise SystemExit(f"{weights / 'config.json'}: no training.cnn record (weights made "
                         "before the recipe stored its stage-1 arguments)")
    missing_args = [k for k in NEEDED_ARGS if k not in cnn]
    if missing_args:
        raise SystemExit(f"{weights / 'config.json'}: training.cnn lacks {missing_args}")
    data = config.get("data")
    data = data if isinstance(data, dict) else {}
    sets, stats = data.get("sets", {}), data.get("stats", {})
    missing = [s for s in ("train", "val") if s not in sets or s not in stats]
    if missing:
        raise SystemExit(f"{weights / 'config.json'}: data.sets/stats lack {missing}")
    return cnn, {"sets": {s: sets[s] for s in ("train", "val")},
                 "stats": {s: stats[s] for s in ("train", "val")}}


def write_run(weights: Path, out: Path, epochs_run: int | None = None) -> Path:
    """Write the run folder; every check comes first, so a refusal writes nothing."""
    where = weights / "config.json"
    try:
        config = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{where}: cannot read it ({err})") from None
    if not isinstance(config, dict):
        raise SystemExit(f"{where}: not a JSON object")
    cnn, data = run_record(config, weights)
    if epochs_run is not None and not 0 < epochs_run <= int(cnn["epochs"]):
        raise SystemExit(f"--epochs-run {epochs_run}: outside 1..{cnn['epochs']}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"{out} is not an empty folder")
    tensors = cnn_tensors(weights)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "best_cnn.safetensors", tensors, {"source": json.dumps(str(weights))})
    common.write_json(out / "args.json", {**cnn, "output_dir": str(out.resolve())})
    common.write_json(out / "data.json", data)
    if epochs_run is not None:
        # train_cnn's checkpoint state, the part make_demo_weights reads for early stops (no
        # checkpoint tensors: this folder can be adopted, not resumed with train_cnn --resume)
        common.write_json(out / "checkpoint.json", {"state": {"epoch": epochs_run - 1}})
    common.write_json(out / "machine.json", {
        "machine": f"as recorded in {weights / 'MODEL_CARD.md'}",
        "device": str(cnn.get("device", "unknown"))})
    log.info("stage-1 run folder from %s: %s", weights, out)
    return out


def main(args: argparse.Namespace) -> Path:
    common.setup_logging(True)
    return write_run(args.weights, args.out, args.epochs_run)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
