"""Generalisation check: the shipped model on head-CT phantoms from a generator it never saw.

    python -m bench.generalization                 # 60 foreign studies at 512 px, seed 7001
    python -m bench.generalization --studies 4     # a smoke run

1. Writes the foreign dataset (``bench/foreign_phantom.py``, RSNA 2019 layout) into
   ``--data-dir``, or reuses it when ``generated.json`` there records the same generator
   version, studies, seed and size.
2. Indexes it with `hohoho_core.rsna.build_index` (checking the index's labels against
   the generator's truth), then `hohoho_core.evaluate.predict_index` loads every study with
   `hohoho_core.dicom.load_study` and runs `hohoho_core.predict.Predictor` (the public
   pipeline, fp32) on it.
3. Checks every slice of the truth got a prediction and scores CNN alone and CNN + LSTM
   with `hohoho_core.evaluate.score`, at the thresholds shipped in the weights' config
   (CNN: ``cnn_thresholds``; CNN + LSTM: ``thresholds``), never tuned on this set.

Writes ``<out>.json`` and ``<out>.md`` (default ``bench/generalization.*``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.foreign_phantom import (
    AREA_THRESHOLD_MM2,
    GENERATOR_VERSION,
    read_truth,
    write_foreign_dataset,
)
from hohoho_core.labels import CLASSES, SUBTYPES
from hohoho_core.weights import default_weights_dir

REPO = Path(__file__).resolve().parents[1]

#: Below this many studies the report says it is a smoke run.
FULL_STUDIES = 60
MARKER = "generated.json"
STAGES = (("cnn", "CNN"), ("cnn_lstm", "CNN+LSTM"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="the shipped model on foreign phantom head CT")
    p.add_argument("--weights", type=Path, default=default_weights_dir())
    p.add_argument("--studies", type=int, default=FULL_STUDIES)
    p.add_argument("--seed", type=int, default=7001)
    p.add_argument("--size", type=int, default=512, help="generated image size (px)")
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "foreign")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "generalization",
                   help="writes OUT.json and OUT.md")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "auto"],
                   help="the CNN's arithmetic; fp32, the reference the thresholds were "
                        "picked in, unless asked otherwise (auto may pick bf16 on this CPU)")
    return p


# --------------------------------------------------------------------------- data


def ensure_dataset(data_dir: Path, studies: int, seed: int, size: int) -> dict[str, Any]:
    """Write the foreign set unless ``generated.json`` says this exact one is there.

    A folder holding slices without our marker is refused (never overwritten); one with
    a marker for another foreign set is regenerated in place.
    """
    spec = {"generator": "bench.foreign_phantom", "version": GENERATOR_VERSION,
            "studies": studies, "seed": seed, "size": size}
    marker = data_dir / MARKER
    old = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    if old is not None and {k: old.get(k) for k in spec} == spec \
            and (data_dir / "foreign_truth.csv").is_file():
        return {**spec, "reused": True, "seconds": old.get("seconds")}
    has_slices = any((data_dir / "stage_2_train").glob("*.dcm")) \
        if (data_dir / "stage_2_train").is_dir() else False
    if has_slices and (old is None or old.get("generator") != spec["generator"]):
        raise SystemExit(f"{data_dir} holds another dataset: remove it or pick --data-dir")
    marker.unlink(missing_ok=True)
    t = time.perf_counter()
    write_foreign_dataset(data_dir, studies, seed, size, overwrite=True)
    took = time.perf_counter() - t
    marker.write_text(json.dumps({**spec, "seconds": took}), encoding="utf-8")
    return {**spec, "reused": False, "seconds": took}


def index_studies(data_dir: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """`build_index` table of the foreign set, checked against the generator's truth."""
    from hohoho_core.rsna import build_index

    index = build_index(data_dir, workers=1, progress=False, use_cache=False)
    table = index.table
    if index.unreadable or index.missing_files or index.missing_labels:
        raise RuntimeError(f"index problems: {len(index.unreadable)} unreadable, "
                           f"{len(index.missing_files)} missing files, "
                           f"{len(index.missing_labels)} unlabelled")
    merged = table.merge(truth, on="image_id", how="outer", suffixes=("", "_truth"),
                         indicator=True)
    if (merged["_merge"] != "both").any():
        raise RuntimeError("the index and the generator's truth list different images")
    for col in (*CLASSES, "slice_index", "study_uid"):
        if not (merged[col] == merged[f"{col}_truth"]).all():
            raise RuntimeError(f"the index disagrees with the generator's truth on {col}")
    return table


# --------------------------------------------------------------------------- scoring


def score(pred: Any, truth: pd.DataFrame, thresholds: dict[str, np.ndarray]
          ) -> dict[str, Any]:
    """Metrics per stage (`evaluate.score` with study-level AUC) of an
    `evaluate.IndexPrediction`; every slice of ``truth`` must have been predicted."""
    from hohoho_core.evaluate import score as evaluate_score

    lost = set(truth["image_id"]) - set(pred.image_ids)
    if lost or len(pred) != len(truth):
        raise RuntimeError(f"{len(lost)} labelled slices got no prediction "
                           f"({len(pred)} predicted of {len(truth)})")
    probs = {"cnn": pred.cnn_prob, "cnn_lstm": pred.prob}
    # tune=True: thresholds picked on this set too, a diagnostic only (calibration vs
    # ranking); the headline numbers use the shipped thresholds.
    return {stage: evaluate_score(pred.labels, probs[stage], thresholds[stage],
                                  pred.study_ids, study_auc=True, tune=True)
            for stage, _ in STAGES if stage in thresholds}


# --------------------------------------------------------------------------- report


def _shown(path: Path) -> str:
    """A path relative to the repository when inside it (reports stay machine-neutral)."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def render_markdown(res: dict[str, Any]) -> str:
    data, m, stages = res["data"], res["metrics"], [s for s in STAGES if s[0] in res["metrics"]]
    lines = ["# Generalisation: the shipped model on a foreign phantom generator", ""]
    if data["studies"] < FULL_STUDIES:
        lines += [f"**Smoke run ({data['studies']} studies): too few for the numbers to mean "
                  f"anything; the full check is `--studies {FULL_STUDIES}`.**", ""]
    lines += [
        f"**Synthetic data only. Not for clinical use.** The model (`{res['model']['weights']}`) "
        "was trained only on `hohoho_core.synthetic`; these studies come from "
        "`bench/foreign_phantom.py`, "
        "an independent generator written separately (different anatomy construction, "
        "bleed shapes, noise, DICOM conventions), never used in training or threshold "
        "selection. The thresholds are the ones shipped in the weights' config.",
        "",
        "## Data",
        "",
        f"- Generator: `bench/foreign_phantom.py` version {data['version']}, seed "
        f"{data['seed']}, {data['studies']} studies, {data['slices']} slices "
        f"({data['slices_min']}-{data['slices_max']} per study, 5 mm), {data['size']} px, "
        f"pixel spacing {data['spacing_min']:.3f}-{data['spacing_max']:.3f} mm, noise "
        f"{data['noise_min']:.1f}-{data['noise_max']:.1f} HU; "
        f"{'reused from' if data['reused'] else 'written to'} `{data['dir']}`.",
        f"- A slice is positive for a subtype when it covers at least "
        f"{AREA_THRESHOLD_MM2:g} mm^2 there. Positive studies: {data['positive_studies']} of "
        f"{data['studies']}.",
        "",
        "| class | positive slices | positive studies |",
        "| --- | --- | --- |",
    ]
    for c in CLASSES:
        lines.append(f"| {c} | {data['positive_slices'][c]} | {data['positive_study_counts'][c]} |")
    lines += ["", "## Results", "",
              f"Measured once, {res['model'].get('precision', 'fp32')}, "
              f"{res['model']['weights']} "
              f"({res['model']['description']}).", ""]
    head = ["class"]
    for key in ("threshold", "slice F2", "study F2", "slice AUC", "study AUC"):
        head += [f"{key} {label}" for _, label in stages]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in CLASSES:
        row = [c]
        row += [_f(m[s]["thresholds"][c]) for s, _ in stages]
        row += [_f(m[s]["slice"]["per_class"][c]) for s, _ in stages]
        row += [_f(m[s]["study"]["per_class"][c]) for s, _ in stages]
        row += [_f(m[s]["auc"][c]) for s, _ in stages]
        row += [_f(m[s]["study_auc"][c]) for s, _ in stages]
        lines.append("| " + " | ".join(row) + " |")
    row = ["**macro**"] + [""] * len(stages)
    row += [f"**{_f(m[s]['slice']['macro'])}**" for s, _ in stages]
    row += [_f(m[s]["study"]["macro"]) for s, _ in stages]
    row += [_f(m[s]["auc_macro"]) for s, _ in stages]
    row += [_f(m[s]["study_auc_macro"]) for s, _ in stages]
    lines.append("| " + " | ".join(row) + " |")
    lines += ["", "RSNA weighted log loss: " + ", ".join(
        f"{label} {m[s]['log_loss']:.4f}" for s, label in stages) + ".", ""]
    if all("tuned" in m[s] for s, _ in stages):
        lines += ["## Calibration or ranking?", "",
                  "Slice F2 with the shipped thresholds against thresholds picked on this set "
                  "itself (an oracle no user has: it shows how much of the gap is the "
                  "thresholds, while AUC shows the ranking), and the expected calibration "
                  "error (ECE, 15 bins) of the probabilities.", ""]
        head = ["class"]
        for key in ("F2 shipped thr.", "F2 thr. picked here", "ECE"):
            head += [f"{key} {label}" for _, label in stages]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for c in CLASSES:
            row = [c]
            row += [_f(m[s]["slice"]["per_class"][c]) for s, _ in stages]
            row += [_f(m[s]["tuned"]["slice"]["per_class"][c]) for s, _ in stages]
            row += [_f(m[s]["ece"][c]) for s, _ in stages]
            lines.append("| " + " | ".join(row) + " |")
        row = ["**macro**"]
        row += [f"**{_f(m[s]['slice']['macro'])}**" for s, _ in stages]
        row += [_f(m[s]["tuned"]["slice"]["macro"]) for s, _ in stages]
        row += [_f(m[s]["ece_macro"]) for s, _ in stages]
        lines += ["| " + " | ".join(row) + " |", ""]
    lines += ["AUC is n/a where a class has no positives (or no negatives) in this set; F2 "
              "follows scikit-learn's zero_division=0 (a class with no positive slice and "
              "none predicted scores 0).", ""]
    ref = res.get("reference")
    if ref:
        lines += ["## Against the model's own generator", "",
                  "The same weights on the held-out synthetic test split of "
                  "`hohoho_core.synthetic` (from `weights/config.json` metrics.test):", "",
                  "| | macro slice F2 | macro study F2 | macro slice AUC |",
                  "| --- | --- | --- | --- |"]
        for s, label in stages:
            if s not in ref or s not in m:
                continue
            lines.append(
                f"| {label}, own generator (test split) | {_f(ref[s]['slice_macro'])} | "
                f"{_f(ref[s]['study_macro'])} | {_f(ref[s]['auc_macro'])} |")
            lines.append(
                f"| {label}, foreign generator | {_f(m[s]['slice']['macro'])} | "
                f"{_f(m[s]['study']['macro'])} | {_f(m[s]['auc_macro'])} |")
        lines.append("")
    t = res["timing_s"]
    if data["reused"]:
        took = data.get("seconds")
        gen = "reused" + (f" (written earlier in {took:.1f} s)" if took is not None else "")
    else:
        gen = f"{t['generate']:.1f} s"
    lines += [
        "## How it was made", "",
        f"- Command: `{res['command']}`",
        f"- Machine: {res['machine']}",
        f"- Wall time: generate {gen}, index {t['index']:.1f} s, load + predict "
        f"{t['predict']:.1f} s ({t['predict'] / max(data['slices'], 1) * 1000:.0f} ms per "
        f"slice), total {t['total']:.1f} s.",
        f"- Created {res['created']}.",
        "",
        "Synthetic data only. Not for clinical use.",
        "",
    ]
    return "\n".join(lines)


def _reference(config: Any) -> dict[str, Any] | None:
    test = (getattr(config, "metrics", None) or {}).get("test")
    if not isinstance(test, dict):
        return None
    out = {}
    for s, _ in STAGES:
        r = test.get(s)
        if isinstance(r, dict):
            out[s] = {"slice_macro": r.get("slice", {}).get("macro"),
                      "study_macro": (r.get("study") or {}).get("macro"),
                      "auc_macro": r.get("auc_macro")}
    return out or None


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.studies < 1:
        raise SystemExit("--studies must be >= 1")
    from bench.common import machine_info, machine_line
    from hohoho_core.evaluate import predict_index
    from hohoho_core.predict import Predictor
    from hohoho_core.runtime import configure_torch

    configure_torch(args.threads)  # a script's entry point: None = every core

    start = time.perf_counter()
    data_dir = Path(args.data_dir)
    gen = ensure_dataset(data_dir, args.studies, args.seed, args.size)
    truth = read_truth(data_dir)

    t = time.perf_counter()
    table = index_studies(data_dir, truth)
    t_index = time.perf_counter() - t

    predictor = Predictor.from_folder(args.weights, batch_size=args.batch_size,
                                      precision=args.precision)
    cfg = predictor.config
    thresholds = {"cnn_lstm": np.asarray(cfg.thresholds, dtype=np.float64)}
    if predictor.lstm is None:
        thresholds = {"cnn": thresholds["cnn_lstm"]}
    else:
        cnn_thr = cfg.cnn_thresholds if cfg.cnn_thresholds is not None else cfg.thresholds
        thresholds["cnn"] = np.asarray(cnn_thr, dtype=np.float64)

    t = time.perf_counter()
    preds = predict_index(predictor, data_dir, table)
    t_predict = time.perf_counter() - t
    metrics = score(preds, truth, thresholds)

    per_study = truth.groupby("study_uid")[list(CLASSES)].max()
    info = pd.read_csv(data_dir / "foreign_studies.csv")
    n_per = truth.groupby("study_uid").size()
    total = time.perf_counter() - start
    machine = machine_info()
    description = (cfg.data or {}).get("description") or "trained on hohoho_core.synthetic"
    res: dict[str, Any] = {
        "data": {
            **gen,
            "dir": _shown(data_dir),
            "slices": len(truth),
            "slices_min": int(n_per.min()),
            "slices_max": int(n_per.max()),
            "spacing_min": float(info["pixel_spacing_mm"].min()),
            "spacing_max": float(info["pixel_spacing_mm"].max()),
            "noise_min": float(info["noise_hu"].min()),
            "noise_max": float(info["noise_hu"].max()),
            "positive_slices": {c: int(truth[c].sum()) for c in CLASSES},
            "positive_study_counts": {c: int(per_study[c].sum()) for c in CLASSES},
            "positive_studies": int(per_study["any"].sum()),
            "subtypes_per_study": info["positive"].fillna("").tolist(),
            "area_threshold_mm2": AREA_THRESHOLD_MM2,
        },
        "model": {"weights": _shown(args.weights), "description": str(description),
                  "precision": predictor.precision,
                  "preprocess": cfg.preprocess.to_dict(), "lstm": predictor.lstm is not None},
        "metrics": metrics,
        "reference": _reference(cfg),
        "timing_s": {"generate": None if gen["reused"] else gen["seconds"],
                     "index": t_index, "predict": t_predict, "total": total},
        "machine": machine_line(machine),
        "machine_info": machine,
        "command": "python -m bench.generalization " + shlex.join(
            list(argv) if argv is not None else sys.argv[1:]),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "subtypes": list(SUBTYPES),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(res), encoding="utf-8")
    summary = ", ".join(f"{label} macro slice F2 {metrics[s]['slice']['macro']:.3f}"
                        for s, label in STAGES if s in metrics)
    print(f"{table['study_uid'].nunique()} studies, {len(truth)} slices: {summary}; wrote {md_path} and "
          f"{json_path.name} in {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
