"""Stage-2 variants on the same stage-1 model: features once, then every variant scored.

    # 1. stage-1 outputs of each labelled folder through the public pipeline, once
    python -m train.stage2_transfer features --weights runs/abl/w128/weights \
        --root data/demo_train/test --out runs/lstm13/feat/test.npz
    # 2. augmented copies of a split's studies (train: more stage-2 training data; val: the
    #    image-shift check of the selection rule), the stage-1 run's own cache
    python -m train.stage2_transfer augment --cnn-run runs/abl/w128/cnn --split val \
        --seed 101 --out runs/lstm13/feat/val_aug.npz
    # 3. score weights folders that share that CNN on those features
    python -m train.stage2_transfer score runs/lstm13/v0/weights ... \
        --features test=runs/lstm13/feat/test.npz --out runs/lstm13/scores.json

Every variant of `train.train_lstm` trained on one stage-1 run shares its CNN, so the CNN
forward pass (the slow part of ``make_demo_weights.check_folder`` and
``bench.generalization``) is done once per folder. Step 1 reads each study's DICOM files
with `rsna.iter_labelled_studies` and runs `Predictor.predict_input` on the preprocessed
study, exactly as `Predictor.predict` does; step 3 loads each variant with
`Predictor.from_folder` and applies ``sequence_prob`` and the config's temperatures and
thresholds, then `evaluate.score` (``tune=True``, as both of those callers do). So the
numbers are the ones those two give, without the repeated CNN pass (checked against them
in docs/ablation.md).

Perturbed copies for the selection rule (``--perturb``): ``stride2`` keeps every second
slice (both phases, as two studies: twice the slice spacing), ``reverse`` reverses each
study's slice order (the LSTM is bidirectional, but its two directions are not equal).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hohoho_core.datasets import EmbeddingTable, load_embeddings
from hohoho_core.evaluate import score
from train import common

log = logging.getLogger("hohoho.train")

PERTURBATIONS = ("none", "stride2", "reverse")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="stage-2 variants on shared stage-1 features",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="stage-1 outputs of a labelled RSNA-layout folder")
    f.add_argument("--weights", type=Path, required=True)
    f.add_argument("--root", type=Path, required=True)
    f.add_argument("--index-cache", type=Path, default=None)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "auto"],
                   help="the CNN's arithmetic (Predictor's --precision; auto would give bf16 "
                        "on some CPUs and not others)")
    a = sub.add_parser("augment", help="augmented copies of a split from the stage-1 cache")
    a.add_argument("--cnn-run", type=Path, required=True)
    a.add_argument("--split", choices=list(common.SPLITS), required=True)
    a.add_argument("--cache-dir", type=Path, default=None,
                   help="the run's preprocessed cache (default: from its args.json)")
    a.add_argument("--copies", type=int, default=1)
    a.add_argument("--seed", type=int, default=1,
                   help="copy c uses seed + c (extract_embeddings --train-copies: 1 + c)")
    a.add_argument("--augment", default="generous")
    a.add_argument("--with-plain", type=Path, default=None,
                   help="an emb_<split>.npz to prepend (makes a --train-copies table)")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("score", help="score weights folders on stored features")
    s.add_argument("weights", type=Path, nargs="+")
    s.add_argument("--features", action="append", required=True, metavar="NAME=NPZ[:PERTURB]")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--calibrated-on", default=None, metavar="NAME",
                   help="also score CNN+LSTM at the calibrated rule's cuts picked on the "
                        "--features set NAME, per weights folder")
    t = sub.add_parser("table", help="markdown table and the selection rule's verdict")
    t.add_argument("variants", nargs="+", metavar="NAME=LSTM_RUN_DIR:WEIGHTS",
                   help="the first one is the baseline")
    t.add_argument("--scores", type=Path, required=True)
    t.add_argument("--shift", nargs="+", default=["val_aug", "val_stride2", "val_reverse"],
                   help="the perturbed validation sets of the rule")
    t.add_argument("--report", nargs="*", default=["test", "test_plain", "foreign"])
    t.add_argument("--out", type=Path, default=None)
    return p


def features(weights: Path, root: Path, index_cache: Path | None,
             precision: str = "fp32") -> EmbeddingTable:
    """Embeddings, logits and labels of every labelled series under ``root``, computed by
    the ``weights`` folder's CNN through `Predictor` (study order as `load_study` sorts)."""
    from hohoho_core.predict import Predictor
    from hohoho_core.rsna import build_index, iter_labelled_studies

    pred = Predictor.from_folder(weights, batch_size=64, precision=precision)
    log.info("%s: CNN in %s", root, pred.precision)
    table = build_index(root, cache_dir=index_cache, workers=1, progress=False,
                        use_cache=index_cache is not None).table
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("emb", "logits", "labels", "study", "image", "slice")}
    for key, study, labels in iter_labelled_studies(root, table):
        emb, logits = pred.predict_input(pred.preprocess(study))
        n = len(labels)
        parts["emb"].append(emb)
        parts["logits"].append(logits)
        parts["labels"].append(np.asarray(labels, dtype=np.int8))
        parts["study"].append(np.asarray([key] * n))
        parts["image"].append(np.asarray(study.image_ids))
        parts["slice"].append(np.arange(n, dtype=np.int32))
    return EmbeddingTable(*(np.concatenate(parts[k]) for k in
                            ("emb", "logits", "labels", "study", "image", "slice")))


def augmented(cnn_run: Path, split: str, copies: int, seed: int, preset: str,
              cache_dir: Path | None = None) -> EmbeddingTable:
    """``copies`` augmented passes (one transform per study) over a split of the stage-1
    run's cache, keys ``<key>#aug<c>``, as ``extract_embeddings --train-copies`` makes them."""
    from hohoho_core.augment import PRESETS, HUAugment
    from hohoho_core.cache import StudyCache
    from hohoho_core.datasets import SliceDataset
    from hohoho_core.distributed import DistInfo
    from hohoho_core.models import create_model
    from train import extract_embeddings as ee

    cnn_args, cfg, splits = ee.read_cnn_run(cnn_run)
    cache = StudyCache(_find_cache(Path(cnn_run), cache_dir, cnn_args["cache_dir"]) / "studies")
    model = create_model(cnn_args["arch"], init="random", in_channels=cfg.channels)
    common.load_model_weights(Path(cnn_run) / "best_cnn.safetensors", model)
    dist = DistInfo(0, 1, 0, torch.device("cpu"), False)
    args = ee.get_args_parser().parse_args(
        ["--cnn-run", str(cnn_run), "--output-dir", "unused", "--device", "cpu",
         "--no-progress", "--batch-size", "64"])
    model = model.to(memory_format=common.memory_format(args, dist.device))
    tables = []
    for c in range(copies):
        ds = SliceDataset(cache, splits[split], cfg, output="input", labeled_only=False,
                          augment=HUAugment(PRESETS[preset]), seed=seed + c, augment_by="study")
        tables.append(ee.extract(model, ee._loader(ds, args, dist), args, dist,
                                 f"{split}#aug{c}", f"#aug{c}"))
    return ee.concat_tables(tables)


def _find_cache(cnn_run: Path, given: Path | None, recorded: str) -> Path:
    """The cache a stage-1 run recorded, relative paths also tried from the run's parents
    (runs record them relative to the folder they were started in)."""
    if given is not None:
        return given
    rec = Path(recorded)
    for base in (Path.cwd(), *Path(cnn_run).resolve().parents):
        if (base / rec / "studies").is_dir():
            return base / rec
    raise SystemExit(f"no preprocessed cache at {recorded!r} (from {cnn_run}/args.json): "
                     "pass --cache-dir")


def perturb(table: EmbeddingTable, how: str) -> EmbeddingTable:
    """A copy of ``table`` with every study's slices re-sampled along z (see module doc)."""
    if how not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {how!r}")
    if how == "none":
        return table
    order = np.lexsort((table.slice_index, table.study))
    study = table.study[order]
    cuts = np.nonzero(study[1:] != study[:-1])[0] + 1
    rows, keys, pos = [], [], []
    for r in np.split(order, cuts):
        k = str(table.study[r[0]])
        if how == "reverse":
            rows.append(r[::-1])
            keys += [k] * len(r)
            pos.append(np.arange(len(r)))
        else:
            for phase in (0, 1):
                sub = r[phase::2]
                rows.append(sub)
                keys += [f"{k}#z{phase}"] * len(sub)
                pos.append(np.arange(len(sub)))
    idx = np.concatenate(rows)
    return EmbeddingTable(table.embeddings[idx], table.logits[idx], table.labels[idx],
                          np.asarray(keys), table.image_id[idx],
                          np.concatenate(pos).astype(np.int32))


def _studies(table: EmbeddingTable) -> list[np.ndarray]:
    order = np.lexsort((table.slice_index, table.study))
    study = table.study[order]
    return np.split(order, np.nonzero(study[1:] != study[:-1])[0] + 1)


def folder_probs(pred: Any, table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
    """(CNN, CNN + LSTM) probabilities of a `Predictor` on stored stage-1 outputs."""
    # As Predictor.predict computes it (float32 torch), so thresholds cut the same values.
    cnn = torch.sigmoid(torch.from_numpy(table.logits / pred.cnn_temperatures)).numpy()
    final = cnn.copy()
    if pred.lstm is not None:
        for r in _studies(table):
            final[r] = pred.sequence_prob(table.embeddings[r], table.logits[r])
    return cnn, final


def calibrated_cuts(pred: Any, table: EmbeddingTable) -> np.ndarray:
    """The calibrated rule's CNN + LSTM cuts (F*/(1 + beta^2) per class) on a labelled
    table; slices without a label (-1) are left out, as `evaluate.score` leaves them."""
    from hohoho_core.shift import View, pick_thresholds

    y = np.asarray(table.labels)
    keep = (y >= 0).all(axis=1)
    prob = folder_probs(pred, table)[1]
    return pick_thresholds([View("cut", y[keep].astype(np.int64), prob[keep])], "calibrated")


def load_folder(weights: Path) -> Any:
    """The weights folder's `Predictor`; fp32: only the LSTM runs here (on stored CNN
    outputs), and auto could build a bf16 CNN for nothing."""
    from hohoho_core.predict import Predictor

    return Predictor.from_folder(weights, batch_size=64, precision="fp32")


def score_folder(weights: Path, table: EmbeddingTable,
                 cut_on: EmbeddingTable | None = None) -> dict[str, Any]:
    """CNN alone and CNN + LSTM of a weights folder on stored stage-1 outputs, scored as
    ``make_demo_weights.check_folder`` and ``bench.generalization`` score them. With
    ``cut_on`` (a labelled table, e.g. the validation split), CNN + LSTM is also scored at
    the calibrated rule's cuts (`calibrated_cuts`) picked there: how a candidate is
    compared with the shipped thresholds' own rule without the views."""
    pred = load_folder(weights)
    return score_predictor(pred, table, None if cut_on is None else calibrated_cuts(pred, cut_on))


def score_predictor(pred: Any, table: EmbeddingTable,
                    cuts: np.ndarray | None = None) -> dict[str, Any]:
    """`score_folder` with the `Predictor` loaded and the calibrated ``cuts`` picked."""
    cnn, final = folder_probs(pred, table)
    cfg = pred.config
    cnn_thr = np.asarray(cfg.cnn_thresholds if cfg.cnn_thresholds is not None
                         else cfg.thresholds, dtype=np.float64)
    out = {"cnn": score(table.labels, cnn, cnn_thr, table.study, study_auc=True, tune=True)}
    if pred.lstm is not None:
        out["cnn_lstm"] = score(table.labels, final, pred.thresholds, table.study,
                                study_auc=True, tune=True)
        if cuts is not None:
            out["cnn_lstm_calibrated"] = score(table.labels, final, cuts, table.study)
            out["cnn_lstm_calibrated"]["cut_thresholds"] = [float(t) for t in cuts]
    return out


def save_table(path: Path, table: EmbeddingTable) -> Path:
    """Like `datasets.save_embeddings` but float32 embeddings: the LSTM then reads exactly
    what `Predictor.predict` hands it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, embeddings=table.embeddings.astype(np.float32),
                 logits=table.logits.astype(np.float32), labels=table.labels.astype(np.int8),
                 study=np.asarray(table.study, dtype=str),
                 image_id=np.asarray(table.image_id, dtype=str),
                 slice_index=table.slice_index.astype(np.int32))
    return path


def _feature_specs(specs: list[str]) -> dict[str, tuple[Path, str]]:
    out = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        path, _, how = rest.partition(":")
        if not name or not path:
            raise SystemExit(f"--features needs NAME=NPZ[:PERTURB], got {spec!r}")
        out[name] = (Path(path), how or "none")
    return out


def _macro(rep: dict[str, Any] | None, stage: str, tuned: bool = False) -> float | None:
    if rep is None or stage not in rep:
        return None
    r = rep[stage]["tuned"] if tuned else rep[stage]
    return float(r["slice"]["macro"])


def verdict(rows: list[dict[str, Any]], val_drop: float = 0.01,
            margin_gain: float = 0.01) -> dict[str, Any]:
    """The selection rule of docs/ablation.md ("Stage-2 sequence model that transfers"),
    validation and its perturbed copies only. ``rows[0]`` is the baseline; each row has
    ``name``, ``val`` (CNN+LSTM macro F2) and ``margins`` (CNN+LSTM - CNN per shift set)."""
    base = rows[0]
    base_mean = float(np.mean(list(base["margins"].values())))
    out: dict[str, Any] = {"baseline": base["name"], "qualifies": {}, "winner": None}
    best = None
    for r in rows[1:]:
        mean = float(np.mean(list(r["margins"].values())))
        ok = (r["val"] >= base["val"] - val_drop
              and min(r["margins"].values()) >= 0
              and mean > base_mean + margin_gain)
        out["qualifies"][r["name"]] = ok
        if ok and (best is None or mean > best[1]):
            best = (r["name"], mean)
    out["winner"] = best[0] if best else None
    return out


def results_table(variants: list[str], scores: dict[str, Any], shift: list[str],
          report: list[str]) -> tuple[str, dict[str, Any]]:
    """Markdown rows (validation, perturbed-validation margins, reported sets) and the
    rule's verdict."""
    rows = []
    head = ["variant", "val CNN", "val CNN+LSTM", *(f"{s} margin" for s in shift)]
    for r in report:
        head += [f"{r} CNN", f"{r} CNN+LSTM"]
        if r == "foreign":
            head += ["foreign CNN+LSTM (thr. picked there)", "foreign AUC CNN / CNN+LSTM"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for spec in variants:
        name, _, rest = spec.partition("=")
        run, _, weights = rest.partition(":")
        val = json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))["val"]
        sc = scores[weights]
        margins = {s: _macro(sc[s], "cnn_lstm") - _macro(sc[s], "cnn") for s in shift}
        rows.append({"name": name, "val": val["cnn_lstm"]["slice"]["macro"], "margins": margins})
        cells = [name, f"{val['cnn']['slice']['macro']:.3f}",
                 f"{val['cnn_lstm']['slice']['macro']:.3f}",
                 *(f"{margins[s]:+.3f}" for s in shift)]
        for r in report:
            rep = sc.get(r)
            cells += ["-" if rep is None else f"{_macro(rep, st):.3f}"
                      for st in ("cnn", "cnn_lstm")]
            if r == "foreign":
                cells += ["-", "-"] if rep is None else [
                    f"{_macro(rep, 'cnn_lstm', tuned=True):.3f}",
                    f"{rep['cnn']['auc_macro']:.3f} / {rep['cnn_lstm']['auc_macro']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", verdict(rows)


def main(args: argparse.Namespace) -> Any:
    common.setup_logging(True)
    torch.set_num_threads(getattr(args, "threads", 1))
    if args.command == "features":
        t = features(args.weights, args.root, args.index_cache, args.precision)
        save_table(args.out, t)
        log.info("%s: %d slices of %d studies", args.out, len(t.study), len(set(t.study)))
        return None
    if args.command == "augment":
        t = augmented(args.cnn_run, args.split, args.copies, args.seed, args.augment,
                      args.cache_dir)
        if args.with_plain is not None:
            from train.extract_embeddings import concat_tables

            t = concat_tables([load_embeddings(args.with_plain), t])
        save_table(args.out, t)
        log.info("%s: %d slices", args.out, len(t.study))
        return None
    if args.command == "table":
        text, decision = results_table(args.variants, json.loads(args.scores.read_text()),
                                       args.shift, args.report)
        text += "\nverdict: " + json.dumps(decision) + "\n"
        if args.out is None:
            print(text, end="")
        else:
            args.out.write_text(text, encoding="utf-8")
        return decision
    specs = _feature_specs(args.features)
    tables = {name: perturb(load_embeddings(path), how) for name, (path, how) in specs.items()}
    result: dict[str, Any] = {}
    if args.out.is_file():
        result = json.loads(args.out.read_text(encoding="utf-8"))
    cut_on = getattr(args, "calibrated_on", None)
    if cut_on is not None and cut_on not in tables:
        raise SystemExit(f"--calibrated-on {cut_on}: not one of the --features names")
    for w in args.weights:
        rep = result.setdefault(str(w), {})
        pred = load_folder(w)  # once per folder, and the cuts once per folder
        cuts = None if cut_on is None else calibrated_cuts(pred, tables[cut_on])
        for name, table in tables.items():
            rep[name] = score_predictor(pred, table, cuts)
            m = rep[name]
            log.info("%s %s: CNN %.3f, CNN+LSTM %s", w, name, m["cnn"]["slice"]["macro"],
                     f"{m['cnn_lstm']['slice']['macro']:.3f}" if "cnn_lstm" in m else "-")
    common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
